import type { ContentStore } from '../../content/store.js';
import { parseDescriptor, parseImageConfig, type Descriptor } from '../../content/oci.js';
import type { RegistryClient } from '../../registry/client.js';
import type { ImageReference } from '../../registry/reference.js';
import type { Digest } from '../../util/digest.js';
import { InvalidArgumentError, LoomError } from '../../util/errors.js';
import { isIndexType, isManifestType } from '../../util/media-types.js';
import type { Platform } from '../../util/platform.js';
import type { ChainLayer } from '../unpack-chain.js';
import { CACHE_CONFIG_MEDIA_TYPE, INLINE_CACHE_FIELD, mergeCacheConfigs, parseCacheConfig, parseInlineCache, type CacheConfig } from './cache-config.js';

/** A loaded cache: its config, what its manifest says of each blob, and how to fetch a blob. */
export interface LoadedCache {
  what: string;
  config: CacheConfig;
  describe(blob: string): Partial<ChainLayer> | undefined;
  /** Brings a blob into the local content store (verified). */
  fetch(layer: ChainLayer): Promise<void>;
  /** Descriptors of every blob the cache's manifest lists (kept when an export merges into it). */
  descriptors: Descriptor[];
}

/** Where a cache manifest list's blobs are read from. */
export interface BlobReader {
  what: string;
  /** The blob's bytes, verified; undefined when it does not exist. */
  read(desc: Descriptor): Promise<Buffer | undefined>;
  /** Copies the blob into the local content store, verified. */
  fetch(desc: Descriptor): Promise<void>;
}

/** The `containerd.io/uncompressed` annotation: a layer descriptor's diff id in a cache manifest list. */
export const UNCOMPRESSED_ANNOTATION = 'containerd.io/uncompressed';

/**
 * Reads a cache manifest list (its entries are the layer blobs plus one cache config), as
 * registry and local caches store it.
 */
export async function loadCacheManifest(reader: BlobReader, bytes: Buffer): Promise<LoadedCache> {
  const what = reader.what;
  let list: { mediaType?: string; manifests?: unknown[] };
  try {
    list = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`${what}: cache manifest is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(list.manifests)) throw new InvalidArgumentError(`${what}: not a cache manifest (no manifests list)`);
  const descs = list.manifests.map((d, i) => parseDescriptor(d, `${what}: manifests[${i}]`));
  const cfgDesc = descs.find((d) => d.mediaType === CACHE_CONFIG_MEDIA_TYPE);
  if (!cfgDesc) throw new InvalidArgumentError(`${what}: the manifest list has no ${CACHE_CONFIG_MEDIA_TYPE} entry: not a build cache`);
  const cfgBytes = await reader.read(cfgDesc);
  if (!cfgBytes) throw new InvalidArgumentError(`${what}: cache config ${cfgDesc.digest} is missing`);
  const config = parseCacheConfig(cfgBytes, `${what}: config ${cfgDesc.digest}`);
  const byDigest = new Map(descs.map((d) => [d.digest as string, d]));
  return {
    what,
    config,
    descriptors: descs.filter((d) => d.mediaType !== CACHE_CONFIG_MEDIA_TYPE),
    describe: (blob) => {
      const d = byDigest.get(blob);
      if (!d) return undefined;
      return { mediaType: d.mediaType, size: d.size, diffId: d.annotations?.[UNCOMPRESSED_ANNOTATION] };
    },
    fetch: async (layer) => {
      const d = byDigest.get(layer.digest) ?? { mediaType: layer.mediaType, digest: layer.digest as Digest, size: layer.size };
      await reader.fetch(d);
    },
  };
}

/**
 * A cache from a registry reference: a cache manifest list, or an image whose config carries an
 * inline cache (`moby.buildkit.cache.v0`) describing its own layers. Returns undefined when the
 * reference does not exist (the first export to a new cache ref).
 */
export async function loadRegistryCache(
  client: RegistryClient,
  store: ContentStore,
  ref: ImageReference,
  what: string,
  opts: { platform: Platform; signal?: AbortSignal },
): Promise<LoadedCache | undefined> {
  let root: { descriptor: Descriptor; bytes: Buffer };
  try {
    root = await client.fetchManifest(ref, { signal: opts.signal });
  } catch (err) {
    if (err instanceof LoomError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
  const reader: BlobReader = {
    what,
    read: async (desc) => {
      await client.fetchBlob(ref, desc, { signal: opts.signal });
      return await store.readAll(desc.digest);
    },
    fetch: async (desc) => {
      await client.fetchBlob(ref, desc, { signal: opts.signal });
    },
  };
  const mt = root.descriptor.mediaType;
  const parsed = JSON.parse(root.bytes.toString('utf8')) as { manifests?: { mediaType?: string }[] };
  if (isIndexType(mt) && parsed.manifests?.some((m) => m.mediaType === CACHE_CONFIG_MEDIA_TYPE)) {
    return await loadCacheManifest(reader, root.bytes);
  }
  if (isIndexType(mt) || isManifestType(mt)) return await loadInlineCache(client, ref, what, opts);
  throw new InvalidArgumentError(`${what}: ${mt} is neither a cache manifest list nor an image`);
}

/**
 * The inline cache of an image: of each platform's image when the reference is an index, their
 * records put together, as upstream's importer reads every manifest of the index (a
 * multi-platform build finds each platform's steps).
 */
async function loadInlineCache(
  client: RegistryClient,
  ref: ImageReference,
  what: string,
  opts: { platform: Platform; signal?: AbortSignal },
): Promise<LoadedCache> {
  const first = await client.resolve(ref, { platform: opts.platform, signal: opts.signal });
  const images = [first];
  for (const d of first.index?.manifests ?? []) {
    if (d.digest === first.digest || !d.platform || d.platform.os === 'unknown' || !isManifestType(d.mediaType)) continue;
    // By its digest: the manifest alone, not the index again.
    images.push(await client.resolve({ domain: ref.domain, path: ref.path, digest: d.digest }, { signal: opts.signal }));
  }
  let config: CacheConfig | undefined;
  const byDigest = new Map<string, Partial<ChainLayer>>();
  const descriptors: Descriptor[] = [];
  for (const img of images) {
    const cfg = JSON.parse(img.configBytes.toString('utf8')) as Record<string, unknown>;
    parseImageConfig(img.configBytes, `${what}: image config`);
    const inline = cfg[INLINE_CACHE_FIELD];
    if (typeof inline !== 'string') continue;
    const one = parseInlineCache(Buffer.from(inline, 'base64'), img.manifest.layers, `${what}: inline cache of ${img.digest}`);
    config = config ? mergeCacheConfigs(config, one, what).config : one;
    const diffIds = img.config.rootfs?.diff_ids ?? [];
    img.manifest.layers.forEach((l, i) => {
      if (byDigest.has(l.digest)) return;
      byDigest.set(l.digest, { mediaType: l.mediaType, size: l.size, diffId: diffIds[i] });
      descriptors.push(l);
    });
  }
  if (!config) throw new InvalidArgumentError(`${what}: image ${first.digest} has no inline cache (build it with --export-cache type=inline)`);
  return {
    what,
    config,
    descriptors,
    describe: (blob) => byDigest.get(blob),
    fetch: async (layer) => {
      await client.fetchBlob(ref, { mediaType: layer.mediaType, digest: layer.digest as Digest, size: layer.size }, { signal: opts.signal });
    },
  };
}
