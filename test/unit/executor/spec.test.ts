import { describe, expect, it } from 'vitest';
import { capsFromBitmap, cgroupsPath, dedupMounts, generateSpec, type SpecInput } from '../../../src/ops/executor/runc/spec.js';
import { goQuote } from '../../../src/ops/executor/executor.js';
import { filterResolvConf } from '../../../src/ops/executor/resolv-conf.js';
import { hostsContent, parseExtraHosts } from '../../../src/ops/executor/hosts.js';

const input = (over: Partial<SpecInput['process']> = {}, newNetns = false): SpecInput => ({
  id: 'loom-0123456789abcdef01234567',
  rootfs: '/state/snap/fs',
  process: {
    args: ['sh', '-c', 'true'],
    env: ['PATH=/bin'],
    cwd: '/work',
    user: '',
    hostname: '',
    extraHosts: [],
    ulimits: [],
    netMode: 'sandbox',
    security: 'sandbox',
    removeMountStubsRecursive: true,
    readonlyRootfs: false,
    cgroupParent: '',
    ...over,
  },
  user: { uid: 1000, gid: 1000, additionalGids: [1000, 10], home: '/home/app' },
  resolvConf: '/state/resolv.conf',
  hosts: '/state/hosts',
  mounts: [{ destination: '/cache', type: 'bind', source: '/state/cache/1', options: ['rbind'] }],
  newNetns,
  hostArch: 'amd64',
  effectiveCaps: capsFromBitmap('000001fffeffffff'),
});

describe('OCI spec of a step', () => {
  it('is upstream\'s sandbox: default caps, no /run, ro resolv.conf/hosts/cgroup, seccomp, masked paths', () => {
    const s = generateSpec(input()) as any;
    expect(s.process.capabilities.bounding).toHaveLength(14);
    expect(s.process.capabilities.bounding).not.toContain('CAP_SYS_ADMIN');
    expect(s.process.noNewPrivileges).toBe(false);
    expect(s.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [1000, 10] });
    expect(s.process.rlimits).toBeUndefined();
    expect(s.hostname).toBe('buildkitsandbox');
    const dests = s.mounts.map((m: any) => m.destination);
    expect(dests).toEqual(['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/etc/resolv.conf', '/etc/hosts', '/sys/fs/cgroup', '/cache']);
    expect(s.mounts.find((m: any) => m.destination === '/etc/hosts').options).toContain('ro');
    expect(s.linux.namespaces.map((n: any) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount']);
    expect(s.linux.cgroupsPath).toBe('/buildkit/loom-0123456789abcdef01234567');
    expect(s.linux.maskedPaths).toContain('/proc/kcore');
    expect(s.linux.seccomp.syscalls[0].names).toContain('keyctl');
  });

  it('gives `none` a network namespace of its own and `insecure` the daemon\'s capabilities without seccomp', () => {
    const s = generateSpec(input({ security: 'insecure', netMode: 'none', ulimits: [{ name: 'nofile', soft: 10n, hard: 20n }] }, true)) as any;
    expect(s.linux.namespaces.map((n: any) => n.type)).toContain('network');
    expect(s.process.capabilities.bounding).toContain('CAP_SYS_ADMIN');
    expect(s.process.capabilities.bounding).not.toContain('CAP_SYS_RESOURCE'); // not in the daemon's CapEff
    expect(s.linux.seccomp).toBeUndefined();
    expect(s.linux.maskedPaths).toEqual([]);
    expect(s.mounts.find((m: any) => m.destination === '/sys').options).not.toContain('ro');
    expect(s.process.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', soft: 10, hard: 20 }]);
  });

  it('places cgroups under a parent as upstream, and a later mount on the same path replaces the earlier', () => {
    expect(cgroupsPath('id', 'system.slice:')).toBe('system.slice:id');
    expect(cgroupsPath('id', 'my/parent')).toBe('/my/parent/buildkit/id');
    const d = dedupMounts([
      { destination: '/a', type: 'bind', source: '1', options: [] },
      { destination: '/b', type: 'bind', source: '2', options: [] },
      { destination: '/a', type: 'tmpfs', source: '3', options: [] },
    ]);
    expect(d.map((m) => m.source)).toEqual(['3', '2']);
  });
});

describe('upstream texts', () => {
  it('quotes like Go %q', () => {
    expect(goQuote('sh -c echo "hi"\n\t\\')).toBe('"sh -c echo \\"hi\\"\\n\\t\\\\"');
    expect(goQuote('\x01é')).toBe('"\\x01é"');
  });

  it('writes hosts files and filters localhost nameservers', () => {
    expect(hostsContent('', parseExtraHosts([{ Host: 'db.local', IP: '10.0.0.5' }]))).toBe(
      '127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.5\tdb.local\n',
    );
    expect(() => parseExtraHosts([{ Host: 'x', IP: 'not-an-ip' }])).toThrow('failed to parse IP not-an-ip');
    expect(filterResolvConf('nameserver 127.0.0.53\nsearch lan\n')).toBe(
      'search lan\n\nnameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844',
    );
    expect(filterResolvConf('nameserver 10.1.1.1\nnameserver 127.0.0.1\n')).toBe('nameserver 10.1.1.1\n');
  });
});

describe('OCI spec of a step in a user namespace of its own (QEMU with its own binfmt_misc)', () => {
  const userns = '/state/bundles/loom-x/userns';
  const sys = (s: any) => s.mounts.find((m: { destination: string }) => m.destination === '/sys');
  const types = (s: any) => s.linux.namespaces.map((n: { type: string; path?: string }) => n.type + (n.path ? '=' + n.path : ''));

  it('joins the pinned namespace with every id mapped to itself', () => {
    const s = generateSpec({ ...input({}, true), newNetns: true, userns }) as any;
    expect(types(s)).toEqual(['pid', 'ipc', 'uts', 'mount', 'network', `user=${userns}`]);
    expect(s.linux.uidMappings).toEqual([{ containerID: 0, hostID: 0, size: 4294967295 }]);
    expect(s.linux.gidMappings).toEqual([{ containerID: 0, hostID: 0, size: 4294967295 }]);
    // A network namespace of its own making: sysfs can be mounted.
    expect(sys(s).type).toBe('sysfs');
    expect(generateSpec(input()) as any).not.toHaveProperty('linux.uidMappings');
  });

  it('names no network namespace it could not join and binds the host\'s /sys where it cannot mount sysfs', () => {
    const bridge = generateSpec({ ...input(), newNetns: true, netnsPath: '/run/netns/loom-1', userns }) as any;
    expect(types(bridge)).toEqual(['pid', 'ipc', 'uts', 'mount', `user=${userns}`]);
    expect(sys(bridge)).toEqual({ destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] });
    const host = generateSpec({ ...input({ security: 'insecure' }), userns }) as any;
    expect(types(host)).toEqual(['pid', 'ipc', 'uts', 'mount', `user=${userns}`]);
    expect(sys(host).options).toEqual(['rbind', 'nosuid', 'noexec', 'nodev']);
    // Without a user namespace the bridge's namespace is joined by path as before.
    expect(types(generateSpec({ ...input(), newNetns: true, netnsPath: '/run/netns/loom-1' }))).toEqual(['pid', 'ipc', 'uts', 'mount', 'network=/run/netns/loom-1']);
  });
});
