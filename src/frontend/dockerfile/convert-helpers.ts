/**
 * Value parsers the converter needs, with the rules and messages of the Go packages upstream
 * uses: EXPOSE port specs (docker/go-connections/nat), STOPSIGNAL names (moby/sys/signal), git
 * references in ADD (buildkit util/gitutil), and the history text of HEALTHCHECK (fmt `%q` of a
 * pointer to a struct).
 */
import { formatDuration, goQuoteRune, goQuoteSlice, goQuote } from './go-compat.js';
import { parseGitProtocol } from './llb-state.js';
import type { HealthConfig } from './instructions.js';
import { parsePlatform, type Platform } from '../../util/platform.js';

function parsePortNumber(s: string): number {
  if (!/^\d+$/.test(s)) throw new Error(`strconv.ParseUint: parsing ${goQuote(s)}: invalid syntax`);
  const n = Number(s);
  if (n > 65535) throw new Error(`strconv.ParseUint: parsing ${goQuote(s)}: value out of range`);
  return n;
}

function parsePortRange(ports: string): [number, number] {
  if (ports === '') throw new Error('Empty string specified for ports.');
  if (!ports.includes('-')) {
    const n = parsePortNumber(ports);
    return [n, n];
  }
  const parts = ports.split('-');
  const start = parsePortNumber(parts[0]!);
  const end = parsePortNumber(parts[1]!);
  if (end < start) throw new Error(`Invalid range specified for the Port: ${ports}`);
  return [start, end];
}

function isIP(s: string): boolean {
  if (/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(s)) return s.split('.').every((x) => Number(x) <= 255 && !(x.length > 1 && x.startsWith('0')));
  return /^[0-9a-fA-F:.]+$/.test(s) && s.includes(':');
}

/** nat.ParsePortSpecs: the exposed ports (`80/tcp`) of specs like `80`, `8000-8002/udp`, `127.0.0.1:80:80`. */
export function parsePortSpecs(specs: string[]): string[] {
  const out = new Set<string>();
  for (const raw of specs) {
    const parts = raw.split(':');
    const n = parts.length;
    let containerPort = parts[n - 1]!;
    let rawIP = '';
    let hostPort = '';
    if (n === 2) hostPort = parts[0]!;
    else if (n === 3) {
      rawIP = parts[0]!;
      hostPort = parts[1]!;
    } else if (n > 3) {
      rawIP = parts.slice(0, n - 2).join(':');
      hostPort = parts[n - 2]!;
    }
    let proto = '';
    {
      const pp = containerPort.split('/');
      if (containerPort.length === 0 || pp[0]!.length === 0) {
        proto = '';
        containerPort = '';
      } else if (pp.length === 1) proto = 'tcp';
      else if (pp[1]!.length === 0) {
        proto = 'tcp';
        containerPort = pp[0]!;
      } else {
        proto = pp[1]!;
        containerPort = pp[0]!;
      }
    }
    let ip = rawIP;
    if (ip.startsWith('[') && ip.endsWith(']')) ip = ip.slice(1, -1);
    if (ip !== '' && !isIP(ip)) throw new Error(`Invalid ip address: ${ip}`);
    if (containerPort === '') throw new Error(`No port specified: ${raw}<empty>`);
    let start: number;
    let end: number;
    try {
      [start, end] = parsePortRange(containerPort);
    } catch {
      throw new Error(`Invalid containerPort: ${containerPort}`);
    }
    if (hostPort.length > 0) {
      let hs: number;
      let he: number;
      try {
        [hs, he] = parsePortRange(hostPort);
      } catch {
        throw new Error(`Invalid hostPort: ${hostPort}`);
      }
      if (end - start !== he - hs && end !== start) {
        throw new Error(`Invalid ranges specified for container and host Ports: ${containerPort} and ${hostPort}`);
      }
    }
    const p = proto.toLowerCase();
    if (!['tcp', 'udp', 'sctp'].includes(p)) throw new Error(`Invalid proto: ${proto}`);
    for (let i = start; i <= end; i++) out.add(`${i}/${p}`);
  }
  return [...out];
}

