import { readFileSync } from 'node:fs';
import { parse } from 'smol-toml';
import { ramInBytes } from '../frontend/dockerfile/go-compat.js';
import { InvalidArgumentError } from '../util/errors.js';

/** A registry host's settings, as buildkitd.toml's `[registry."host"]`. */
export interface RegistryHostConfig {
  mirrors?: string[];
  http?: boolean;
  insecure?: boolean;
  ca?: string[];
  keypair?: { key: string; cert: string }[];
}

export interface GCPolicyConfig {
  all: boolean;
  /** Bytes kept at least: `reservedSpace` (BuildKit v0.17+), or the older `keepBytes`. */
  keepBytes: number;
  /** Bytes kept at most (`maxUsedSpace`); 0 = no cap. */
  maxUsedSpace?: number;
  /** Bytes the file system should keep free (`minFreeSpace`); 0 = none. */
  minFreeSpace?: number;
  /** Seconds. */
  keepDuration: number;
  filters: string[];
}

/**
 * A size in buildkitd.toml (upstream v0.17+'s DiskSpace): bytes, given as a number or as go-units
 * RAMInBytes text ("512MB" and "512MiB" are both 512 x 2^20), or a percentage of the size of the
 * file system holding the state directory ("10%").
 */
export type DiskSpace = { bytes: number } | { percent: number };

/** A `[[worker.oci.gcpolicy]]` as written; its sizes are resolved against the disk when the daemon starts. */
export interface GCPolicySpec {
  all: boolean;
  /** `reservedSpace`, else the older `keepBytes`. */
  reservedSpace?: DiskSpace;
  maxUsedSpace?: DiskSpace;
  minFreeSpace?: DiskSpace;
  keepDuration: number;
  filters: string[];
}

/** What buildkitd.toml can say that loom understands. Unknown keys are ignored, as upstream does. */
export interface DaemonConfig {
  debug?: boolean;
  root?: string;
  insecureEntitlements?: string[];
  grpc: {
    address?: string[];
    debugAddress?: string;
    uid?: number;
    gid?: number;
    tls: { cert?: string; key?: string; ca?: string };
  };
  worker: {
    oci: {
      enabled?: boolean;
      platforms?: string[];
      snapshotter?: string;
      labels?: Record<string, string>;
      gc?: boolean;
      /** The default policies' cap (v0.11; deprecated upstream for reservedSpace). */
      gckeepstorage?: DiskSpace;
      /** The default policies' limits (v0.17+); any of them gives upstream v0.17's default policies. */
      reservedSpace?: DiskSpace;
      maxUsedSpace?: DiskSpace;
      minFreeSpace?: DiskSpace;
      gcpolicy?: GCPolicySpec[];
      maxParallelism?: number;
      networkMode?: string;
    };
  };
  registry: Record<string, RegistryHostConfig>;
}

export function emptyConfig(): DaemonConfig {
  return { grpc: { tls: {} }, worker: { oci: {} }, registry: {} };
}

