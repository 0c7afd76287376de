import { execFileSync, spawnSync } from 'node:child_process';
import { lstat, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { getXattr, listXattrs, setTimes, setXattrs } from '../../../src/snapshot/layer/sys-ops.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'loom-sysops-'));
  dirs.push(d);
  return d;
}

describe('sys-ops helper', () => {
  test('many concurrent requests each get their own answer, with exact nanoseconds', async () => {
    const d = await tmp();
    const files = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const f = join(d, `f${i}`);
        await writeFile(f, `${i}`);
        return f;
      }),
    );
    await Promise.all(files.map((f, i) => setTimes([{ path: f, atimeNs: 1_000_000_000_000_000_001n + BigInt(i), mtimeNs: 1_600_000_000_123_456_789n + BigInt(i) }])));
    for (const [i, f] of files.entries()) {
      const st = await lstat(f, { bigint: true });
      expect(st.mtimeNs).toBe(1_600_000_000_123_456_789n + BigInt(i));
      expect(st.atimeNs).toBe(1_000_000_000_000_000_001n + BigInt(i));
    }
  });

  test('a failing item names its path; the helper keeps answering afterwards', async () => {
    const d = await tmp();
    await expect(setTimes([{ path: join(d, 'missing/x'), atimeNs: 1n, mtimeNs: 1n }])).rejects.toThrow(join(d, 'missing/x'));
    const f = join(d, 'ok');
    await writeFile(f, 'x');
    await setTimes([{ path: f, atimeNs: 5n, mtimeNs: 7n }]);
    expect((await lstat(f, { bigint: true })).mtimeNs).toBe(7n);
  });

  test('symlinks are not followed', async () => {
    const d = await tmp();
    await writeFile(join(d, 'target'), 'x');
    await symlink('target', join(d, 'link'));
    const before = (await lstat(join(d, 'target'), { bigint: true })).mtimeNs;
    await setTimes([{ path: join(d, 'link'), atimeNs: 42n, mtimeNs: 43n }]);
    expect((await lstat(join(d, 'link'), { bigint: true })).mtimeNs).toBe(43n);
    expect((await lstat(join(d, 'target'), { bigint: true })).mtimeNs).toBe(before);
  });

  test.skipIf(spawnSync('setfattr', ['--version']).status !== 0)('xattrs round-trip through list, get and set', async () => {
    const d = await tmp();
    const f = join(d, 'f');
    await writeFile(f, 'x');
    const errs = await setXattrs([{ path: f, name: 'user.loom', value: Buffer.from([0, 1, 2, 255]) }]);
    if (errs[0]) return; // a filesystem without user xattrs
    expect(execFileSync('getfattr', ['--only-values', '-n', 'user.loom', f])).toEqual(Buffer.from([0, 1, 2, 255]));
    const [listed, none] = await listXattrs([f, join(d, 'missing')]);
    expect(listed!.get('user.loom')).toEqual(Buffer.from([0, 1, 2, 255]));
    expect(none!.size).toBe(0);
    expect(await getXattr([f, f], 'user.other')).toEqual([null, null]);
  });

  test('a process that used the helper exits on its own', async () => {
    // The helper must not keep a CLI (or a test worker) alive once nothing waits on it.
    const d = await tmp();
    const f = join(d, 'f');
    await writeFile(f, 'x');
    const script = join(d, 'script.ts');
    await writeFile(
      script,
      `import { setTimes } from ${JSON.stringify(join(process.cwd(), 'src/snapshot/layer/sys-ops.ts'))};
      await setTimes([{ path: ${JSON.stringify(f)}, atimeNs: 1n, mtimeNs: 2n }]);
      console.log('done');\n`,
    );
    const started = Date.now();
    const r = spawnSync(join(process.cwd(), 'node_modules/.bin/vite-node'), [script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.error).toBeUndefined();
    expect(r.stdout.trim()).toBe('done');
    expect(r.status).toBe(0);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect((await lstat(f, { bigint: true })).mtimeNs).toBe(2n);
  });
});
