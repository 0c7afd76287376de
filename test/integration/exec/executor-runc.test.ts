import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { arch, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitError } from '../../../src/ops/executor/executor.js';
import { cleanupStale, CONTAINER_ID_RE, executorPaths } from '../../../src/ops/executor/runc/stale.js';
import type { RuncExecutor } from '../../../src/ops/executor/runc/runc-executor.js';
import { binfmtRegistrations, emulatedArgs, QEMU_MOUNT_PATH } from '../../../src/ops/executor/qemu.js';
import { detectPlatforms } from '../../../src/worker/platforms.js';
import { busyboxLayers, HAVE_VECTORS } from '../../unit/snapshot/busybox-image.js';
import { canRunContainers, makeExecutor, makeRootfs, proc, runCollect } from './helpers.js';

function runcList(stateRoot: string): { id: string; status: string }[] {
  const out = execFileSync('runc', ['--root', executorPaths(stateRoot).runcRoot, 'list', '--format', 'json']).toString();
  return (JSON.parse(out || 'null') as { id: string; status: string }[] | null) ?? [];
}

describe.skipIf(!canRunContainers())('runc executor (integration, root, real runc)', () => {
  let dir: string;
  let state: string;
  let ex: RuncExecutor;
  let n = 0;
  const rootfs = () => makeRootfs(join(dir, `rootfs-${n++}`));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-exec-'));
    state = join(dir, 'state');
    ex = makeExecutor(state);
    await ex.init();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('streams stdout and stderr apart and reports success', async () => {
    const r = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'echo out; echo err >&2']) });
    expect(r.error).toBeNull();
    expect(r.out).toBe('out\n');
    expect(r.err).toBe('err\n');
  });

  it('reports the exit code as upstream words it', async () => {
    const r = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'exit 3']) });
    expect(r.error).toBeInstanceOf(ExitError);
    expect((r.error as ExitError).exitCode).toBe(3);
    expect(r.error!.message).toBe('exit code: 3');
  });

  it('runs as the named user with its groups, creates the cwd for it, and sets hostname and hosts', async () => {
    const r = rootfs();
    const res = await runCollect(ex, {
      rootfs: r,
      mounts: [],
      process: proc(['sh', '-c', 'id; pwd; hostname; cat /etc/hosts'], { user: 'app', cwd: '/work/dir', hostname: 'myhost', extraHosts: [{ host: 'db.local', ip: '10.0.0.5' }] }),
    });
    expect(res.error).toBeNull();
    expect(res.out).toMatch(/^uid=1000\(app\) gid=1000\(app\) groups=1000\(app\),2000\(extra\)\n\/work\/dir\nmyhost\n/);
    expect(res.out).toContain('127.0.0.1\tlocalhost myhost\n');
    expect(res.out).toContain('10.0.0.5\tdb.local\n');
    expect(statSync(join(r, 'work', 'dir')).uid).toBe(1000);
    // The stubs runc made for /etc/hosts and /etc/resolv.conf are gone again; /dev, /proc, /sys stay.
    expect(existsSync(join(r, 'etc', 'hosts'))).toBe(false);
    expect(existsSync(join(r, 'etc', 'resolv.conf'))).toBe(false);
    expect(readdirSync(r).sort()).toEqual(['bin', 'dev', 'etc', 'home', 'proc', 'sys', 'tmp', 'work']);
  });

  it('gives network mode none loopback only', async () => {
    const res = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'ls /sys/class/net'], { netMode: 'none' }) });
    expect(res.error).toBeNull();
    expect(res.out.trim().split(/\s+/)).toEqual(['lo']);
    const host = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'ls /sys/class/net']) });
    expect(host.out.trim().split(/\s+/).sort()).toEqual(readdirSync('/sys/class/net').sort());
  });

  it('mounts tmpfs, read-only binds with a selector, and files; removes the stubs it made', async () => {
    const r = rootfs();
    const src = mkdtempSync(join(dir, 'src-'));
    mkdirSync(join(src, 'sub'));
    writeFileSync(join(src, 'sub', 'f'), 'from-bind');
    const secret = join(dir, 'secret-file');
    writeFileSync(secret, 's3');
    const res = await runCollect(ex, {
      rootfs: r,
      mounts: [
        { dest: '/mnt/ro', source: { kind: 'bind', path: src, selector: 'sub', readonly: true } },
        { dest: '/run/secrets/s', source: { kind: 'file', path: secret, readonly: true } },
        { dest: '/t', source: { kind: 'tmpfs', size: 1 << 20 } },
      ],
      process: proc(['sh', '-c', 'cat /mnt/ro/f; cat /run/secrets/s; echo x > /t/y && cat /t/y; touch /mnt/ro/g 2>/dev/null || echo ro; grep " /t " /proc/mounts']),
    });
    expect(res.error).toBeNull();
    expect(res.out).toMatch(/^from-binds3x\nro\ntmpfs \/t tmpfs rw,nosuid,.*size=1024k/);
    expect(existsSync(join(r, 'run'))).toBe(false);
    expect(existsSync(join(r, 'mnt'))).toBe(false);
    expect(existsSync(join(r, 't'))).toBe(false);
  });

  it('kills the container when cancelled, and leaves nothing behind', async () => {
    const ac = new AbortController();
    const started = Date.now();
    const p = runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'echo started; sleep 60']), signal: ac.signal });
    for (let i = 0; i < 200 && runcList(state).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    const running = runcList(state);
    expect(running).toHaveLength(1);
    expect(running[0]!.id).toMatch(CONTAINER_ID_RE);
    ac.abort();
    const res = await p;
    expect(res.error?.message).toBe('context canceled');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(runcList(state)).toEqual([]);
    expect(readdirSync(executorPaths(state).bundles)).toEqual([]);
  });

  it('gives a process a terminal when asked (node-pty), with the requested size', async () => {
    const res = await runCollect(ex, {
      rootfs: rootfs(),
      mounts: [],
      process: proc(['sh', '-c', 'test -t 0 && test -t 1 && echo is-a-tty; tty; stty size'], { tty: true, size: { cols: 100, rows: 30 } }),
    });
    expect(res.error).toBeNull();
    expect(res.out).toContain('is-a-tty');
    expect(res.out).toMatch(/\/dev\/pts\/\d+/);
    expect(res.out).toContain('30 100');
    const plain = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'test -t 1 && echo tty || echo notty']) });
    expect(plain.out).toBe('notty\n');
  });

  it('cleans containers a crashed daemon left (cleanupStale)', async () => {
    const st = join(dir, 'crashed');
    const ex2 = makeExecutor(st);
    await ex2.init();
    // A daemon killed with SIGKILL: its shim sees the parent die and kills the container; a shim
    // killed too leaves the container running, which cleanupStale must remove.
    const child = spawn(process.execPath, [
      '--input-type=module',
      '-e',
      `const { RuncExecutor } = await import(${JSON.stringify(join(process.cwd(), 'dist/ops/executor/runc/runc-executor.js'))});
       const { createNetworkProviders } = await import(${JSON.stringify(join(process.cwd(), 'dist/ops/executor/network.js'))});
       const ex = new RuncExecutor({ stateRoot: ${JSON.stringify(st)}, network: createNetworkProviders({ workerNet: 'host' }), hostArch: 'amd64' });
       await ex.run({ rootfs: ${JSON.stringify(rootfs())}, mounts: [], signal: new AbortController().signal,
         process: { args: ['sleep', '60'], env: ['PATH=/bin'], cwd: '/', user: '', hostname: '', extraHosts: [], ulimits: [], netMode: 'sandbox', security: 'sandbox', removeMountStubsRecursive: true, readonlyRootfs: false, cgroupParent: '' } });`,
    ], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 400 && runcList(st).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(runcList(st)).toHaveLength(1);
      // Kill the shim first (SIGKILL: no cleanup at all), then the "daemon".
      const shims = execFileSync('pgrep', ['-f', '--', `--root ${executorPaths(st).runcRoot} --id`]).toString().trim().split('\n');
      for (const pid of shims) process.kill(Number(pid), 'SIGKILL');
      child.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 100));
      expect(runcList(st).map((c) => c.status)).toEqual(['running']);
      const res = await cleanupStale({ stateRoot: st });
      expect(res.containers).toHaveLength(1);
      expect(runcList(st)).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  }, 30_000);
});