const SIGNALS = new Set([
  'ABRT', 'ALRM', 'BUS', 'CHLD', 'CLD', 'CONT', 'FPE', 'HUP', 'ILL', 'INT', 'IO', 'IOT', 'KILL', 'PIPE', 'POLL', 'PROF', 'PWR',
  'QUIT', 'SEGV', 'STKFLT', 'STOP', 'SYS', 'TERM', 'TRAP', 'TSTP', 'TTIN', 'TTOU', 'URG', 'USR1', 'USR2', 'VTALRM', 'WINCH',
  'XCPU', 'XFSZ', 'RTMIN', 'RTMAX',
  ...Array.from({ length: 15 }, (_, i) => `RTMIN+${i + 1}`),
  ...Array.from({ length: 14 }, (_, i) => `RTMAX-${i + 1}`),
]);

/** signal.ParseSignal: a positive number or a Linux signal name with or without `SIG`. */
export function checkSignal(raw: string): void {
  if (/^[+-]?\d+$/.test(raw)) {
    const n = Number(raw);
    if (n === 0 || !Number.isSafeInteger(n)) throw new Error(`invalid signal: ${raw}`);
    return;
  }
  let name = raw.toUpperCase();
  if (name.startsWith('SIG')) name = name.slice(3);
  if (!SIGNALS.has(name)) throw new Error(`invalid signal: ${raw}`);
}

export interface GitRef {
  remote: string;
  commit: string;
  subDir: string;
  indistinguishableFromLocal: boolean;
}

/** gitutil.ParseGitRef: a git URL (`https://...x.git#ref:dir`, `git@host:x`, `git://`, `ssh://`), else undefined. */
export function parseGitRef(ref: string): GitRef | undefined {
  let local = false;
  if (ref.startsWith('github.com/')) local = true;
  else {
    const { protocol } = parseGitProtocol(ref);
    if (protocol === 'unknown') return undefined;
    if ((protocol === 'http' || protocol === 'https') && !/\.git(?:#.+)?$/.test(ref)) return undefined;
  }
  const hash = ref.indexOf('#');
  const remote = hash < 0 ? ref : ref.slice(0, hash);
  const fragment = hash < 0 ? '' : ref.slice(hash + 1);
  if (remote.length === 0) return undefined;
  const colon = fragment.indexOf(':');
  return {
    remote,
    commit: colon < 0 ? fragment : fragment.slice(0, colon),
    subDir: colon < 0 ? '' : fragment.slice(colon + 1),
    indistinguishableFromLocal: local,
  };
}

export function isHTTPSource(src: string): boolean {
  return src.startsWith('http://') || src.startsWith('https://');
}

/** fmt's `%q` of a *HealthConfig, as upstream writes HEALTHCHECK history. */
export function healthcheckHistory(h: HealthConfig): string {
  return `HEALTHCHECK &{${goQuoteSlice(h.test)} ${goQuote(formatDuration(h.interval))} ${goQuote(formatDuration(h.timeout))} ${goQuote(
    formatDuration(h.startPeriod),
  )} ${goQuoteRune(h.retries)}}`;
}

const PLATFORM_COMPONENT = /^[A-Za-z0-9_-]+$/;

/**
 * containerd's platforms.Parse with its error messages (`"x" is an invalid component of ...`);
 * the result is not normalized.
 */
export function parsePlatformSpec(spec: string): Platform {
  const bad = (m: string) => new Error(`${m}: invalid argument`);
  if (spec.includes('*')) throw bad(`${goQuote(spec)}: wildcards not yet supported`);
  const parts = spec.split('/');
  for (const part of parts) {
    if (!PLATFORM_COMPONENT.test(part)) {
      throw bad(`${goQuote(part)} is an invalid component of ${goQuote(spec)}: platform specifier component must match "^[A-Za-z0-9_-]+$"`);
    }
  }
  if (parts.length > 3) throw bad(`${goQuote(spec)}: cannot parse platform specifier`);
  try {
    return parsePlatform(spec);
  } catch {
    throw bad(`${goQuote(spec)}: unknown operating system or architecture`);
  }
}
