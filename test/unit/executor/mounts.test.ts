import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CacheMounts } from '../../../src/ops/executor/mounts/cache-mounts.js';
import { mountStubs } from '../../../src/ops/executor/mount-stubs.js';
import { binfmtRegistrations, emulatedArgs, emulationHint, emulatorFor, QEMU_MOUNT_PATH } from '../../../src/ops/executor/qemu.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-mounts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('mount stubs', () => {
  it('lists missing destinations and their missing parents, resolved inside the rootfs', async () => {
    const r = mkdtempSync(join(dir, 'r-'));
    mkdirSync(join(r, 'etc'));
    writeFileSync(join(r, 'etc', 'hosts'), 'x');
    mkdirSync(join(r, 'real'));
    symlinkSync('/real', join(r, 'link'));
    const flat = await mountStubs(r, ['/run/secrets/token', '/link/sub', '/etc'], false);
    expect(flat).toEqual(['etc/resolv.conf', 'run/secrets/token', 'real/sub']);
    const deep = await mountStubs(r, ['/run/secrets/token'], true);
    expect(deep).toEqual(['etc/resolv.conf', 'run/secrets/token', 'run/secrets', 'run']);
  });
});

describe('QEMU for foreign platforms', () => {
  const emulators = [{ platform: { os: 'linux', architecture: 'arm64' }, binfmt: false, staticPath: '/usr/bin/qemu-aarch64-static' }];
  const native = { architecture: 'amd64' };
  const pb = (a: string, v = '') => ({ OS: 'linux', Architecture: a, Variant: v }) as never;

  it('mounts the static emulator only where binfmt_misc has no handler', () => {
    expect(emulatorFor(pb('amd64'), native, emulators)).toBeNull();
    expect(emulatorFor(pb('arm64'), native, emulators)).toEqual({ staticPath: '/usr/bin/qemu-aarch64-static' });
    expect(emulatorFor(pb('aarch64'), native, emulators)).toEqual({ staticPath: '/usr/bin/qemu-aarch64-static' });
    expect(emulatorFor(pb('arm64'), native, [{ ...emulators[0]!, binfmt: true }])).toBeNull();
    expect(() => emulatorFor(pb('s390x'), native, emulators)).toThrow('no support for running processes with linux/s390x platform, supported: linux/amd64, linux/arm64');
  });

  it('runs the program through the emulator, found along the step\'s PATH in the rootfs', async () => {
    const r = mkdtempSync(join(dir, 'q-'));
    mkdirSync(join(r, 'bin'));
    writeFileSync(join(r, 'bin', 'busybox'), 'elf');
    chmodSync(join(r, 'bin', 'busybox'), 0o755);
    symlinkSync('busybox', join(r, 'bin', 'uname'));
    expect(await emulatedArgs(r, ['uname', '-m'], ['PATH=/usr/bin:/bin'])).toEqual([QEMU_MOUNT_PATH, '-0', 'uname', '/bin/uname', '-m']);
    expect(await emulatedArgs(r, ['/bin/uname'], [])).toEqual([QEMU_MOUNT_PATH, '-0', '/bin/uname', '/bin/uname']);
  });

  it('registers every foreign emulator with binfmt_misc, never one for binaries the host runs natively', () => {
    const e = (architecture: string, qemu: string, variant?: string) => ({ platform: { os: 'linux', architecture, variant }, binfmt: false, staticPath: `/usr/bin/qemu-${qemu}-static` });
    const all = [e('arm64', 'aarch64'), e('386', 'i386'), e('arm', 'arm', 'v7'), e('arm', 'arm', 'v6'), e('riscv64', 'riscv64'), e('amd64', 'x86_64')];
    const onAmd64 = binfmtRegistrations({ architecture: 'amd64' }, all);
    expect(onAmd64.map((r) => r.split(':')[1])).toEqual(['qemu-aarch64', 'qemu-arm', 'qemu-riscv64']);
    expect(onAmd64[0]).toBe(
      ':qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:' +
        '\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/bin/qemu-aarch64-static:POCF',
    );
    expect(binfmtRegistrations({ architecture: 'arm64' }, all).map((r) => r.split(':')[1])).toEqual(['qemu-i386', 'qemu-riscv64', 'qemu-x86_64']);
    // Only emulators loom found a binary for.
    expect(binfmtRegistrations({ architecture: 'amd64' }, [{ ...all[0]!, staticPath: undefined, binfmt: true }])).toEqual([]);
  });

  it("agrees with the magic and mask Debian's qemu-user-static registers", () => {
    const dir = '/usr/share/binfmts';
    const regs = binfmtRegistrations({ architecture: 'amd64' }, ['aarch64', 'arm', 'riscv64', 'ppc64le', 's390x', 'mips64el', 'mips64'].map((q) => ({ platform: { os: 'linux', architecture: q }, binfmt: false, staticPath: `/usr/bin/qemu-${q}-static` })));
    const checked = regs.filter((r) => existsSync(join(dir, r.split(':')[1]!)));
    for (const r of checked) {
      const f = readFileSync(join(dir, r.split(':')[1]!), 'utf8');
      const [, , , , magic, mask] = r.split(':');
      expect(magic, r).toBe(/^magic (.*)$/m.exec(f)![1]);
      expect(mask, r).toBe(/^mask (.*)$/m.exec(f)![1]);
    }
    expect(checked.length).toBe(existsSync(join(dir, 'qemu-aarch64')) ? 7 : 0);
  });

  it('tells a step that exited 126 under QEMU without binfmt_misc what to do', () => {
    expect(emulationHint(pb('arm', 'v7'))).toMatch(/^loom: exit code 126 in a linux\/arm\/v7 step .* binfmt_misc .* update-binfmts --enable/);
  });
});

