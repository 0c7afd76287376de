import type { ContentStore } from '../../content/store.js';
import type { Descriptor } from '../../content/oci.js';
import { parseBool } from '../../exporter/commit.js';
import { isCompression, type Compression, type LayerDescriptor } from '../../exporter/types.js';
import type { RegistryAccess } from '../../ops/source/registry-access.js';
import { formatReference, parseNormalizedNamed, withDefaultTag, type ImageReference } from '../../registry/reference.js';
import { SessionContentStore } from '../../session/content/session-store.js';
import { localCacheStoreId } from '../../session/content/store-id.js';
import type { BuildCacheHooks, JobContext, OpContext, Ref, StepContentKey } from '../../solver/types.js';
import { sha256, type Digest } from '../../util/digest.js';
import { errorMessage, InvalidArgumentError, LoomError, UnimplementedError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import { MediaType } from '../../util/media-types.js';
import type { Platform } from '../../util/platform.js';
import { inVertex, oneOff } from '../../util/progress.js';
import type { LayerStore } from '../layers.js';
import { checkChain, unpackChain, type ChainLayer, type UnpackChainDeps } from '../unpack-chain.js';
import { buildCacheConfig, buildInlineCache, CACHE_CONFIG_MEDIA_TYPE, chainFor, linksRecords, mergeCacheConfigs, recordOf, stepKeyOf, type CacheConfig, type ExportEntry } from './cache-config.js';
import { loadCacheManifest, loadRegistryCache, UNCOMPRESSED_ANNOTATION, type LoadedCache } from './sources.js';

const log = () => rootLog.child({ sub: 'remote-cache' });

export interface RemoteCacheDeps extends UnpackChainDeps {
  layers: LayerStore;
  content: ContentStore;
  registries: RegistryAccess;
  defaultPlatform: Platform;
}

/** A cache import or export as the client sends it (CacheOptionsEntry). */
export interface CacheEntry {
  Type: string;
  Attrs: Record<string, string>;
}

/**
 * The cache imports a frontend's options name, as upstream's Dockerfile frontend reads them:
 * `cache-imports` (JSON of CacheOptionsEntry, what buildctl and buildx send beside the request's
 * own imports) and the older `cache-from` (comma-separated registry refs).
 */
export function frontendCacheImports(attrs: Record<string, string>): CacheEntry[] {
  const out: CacheEntry[] = [];
  const json = attrs['cache-imports'];
  if (json) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch (err) {
      throw new InvalidArgumentError(`failed to unmarshal cache-imports (${JSON.stringify(json)}): ${(err as Error).message}`);
    }
    if (parsed !== null && !Array.isArray(parsed)) throw new InvalidArgumentError(`failed to unmarshal cache-imports (${JSON.stringify(json)}): not a list`);
    for (const e of (parsed ?? []) as { Type?: unknown; Attrs?: unknown }[]) {
      const attrsOf = e?.Attrs && typeof e.Attrs === 'object' ? Object.fromEntries(Object.entries(e.Attrs).map(([k, v]) => [k, String(v)])) : {};
      out.push({ Type: typeof e?.Type === 'string' ? e.Type : '', Attrs: attrsOf });
    }
  }
  for (const ref of (attrs['cache-from'] ?? '').split(',')) if (ref) out.push({ Type: 'registry', Attrs: { ref } });
  return out;
}

