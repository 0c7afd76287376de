import { sha256 } from '../../util/digest.js';
import { InvalidArgumentError } from '../../util/errors.js';
import type { ChainLayer } from '../unpack-chain.js';

/**
 * The cache config blob of an exported cache, in the shape of upstream's
 * `application/vnd.buildkit.cacheconfig.v0` (layers with parent indexes, records with results
 * pointing at their top layer), so registries and tools see a BuildKit cache.
 *
 * Record digests are loom's: the digest of loom's cache key of a step output. loom looks a step up
 * by its key alone (its keys are computed top-down from the sources without running anything), so
 * records carry no input links. A BuildKit daemon reading this finds no record it can match, and
 * loom finds none in a BuildKit-made cache: neither misreads the other.
 */
export const CACHE_CONFIG_MEDIA_TYPE = 'application/vnd.buildkit.cacheconfig.v0';
/** Image config field holding an inline cache config (base64 of its JSON, as Go marshals []byte). */
export const INLINE_CACHE_FIELD = 'moby.buildkit.cache.v0';

export interface CacheLayer {
  blob: string;
  /** Index of the parent layer, -1 for a chain's first layer (Go omits 0, which then reads as 0). */
  parent?: number;
  annotations?: { mediaType?: string; diffID?: string; size?: number; createdAt?: string };
}

export interface CacheRecord {
  digest: string;
  /** The result: index of its top layer (its chain follows parents). */
  layers?: { layer: number; createdAt?: string }[];
}

export interface CacheConfig {
  layers?: CacheLayer[];
  records?: CacheRecord[];
}

/** The record digest of a solver cache key (`<key>#<output>`). */
export function recordDigest(key: string): string {
  return sha256(`loom.cache.v1 ${key}`);
}

/** A step output to export: its key and the blobs of its ref's chain. */
export interface ExportEntry {
  key: string;
  layers: readonly ChainLayer[];
  createdAt: Date;
}

/** Builds a config from entries, sharing layers between chains with a common prefix. */
export function buildCacheConfig(entries: readonly ExportEntry[]): { config: CacheConfig; layers: ChainLayer[] } {
  const layers: CacheLayer[] = [];
  const blobs: ChainLayer[] = [];
  const index = new Map<string, number>();
  const records: CacheRecord[] = [];
  const seen = new Set<string>();
  for (const e of entries) {
    // An empty chain (an empty tree) has no layer to point at: nothing worth sharing.
    if (e.layers.length === 0) continue;
    const digest = recordDigest(e.key);
    if (seen.has(digest)) continue;
    seen.add(digest);
    let parent = -1;
    for (const l of e.layers) {
      const id = `${parent} ${l.digest}`;
      let i = index.get(id);
      if (i === undefined) {
        i = layers.length;
        layers.push({ blob: l.digest, parent, annotations: { mediaType: l.mediaType, diffID: l.diffId, size: l.size } });
        blobs.push(l);
        index.set(id, i);
      }
      parent = i;
    }
    records.push({ digest, layers: [{ layer: parent, createdAt: e.createdAt.toISOString() }] });
  }
  return { config: { layers, records }, layers: dedupeBlobs(blobs) };
}

function dedupeBlobs(list: ChainLayer[]): ChainLayer[] {
  const m = new Map<string, ChainLayer>();
  for (const l of list) if (!m.has(l.digest)) m.set(l.digest, l);
  return [...m.values()];
}