describe('cache mounts', () => {
  it('share one directory among shared users, give private users their own, and make locked users wait', async () => {
    const c = new CacheMounts({ dir: join(dir, 'cache') });
    const a = await c.acquire({ id: 'x', sharing: 'shared', from: null });
    const b = await c.acquire({ id: 'x', sharing: 'shared', from: null });
    expect(b.dir).toBe(a.dir);
    const p = await c.acquire({ id: 'x', sharing: 'private', from: null });
    expect(p.dir).not.toBe(a.dir);
    writeFileSync(join(a.dir, 'f'), '1');
    let got: string | undefined;
    const waiting = c.acquire({ id: 'x', sharing: 'locked', from: null }).then((l) => {
      got = l.dir;
      return l;
    });
    p.release();
    // p's directory is free again: a locked user takes it without waiting for the shared ones.
    const l = await waiting;
    expect(got).toBe(p.dir);
    let second: string | undefined;
    const waiting2 = c.acquire({ id: 'x', sharing: 'locked', from: null }).then((x) => (second = x.dir));
    await new Promise((r) => setTimeout(r, 30));
    expect(second).toBeUndefined();
    l.release();
    await waiting2;
    expect(second).toBe(p.dir);
    a.release();
    b.release();
    // Persistent across instances (a daemon restart): the content is still there.
    const again = await new CacheMounts({ dir: join(dir, 'cache') }).acquire({ id: 'x', sharing: 'shared', from: null });
    expect(readFileSync(join(again.dir, 'f'), 'utf8')).toBe('1');
  });

  it('gives steps that ask for a new cache at the same moment one directory when shared, two when private (two platforms of one RUN)', async () => {
    // A multi-platform build runs each platform's RUN --mount=type=cache at once: both asked
    // before either had loaded the cache's directory, and the second's rename failed (ENOTEMPTY).
    const c = new CacheMounts({ dir: join(dir, 'cache-race') });
    const [a, b] = await Promise.all([c.acquire({ id: 'r', sharing: 'shared', from: null }), c.acquire({ id: 'r', sharing: 'shared', from: null })]);
    expect(a.dir).toBe(b.dir);
    a.release();
    b.release();
    const [p, q] = await Promise.all([c.acquire({ id: 'p', sharing: 'private', from: null }), c.acquire({ id: 'p', sharing: 'private', from: null })]);
    expect(p.dir).not.toBe(q.dir);
    expect((await c.list()).filter((r) => r.key === 'p')).toHaveLength(2);
  });

  it('seeds a new cache from its `from` state, keyed by that state', async () => {
    const from = mkdtempSync(join(dir, 'from-'));
    writeFileSync(join(from, 'seed'), 's');
    const c = new CacheMounts({ dir: join(dir, 'cache2') });
    const m = await c.acquire({ id: 'y', sharing: 'shared', from: { id: 'ref1', dir: from } });
    expect(readFileSync(join(m.dir, 'seed'), 'utf8')).toBe('s');
    const plain = await c.acquire({ id: 'y', sharing: 'shared', from: null });
    expect(existsSync(join(plain.dir, 'seed'))).toBe(false);
  });

  it('cancels a locked wait', async () => {
    const c = new CacheMounts({ dir: join(dir, 'cache3') });
    const held = await c.acquire({ id: 'z', sharing: 'locked', from: null });
    const ac = new AbortController();
    const w = c.acquire({ id: 'z', sharing: 'locked', from: null, signal: ac.signal });
    ac.abort();
    await expect(w).rejects.toThrow('context canceled');
    held.release();
  });
});
