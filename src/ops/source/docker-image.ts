import type { MetadataStore } from '../../cache/metadata.js';
import type { LayerStore } from '../../cache/layers.js';
import type { RefManager } from '../../cache/ref-manager.js';
import { unpackChain } from '../../cache/unpack-chain.js';
import type { ContentStore } from '../../content/store.js';
import type { Descriptor } from '../../content/oci.js';
import type { ResolvedImage } from '../../registry/client.js';
import { parseNormalizedNamed, formatReference } from '../../registry/reference.js';
import type { OpContext, OpImpl, Ref } from '../../solver/types.js';
import { InvalidArgumentError } from '../../util/errors.js';
import { byteStatus, oneOff } from '../../util/progress.js';
import { fromPbPlatform } from '../../util/pb-platform.js';
import type { RegistryAccess } from './registry-access.js';
import { sharedRun, type SharedRun } from '../../util/shared-run.js';

export interface ImageSourceDeps {
  registries: RegistryAccess;
  refs: RefManager;
  layers: LayerStore;
  content: ContentStore;
  metadata: MetadataStore;
}

/** KV namespace: a manifest (and platform) to the ref of its unpacked chain. */
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
  #unpacking: Promise<Ref> | undefined;
  #pin: string | undefined;

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

  /** The digest the reference resolved to (the index's for a multi-platform image), as upstream pins image sources. */
  pin(): string | undefined {
    return this.#ref().digest ?? this.#pin;
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
    this.#pin = img.rootDescriptor.digest;
    this.#prefetch(ctx, img);
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
    this.#unpacking ??= this.#unpack(ctx, img);
    const r = await this.#unpacking;
    // Its own ref object for this build (the unpacking may be another build's). An unpacking
    // started at key time was held by nobody until now: if a GC took it meanwhile, again.
    if (this.#d.metadata.getRef(r.id)) return [await this.#d.refs.get(r.id)];
    this.#unpacking = this.#unpack(ctx, img);
    return [await this.#d.refs.get((await this.#unpacking).id)];
  }

  /**
   * Starts pulling and unpacking the image as soon as its key is known, when it is not local:
   * the steps after a FROM usually wait on a slower key (the build context's transfer), and the
   * image is needed as soon as they run, so the two overlap (upstream's scheduler runs the FROM
   * and the steps after it while the context is still arriving). If nothing ends up needing the
   * image (every later step cached) the work is a pulled image in the cache, as `docker pull`
   * leaves; a failure is reported by run(), which awaits the same unpacking. Not when the build
   * imports a cache: a hit there (a whole stage built on a large SDK image, say) needs none of the
   * image, and a build that pulled it anyway would download more than upstream's.
   */
  #prefetch(ctx: OpContext, img: ResolvedImage): void {
    if (this.#unpacking || ctx.signal.aborted || ctx.cache?.importing) return;
    const known = this.#d.metadata.kvGet(NS_IMAGE, imageKey(img.digest, ctx));
    if (known && this.#d.metadata.getRef(known)) return;
    this.#unpacking = this.#unpack(ctx, img);
    this.#unpacking.catch(() => undefined);
  }

  /** One unpacking of an image (and platform) at a time in this daemon, shared by the builds that want it. */
  #unpack(ctx: OpContext, img: ResolvedImage): Promise<Ref> {
    let running = unpacking.get(this.#d);
    if (!running) unpacking.set(this.#d, (running = new Map()));
    return sharedRun(running, imageKey(img.digest, ctx), ctx.signal, () => this.#unpackNow(ctx, img));
  }

  async #unpackNow(ctx: OpContext, img: ResolvedImage): Promise<Ref> {
    const client = this.#d.registries.forJob(ctx);
    const diffIds = img.config.rootfs?.diff_ids ?? [];
    const layers = img.manifest.layers;
    if (diffIds.length !== layers.length) {
      throw new InvalidArgumentError(`image ${img.name}: config lists ${diffIds.length} diff ids for ${layers.length} layers`);
    }
    const vertex = ctx.vertex.digest;
    const r = await unpackChain(this.#d, layers.map((l, i) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size, diffId: diffIds[i]! })), {
      // Upstream's words: the reference with the digest it resolved to.
      description: `pulled from ${img.name.includes('@') ? img.name : `${img.name}@${img.rootDescriptor.digest}`}`,
      signal: ctx.signal,
      what: `image ${img.name}`,
      fetch: (layer) => this.#fetch(ctx, img, layers.find((l) => l.digest === layer.digest)!, client),
      onExtract: (layer) => oneOff(ctx.progress, vertex, `extracting ${layer.digest}`),
    });
    this.#d.metadata.kvPut(NS_IMAGE, imageKey(img.digest, ctx), r.id);
    return r;
  }

  /** Fetches one layer into the content store (verified by digest), with byte progress. */
  async #fetch(ctx: OpContext, img: ResolvedImage, layer: Descriptor, client: ReturnType<RegistryAccess['forJob']>): Promise<void> {
    const status = byteStatus(ctx.progress, ctx.vertex.digest, layer.digest, layer.size);
    await client.fetchBlob(img.ref, layer, {
      signal: ctx.signal,
      onProgress: (_d, current, total) => status.update(current, total),
    });
    status.done(layer.size);
  }
}

const unpacking = new WeakMap<object, Map<string, SharedRun<Ref>>>();

function imageKey(digest: string, ctx: OpContext): string {
  const p = ctx.platform;
  return `${digest}|${p.OS}/${p.Architecture}/${p.Variant}`;
}
