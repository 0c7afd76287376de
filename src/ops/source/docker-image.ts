import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { LayerPair } from '../../cache/metadata.js';
import type { MetadataStore } from '../../cache/metadata.js';
import type { LayerStore } from '../../cache/layers.js';
import type { RefManager } from '../../cache/ref-manager.js';
import type { ContentStore } from '../../content/store.js';
import type { Descriptor } from '../../content/oci.js';
import type { ResolvedImage } from '../../registry/client.js';
import { parseNormalizedNamed, formatReference } from '../../registry/reference.js';
import { applyLayerTar } from '../../snapshot/layer/apply-layer-tar.js';
import type { OpContext, OpImpl, Ref } from '../../solver/types.js';
import { sha256 } from '../../util/digest.js';
import { InvalidArgumentError, UnimplementedError } from '../../util/errors.js';
import { layerCompression } from '../../util/media-types.js';
import { oneOff } from '../../util/progress.js';
import { fromPbPlatform } from '../../util/pb-platform.js';
import type { RegistryAccess } from './registry-access.js';

export interface ImageSourceDeps {
  registries: RegistryAccess;
  refs: RefManager;
  layers: LayerStore;
  content: ContentStore;
  metadata: MetadataStore;
}

/** KV namespaces: a layer chain (OCI chain id) to the snapshot holding it; a manifest to its ref. */
const NS_CHAIN = 'image-chain';
const NS_IMAGE = 'image-ref';

/**
 * `docker-image://ref`: resolves the reference for the op's platform (the manifest digest is the
 * cache key, so a moved tag misses and a pinned digest hits), then unpacks each layer once into a
 * snapshot chain shared by every image with the same layers. The layer blobs are recorded as the
 * chain's layers so an export of the image pushes the very same blobs.
 */
export class ImageSourceOp implements OpImpl {
  readonly #d: ImageSourceDeps;
  readonly #identifier: string;
  readonly #attrs: Record<string, string>;
  #resolved: Promise<ResolvedImage> | undefined;

  constructor(deps: ImageSourceDeps, identifier: string, attrs: Record<string, string>) {
    this.#d = deps;
    this.#identifier = identifier;
    this.#attrs = attrs;
  }