/** Parses and checks a cache config; `what` names its source in errors. */
export function parseCacheConfig(bytes: Uint8Array, what: string): CacheConfig {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`${what}: cache config is not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError(`${what}: cache config is not a JSON object`);
  const c = v as CacheConfig;
  const layers = c.layers ?? [];
  const records = c.records ?? [];
  if (!Array.isArray(layers) || !Array.isArray(records)) throw new InvalidArgumentError(`${what}: cache config layers and records must be lists`);
  layers.forEach((l, i) => {
    if (typeof l?.blob !== 'string') throw new InvalidArgumentError(`${what}: cache layer ${i} has no blob digest`);
    const p = l.parent ?? 0;
    if (!Number.isInteger(p) || p < -1 || p >= layers.length || p === i) throw new InvalidArgumentError(`${what}: cache layer ${i} has an invalid parent ${p}`);
  });
  records.forEach((r, i) => {
    if (typeof r?.digest !== 'string') throw new InvalidArgumentError(`${what}: cache record ${i} has no digest`);
    for (const res of r.layers ?? []) {
      if (!Number.isInteger(res.layer) || res.layer < -1 || res.layer >= layers.length) {
        throw new InvalidArgumentError(`${what}: cache record ${r.digest} points at layer ${res.layer}, which the config does not have`);
      }
    }
  });
  return { layers, records };
}

/**
 * The layer chain of the record for `key`, bottom first, or undefined when the config has no
 * such record. `describe` supplies blob facts the config lacks (upstream's configs keep media
 * type and diff id in the manifest's descriptors).
 */
export function chainFor(
  config: CacheConfig,
  key: string,
  describe: (blob: string) => Partial<ChainLayer> | undefined,
  what: string,
): ChainLayer[] | undefined {
  const digest = recordDigest(key);
  const rec = config.records?.find((r) => r.digest === digest);
  const top = rec?.layers?.[0]?.layer;
  if (top === undefined || top < 0) return undefined;
  const layers = config.layers ?? [];
  const chain: ChainLayer[] = [];
  const visited = new Set<number>();
  for (let i = top; i >= 0; i = layers[i]!.parent ?? 0) {
    if (visited.has(i)) throw new InvalidArgumentError(`${what}: cache layers form a cycle at layer ${i}`);
    visited.add(i);
    const l = layers[i]!;
    const d = describe(l.blob) ?? {};
    const layer: ChainLayer = {
      digest: l.blob,
      mediaType: l.annotations?.mediaType ?? d.mediaType ?? '',
      diffId: l.annotations?.diffID ?? d.diffId ?? '',
      size: l.annotations?.size ?? d.size ?? -1,
    };
    if (!layer.mediaType || !layer.diffId || layer.size < 0) throw new InvalidArgumentError(`${what}: cache layer ${l.blob} lacks its media type, diff id or size`);
    chain.unshift(layer);
    if ((l.parent ?? 0) === -1) break;
  }
  return chain;
}

/**
 * Adds `add`'s records to `base` (a record of the same digest is replaced): an export keeps what
 * other builds put in the same cache instead of dropping it.
 */
export function mergeCacheConfigs(base: CacheConfig, add: CacheConfig, what: string): { config: CacheConfig; blobs: Set<string> } {
  const byDigest = new Map<string, { cfg: CacheConfig; rec: CacheRecord }>();
  for (const rec of base.records ?? []) byDigest.set(rec.digest, { cfg: base, rec });
  for (const rec of add.records ?? []) byDigest.set(rec.digest, { cfg: add, rec });
  const layers: CacheLayer[] = [];
  const index = new Map<string, number>();
  const records: CacheRecord[] = [];
  for (const { cfg, rec } of byDigest.values()) {
    const top = rec.layers?.[0]?.layer;
    if (top === undefined || top < 0) continue;
    // Walk the chain bottom-up and re-index it in the merged list.
    const src = cfg.layers ?? [];
    const chain: number[] = [];
    for (let i = top; i >= 0; i = src[i]!.parent ?? 0) {
      if (chain.includes(i)) throw new InvalidArgumentError(`${what}: cache layers form a cycle at layer ${i}`);
      chain.unshift(i);
      if ((src[i]!.parent ?? 0) === -1) break;
    }
    let parent = -1;
    for (const i of chain) {
      const l = src[i]!;
      const id = `${parent} ${l.blob}`;
      let j = index.get(id);
      if (j === undefined) {
        j = layers.length;
        layers.push({ ...l, parent });
        index.set(id, j);
      }
      parent = j;
    }
    records.push({ digest: rec.digest, layers: [{ ...rec.layers![0]!, layer: parent }] });
  }
  return { config: { layers, records }, blobs: new Set(layers.map((l) => l.blob)) };
}
