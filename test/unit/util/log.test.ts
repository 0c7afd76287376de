import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const logModule = join(__dirname, '..', '..', '..', 'dist', 'util', 'log.js');

/** Runs `body` in a fresh Node process with dist/util/log.js imported as `L`; returns its stderr and stdout. */
function run(body: string, env: Record<string, string> = {}) {
  const script = `const L = await import(${JSON.stringify(logModule)});\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, LOOM_LOG_LEVEL: '', ...env } });
  expect(r.status, r.stderr).toBe(0);
  return r;
}

describe('logger', () => {
  it('gives children made before the daemon configures logging its level and text format', () => {
    const r = run(`const child = L.log.child({ sub: 'early' });
L.configureLogger({ level: 'debug', format: 'text' });
child.debug({ n: 1 }, 'hello');`);
    expect(r.stderr).toMatch(/^time="[^"]+" level=debug msg="hello" sub="early" n=1$/m);
  });

  it('does not load pino for lines below the level (the client never prints them)', () => {
    const r = run(`const child = L.log.child({ sub: 'quiet' });
child.debug('not shown'); L.log.info('not shown either');
const { createRequire } = await import('node:module');
const req = createRequire(${JSON.stringify(logModule)});
console.log(Object.keys(req.cache).some((k) => k.includes('/pino/')) ? 'loaded' : 'not loaded');
child.warn('shown');
console.log(Object.keys(req.cache).some((k) => k.includes('/pino/')) ? 'loaded' : 'not loaded');`);
    expect(r.stdout.trim().split('\n')).toEqual(['not loaded', 'loaded']);
    expect(r.stderr).not.toMatch(/not shown/);
    expect(JSON.parse(r.stderr.trim())).toMatchObject({ level: 40, sub: 'quiet', msg: 'shown' });
  });
});