  #ref() {
    const raw = this.#identifier.slice('docker-image://'.length);
    try {
      return parseNormalizedNamed(raw);
    } catch (err) {
      throw new InvalidArgumentError(`invalid image reference ${JSON.stringify(raw)}: ${(err as Error).message}`, { cause: err });
    }
  }

  #resolve(ctx: OpContext): Promise<ResolvedImage> {
    this.#resolved ??= (async () => {
      const ref = this.#ref();
      const name = formatReference(ref);
      const done = oneOff(ctx.progress, ctx.vertex.digest, `resolve ${name}`);
      const img = await this.#d.registries.forJob(ctx).resolve(ref, { platform: fromPbPlatform(ctx.platform), signal: ctx.signal });
      done();
      return img;
    })();
    return this.#resolved;
  }

  async cacheKey(ctx: OpContext): Promise<string> {
    const mode = this.#attrs['image.resolvemode'] ?? 'default';
    if (!['default', 'pull', 'local'].includes(mode)) throw new InvalidArgumentError(`invalid image.resolvemode ${JSON.stringify(mode)}`);
    const ref = this.#ref();
    // A digest-pinned image already unpacked needs no registry round trip.
    if (ref.digest && mode !== 'pull') {
      const known = this.#d.metadata.kvGet(NS_IMAGE, imageKey(ref.digest, ctx));
      if (known && this.#d.metadata.getRef(known)) return ref.digest;
    }
    const img = await this.#resolve(ctx);
    return img.digest;
  }

  async run(ctx: OpContext): Promise<Ref[]> {
    const ref = this.#ref();
    if (ref.digest) {
      const known = this.#d.metadata.kvGet(NS_IMAGE, imageKey(ref.digest, ctx));
      if (known && this.#d.metadata.getRef(known)) return [await this.#d.refs.get(known)];
    }
    const img = await this.#resolve(ctx);
    const known = this.#d.metadata.kvGet(NS_IMAGE, imageKey(img.digest, ctx));
    if (known && this.#d.metadata.getRef(known)) return [await this.#d.refs.get(known)];
    const client = this.#d.registries.forJob(ctx);
    const diffIds = img.config.rootfs?.diff_ids ?? [];
    const layers = img.manifest.layers;
    if (diffIds.length !== layers.length) {
      throw new InvalidArgumentError(`image ${img.name}: config lists ${diffIds.length} diff ids for ${layers.length} layers`);
    }
    const chain: LayerPair[] = [];
    let parent: string | null = null;
    let chainId = '';
    // Layer snapshots are unreferenced until the ref below names them: keep GC off them till then.
    const releases: (() => void)[] = [];
    try {
      for (let i = 0; i < layers.length; i++) {
        const layer = layers[i]!;
        const diffId = diffIds[i]!;
        chainId = i === 0 ? diffId : sha256(`${chainId} ${diffId}`);
        let snap = this.#d.metadata.kvGet(NS_CHAIN, chainId);
        if (!snap || !this.#d.metadata.hasSnapshot(snap)) {
          snap = await this.#unpack(ctx, img, layer, parent, client);
          this.#d.metadata.kvPut(NS_CHAIN, chainId, snap);
        }
        releases.push(this.#d.refs.protect([snap]));
        const pair = { lower: parent, upper: snap };
        const compression = layerCompression(layer.mediaType) ?? 'gzip';
        this.#d.layers.record(pair, { digest: layer.digest, size: layer.size, diffId, compression, mediaType: layer.mediaType });
        chain.push(pair);
        parent = snap;
      }
      if (!parent) {
        // An image without layers is an empty tree.
        const w = await this.#d.refs.prepare(null, { signal: ctx.signal });
        const r = await w.commit({ description: `pulled from ${img.name}@${img.digest}`, chain: [] });
        this.#d.metadata.kvPut(NS_IMAGE, imageKey(img.digest, ctx), r.id);
        return [r];
      }
      const r = await this.#d.refs.createRef({ snapshot: parent, parent: null, chain, description: `pulled from ${img.name}@${img.digest}` });
      this.#d.metadata.kvPut(NS_IMAGE, imageKey(img.digest, ctx), r.id);
      return [r];
    } finally {
      for (const release of releases) release();
    }
  }

  /** Fetches one layer (verified by digest) and applies it on top of `parent` in a new snapshot. */
  async #unpack(ctx: OpContext, img: ResolvedImage, layer: Descriptor, parent: string | null, client: ReturnType<RegistryAccess['forJob']>): Promise<string> {
    const id = layer.digest;
    const started = new Date();
    const vertex = ctx.vertex.digest;
    ctx.progress.status({ id, vertex, name: id, current: 0, total: layer.size, timestamp: started, started });
    let last = 0;
    await client.fetchBlob(img.ref, layer, {
      signal: ctx.signal,
      onProgress: (_d, current, total) => {
        const now = Date.now();
        if (now - last < 100 && current < total) return;
        last = now;
        ctx.progress.status({ id, vertex, name: id, current, total, timestamp: new Date(), started });
      },
    });
    const fetched = new Date();
    ctx.progress.status({ id, vertex, name: id, current: layer.size, total: layer.size, timestamp: fetched, started, completed: fetched });
    const extracted = oneOff(ctx.progress, vertex, `extracting ${layer.digest}`);
    const w = await this.#d.refs.prepare(null, { parentSnapshot: parent, signal: ctx.signal });
    let key: string;
    try {
      const input = decompress(createReadStream(this.#d.content.path(layer.digest)), layer.mediaType, img.name);
      await applyLayerTar(input, w.dir, { signal: ctx.signal });
      key = await w.commitSnapshot();
    } catch (err) {
      await w.discard();
      throw err;
    }
    extracted();
    return key;
  }
}

function imageKey(digest: string, ctx: OpContext): string {
  const p = ctx.platform;
  return `${digest}|${p.OS}/${p.Architecture}/${p.Variant}`;
}

function decompress(src: Readable, mediaType: string, image: string): Readable {
  const c = layerCompression(mediaType);
  if (c === 'uncompressed') return src;
  if (c === 'gzip' || c === undefined) {
    // pipeline() passes a read error of the blob on to the gunzip stream the extractor reads.
    const gz = createGunzip();
    pipeline(src, gz, () => {});
    return gz;
  }
  throw new UnimplementedError(`image ${image}: ${mediaType} layers (zstd) are not supported by loom yet`);
}

