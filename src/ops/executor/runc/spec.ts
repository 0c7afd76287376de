import path from 'node:path';
import { DEFAULT_HOSTNAME } from '../hosts.js';
import type { ExecUser } from '../user.js';
import type { ProcessSpec } from '../executor.js';
import { seccompProfile } from './seccomp.js';

/**
 * The OCI runtime spec of a step, shaped as upstream's (containerd's default Unix spec with
 * BuildKit's changes: no /run tmpfs, resolv.conf and hosts bound read-only, a read-only cgroup
 * mount, new privileges allowed, no rlimits unless asked). Pure: the runc executor feeds it.
 */

export interface SpecMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface SpecInput {
  id: string;
  rootfs: string;
  process: ProcessSpec;
  user: ExecUser;
  resolvConf: string;
  hosts: string;
  /** The step's own mounts, in the order they are to be made (parents first). */
  mounts: SpecMount[];
  /** Whether the process gets a network namespace of its own (false: the host's). */
  newNetns: boolean;
  /** With newNetns: join this existing namespace (the bridge network's) instead of a new empty one. */
  netnsPath?: string;
  hostArch: string;
  /** The daemon's own effective capabilities: what an insecure step gets (upstream's cap.Current). */
  effectiveCaps: readonly string[];
  /**
   * Join this user namespace (a pinned nsfs file; every id mapped to itself). sysfs can only be
   * mounted there with a network namespace of its own making, so with the host's network or the
   * bridge's namespace the host's /sys is bound instead, read-only unless insecure.
   */
  userns?: string;
}

const DEFAULT_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

/** Capability names by number (linux/capability.h). */
const ALL_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN',
  'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ',
  'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
];

/** Every id to itself (runc wants the map of a user namespace it joins). */
const IDENTITY_MAP = { containerID: 0, hostID: 0, size: 4294967295 };

const MASKED_PATHS = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** With `hostSys`, the host's /sys is bound where sysfs cannot be mounted (see SpecInput.userns). */
function baseMounts(insecure: boolean, hostSys: boolean): SpecMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    hostSys
      ? { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', ...(insecure ? [] : ['ro'])] }
      : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: insecure ? ['nosuid', 'noexec', 'nodev'] : ['nosuid', 'noexec', 'nodev', 'ro'] },
  ];
}

/** Devices an insecure step gets, as upstream's WithInsecureSpec. */
function insecureDevices(): { path: string; type: string; major: number; minor: number }[] {
  const d = [
    { path: '/dev/kmsg', type: 'c', major: 1, minor: 11 },
    { path: '/dev/cuse', type: 'c', major: 10, minor: 203 },
    { path: '/dev/fuse', type: 'c', major: 10, minor: 229 },
    { path: '/dev/kvm', type: 'c', major: 10, minor: 232 },
    { path: '/dev/net/tun', type: 'c', major: 10, minor: 200 },
    { path: '/dev/loop-control', type: 'c', major: 10, minor: 237 },
  ];
  for (let i = 0; i < 8; i++) d.push({ path: `/dev/loop${i}`, type: 'b', major: 7, minor: i });
  return d;
}

/** Capability names of a /proc/<pid>/status bitmap (`CapEff:\t000001ffffffffff`). */
export function capsFromBitmap(hex: string): string[] {
  const bits = BigInt('0x' + (hex.trim() || '0'));
  return ALL_CAPS.filter((_, n) => (bits >> BigInt(n)) & 1n);
}

export function cgroupsPath(id: string, parent: string): string {
  if (!parent) return `/buildkit/${id}`;
  if (parent.includes('.slice') && parent.endsWith(':')) return parent + id;
  return path.posix.join('/', parent, 'buildkit', id);
}

/** Later mounts on the same destination replace earlier ones, in the earlier one's place. */
export function dedupMounts(mounts: SpecMount[]): SpecMount[] {
  const out: SpecMount[] = [];
  const at = new Map<string, number>();
  for (const m of mounts) {
    const i = at.get(m.destination);
    if (i === undefined) {
      at.set(m.destination, out.length);
      out.push(m);
    } else {
      out[i] = m;
    }
  }
  return out;
}

export function generateSpec(i: SpecInput): Record<string, unknown> {
  const p = i.process;
  const insecure = p.security === 'insecure';
  const caps = insecure ? [...new Set([...DEFAULT_CAPS, ...i.effectiveCaps])] : DEFAULT_CAPS;
  const namespaces: { type: string; path?: string }[] = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  // From a user namespace of its own a step cannot join the bridge's network namespace (the
  // host's owns it): the shim starts runc in it and the container shares it (--netns).
  if (i.newNetns && !(i.userns && i.netnsPath)) namespaces.push(i.netnsPath ? { type: 'network', path: i.netnsPath } : { type: 'network' });
  if (i.userns) namespaces.push({ type: 'user', path: i.userns });

  const mounts: SpecMount[] = [
    ...baseMounts(insecure, !!i.userns && (!i.newNetns || !!i.netnsPath)),
    { destination: '/etc/resolv.conf', type: 'bind', source: i.resolvConf, options: ['nosuid', 'noexec', 'nodev', 'rbind', 'ro'] },
    { destination: '/etc/hosts', type: 'bind', source: i.hosts, options: ['nosuid', 'noexec', 'nodev', 'rbind', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: insecure ? ['nosuid', 'noexec', 'nodev'] : ['ro', 'nosuid', 'noexec', 'nodev'] },
    ...i.mounts,
  ];

  const process: Record<string, unknown> = {
    terminal: p.tty === true,
    user: { uid: i.user.uid, gid: i.user.gid, additionalGids: i.user.additionalGids },
    args: p.args,
    env: p.env,
    cwd: p.cwd,
    capabilities: {
      bounding: caps,
      effective: caps,
      permitted: caps,
      ...(insecure ? { inheritable: caps, ambient: caps } : {}),
    },
    noNewPrivileges: false,
  };
  if (p.tty) process.consoleSize = { height: p.size?.rows ?? 24, width: p.size?.cols ?? 80 };
  if (p.ulimits.length) {
    process.rlimits = p.ulimits.map((u) => ({ type: `RLIMIT_${u.name.toUpperCase()}`, hard: Number(u.hard), soft: Number(u.soft) }));
  }

  const linux: Record<string, unknown> = {
    cgroupsPath: cgroupsPath(i.id, p.cgroupParent),
    resources: {
      devices: insecure
        ? [
            { allow: true, type: 'c', access: 'rwm' },
            { allow: true, type: 'b', access: 'rwm' },
          ]
        : [{ allow: false, access: 'rwm' }],
    },
    namespaces,
    ...(i.userns ? { uidMappings: [IDENTITY_MAP], gidMappings: [IDENTITY_MAP] } : {}),
    maskedPaths: insecure ? [] : MASKED_PATHS,
    readonlyPaths: insecure ? [] : READONLY_PATHS,
  };
  if (insecure) linux.devices = insecureDevices();
  else linux.seccomp = seccompProfile(i.hostArch);

  return {
    ociVersion: '1.0.2-dev',
    process,
    root: { path: i.rootfs, readonly: p.readonlyRootfs },
    hostname: p.hostname || DEFAULT_HOSTNAME,
    mounts: dedupMounts(mounts),
    linux,
  };
}