export function loadConfigFile(file: string): DaemonConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`failed to read config ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseConfig(text, file);
}

export function parseConfig(text: string, file = 'buildkitd.toml'): DaemonConfig {
  let raw: Record<string, unknown>;
  try {
    raw = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidArgumentError(`failed to parse config ${file}: ${(err as Error).message}`, { cause: err });
  }
  const where = (k: string) => `${file}: ${k}`;
  const cfg = emptyConfig();
  cfg.debug = opt(raw.debug, 'boolean', where('debug'));
  cfg.root = opt(raw.root, 'string', where('root'));
  cfg.insecureEntitlements = strList(raw['insecure-entitlements'], where('insecure-entitlements'));
  const grpc = table(raw.grpc, where('grpc'));
  cfg.grpc.address = strList(grpc.address, where('grpc.address'));
  cfg.grpc.debugAddress = opt(grpc.debugAddress, 'string', where('grpc.debugAddress'));
  cfg.grpc.uid = opt(grpc.uid, 'number', where('grpc.uid'));
  cfg.grpc.gid = opt(grpc.gid, 'number', where('grpc.gid'));
  const tls = table(grpc.tls, where('grpc.tls'));
  cfg.grpc.tls = {
    cert: opt(tls.cert, 'string', where('grpc.tls.cert')),
    key: opt(tls.key, 'string', where('grpc.tls.key')),
    ca: opt(tls.ca, 'string', where('grpc.tls.ca')),
  };
  const oci = table(table(raw.worker, where('worker')).oci, where('worker.oci'));
  cfg.worker.oci = {
    enabled: opt(oci.enabled, 'boolean', where('worker.oci.enabled')),
    platforms: strList(oci.platforms, where('worker.oci.platforms')),
    snapshotter: opt(oci.snapshotter, 'string', where('worker.oci.snapshotter')),
    labels: oci.labels === undefined ? undefined : (table(oci.labels, where('worker.oci.labels')) as Record<string, string>),
    gc: opt(oci.gc, 'boolean', where('worker.oci.gc')),
    gckeepstorage: diskSpace(oci.gckeepstorage, where('worker.oci.gckeepstorage')),
    reservedSpace: diskSpace(oci.reservedSpace, where('worker.oci.reservedSpace')),
    maxUsedSpace: diskSpace(oci.maxUsedSpace, where('worker.oci.maxUsedSpace')),
    minFreeSpace: diskSpace(oci.minFreeSpace, where('worker.oci.minFreeSpace')),
    maxParallelism: opt(oci['max-parallelism'], 'number', where('worker.oci.max-parallelism')),
    networkMode: opt(oci.networkMode, 'string', where('worker.oci.networkMode')),
    gcpolicy:
      oci.gcpolicy === undefined
        ? undefined
        : arr(oci.gcpolicy, where('worker.oci.gcpolicy')).map((p, i) => {
            const t = table(p, where(`worker.oci.gcpolicy[${i}]`));
            return {
              all: opt(t.all, 'boolean', where(`worker.oci.gcpolicy[${i}].all`)) ?? false,
              reservedSpace:
                t.reservedSpace !== undefined
                  ? diskSpace(t.reservedSpace, where(`worker.oci.gcpolicy[${i}].reservedSpace`))
                  : diskSpace(t.keepBytes, where(`worker.oci.gcpolicy[${i}].keepBytes`)),
              maxUsedSpace: diskSpace(t.maxUsedSpace, where(`worker.oci.gcpolicy[${i}].maxUsedSpace`)),
              minFreeSpace: diskSpace(t.minFreeSpace, where(`worker.oci.gcpolicy[${i}].minFreeSpace`)),
              keepDuration: durationSeconds(t.keepDuration, where(`worker.oci.gcpolicy[${i}].keepDuration`)),
              filters: strList(t.filters, where(`worker.oci.gcpolicy[${i}].filters`)) ?? [],
            };
          }),
  };
  const regs = table(raw.registry, where('registry'));
  for (const [host, v] of Object.entries(regs)) {
    const t = table(v, where(`registry."${host}"`));
    const w = (k: string) => where(`registry."${host}".${k}`);
    cfg.registry[host] = {
      mirrors: strList(t.mirrors, w('mirrors')),
      http: opt(t.http, 'boolean', w('http')),
      insecure: opt(t.insecure, 'boolean', w('insecure')),
      ca: strList(t.ca, w('ca')),
      keypair:
        t.keypair === undefined
          ? undefined
          : arr(t.keypair, w('keypair')).map((kp, i) => {
              const k = table(kp, w(`keypair[${i}]`));
              return { key: String(k.key ?? ''), cert: String(k.cert ?? '') };
            }),
    };
  }
  return cfg;
}

function table(v: unknown, where: string): Record<string, unknown> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError(`${where}: expected a table`);
  return v as Record<string, unknown>;
}

function arr(v: unknown, where: string): unknown[] {
  if (!Array.isArray(v)) throw new InvalidArgumentError(`${where}: expected an array`);
  return v;
}

function opt<T extends 'string' | 'boolean' | 'number'>(
  v: unknown,
  type: T,
  where: string,
): (T extends 'string' ? string : T extends 'boolean' ? boolean : number) | undefined {
  if (v === undefined) return undefined;
  if (type === 'number' && typeof v === 'bigint') return Number(v) as never;
  if (typeof v !== type) throw new InvalidArgumentError(`${where}: expected a ${type}, got ${JSON.stringify(v)}`);
  return v as never;
}

function strList(v: unknown, where: string): string[] | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'string') return [v];
  return arr(v, where).map((x, i) => {
    if (typeof x !== 'string') throw new InvalidArgumentError(`${where}[${i}]: expected a string`);
    return x;
  });
}

/** A size of buildkitd.toml as a DiskSpace (see there); undefined when the key is absent. */
export function diskSpace(v: unknown, where: string): DiskSpace | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'number' || typeof v === 'bigint') return { bytes: Number(v) };
  if (typeof v === 'string') {
    const text = v.replace(/^"(.*)"$/, '$1');
    const pct = /^([+-]?\d+)%$/.exec(text);
    if (pct) return { percent: Number(pct[1]) };
    try {
      return { bytes: ramInBytes(text) };
    } catch {
      // reported below
    }
  }
  throw new InvalidArgumentError(`${where}: invalid size ${JSON.stringify(v)}`);
}

/** A size in bytes for a file system of `total` bytes, as upstream's DiskSpace.AsBytes (2 GB when the size is unknown). */
export function diskSpaceBytes(d: DiskSpace | undefined, total: number): number {
  if (!d) return 0;
  if ('bytes' in d) return d.bytes;
  if (d.percent === 0) return 0;
  if (total === 0) return 2e9;
  // Whole GB, rounded up, of the share (upstream counts GiB and writes GB).
  return (Math.floor(Math.floor((total * d.percent) / 100) / 2 ** 30) + 1) * 1e9;
}

/** A policy with its sizes in bytes for a file system of `total` bytes. */
export function resolveGCPolicy(p: GCPolicySpec, total: number): GCPolicyConfig {
  return {
    all: p.all,
    keepBytes: diskSpaceBytes(p.reservedSpace, total),
    maxUsedSpace: diskSpaceBytes(p.maxUsedSpace, total),
    minFreeSpace: diskSpaceBytes(p.minFreeSpace, total),
    keepDuration: p.keepDuration,
    filters: p.filters,
  };
}

/** Integers are seconds (v0.11 configs); strings are Go durations ("48h", "1h30m"). */
export function durationSeconds(v: unknown, where: string): number {
  if (v === undefined) return 0;
  if (typeof v === 'number' || typeof v === 'bigint') return Number(v);
  if (typeof v === 'string') {
    const s = parseGoDuration(v);
    if (s !== undefined) return s;
  }
  throw new InvalidArgumentError(`${where}: invalid duration ${JSON.stringify(v)}`);
}

/** Parses a Go duration string into seconds; undefined if it is not one. */
export function parseGoDuration(v: string): number | undefined {
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/gy;
  const units: Record<string, number> = { ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600, d: 86400 };
  const str = v.trim();
  if (str === '0') return 0;
  let total = 0;
  let matched = 0;
  re.lastIndex = 0;
  for (let m = re.exec(str); m; m = re.exec(str)) {
    total += Number(m[1]) * units[m[2]!]!;
    matched = re.lastIndex;
  }
  return matched === str.length && matched > 0 ? total : undefined;
}
