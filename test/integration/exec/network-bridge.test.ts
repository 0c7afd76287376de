/**
 * The bridge network of sandboxed steps (integration: root, real network namespaces, iptables,
 * runc and busybox). Nothing leaves the machine: the "test host" is a network namespace this
 * file makes, routed through the host, with an HTTP server in it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openNetworkProviders, type NetworkProviders } from '../../../src/ops/executor/network.js';
import { daemonTag, NETNS_DIR } from '../../../src/ops/executor/net/bridge-provider.js';
import { chooseSubnet, overlaps, parseCidr } from '../../../src/ops/executor/net/ipv4.js';
import { RuncExecutor } from '../../../src/ops/executor/runc/runc-executor.js';
import { canRunContainers, makeRootfs, proc, runCollect } from './helpers.js';

const haveIp = (() => {
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const ok = canRunContainers() && haveIp;

/** Namespaces of the daemon with this state root (see daemonTag). */
function ownNamespaces(stateRoot: string): string[] {
  const tag = daemonTag(stateRoot);
  return (existsSync(NETNS_DIR) ? readdirSync(NETNS_DIR) : []).filter((n) => n.startsWith(`loom-${tag}-`));
}

/** Host ends of the veths of these namespaces that still exist. */
function vethsOf(names: string[]): string[] {
  return names.map((n) => `lm${n.slice(-12)}`).filter((v) => existsSync(`/sys/class/net/${v}`));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('bridge network: pure parts', () => {
  it('picks the first candidate subnet that overlaps no route, ignoring the default route', () => {
    const routes = ['default', '10.213.5.0/24', '192.0.2.0/24'].map(parseCidr);
    expect(chooseSubnet(['10.213.0.0/16', '10.214.0.0/16'], routes)).toEqual(parseCidr('10.214.0.0/16'));
    expect(chooseSubnet(['10.0.0.0/8'], [parseCidr('10.200.0.0/16')])).toBeNull();
    expect(overlaps(parseCidr('10.213.0.0/16'), parseCidr('10.213.255.1'))).toBe(true);
    expect(overlaps(parseCidr('10.213.0.0/16'), parseCidr('10.212.255.255'))).toBe(false);
  });

  it('refuses unknown --oci-worker-net values, naming them', async () => {
    await expect(openNetworkProviders({ workerNet: 'bogus', stateRoot: '/nonexistent' })).rejects.toThrow(/invalid --oci-worker-net "bogus"/);
    await expect(openNetworkProviders({ workerNet: 'cni', stateRoot: '/nonexistent' })).rejects.toThrow(/cni is not supported/);
    const host = await openNetworkProviders({ workerNet: 'host', stateRoot: '/nonexistent' });
    expect(host.sandboxKind).toBe('host');
    expect(await host.acquire('sandbox', { reusable: true })).toEqual({ kind: 'host' });
    expect(await host.acquire('none', { reusable: true })).toEqual({ kind: 'new' });
  });
});

describe.skipIf(!ok)('bridge network (integration, root, real netns, runc)', () => {
  let dir: string;
  let n = 0;
  const rootfs = () => makeRootfs(join(dir, `rootfs-${n++}`));
  // The test host: a namespace of our own, routed through the host on a /30.
  const hex = randomBytes(3).toString('hex');
  const testNs = `loomtest-${hex}`;
  const testVeth = `lt${hex}`;
  const third = parseInt(hex.slice(0, 2), 16);
  const testHostIp = `10.251.${third}.2`;
  let server: ChildProcess;
  let net: NetworkProviders;
  let ex: RuncExecutor;
  let state: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-net-'));
    execFileSync('ip', ['netns', 'add', testNs]);
    execFileSync('ip', ['link', 'add', testVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', testNs]);
    execFileSync('ip', ['addr', 'add', `10.251.${third}.1/30`, 'dev', testVeth]);
    execFileSync('ip', ['link', 'set', testVeth, 'up']);
    execFileSync('ip', ['-n', testNs, 'addr', 'add', `${testHostIp}/30`, 'dev', 'eth0']);
    execFileSync('ip', ['-n', testNs, 'link', 'set', 'eth0', 'up']);
    execFileSync('ip', ['-n', testNs, 'link', 'set', 'lo', 'up']);
    execFileSync('ip', ['-n', testNs, 'route', 'add', 'default', 'via', `10.251.${third}.1`]);
    const script = join(dir, 'server.cjs');
    writeFileSync(
      script,
      `require('http').createServer((q, s) => s.end('hello from the test host ' + q.socket.remoteAddress)).listen(8080, ${JSON.stringify(testHostIp)}, () => console.log('ready'));`,
    );
    server = spawn('ip', ['netns', 'exec', testNs, process.execPath, script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      server.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      server.on('exit', (c) => reject(new Error(`test host server exited ${c}`)));
    });

    state = join(dir, 'state');
    net = await openNetworkProviders({ workerNet: 'bridge', stateRoot: state, poolSize: 2 });
    ex = new RuncExecutor({ stateRoot: state, network: net, hostArch: 'amd64' });
    await ex.init();
  }, 30_000);

  afterAll(async () => {
    await net?.close();
    server?.kill('SIGKILL');
    try {
      execFileSync('ip', ['link', 'del', testVeth], { stdio: 'ignore' });
    } catch {
      /* gone with the namespace */
    }
    execFileSync('ip', ['netns', 'del', testNs], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });

  it('a sandboxed step has an address on the bridge and reaches a server in another namespace (NAT)', async () => {
    expect(net.sandboxKind).toBe('bridge');
    const res = await runCollect(ex, {
      rootfs: rootfs(),
      mounts: [],
      process: proc(['sh', '-c', `ip -4 -o addr show dev eth0; ip route; wget -qO- http://${testHostIp}:8080/`]),
    });
    expect(res.error).toBeNull();
    const addr = /inet ([0-9.]+)\/(\d+)/.exec(res.out);
    expect(addr).not.toBeNull();
    expect(overlaps(net.bridge!.subnet, parseCidr(addr![1]!))).toBe(true);
    expect(addr![1]).not.toBe(net.bridge!.gateway);
    expect(res.out).toContain(`default via ${net.bridge!.gateway} dev eth0`);
    // The server saw the host's address on its link: the step's traffic was masqueraded.
    expect(res.out).toContain(`hello from the test host 10.251.${third}.1`);
  });

  it('--network none has only loopback', async () => {
    const res = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'ls /sys/class/net; ip -o link'], { netMode: 'none' }) });
    expect(res.error).toBeNull();
    expect(res.out.split('\n')[0]).toBe('lo');
    expect(res.out).not.toContain('eth0');
    const wget = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['wget', '-T', '2', '-qO-', `http://${testHostIp}:8080/`], { netMode: 'none' }) });
    expect(wget.error).not.toBeNull();
  });

  it('two concurrent steps get distinct addresses', async () => {
    const step = () =>
      runCollect(ex, {
        rootfs: rootfs(),
        mounts: [],
        // Both hold their namespace at once: each waits until the other has started.
        process: proc(['sh', '-c', 'ip -4 -o addr show dev eth0; sleep 1']),
      });
    const [a, b] = await Promise.all([step(), step()]);
    expect(a.error).toBeNull();
    expect(b.error).toBeNull();
    const ipA = /inet ([0-9.]+)/.exec(a.out)?.[1];
    const ipB = /inet ([0-9.]+)/.exec(b.out)?.[1];
    expect(ipA).toBeTruthy();
    expect(ipB).toBeTruthy();
    expect(ipA).not.toBe(ipB);
  });

  it('insecure steps get a namespace that is destroyed after them; the pool stays bounded', async () => {
    const before = ownNamespaces(state);
    const res = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'ip link set eth0 mtu 1280 && sleep 0.3'], { security: 'insecure' }) });
    expect(res.error).toBeNull();
    const now = ownNamespaces(state);
    expect(now.length).toBeLessThanOrEqual(2);
    // The step took one of the pool's namespaces, which was destroyed rather than returned.
    expect(before.filter((x) => !now.includes(x))).toHaveLength(1);
    // Whichever namespace the step changed is gone: none left has the changed MTU.
    for (const ns of now) expect(execFileSync('ip', ['-n', ns, '-o', 'link', 'show', 'eth0']).toString()).not.toContain('mtu 1280');
  });

  it('without a pool, nothing of a step remains after it ends or is cancelled; a closed pool leaves nothing', async () => {
    const st = join(dir, 'nopool');
    const net0 = await openNetworkProviders({ workerNet: 'bridge', stateRoot: st, poolSize: 0 });
    const ex0 = new RuncExecutor({ stateRoot: st, network: net0, hostArch: 'amd64' });
    try {
      const seen = new Set<string>();
      const watch = setInterval(() => ownNamespaces(st).forEach((x) => seen.add(x)), 10);
      const okRun = await runCollect(ex0, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'sleep 0.3; ip -4 -o addr show dev eth0']) });
      expect(okRun.error).toBeNull();
      expect(okRun.out).toMatch(/inet 10\.|inet 172\./);

      const ac = new AbortController();
      const cancelled = runCollect(ex0, { rootfs: rootfs(), mounts: [], process: proc(['sleep', '60']), signal: ac.signal });
      for (let i = 0; i < 200 && ownNamespaces(st).length === 0; i++) await sleep(25);
      await sleep(300);
      ac.abort();
      const c = await cancelled;
      clearInterval(watch);
      expect((c.error as { code?: string } | null)?.code, c.error?.message).toBe('CANCELLED');
      expect(seen.size).toBe(2);
      expect(ownNamespaces(st)).toEqual([]);
      expect(vethsOf([...seen])).toEqual([]);
    } finally {
      await net0.close();
    }
    // With a pool: the pooled namespaces exist until close, then nothing remains.
    const pooled = ownNamespaces(state);
    expect(pooled.length).toBeGreaterThan(0);
    const st2 = join(dir, 'closing');
    const net2 = await openNetworkProviders({ workerNet: 'bridge', stateRoot: st2, poolSize: 2 });
    for (let i = 0; i < 200 && ownNamespaces(st2).length < 2; i++) await sleep(25);
    const made = ownNamespaces(st2);
    expect(made).toHaveLength(2);
    await net2.close();
    expect(ownNamespaces(st2)).toEqual([]);
    expect(vethsOf(made)).toEqual([]);
  }, 30_000);

  it('a daemon killed with SIGKILL mid-step leaves a namespace that the next start removes', async () => {
    const st = join(dir, 'crashed');
    const r = rootfs();
    const script = join(dir, 'crash-child.ts');
    const src = join(process.cwd(), 'src');
    writeFileSync(
      script,
      `const { openNetworkProviders } = await import(${JSON.stringify(join(src, 'ops/executor/network.ts'))});
       const { RuncExecutor } = await import(${JSON.stringify(join(src, 'ops/executor/runc/runc-executor.ts'))});
       const net = await openNetworkProviders({ workerNet: 'bridge', stateRoot: ${JSON.stringify(st)}, poolSize: 1 });
       const ex = new RuncExecutor({ stateRoot: ${JSON.stringify(st)}, network: net, hostArch: 'amd64' });
       await ex.run({ rootfs: ${JSON.stringify(r)}, mounts: [], signal: new AbortController().signal,
         process: { args: ['sleep', '60'], env: ['PATH=/bin'], cwd: '/', user: '', hostname: '', extraHosts: [], ulimits: [], netMode: 'sandbox', security: 'sandbox', removeMountStubsRecursive: true, readonlyRootfs: false, cgroupParent: '' } });`,
    );
    const viteNode = join(process.cwd(), 'node_modules', '.bin', 'vite-node');
    const child = spawn(viteNode, [script], { stdio: 'ignore', detached: true });
    try {
      // Running: the step's container is up in the pool's namespace.
      const running = () =>
        existsSync(join(st, 'executor', 'runc')) && readdirSync(join(st, 'executor', 'runc')).some((c) => c.startsWith('loom-'));
      for (let i = 0; i < 1200 && !(running() && ownNamespaces(st).length >= 1); i++) await sleep(25);
      expect(running()).toBe(true);
      await sleep(300);
      const debris = ownNamespaces(st);
      expect(debris.length).toBeGreaterThanOrEqual(1);
      process.kill(-child.pid!, 'SIGKILL');
      await sleep(200);
      expect(ownNamespaces(st)).toEqual(debris);

      const next = await openNetworkProviders({ workerNet: 'bridge', stateRoot: st, poolSize: 0 });
      try {
        expect(ownNamespaces(st)).toEqual([]);
        expect(vethsOf(debris)).toEqual([]);
        const leases = readdirSync(join('/run/loom/net', next.bridge!.name, 'leases')).map((ip) =>
          execFileSync('cat', [join('/run/loom/net', next.bridge!.name, 'leases', ip)]).toString(),
        );
        for (const d of debris) expect(leases).not.toContain(d);
      } finally {
        await next.close();
      }
    } finally {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }, 60_000);

  it('namespaces of another daemon that died (its recorded pid is gone) are removed; a live daemon\'s are kept', async () => {
    const dead = spawn('true');
    await new Promise((r) => dead.on('exit', r));
    const owners = join('/run/loom/net', 'daemons');
    const deadTag = randomBytes(4).toString('hex');
    const liveTag = randomBytes(4).toString('hex');
    const deadNs = `loom-${deadTag}-${randomBytes(6).toString('hex')}`;
    const liveNs = `loom-${liveTag}-${randomBytes(6).toString('hex')}`;
    writeFileSync(join(owners, deadTag), String(dead.pid));
    writeFileSync(join(owners, liveTag), String(process.pid));
    execFileSync('ip', ['netns', 'add', deadNs]);
    execFileSync('ip', ['netns', 'add', liveNs]);
    try {
      const other = await openNetworkProviders({ workerNet: 'bridge', stateRoot: join(dir, 'other'), poolSize: 0 });
      await other.close();
      expect(existsSync(join(NETNS_DIR, deadNs))).toBe(false);
      expect(existsSync(join(owners, deadTag))).toBe(false);
      expect(existsSync(join(NETNS_DIR, liveNs))).toBe(true);
    } finally {
      for (const n of [deadNs, liveNs]) if (existsSync(join(NETNS_DIR, n))) execFileSync('ip', ['netns', 'del', n]);
      rmSync(join(owners, deadTag), { force: true });
      rmSync(join(owners, liveTag), { force: true });
    }
  });

  it('per-step cost: a pooled namespace adds little over host networking', async () => {
    const hostNet = await openNetworkProviders({ workerNet: 'host', stateRoot: state });
    const hostEx = new RuncExecutor({ stateRoot: join(dir, 'hostnet'), network: hostNet, hostArch: 'amd64' });
    await hostEx.init();
    const r = rootfs();
    const once = async (e: RuncExecutor) => {
      const t0 = performance.now();
      const res = await runCollect(e, { rootfs: r, mounts: [], process: proc(['true']) });
      expect(res.error).toBeNull();
      return performance.now() - t0;
    };
    await once(ex);
    await once(hostEx);
    // Interleaved, so that load from elsewhere on the machine hits both alike.
    const b: number[] = [];
    const h: number[] = [];
    for (let i = 0; i < 11; i++) {
      b.push(await once(ex));
      h.push(await once(hostEx));
    }
    const median = (t: number[]) => t.sort((x, y) => x - y)[t.length >> 1]!;
    const bridgeMs = median(b);
    const hostMs = median(h);
    console.log(`trivial step, median of 11: bridge ${bridgeMs.toFixed(1)} ms, host ${hostMs.toFixed(1)} ms`);
    // Making a namespace per step costs ~35 ms idle (50+ under load): a pool that does not
    // serve steps shows up well above this margin, machine noise stays below it.
    expect(bridgeMs).toBeLessThan(hostMs + 30);
  }, 60_000);
});
