import { sha256 } from '../../util/digest.js';
import { InvalidArgumentError } from '../../util/errors.js';
import type { StepContentKey } from '../../solver/types.js';
import type { ChainLayer } from '../unpack-chain.js';

/**
 * The cache config blob of an exported cache, in the shape of upstream's
 * `application/vnd.buildkit.cacheconfig.v0` (layers with parent indexes, records with results
 * pointing at their top layer), so registries and tools see a BuildKit cache.
 *
 * Record digests are loom's: the digest of loom's cache key of a step output. loom looks a step up
 * by its key alone (its keys are computed top-down from the sources without running anything), so
 * records carry no input links. A record may have no result (no `layers`): a step the exporting
 * build knew by key, whose result the export does not carry (see buildCacheConfig). A BuildKit
 * daemon reading this finds no record it can match, and loom finds none in a BuildKit-made cache:
 * neither misreads the other.
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
  /**
   * loom's own field (BuildKit ignores it): by step key, the step's content key and shape marker
   * (see Solver #byContent). With them a build that imports the cache finds a step whose input
   * was made again with the same content, as it would in the exporting daemon's own cache.
   */
  contentKeys?: Record<string, StepContentKey>;
}

/** The step key of a solver cache key of one output (`<step key>#<output>`). */
export function stepKeyOf(key: string): string {
  return key.replace(/#\d+$/, '');
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
  /** The step's content key and shape marker (see CacheConfig.contentKeys), when it has them. */
  content?: StepContentKey;
}

/**
 * Builds a config from entries, sharing layers between chains with a common prefix. `known` are
 * outputs exported by key alone (a record without a result, as upstream's mode=min keeps the steps
 * a result was made from): a build importing the cache finds that such a step's key matched, so a
 * step found under a later key needs nothing of it, and it shows CACHED.
 */
export function buildCacheConfig(entries: readonly ExportEntry[], known: Iterable<string> = []): { config: CacheConfig; layers: ChainLayer[] } {
  const table = new LayerTable();
  const blobs: ChainLayer[] = [];
  const { records, contentKeys } = collectRecords(entries, known, (e) => {
    let parent = -1;
    for (const l of e.layers) {
      parent = table.add(parent, { blob: l.digest, annotations: { mediaType: l.mediaType, diffID: l.diffId, size: l.size } });
    }
    blobs.push(...e.layers);
    return parent;
  });
  const config: CacheConfig = { layers: table.layers, records };
  if (Object.keys(contentKeys).length) config.contentKeys = contentKeys;
  return { config, layers: dedupeBlobs(blobs) };
}

/**
 * The records of `entries` (each output once; `top` gives the index of its result's top layer)
 * and then of `known` outputs not among them, by key alone; the entries' content keys by step.
 */
function collectRecords(
  entries: readonly ExportEntry[],
  known: Iterable<string>,
  top: (e: ExportEntry) => number,
): { records: CacheRecord[]; contentKeys: Record<string, StepContentKey> } {
  const records: CacheRecord[] = [];
  const contentKeys: Record<string, StepContentKey> = {};
  const seen = new Set<string>();
  for (const e of entries) {
    // An empty chain (an empty tree) has no layer to point at: nothing worth sharing.
    if (e.layers.length === 0) continue;
    if (e.content) contentKeys[stepKeyOf(e.key)] = { content: e.content.content, shape: e.content.shape };
    const digest = recordDigest(e.key);
    if (seen.has(digest)) continue;
    seen.add(digest);
    records.push({ digest, layers: [{ layer: top(e), createdAt: e.createdAt.toISOString() }] });
  }
  for (const key of known) {
    const digest = recordDigest(key);
    if (seen.has(digest)) continue;
    seen.add(digest);
    records.push({ digest });
  }
  return { records, contentKeys };
}

/** Where an inline cache keeps loom's content keys: a field of its first record, which BuildKit ignores. */
const INLINE_CONTENT_KEYS = 'loom.contentKeys';

/**
 * An inline cache (the image config's `moby.buildkit.cache.v0`) in upstream's shape: a JSON list
 * of records alone, each result naming the top one of the image's own layers by its index (the
 * result's chain is the image's layers up to there). `entries` must be chains of the image's first
 * layers; `known` are named by key alone (see buildCacheConfig). Undefined when no entry has a layer.
 */
export function buildInlineCache(entries: readonly ExportEntry[], known: Iterable<string> = []): Buffer | undefined {
  const { records, contentKeys } = collectRecords(entries, known, (e) => e.layers.length - 1);
  if (!records[0]?.layers) return undefined;
  const list: (CacheRecord & { [INLINE_CONTENT_KEYS]?: Record<string, StepContentKey> })[] = records;
  if (Object.keys(contentKeys).length) list[0]![INLINE_CONTENT_KEYS] = contentKeys;
  return Buffer.from(JSON.stringify(list));
}

/**
 * Reads an inline cache whose image has `layers` (bottom first): upstream's shape (a list of
 * records; see buildInlineCache), or the whole config object earlier loom versions wrote. Results
 * upstream chains from layers out of the image's order (`chains`) are left out.
 */
export function parseInlineCache(bytes: Uint8Array, layers: readonly { digest: string }[], what: string): CacheConfig {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`${what}: inline cache is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(v)) return parseCacheConfig(bytes, what);
  const records: CacheRecord[] = [];
  let contentKeys: Record<string, StepContentKey> | undefined;
  v.forEach((r: unknown, i) => {
    const rec = r as { digest?: unknown; layers?: unknown; [INLINE_CONTENT_KEYS]?: unknown };
    if (typeof rec?.digest !== 'string') throw new InvalidArgumentError(`${what}: inline cache record ${i} has no digest`);
    const results = Array.isArray(rec.layers) ? (rec.layers as { layer?: unknown; createdAt?: unknown }[]) : [];
    const top = results.find((x) => Number.isInteger(x?.layer) && (x.layer as number) >= 0 && (x.layer as number) < layers.length);
    records.push(top ? { digest: rec.digest, layers: [{ layer: top.layer as number, ...(typeof top.createdAt === 'string' ? { createdAt: top.createdAt } : {}) }] } : { digest: rec.digest });
    if (i === 0 && rec[INLINE_CONTENT_KEYS] !== undefined) contentKeys = checkedContentKeys(rec[INLINE_CONTENT_KEYS], what);
  });
  const config: CacheConfig = { layers: layers.map((l, i) => ({ blob: l.digest, parent: i - 1 })), records };
  if (contentKeys) config.contentKeys = contentKeys;
  return config;
}

function checkedContentKeys(v: unknown, what: string): Record<string, StepContentKey> {
  const ok = (x: unknown) => typeof x === 'object' && x !== null && typeof (x as StepContentKey).content === 'string' && typeof (x as StepContentKey).shape === 'string';
  if (typeof v !== 'object' || v === null || Array.isArray(v) || !Object.values(v).every(ok)) {
    throw new InvalidArgumentError(`${what}: cache config contentKeys must map step keys to their content key and shape`);
  }
  return v as Record<string, StepContentKey>;
}

/** Layers of a config being built: one entry per (parent, blob), so chains share their prefix. */
class LayerTable {
  readonly layers: CacheLayer[] = [];
  readonly #index = new Map<string, number>();

  /** The index of `layer` on top of the layer at `parent` (-1: none), added if new. */
  add(parent: number, layer: Omit<CacheLayer, 'parent'>): number {
    const id = `${parent} ${layer.blob}`;
    let i = this.#index.get(id);
    if (i === undefined) {
      i = this.layers.length;
      this.layers.push({ ...layer, parent });
      this.#index.set(id, i);
    }
    return i;
  }
}

/** The indexes of the chain ending at layer `top`, bottom first; a parent cycle is an error. */
function chainIndexes(layers: readonly CacheLayer[], top: number, what: string): number[] {
  const chain: number[] = [];
  for (let i = top; i >= 0; i = layers[i]!.parent ?? 0) {
    if (chain.includes(i)) throw new InvalidArgumentError(`${what}: cache layers form a cycle at layer ${i}`);
    chain.unshift(i);
    if ((layers[i]!.parent ?? 0) === -1) break;
  }
  return chain;
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
  if (c.contentKeys !== undefined) return { layers, records, contentKeys: checkedContentKeys(c.contentKeys, what) };
  return { layers, records };
}

/**
 * Whether a config's records link to other records (`inputs`), as BuildKit's own caches' do;
 * loom's never do. Such links index the record list, which a merge reorders: loom replaces such
 * a cache instead of merging into it, as upstream's export replaces what was there.
 */
export function linksRecords(config: CacheConfig): boolean {
  return (config.records ?? []).some((r) => {
    const inputs = (r as { inputs?: unknown }).inputs;
    return Array.isArray(inputs) && inputs.length > 0;
  });
}

const recordIndexes = new WeakMap<CacheConfig, Map<string, CacheRecord>>();

/** The config's record for step output `key`, with or without a result. */
export function recordOf(config: CacheConfig, key: string): CacheRecord | undefined {
  let index = recordIndexes.get(config);
  if (!index) {
    index = new Map();
    for (const r of config.records ?? []) if (!index.has(r.digest)) index.set(r.digest, r);
    recordIndexes.set(config, index);
  }
  return index.get(recordDigest(key));
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
  const rec = recordOf(config, key);
  const top = rec && resultOf(rec);
  if (top === undefined) return undefined;
  const layers = config.layers ?? [];
  return chainIndexes(layers, top, what).map((i) => {
    const l = layers[i]!;
    const d = describe(l.blob) ?? {};
    const layer: ChainLayer = {
      digest: l.blob,
      mediaType: l.annotations?.mediaType ?? d.mediaType ?? '',
      diffId: l.annotations?.diffID ?? d.diffId ?? '',
      size: l.annotations?.size ?? d.size ?? -1,
    };
    if (!layer.mediaType || !layer.diffId || layer.size < 0) throw new InvalidArgumentError(`${what}: cache layer ${l.blob} lacks its media type, diff id or size`);
    return layer;
  });
}

/** A record's result: the index of its top layer, undefined for a record kept by key alone. */
function resultOf(rec: CacheRecord): number | undefined {
  const top = rec.layers?.[0]?.layer;
  return top === undefined || top < 0 ? undefined : top;
}

/**
 * Adds `add`'s records to `base` (a record of the same digest is replaced, but a result is not
 * replaced by a key alone): an export keeps what other builds put in the same cache instead of
 * dropping it.
 */
export function mergeCacheConfigs(base: CacheConfig, add: CacheConfig, what: string): { config: CacheConfig; blobs: Set<string> } {
  const byDigest = new Map<string, { cfg: CacheConfig; rec: CacheRecord }>();
  for (const rec of base.records ?? []) byDigest.set(rec.digest, { cfg: base, rec });
  for (const rec of add.records ?? []) {
    const had = byDigest.get(rec.digest);
    if (had && resultOf(rec) === undefined && resultOf(had.rec) !== undefined) continue;
    byDigest.set(rec.digest, { cfg: add, rec });
  }
  const table = new LayerTable();
  const records: CacheRecord[] = [];
  for (const { cfg, rec } of byDigest.values()) {
    const top = resultOf(rec);
    if (top === undefined) {
      records.push({ digest: rec.digest });
      continue;
    }
    // The record's chain, re-indexed in the merged list.
    const src = cfg.layers ?? [];
    let parent = -1;
    for (const i of chainIndexes(src, top, what)) parent = table.add(parent, src[i]!);
    records.push({ digest: rec.digest, layers: [{ ...rec.layers![0]!, layer: parent }] });
  }
  const config: CacheConfig = { layers: table.layers, records };
  // Content keys of steps whose records the merged config no longer has go with them.
  const kept = new Set(records.map((r) => r.digest));
  const contentKeys: Record<string, StepContentKey> = {};
  for (const [key, c] of Object.entries({ ...base.contentKeys, ...add.contentKeys })) {
    if (kept.has(recordDigest(`${key}#0`))) contentKeys[key] = c;
  }
  if (Object.keys(contentKeys).length) config.contentKeys = contentKeys;
  return { config, blobs: new Set(table.layers.map((l) => l.blob)) };
}
