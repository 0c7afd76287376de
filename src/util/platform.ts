/**
 * Platforms as OCI writes them (`{architecture, os, variant?}`), parsed, normalized and matched with
 * containerd's rules (platforms package, as vendored by BuildKit v0.11), so that `linux/arm64`,
 * `linux/aarch64` and `linux/arm64/v8` pick the same manifest from an index as upstream does.
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from './errors.js';

/** The OCI platform object, with its JSON field names (`os.version`, `os.features`). */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

const COMPONENT_RE = /^[A-Za-z0-9_-]+$/;

const KNOWN_OS = new Set([
  'aix', 'android', 'darwin', 'dragonfly', 'freebsd', 'hurd', 'illumos', 'ios', 'js', 'linux', 'nacl',
  'netbsd', 'openbsd', 'plan9', 'solaris', 'windows', 'zos',
]);

const KNOWN_ARCH = new Set([
  '386', 'amd64', 'amd64p32', 'arm', 'armbe', 'arm64', 'arm64be', 'ppc64', 'ppc64le', 'loong64', 'mips',
  'mipsle', 'mips64', 'mips64le', 'mips64p32', 'mips64p32le', 'ppc', 'riscv', 'riscv64', 's390', 's390x',
  'sparc', 'sparc64', 'wasm',
]);

function normalizeOS(os: string): string {
  if (os === '') return process.platform === 'win32' ? 'windows' : process.platform;
  const o = os.toLowerCase();
  return o === 'macos' ? 'darwin' : o;
}

/** containerd's normalizeArch: aliases to Go names, default variants dropped or filled in. */
function normalizeArch(arch: string, variant: string): [string, string] {
  let a = arch.toLowerCase();
  let v = variant.toLowerCase();
  switch (a) {
    case 'i386':
      a = '386';
      v = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      a = 'amd64';
      if (v === 'v1') v = '';
      break;
    case 'aarch64':
    case 'arm64':
      a = 'arm64';
      if (v === '8' || v === 'v8') v = '';
      break;
    case 'armhf':
      a = 'arm';
      v = 'v7';
      break;
    case 'armel':
      a = 'arm';
      v = 'v6';
      break;
    case 'arm':
      if (v === '' || v === '7') v = 'v7';
      else if (v === '5' || v === '6' || v === '8') v = 'v' + v;
      break;
  }
  return [a, v];
}

function make(os: string, architecture: string, variant: string, extra?: Platform): Platform {
  const p: Platform = { architecture, os };
  if (extra?.['os.version']) p['os.version'] = extra['os.version'];
  if (extra?.['os.features']?.length) p['os.features'] = [...extra['os.features']];
  if (variant) p.variant = variant;
  return p;
}

/**
 * Parses `os[/arch[/variant]]` (or a lone arch or os) as containerd's platforms.Parse: the result is
 * normalized except that an explicit `arm64/v8` keeps its variant (and `arm64/` with a third empty
 * part gets `v8`), as upstream keeps what the user wrote there.
 */
export function parsePlatform(spec: string): Platform {
  if (spec.includes('*')) throw new InvalidArgumentError(`invalid platform ${JSON.stringify(spec)}: wildcards not yet supported`);
  const parts = spec.split('/');
  for (const part of parts) {
    if (!COMPONENT_RE.test(part)) {
      throw new InvalidArgumentError(
        `invalid platform ${JSON.stringify(spec)}: ${JSON.stringify(part)} is an invalid component (must match ${COMPONENT_RE.source})`,
      );
    }
  }
  const host = defaultPlatform();
  switch (parts.length) {
    case 1: {
      const os = normalizeOS(parts[0]!);
      if (KNOWN_OS.has(os)) return make(os, host.architecture, host.variant ?? '');
      let [arch, variant] = normalizeArch(parts[0]!, '');
      if (arch === 'arm' && variant === 'v7') variant = '';
      if (KNOWN_ARCH.has(arch)) return make(host.os, arch, variant);
      throw new InvalidArgumentError(`invalid platform ${JSON.stringify(spec)}: unknown operating system or architecture`);
    }
    case 2: {
      let [arch, variant] = normalizeArch(parts[1]!, '');
      if (arch === 'arm' && variant === 'v7') variant = '';
      return make(normalizeOS(parts[0]!), arch, variant);
    }
    case 3: {
      let [arch, variant] = normalizeArch(parts[1]!, parts[2]!);
      if (arch === 'arm64' && variant === '') variant = 'v8';
      return make(normalizeOS(parts[0]!), arch, variant);
    }
    default:
      throw new InvalidArgumentError(`invalid platform ${JSON.stringify(spec)}: cannot parse platform specifier`);
  }
}

/** `os/arch[/variant]`, as containerd's platforms.Format ("unknown" when the os is empty). */
export function formatPlatform(p: Platform): string {
  if (!p.os) return 'unknown';
  return [p.os, p.architecture, p.variant].filter((s) => s).join('/');
}

/** containerd's platforms.Normalize: arm64/v8 becomes arm64, arm becomes arm/v7, aliases resolved. */
export function normalizePlatform(p: Platform): Platform {
  const [arch, variant] = normalizeArch(p.architecture ?? '', p.variant ?? '');
  return make(normalizeOS(p.os ?? ''), arch, variant, p);
}

