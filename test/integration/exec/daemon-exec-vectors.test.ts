/**
 * Exec steps end to end (integration: root, runc, qemu-user-static, a registry on localhost:5000,
 * upstream buildctl at $LOOM_UPSTREAM_BUILDCTL or /opt/upstream/bin/buildctl): loom's daemon solves
 * the shared LLB vectors exactly as the upstream daemon did, and a trivial step's overhead is
 * measured.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { image } from '../../../src/llb/builder.js';
import { BUILDCTL as LOOM_BUILDCTL, removeDir, run, startDaemon, tarListing, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, vectorsDir, type TestRegistry } from '../../helpers/registry.js';
import { canRunContainers } from './helpers.js';
import { definitionBytes, exec } from './llb-exec.js';

// Upstream's buildctl when this machine has one (built locally, never committed); else loom's own.
const UPSTREAM = process.env.LOOM_UPSTREAM_BUILDCTL ?? '/opt/upstream/bin/buildctl';
const CLIENT = existsSync(UPSTREAM) ? { cmd: UPSTREAM, pre: [] as string[], name: 'upstream buildctl' } : { cmd: LOOM_BUILDCTL, pre: [] as string[], name: "loom's buildctl" };
const VECTORS = vectorsDir();

function registryUp(): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get('http://127.0.0.1:5000/v2/busybox/tags/list', (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(2000, () => req.destroy());
  });
}

const ok = canRunContainers() && !!VECTORS && existsSync(join(process.cwd(), 'dist', 'cli', 'buildkitd.js'));

describe.skipIf(!ok)(`exec vectors through loom with ${CLIENT.name} (integration, root, runc, registry :5000)`, () => {
  let dir: string;
  let registry: TestRegistry | undefined;
  let plain: TestDaemon;
  let allowing: TestDaemon;
  const vec = (name: string) => readFileSync(join(VECTORS!, 'llb', `${name}.llb`));
  const expected = (name: string) => readFileSync(join(VECTORS!, 'llb', 'expected', `${name}.tar-listing.txt`), 'utf8');
  const build = (d: TestDaemon, args: string[], stdin: Uint8Array, env: NodeJS.ProcessEnv = process.env) =>
    run(CLIENT.cmd, [...CLIENT.pre, '--addr', d.addr, 'build', '--progress', 'plain', ...args], { stdin, env, timeoutMs: 180_000 });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-exec-vectors-'));
    if (!(await registryUp())) registry = await startRegistry({ port: 5000 });
    plain = await startDaemon();
    allowing = await startDaemon({ args: ['--allow-insecure-entitlement', 'network.host', '--allow-insecure-entitlement', 'security.insecure'] });
  }, 120_000);

  afterAll(async () => {
    await plain?.stop();
    await allowing?.stop();
    if (plain) removeDir(plain.dir);
    if (allowing) removeDir(allowing.dir);
    await registry?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exec-basic gives the upstream listing', async () => {
    const out = join(dir, 'basic.tar');
    const r = await build(plain, ['--output', `type=tar,dest=${out}`], vec('exec-basic'));
    expect(r.code, r.stderr).toBe(0);
    expect(await tarListing(out)).toBe(expected('exec-basic'));
  }, 180_000);

  it('platform-arm64 runs uname -m through QEMU and gives the upstream listing', async () => {
    const out = join(dir, 'arm64.tar');
    const r = await build(plain, ['--output', `type=tar,dest=${out}`], vec('platform-arm64'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/\baarch64\b/);
    expect(await tarListing(out)).toBe(expected('platform-arm64'));
  }, 180_000);

  it('exec-mounts succeeds with a secret and a forwarded ssh agent, and /out holds x = done', async () => {
    const token = join(dir, 'token');
    writeFileSync(token, 'tok-value-123');
    const agentSock = join(dir, 'agent.sock');
    const agent = spawn('ssh-agent', ['-D', '-a', agentSock], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 100 && !existsSync(agentSock); i++) await new Promise((r) => setTimeout(r, 20));
      const out = join(dir, 'mounts-out');
      const r = await build(plain, ['--secret', `id=token,src=${token}`, '--ssh', 'default', '--output', `type=local,dest=${out}`], vec('exec-mounts'), {
        ...process.env,
        SSH_AUTH_SOCK: agentSock,
      });
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(join(out, 'x'), 'utf8')).toBe('done\n');
      // The secret was readable in the step, and is nowhere in the daemon's state afterwards.
      expect(r.stderr).toContain('tok-value-123');
      const grep = spawnSync('grep', ['-rl', '--binary-files=text', 'tok-value-123', plain.root], { encoding: 'utf8' });
      expect(grep.stdout).toBe('');
      expect(grep.status).toBe(1); // nothing matched
      // The secrets tmpfs is gone once no step holds a secret.
      const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(plain.root) && l.includes('/executor/secrets'));
      expect(mounts).toEqual([]);
    } finally {
      agent.kill();
    }
  }, 180_000);

  it('exec-flags is refused unless both the daemon and the client allow the entitlements', async () => {
    const out = join(dir, 'flags.tar');
    const a = await build(plain, ['--output', `type=tar,dest=${out}`], vec('exec-flags'));
    expect(a.code).not.toBe(0);
    expect(a.stderr).toContain('network.host is not allowed');
    const b = await build(allowing, ['--output', `type=tar,dest=${out}`], vec('exec-flags'));
    expect(b.code).not.toBe(0);
    expect(b.stderr).toContain('network.host is not allowed');
    const c = await build(plain, ['--allow', 'network.host', '--allow', 'security.insecure', '--output', `type=tar,dest=${out}`], vec('exec-flags'));
    expect(c.code).not.toBe(0);
    expect(c.stderr).toContain('is not allowed');
    const d = await build(allowing, ['--allow', 'network.host', '--allow', 'security.insecure', '--output', `type=tar,dest=${out}`], vec('exec-flags'));
    expect(d.code, d.stderr).toBe(0);
    expect(await tarListing(out)).toMatch(/^-rw-r--r-- 0\/0 29 t$/m);
  }, 180_000);

  it('a failing step reports upstream\'s error', async () => {
    const def = definitionBytes(exec(image('localhost:5000/busybox:latest'), { args: ['sh', '-c', 'echo "bad \\"x\\""; exit 7'] }));
    const r = await build(plain, [], def);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('process "sh -c echo \\"bad \\\\\\"x\\\\\\"\\"; exit 7" did not complete successfully: exit code: 7');
  }, 180_000);
});