describe.skipIf(!canRunContainers())('executor safety (integration, root, real runc)', () => {
  let dir: string;
  let ex: RuncExecutor;
  let n = 0;
  const rootfs = () => makeRootfs(join(dir, `rootfs-${n++}`));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-exec-safety-'));
    ex = makeExecutor(join(dir, 'state'));
    await ex.init();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a step swapping a mount stub\'s parent for a symlink to a host path cannot make loom touch that path', async () => {
    const host = mkdtempSync(join(dir, 'host-'));
    mkdirSync(join(host, 'sub'));
    writeFileSync(join(host, 'token'), '');
    const before = statSync(host).mtimeMs;
    const r = rootfs();
    const res = await runCollect(ex, {
      rootfs: r,
      mounts: [
        { dest: '/a/sub', source: { kind: 'tmpfs' } },
        { dest: '/a/token', source: { kind: 'tmpfs' } },
      ],
      process: proc(['sh', '-c', `mv /a /moved && ln -s ${host} /a && ls -la /`]),
    });
    expect(res.error).toBeNull();
    expect(lstatSync(join(r, 'a')).isSymbolicLink()).toBe(true);
    // The host's empty directory and empty file, which a stub cleaner following /a would remove, are intact.
    expect(statSync(join(host, 'sub')).isDirectory()).toBe(true);
    expect(existsSync(join(host, 'token'))).toBe(true);
    expect(statSync(host).mtimeMs).toBe(before);
  });

  it('two steps racing on one cache directory with a symlink swap never see host files', async () => {
    const cache = mkdtempSync(join(dir, 'cache-'));
    mkdirSync(join(cache, 'sub'));
    const hostSecret = mkdtempSync(join(dir, 'host-secret-'));
    writeFileSync(join(hostSecret, 'HOST-MARKER'), 'host');
    const stop = new AbortController();
    // Step A swaps cache/sub between a directory and a symlink to the host directory, endlessly.
    // B's mount fails when it resolves the symlink (it names nothing inside the cache) or when the
    // directory it pinned is deleted before runc binds it; it must never show the host directory.
    const swapper = runCollect(ex, {
      rootfs: rootfs(),
      mounts: [{ dest: '/cache', source: { kind: 'bind', path: cache, readonly: false } }],
      process: proc(['sh', '-c', `while true; do rm -rf /cache/sub; ln -s ${hostSecret} /cache/sub; usleep 30000; rm -f /cache/sub; mkdir /cache/sub; usleep 500000; done`]),
      signal: stop.signal,
    });
    try {
      let sawDir = 0;
      for (let i = 0; i < 16; i++) {
        // Step B mounts the cache's `sub` (the selector) and lists it.
        const b = await runCollect(ex, {
          rootfs: rootfs(),
          mounts: [{ dest: '/x', source: { kind: 'bind', path: cache, selector: 'sub', readonly: true } }],
          process: proc(['sh', '-c', 'ls -la /x; cat /x/HOST-MARKER 2>/dev/null || true']),
        });
        expect(b.out + b.err).not.toContain('HOST-MARKER');
        expect(b.out).not.toContain('host');
        if (!b.error) sawDir++;
      }
      expect(sawDir).toBeGreaterThan(0);
    } finally {
      stop.abort();
      await swapper;
    }
  }, 60_000);

  it('WORKDIR /proc/self/fd/N cannot reach the host', async () => {
    for (const fd of [3, 4, 5, 6, 7, 8]) {
      const res = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'ls -a . ..'], { cwd: `/proc/self/fd/${fd}` }) });
      expect(res.error?.message).toContain('inside /proc, which is not allowed');
      expect(res.out).toBe('');
    }
    // Through a symlink in the rootfs.
    const r = rootfs();
    symlinkSync('/proc/self/fd/7', join(r, 'w'));
    const viaLink = await runCollect(ex, { rootfs: r, mounts: [], process: proc(['sh', '-c', 'ls -a'], { cwd: '/w' }) });
    expect(viaLink.error?.message).toContain('leads to /proc/self/fd/7');
    // Through a symlink loom cannot see ahead (inside a bind mount): runc refuses the directory.
    const m = mkdtempSync(join(dir, 'm-'));
    for (const fd of [3, 4, 5, 6, 7, 8]) symlinkSync(`/proc/self/fd/${fd}`, join(m, `fd${fd}`));
    for (const fd of [3, 4, 5, 6, 7, 8]) {
      const res = await runCollect(ex, {
        rootfs: rootfs(),
        mounts: [{ dest: '/m', source: { kind: 'bind', path: m, readonly: true } }],
        process: proc(['sh', '-c', 'ls -a; ls ../../../../'], { cwd: `/m/fd${fd}` }),
      });
      expect(res.out).not.toMatch(/cgroup\.procs|memory|HOST/);
      expect(res.error).not.toBeNull();
    }
  }, 60_000);

  it('container ids are loom\'s own random ids, whatever the step says', async () => {
    const seen = new Set<string>();
    const listIds = async (p: Promise<unknown>) => {
      for (let i = 0; i < 200; i++) {
        const l = runcList(join(dir, 'state'));
        if (l.length) {
          for (const c of l) seen.add(c.id);
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      await p;
    };
    for (const hostname of ['../../evil', 'loom-000000000000000000000000']) {
      const ac = new AbortController();
      const p = runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sleep', '5'], { hostname }), signal: ac.signal });
      await listIds(new Promise((r) => setTimeout(r, 10)));
      ac.abort();
      await p;
    }
    expect(seen.size).toBe(2);
    for (const id of seen) {
      expect(id).toMatch(CONTAINER_ID_RE);
      expect(id).not.toBe('loom-000000000000000000000000');
    }
  }, 30_000);
});