/** `extra` entries that `have` lacks (same type and attributes), in order and each once. */
export function newCacheEntries(have: readonly CacheEntry[], extra: readonly CacheEntry[]): CacheEntry[] {
  const key = (e: CacheEntry) => JSON.stringify([e.Type, Object.entries(e.Attrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);
  const seen = new Set(have.map(key));
  return extra.filter((e) => {
    const k = key(e);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

type Mode = 'min' | 'max';

interface ExportSpec {
  type: 'registry' | 'local' | 'inline';
  mode: Mode;
  ref?: ImageReference;
  dest?: string;
  oci: boolean;
  insecure: boolean;
  ignoreError: boolean;
  compression: Compression;
  /** force-compression: also recompress layers that have a blob of another compression. */
  force: boolean;
  level?: number;
}

interface ImportSpec {
  type: 'registry' | 'local';
  /** What progress names it: the ref for a registry cache, as upstream. */
  id: string;
  ref?: ImageReference;
  src?: string;
  digest?: string;
  insecure: boolean;
}

const UNSUPPORTED = new Set(['gha', 's3', 'azblob']);

function parseRef(raw: string | undefined, what: string): ImageReference {
  if (!raw) throw new InvalidArgumentError(`${what} requires ref`);
  try {
    return withDefaultTag(parseNormalizedNamed(raw));
  } catch (err) {
    throw new InvalidArgumentError(`${what}: invalid ref ${JSON.stringify(raw)}: ${(err as Error).message}`, { cause: err });
  }
}

function parseExport(e: CacheEntry): ExportSpec {
  const a = e.Attrs;
  if (UNSUPPORTED.has(e.Type)) throw new UnimplementedError(`cache exporter ${e.Type} is not supported by loom; use registry, local or inline`);
  if (!['registry', 'local', 'inline'].includes(e.Type)) throw new InvalidArgumentError(`unknown cache exporter: ${JSON.stringify(e.Type)}`);
  const mode = a['mode'] ?? 'min';
  if (mode !== 'min' && mode !== 'max') throw new InvalidArgumentError(`invalid cache export mode ${JSON.stringify(mode)}: expected min or max`);
  const compression = a['compression'] ?? 'gzip';
  if (compression === 'estargz') throw new UnimplementedError(`cache export compression ${compression} is not supported by loom; use gzip, uncompressed or zstd`);
  if (!isCompression(compression)) throw new InvalidArgumentError(`invalid cache export compression ${JSON.stringify(compression)}`);
  const level = a['compression-level'];
  if (level !== undefined && !/^-?\d+$/.test(level)) throw new InvalidArgumentError(`non-int value ${level} specified for compression-level`);
  const spec: ExportSpec = {
    type: e.Type as ExportSpec['type'],
    mode,
    // Upstream's registry and local cache exporters default to OCI media types.
    oci: parseBool(a['oci-mediatypes'] ?? '', 'oci-mediatypes', true),
    insecure: parseBool(a['registry.insecure'] ?? '', 'registry.insecure', false),
    ignoreError: parseBool(a['ignore-error'] ?? '', 'ignore-error', false),
    compression,
    force: parseBool(a['force-compression'] ?? '', 'force-compression', false),
    level: level === undefined ? undefined : Number(level),
  };
  if (e.Type === 'registry') spec.ref = parseRef(a['ref'], 'registry cache exporter');
  if (e.Type === 'local') {
    if (!a['dest']) throw new InvalidArgumentError('local cache exporter requires dest');
    spec.dest = a['dest'];
  }
  if (e.Type === 'inline' && a['mode'] === 'max') {
    // As upstream: inline cache holds only what the image's own layers make.
    spec.mode = 'min';
  }
  return spec;
}

function parseImport(e: CacheEntry): ImportSpec {
  const a = e.Attrs;
  if (UNSUPPORTED.has(e.Type)) throw new UnimplementedError(`cache importer ${e.Type} is not supported by loom; use registry or local`);
  if (e.Type === 'registry') {
    const ref = parseRef(a['ref'], 'registry cache importer');
    return { type: 'registry', id: a['ref']!, ref, insecure: parseBool(a['registry.insecure'] ?? '', 'registry.insecure', false) };
  }
  if (e.Type === 'local') {
    // The client resolved index.json's tag to a digest (it owns the directory) and serves the blobs.
    const src = a['src'];
    if (!src) throw new InvalidArgumentError('local cache importer requires src');
    const digest = a['digest'];
    if (!digest) throw new InvalidArgumentError(`local cache importer: no digest for ${src} (the client found no tagged manifest in its index.json)`);
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new InvalidArgumentError(`local cache importer: invalid digest ${JSON.stringify(digest)}`);
    return { type: 'local', id: `local:${sha256(JSON.stringify(a)).slice(7, 19)}`, src, digest, insecure: false };
  }
  throw new InvalidArgumentError(`unknown cache importer: ${e.Type}`);
}

/**
 * A build's cache imports and exports. Imports load their manifests when the build starts (each
 * in a progress vertex, as upstream's "importing cache manifest from ..."); a cache that cannot
 * be loaded shows as that vertex's error and the build goes on without it. The solver asks
 * `imported()` for each step the local cache lacks. Every step output the build produced or took
 * from the cache is `record()`ed for the exports.
 */
export class BuildCache implements BuildCacheHooks {
  readonly #d: RemoteCacheDeps;
  readonly #exports: ExportSpec[];
  readonly #imports: ImportSpec[];
  #loads: Promise<LoadedCache | undefined>[] = [];
  readonly #materializing = new Map<string, Promise<Ref>>();
  readonly #records = new Map<string, { ref: Ref; at: Date }>();
  /** Step outputs whose keys the build computed (exported by key where their results are not). */
  readonly #known = new Set<string>();
  /** Per loaded import, its content keys by name (see importedContentKey). */
  readonly #importIndex = new WeakMap<LoadedCache, Map<string, string>>();

  readonly #exportsResult: boolean;

  private constructor(deps: RemoteCacheDeps, imports: ImportSpec[], exports: ExportSpec[], exportsResult: boolean) {
    this.#d = deps;
    this.#imports = imports;
    this.#exports = exports;
    this.#exportsResult = exportsResult;
  }

  /**
   * Checks the request's cache options (bad ones are the request's error); undefined when there
   * are none. `exportsResult`: the build has an exporter, which will read its result.
   */
  static fromRequest(deps: RemoteCacheDeps, opts: { imports: CacheEntry[]; exports: CacheEntry[] }, exportsResult: boolean): BuildCache | undefined {
    if (opts.imports.length === 0 && opts.exports.length === 0) return undefined;
    return new BuildCache(deps, opts.imports.map(parseImport), opts.exports.map(parseExport), exportsResult);
  }

  get wantsAll(): boolean {
    return this.#exports.some((e) => e.mode === 'max' && e.type !== 'inline');
  }

  get hasInline(): boolean {
    return this.#exports.some((e) => e.type === 'inline');
  }

  /** Starts loading every import's manifest. */
  start(job: JobContext): void {
    this.#loads = this.#imports.map((imp) =>
      inVertex(job.progress, { name: `importing cache manifest from ${imp.id}`, id: `${job.id}-cache-import-${imp.id}` }, () => this.#load(job, imp)).catch((err) => {
        log().debug({ cache: imp.id, err: errorMessage(err) }, 'cache import failed');
        return undefined;
      }),
    );
    for (const p of this.#loads) p.catch(() => {});
  }

  async #load(job: JobContext, imp: ImportSpec): Promise<LoadedCache | undefined> {
    if (imp.type === 'registry') {
      const ref = imp.ref!;
      const client = imp.insecure ? this.#d.registries.insecureFor(job, ref.domain) : this.#d.registries.forJob(job);
      const c = await loadRegistryCache(client, this.#d.content, ref, formatReference(ref), { platform: this.#d.defaultPlatform, signal: job.signal });
      if (!c) throw new LoomError('NOT_FOUND', `${formatReference(ref)}: not found`);
      return c;
    }
    const store = new SessionContentStore({ caller: await job.session(), storeId: localCacheStoreId(imp.src!) });
    const what = `local cache ${imp.src}`;
    const bytes = await store.readAll({ digest: imp.digest! }, { signal: job.signal });
    return await loadCacheManifest(
      {
        what,
        read: async (desc) => ((await store.has(desc.digest, { signal: job.signal })) ? await store.readAll(desc, { signal: job.signal }) : undefined),
        fetch: async (desc) => {
          if (await this.#d.content.has(desc.digest)) return;
          await this.#d.content.writeStream(store.read(desc, { signal: job.signal }), { digest: desc.digest, size: desc.size }, { signal: job.signal });
        },
      },
      bytes,
    );
  }

  /** The build exports its cache to a registry or a directory (reading every output it used). */
  get exporting(): boolean {
    return this.#exports.some((e) => e.type !== 'inline');
  }

  get importing(): boolean {
    return this.#imports.length > 0;
  }

  get eager(): boolean {
    return this.#exportsResult || this.exporting;
  }

  async findImported(key: string): Promise<((ctx: OpContext, progressVertex?: string) => Promise<Ref>) | undefined> {
    for (const load of this.#loads) {
      const c = await load;
      if (!c) continue;
      const chain = chainFor(c.config, key, c.describe, c.what);
      if (!chain) continue;
      checkChain(chain, c.what);
      return (ctx, progressVertex) => {
        let p = this.#materializing.get(key);
        if (!p) {
          p = this.#materialize(c, chain, ctx, progressVertex ?? ctx.vertex.digest);
          this.#materializing.set(key, p);
          p.catch(() => this.#materializing.delete(key));
        }
        return p;
      };
    }
    return undefined;
  }

  #materialize(c: LoadedCache, chain: ChainLayer[], ctx: OpContext, vertex: string): Promise<Ref> {
    return unpackChain(this.#d, chain, {
      description: `imported from ${c.what}`,
      signal: ctx.signal,
      what: c.what,
      fetch: async (layer) => {
        const done = oneOff(ctx.progress, vertex, `importing layer ${layer.digest} from ${c.what}`);
        await c.fetch(layer);
        done({ current: layer.size, total: layer.size });
      },
      onExtract: (layer) => oneOff(ctx.progress, vertex, `extracting ${layer.digest}`),
    });
  }

  record(key: string, ref: Ref): void {
    this.#records.set(key, { ref, at: new Date() });
  }

  recordKey(key: string): void {
    this.#known.add(key);
  }

  /** The outputs an export names by key alone: every one the build knew, less those it exports with results (buildCacheConfig skips those). */
  #keysOnly(): string[] {
    return [...this.#records.keys(), ...this.#known];
  }

  async knowsImported(key: string): Promise<boolean> {
    for (const load of this.#loads) {
      const c = await load;
      if (c && recordOf(c.config, key)) return true;
    }
    return false;
  }

  /**
   * What the imported caches' content keys say of `name`: the step key a content key stands for,
   * "1" for a shape marker (see CacheConfig.contentKeys).
   */
  async importedContentKey(name: string): Promise<string | undefined> {
    for (const load of this.#loads) {
      const c = await load;
      if (!c?.config.contentKeys) continue;
      let index = this.#importIndex.get(c);
      if (!index) {
        index = new Map();
        for (const [key, ck] of Object.entries(c.config.contentKeys)) {
          index.set(ck.content, key);
          index.set(ck.shape, '1');
        }
        this.#importIndex.set(c, index);
      }
      const v = index.get(name);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** The content key the local cache holds for the step of output `key` (`<step key>#<index>`). */
  #localContentOf(key: string): StepContentKey | undefined {
    return this.#d.refs.contentKeys.of(stepKeyOf(key));
  }

  /** The same, else an imported cache's (a step taken from an import, exported again). */
  async #contentOf(key: string): Promise<StepContentKey | undefined> {
    const local = this.#localContentOf(key);
    if (local) return local;
    const step = stepKeyOf(key);
    for (const load of this.#loads) {
      const c = (await load)?.config.contentKeys?.[step];
      if (c) return c;
    }
    return undefined;
  }

  /**
   * Step outputs worth exporting for results `finals`: with mode=max every recorded one; with
   * mode=min those whose layers are a prefix of a result's chain (the result and the steps that
   * made its layers), which cost no blob beyond the result's own.
   */
  #entriesFor(finals: readonly Ref[], mode: Mode): { key: string; ref: Ref; at: Date }[] {
    const out: { key: string; ref: Ref; at: Date }[] = [];
    for (const [key, r] of this.#records) {
      if (mode === 'max' || finals.some((f) => isChainPrefix(r.ref, f))) out.push({ key, ...r });
    }
    return out;
  }

  async #layersOf(entries: { key: string; ref: Ref; at: Date }[], spec: { compression: Compression; force: boolean; level?: number; oci: boolean }, signal: AbortSignal): Promise<ExportEntry[]> {
    const out: ExportEntry[] = [];
    for (const e of entries) {
      const layers = await this.#d.layers.layers(e.ref, { compression: spec.compression, force: spec.force, level: spec.level, ociMediaTypes: spec.oci, signal });
      out.push({ key: e.key, layers, createdAt: e.at, content: await this.#contentOf(e.key) });
    }
    return out;
  }

  /**
   * The inline cache for an image of `ref` whose layers are `layers` (the image exporter's own
   * blobs): records of `ref` and of the steps that made its layers. Undefined without an inline
   * export or with nothing to say.
   */
  inlineConfig(ref: Ref, layers: readonly LayerDescriptor[]): Buffer | undefined {
    if (!this.hasInline) return undefined;
    const entries: ExportEntry[] = [];
    for (const e of this.#entriesFor([ref], 'min')) {
      const n = e.ref.chain.length;
      if (n > layers.length) continue;
      entries.push({ key: e.key, layers: layers.slice(0, n), createdAt: e.at, content: this.#localContentOf(e.key) });
    }
    return buildInlineCache(entries, this.#keysOnly());
  }

  /** Runs the registry and local exports for results `finals`; returns their response keys. */
  async export(job: JobContext, finals: readonly Ref[]): Promise<Record<string, string>> {
    const resp: Record<string, string> = {};
    for (const [i, spec] of this.#exports.entries()) {
      if (spec.type === 'inline') continue;
      try {
        const out = await inVertex(job.progress, { name: 'exporting content cache', id: `${job.id}-cache-${i}` }, async (vertex) => {
          const prepared = oneOff(job.progress, vertex, 'preparing build cache for export');
          const entries = await this.#layersOf(this.#entriesFor(finals, spec.mode), spec, job.signal);
          prepared();
          const built = buildCacheConfig(entries, this.#keysOnly());
          return spec.type === 'registry' ? await this.#exportRegistry(job, vertex, spec, built) : await this.#exportLocal(job, vertex, spec, built);
        });
        Object.assign(resp, out);
      } catch (err) {
        if (!spec.ignoreError) throw err;
        log().warn({ err: errorMessage(err) }, 'cache export failed (ignore-error=true)');
      }
    }
    return resp;
  }

  async #exportRegistry(job: JobContext, vertex: string, spec: ExportSpec, built: { config: CacheConfig; layers: ChainLayer[] }): Promise<Record<string, string>> {
    const ref = spec.ref!;
    const client = spec.insecure ? this.#d.registries.insecureFor(job, ref.domain) : this.#d.registries.forJob(job);
    try {
      // Keep what other builds exported to the same ref.
      let config = built.config;
      let kept: Descriptor[] = [];
      const prev = await loadRegistryCache(client, this.#d.content, ref, formatReference(ref), { platform: this.#d.defaultPlatform, signal: job.signal }).catch((err) => {
        // Not a cache (an image, say) or unreadable: it is replaced, and the user is told.
        job.progress.warn({ vertex, level: 1, short: `replacing ${formatReference(ref)}, which could not be read as a cache to add to: ${errorMessage(err)}`, detail: [] });
        return undefined;
      });
      if (prev && linksRecords(prev.config)) {
        job.progress.warn({ vertex, level: 1, short: `replacing ${formatReference(ref)}: another builder (BuildKit) made this cache, and loom cannot add to its linked records without breaking them`, detail: [] });
      } else if (prev && prev.config.records?.length) {
        const merged = mergeCacheConfigs(prev.config, built.config, formatReference(ref));
        config = merged.config;
        const ours = new Set(built.layers.map((l) => l.digest));
        kept = prev.descriptors.filter((d) => merged.blobs.has(d.digest) && !ours.has(d.digest));
      }
      for (const l of built.layers) {
        const done = oneOff(job.progress, vertex, `writing layer ${l.digest}`);
        await client.pushBlob(ref, { mediaType: l.mediaType, digest: l.digest as Digest, size: l.size }, { signal: job.signal });
        done();
      }
      const { cfgDesc, cfgBytes, list, listDesc } = await this.#manifest(config, built.layers, kept, spec.oci);
      const c = oneOff(job.progress, vertex, `writing config ${cfgDesc.digest}`);
      await this.#d.content.writeBlob(cfgBytes, { digest: cfgDesc.digest, size: cfgDesc.size });
      await client.pushBlob(ref, cfgDesc, { signal: job.signal });
      c();
      const m = oneOff(job.progress, vertex, `writing manifest ${listDesc.digest}`);
      await client.pushManifest(ref, list, listDesc.mediaType, { signal: job.signal });
      m();
      return {};
    } finally {
      if (spec.insecure) await client.close();
    }
  }

  async #exportLocal(job: JobContext, vertex: string, spec: ExportSpec, built: { config: CacheConfig; layers: ChainLayer[] }): Promise<Record<string, string>> {
    const store = new SessionContentStore({ caller: await job.session(), storeId: localCacheStoreId(spec.dest!) });
    for (const l of built.layers) {
      const done = oneOff(job.progress, vertex, `writing layer ${l.digest}`);
      const desc = { digest: l.digest, size: l.size, mediaType: l.mediaType };
      if (!(await store.has(l.digest, { signal: job.signal }))) {
        await store.write(desc, await this.#d.content.read(l.digest as Digest), { signal: job.signal });
      }
      done();
    }
    const { cfgDesc, cfgBytes, list, listDesc } = await this.#manifest(built.config, built.layers, [], spec.oci);
    const c = oneOff(job.progress, vertex, `writing config ${cfgDesc.digest}`);
    await store.write(cfgDesc, cfgBytes, { signal: job.signal });
    c();
    const m = oneOff(job.progress, vertex, `writing manifest ${listDesc.digest}`);
    await store.write(listDesc, list, { signal: job.signal });
    m();
    // The client tags it in its index.json (upstream's client reads this key).
    return { 'cache.manifest': JSON.stringify({ mediaType: listDesc.mediaType, digest: listDesc.digest, size: listDesc.size }) };
  }

  async #manifest(config: CacheConfig, layers: ChainLayer[], kept: Descriptor[], oci: boolean) {
    const cfgBytes = Buffer.from(JSON.stringify(config));
    const cfgDesc: Descriptor = { mediaType: CACHE_CONFIG_MEDIA_TYPE, digest: sha256(cfgBytes), size: cfgBytes.length };
    const manifests: Descriptor[] = [
      ...kept,
      ...layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest as Digest, size: l.size, annotations: { [UNCOMPRESSED_ANNOTATION]: l.diffId } })),
      cfgDesc,
    ];
    const mediaType = oci ? MediaType.OciIndex : MediaType.DockerManifestList;
    const list = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, manifests }));
    const listDesc: Descriptor = { mediaType, digest: sha256(list), size: list.length };
    return { cfgDesc, cfgBytes, list, listDesc };
  }
}

/** Whether `a`'s layers are the first layers of `b`'s chain (a step below `b` in one stage). */
function isChainPrefix(a: Ref, b: Ref): boolean {
  if (a.id === b.id) return true;
  if (a.chain.length === 0 || a.chain.length > b.chain.length) return false;
  return a.chain.every((p, i) => p.upper === b.chain[i]!.upper && p.lower === b.chain[i]!.lower);
}