/** Two platforms are the same after normalization (os, architecture, variant). */
export function platformsEqual(a: Platform, b: Platform): boolean {
  const x = normalizePlatform(a);
  const y = normalizePlatform(b);
  return x.os === y.os && x.architecture === y.architecture && (x.variant ?? '') === (y.variant ?? '');
}

const NODE_ARCH: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  loong64: 'loong64',
  mips: 'mips',
  mipsel: 'mipsle',
};

let hostPlatform: Platform | undefined;

/** The host's platform, normalized (BuildKit's worker platform: `platforms.Normalize(DefaultSpec())`). */
export function defaultPlatform(): Platform {
  if (!hostPlatform) {
    const arch = NODE_ARCH[process.arch] ?? process.arch;
    const variant = arch === 'arm' ? armVariant() : '';
    hostPlatform = normalizePlatform({ os: process.platform === 'win32' ? 'windows' : process.platform, architecture: arch, variant });
  }
  return { ...hostPlatform };
}

/** The ARM architecture level from /proc/cpuinfo, as containerd's cpuVariant; v7 when unreadable. */
function armVariant(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const m = /^CPU architecture\s*:\s*(\S+)/im.exec(info);
    const level = m?.[1];
    if (level === '5' || level === '6' || level === '7' || level === '8') return 'v' + level;
  } catch {
    // Not Linux or /proc not mounted: v7 is the common case for 32-bit ARM.
  }
  return 'v7';
}

/**
 * The platforms acceptable in place of `p`, best first (containerd's platformVector): amd64/v3 also
 * runs v2, v1 and 386; arm/v7 runs v6 and v5; arm64 runs arm/v8 down to arm/v5.
 */
function platformVector(p: Platform): Platform[] {
  const out: Platform[] = [p];
  switch (p.architecture) {
    case 'amd64': {
      const level = Number.parseInt((p.variant ?? '').replace(/^v/, ''), 10);
      if (Number.isInteger(level) && level > 1) {
        for (let l = level - 1; l >= 1; l--) out.push(make(p.os, 'amd64', 'v' + l, p));
      }
      out.push(make(p.os, '386', '', p));
      break;
    }
    case 'arm': {
      const level = Number.parseInt((p.variant ?? '').replace(/^v/, ''), 10);
      if (Number.isInteger(level) && level > 5) {
        for (let l = level - 1; l >= 5; l--) out.push(make(p.os, 'arm', 'v' + l, p));
      }
      break;
    }
    case 'arm64':
      out.push(...platformVector(make(p.os, 'arm', p.variant || 'v8', p)));
      break;
  }
  return out;
}

export interface PlatformMatcher {
  /** The platform this matcher was made for, normalized. */
  readonly platform: Platform;
  match(p: Platform): boolean;
  /** True when `a` is a better choice than `b` (for a stable sort, best first). */
  less(a: Platform, b: Platform): boolean;
}

/**
 * A matcher for `wanted` and the platforms that can run its binaries, preferring the closest
 * (containerd's platforms.Only). Matching normalizes both sides, so arm64 matches arm64/v8.
 */
export function platformMatcher(wanted: Platform): PlatformMatcher {
  const norm = normalizePlatform(wanted);
  const vector = platformVector(norm).map(normalizePlatform);
  const rank = (p: Platform): number => {
    const n = normalizePlatform(p);
    return vector.findIndex(
      (v) => v.os === n.os && v.architecture === n.architecture && (v.variant ?? '') === (n.variant ?? ''),
    );
  };
  return {
    platform: norm,
    match: (p) => rank(p) >= 0,
    less: (a, b) => {
      const ra = rank(a);
      const rb = rank(b);
      if (ra < 0) return false;
      return rb < 0 || ra < rb;
    },
  };
}

/** A matcher that accepts only `wanted` itself after normalization (containerd's OnlyStrict). */
export function strictPlatformMatcher(wanted: Platform): PlatformMatcher {
  const norm = normalizePlatform(wanted);
  return {
    platform: norm,
    match: (p) => platformsEqual(norm, p),
    less: (a, b) => platformsEqual(norm, a) && !platformsEqual(norm, b),
  };
}

/**
 * Picks the best entry of an index for `wanted`, as containerd's images.Manifest does: entries whose
 * platform matches, plus entries without a platform (sorted last), stably ordered best first.
 * Returns the ordered candidates; the caller takes the first and, when it has no platform, checks its
 * config. An empty array means no entry matches.
 */
export function orderByPlatform<T extends { platform?: Platform }>(entries: readonly T[], wanted: Platform): T[] {
  const m = platformMatcher(wanted);
  const candidates = entries.filter((e) => e.platform === undefined || m.match(e.platform));
  // Array.prototype.sort is stable; entries without a platform go last, as upstream's comparator does.
  return candidates.sort((a, b) => {
    if (a.platform === undefined) return b.platform === undefined ? 0 : 1;
    if (b.platform === undefined) return -1;
    if (m.less(a.platform, b.platform)) return -1;
    if (m.less(b.platform, a.platform)) return 1;
    return 0;
  });
}