/** Linux 6.7 gave each user namespace a binfmt_misc instance of its own. */
function kernelHasOwnBinfmt(): boolean {
  const [maj = 0, min = 0] = release().split('.').map((x) => parseInt(x, 10));
  return maj > 6 || (maj === 6 && min >= 7);
}

describe.skipIf(!canRunContainers() || !HAVE_VECTORS || !existsSync('/usr/bin/qemu-aarch64-static') || arch() !== 'x64')('steps for another platform (integration, root, real runc and QEMU)', () => {
  let dir: string;
  let state: string;
  let ex: RuncExecutor;
  let armRoot: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-exec-qemu-'));
    state = join(dir, 'state');
    ex = makeExecutor(state);
    await ex.init();
    armRoot = join(dir, 'arm64');
    mkdirSync(armRoot);
    for (const layer of busyboxLayers('arm64')) execFileSync('tar', ['-xzf', layer, '-C', armRoot]);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the shim can give a step its own binfmt_misc exactly where the kernel has one per user namespace', async () => {
    expect(await ex.ownBinfmt()).toBe(kernelHasOwnBinfmt());
  });

  it.runIf(kernelHasOwnBinfmt())('an arm64 step and the arm64 children it starts run through QEMU; the host keeps no trace', async () => {
    const mountsBefore = readFileSync('/proc/self/mountinfo', 'utf8');
    const binfmtBefore = existsSync('/proc/sys/fs/binfmt_misc/status') ? readdirSync('/proc/sys/fs/binfmt_misc').sort() : null;
    const binfmt = binfmtRegistrations({ architecture: 'amd64' }, detectPlatforms().emulated);
    expect(binfmt.some((r) => r.startsWith(':qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02'))).toBe(true);
    // No handler for the host's own binaries (nor the 32-bit ones it runs natively).
    expect(binfmt.filter((r) => /^:qemu-(x86_64|i386):/.test(r))).toEqual([]);
    // /bin/ls is a new arm64 process started by the arm64 shell: without a handler it fails with
    // "Exec format error" (exit 126). With the host's network, /sys is the host's, bound.
    const r = await runCollect(ex, {
      rootfs: armRoot,
      mounts: [],
      process: proc(['/bin/sh', '-c', '/bin/uname -m; /bin/ls -d /bin; env true && echo child-ok; cat /proc/self/uid_map; ls /sys/kernel >/dev/null && echo sys-ok']),
      binfmt,
    });
    expect(r.error, r.err).toBeNull();
    expect(r.out.split('\n').map((l) => l.trim().replace(/\s+/g, ' '))).toEqual(['aarch64', '/bin', 'child-ok', '0 0 4294967295', 'sys-ok', '']);
    // Without its own binfmt_misc the same child is refused by the kernel (unless the host itself
    // has QEMU registered for arm64, which the step then uses).
    const hostHandler = '/proc/sys/fs/binfmt_misc/qemu-aarch64';
    if (!(existsSync(hostHandler) && readFileSync(hostHandler, 'utf8').startsWith('enabled'))) {
      const bare = await runCollect(ex, {
        rootfs: armRoot,
        mounts: [{ dest: QEMU_MOUNT_PATH, source: { kind: 'bind', path: '/usr/bin/qemu-aarch64-static', readonly: true } }],
        process: proc(await emulatedArgs(armRoot, ['/bin/sh', '-c', '/bin/ls -d /bin'], [])),
      });
      expect((bare.error as ExitError).exitCode, bare.out + bare.err).toBe(126);
      expect(bare.err).toMatch(/Exec format error/);
    }
    // Nothing left: the namespace pin is unmounted, the bundle gone, the host's table as it was.
    expect(readdirSync(executorPaths(state).bundles)).toEqual([]);
    const binfmtMounts = (s: string) => s.split('\n').filter((l) => / (binfmt_misc|nsfs) /.test(l)).length;
    expect(binfmtMounts(readFileSync('/proc/self/mountinfo', 'utf8'))).toBe(binfmtMounts(mountsBefore));
    expect(existsSync('/proc/sys/fs/binfmt_misc/status') ? readdirSync('/proc/sys/fs/binfmt_misc').sort() : null).toEqual(binfmtBefore);
  });

  it.runIf(kernelHasOwnBinfmt())('an arm64 step with network none gets its own network namespace and sysfs', async () => {
    const r = await runCollect(ex, {
      rootfs: armRoot,
      mounts: [],
      process: proc(['/bin/sh', '-c', '/bin/ls /sys/class/net'], { netMode: 'none' }),
      binfmt: binfmtRegistrations({ architecture: 'amd64' }, detectPlatforms().emulated),
    });
    expect(r.error, r.err).toBeNull();
    expect(r.out).toBe('lo\n');
  });
});
