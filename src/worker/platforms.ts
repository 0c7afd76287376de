import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { defaultPlatform, formatPlatform, type Platform } from '../util/platform.js';

/** QEMU's names for the architectures BuildKit can emulate, with the OCI platform each runs. */
const EMULATORS: { qemu: string; platforms: Platform[] }[] = [
  { qemu: 'x86_64', platforms: [{ os: 'linux', architecture: 'amd64' }] },
  { qemu: 'aarch64', platforms: [{ os: 'linux', architecture: 'arm64' }] },
  { qemu: 'riscv64', platforms: [{ os: 'linux', architecture: 'riscv64' }] },
  { qemu: 'ppc64le', platforms: [{ os: 'linux', architecture: 'ppc64le' }] },
  { qemu: 's390x', platforms: [{ os: 'linux', architecture: 's390x' }] },
  { qemu: 'i386', platforms: [{ os: 'linux', architecture: '386' }] },
  { qemu: 'mips64el', platforms: [{ os: 'linux', architecture: 'mips64le' }] },
  { qemu: 'mips64', platforms: [{ os: 'linux', architecture: 'mips64' }] },
  {
    qemu: 'arm',
    platforms: [
      { os: 'linux', architecture: 'arm', variant: 'v7' },
      { os: 'linux', architecture: 'arm', variant: 'v6' },
    ],
  },
];

export interface EmulatorInfo {
  platform: Platform;
  /** A registered binfmt_misc handler runs the binaries with no help from loom. */
  binfmt: boolean;
  /** The static emulator loom mounts into the container when binfmt has no handler. */
  staticPath?: string;
}

/**
 * The platforms this host can run: the native one (and the 32-bit companion where the CPU runs it
 * natively), then each one with a binfmt_misc handler or a `qemu-<arch>-static` on PATH.
 */
export function detectPlatforms(): { native: Platform; emulated: EmulatorInfo[] } {
  const native = defaultPlatform();
  const emulated: EmulatorInfo[] = [];
  for (const e of EMULATORS) {
    if (e.platforms.some((p) => p.architecture === native.architecture)) continue;
    const binfmt = binfmtHandler(e.qemu);
    const staticPath = findOnPath(`qemu-${e.qemu}-static`) ?? findOnPath(`qemu-${e.qemu}`);
    if (!binfmt && !staticPath) continue;
    for (const p of e.platforms) emulated.push({ platform: p, binfmt, staticPath });
  }
  return { native, emulated };
}

function binfmtHandler(qemuArch: string): boolean {
  const f = `/proc/sys/fs/binfmt_misc/qemu-${qemuArch}`;
  try {
    return existsSync(f) && readFileSync(f, 'utf8').startsWith('enabled');
  } catch {
    return false;
  }
}

function findOnPath(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter)) {
    const p = join(dir, bin);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return undefined;
}

export function platformList(native: Platform, emulated: EmulatorInfo[]): Platform[] {
  const seen = new Set<string>();
  const out: Platform[] = [];
  for (const p of [native, ...emulated.map((e) => e.platform)]) {
    const k = formatPlatform(p);
    if (seen.has(k)) continue;
    seen.add(k);
    out.push(p);
  }
  return out;
}
