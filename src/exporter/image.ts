import type { ContentStore } from '../content/store.js';
import type { RegistryAccess } from '../ops/source/registry-access.js';
import { formatReference, parseNormalizedNamed, referenceName, withDefaultTag } from '../registry/reference.js';
import { InvalidArgumentError, LoomError } from '../util/errors.js';
import { oneOff } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import { commitImage, imageResponse, parseBool, parseImageCommitOptions, type ImageCommitOptions } from './commit.js';
import type { ExportContext, Exporter, ExporterInstance, ExportSource, LayerProvider } from './types.js';

export interface ImageExporterDeps {
  content: ContentStore;
  layers: LayerProvider;
  registries: RegistryAccess;
  defaultPlatform: Platform;
  /** Keeps blobs from GC while an export uses them. */
  leaseBlobs: (digests: string[]) => () => void;
}

/**
 * `type=image`: the result as an image in the content store, pushed to a registry with
 * `push=true` (`registry.insecure=true` for plain HTTP or unverified TLS). loom keeps no named
 * image store (upstream's OCI worker has none either), so naming matters only for a push.
 */
export class ImageExporter implements Exporter {
  readonly name = 'image';
  readonly #d: ImageExporterDeps;

  constructor(deps: ImageExporterDeps) {
    this.#d = deps;
  }

  resolve(attrs: Record<string, string>): ExporterInstance {
    const opts = parseImageCommitOptions(attrs, { ociMediaTypes: false });
    let push = false;
    let insecure = false;
    let pushByDigest = false;
    for (const [k, v] of Object.entries(opts.rest)) {
      switch (k) {
        case 'push':
          push = parseBool(v, k);
          break;
        case 'push-by-digest':
          pushByDigest = parseBool(v, k);
          break;
        case 'registry.insecure':
        case 'insecure':
          insecure = parseBool(v, k);
          break;
        case 'unpack':
        case 'store':
        case 'name-canonical':
        case 'dangling-name-prefix':
        case 'unsafe-internal-store-allow-incomplete':
          break;
      }
    }
    if (push && !opts.name) throw new InvalidArgumentError('push=true needs an image name: set name=<registry>/<repository>[:tag]');
    const names = opts.name ? opts.name.split(',').map((n) => n.trim()).filter(Boolean) : [];
    for (const n of names) {
      try {
        parseNormalizedNamed(n);
      } catch (err) {
        throw new InvalidArgumentError(`invalid image name ${JSON.stringify(n)}: ${(err as Error).message}`, { cause: err });
      }
    }
    return new ImageExporterInstance(this.#d, opts, { push, insecure, pushByDigest, names });
  }
}

class ImageExporterInstance implements ExporterInstance {
  readonly vertexName = 'exporting to image';

  constructor(
    private readonly d: ImageExporterDeps,
    private readonly opts: ImageCommitOptions,
    private readonly push: { push: boolean; insecure: boolean; pushByDigest: boolean; names: string[] },
  ) {}

  async export(ctx: ExportContext, src: ExportSource): Promise<Record<string, string>> {
    const img = await commitImage(this.d, ctx, src, this.opts);
    const release = this.d.leaseBlobs(img.blobs.map((b) => b.digest));
    try {
      if (this.push.push) {
        for (const name of this.push.names) {
          const ref = parseNormalizedNamed(name);
          const target = this.push.pushByDigest ? { domain: ref.domain, path: ref.path } : ref;
          const client = this.push.insecure ? this.d.registries.insecureFor(ctx.job, ref.domain) : this.d.registries.forJob(ctx.job);
          const layersDone = oneOff(ctx.job.progress, ctx.vertex, 'pushing layers');
          try {
            if (this.push.pushByDigest && (ref.tag !== undefined || ref.digest !== undefined)) throw new InvalidArgumentError(`can't push tagged ref ${formatReference(ref)} by digest`);
            await client.push(target, img.root, { signal: ctx.job.signal });
          } catch (err) {
            throw new LoomError(err instanceof LoomError ? err.code : 'UNAVAILABLE', `failed to push ${name}: ${(err as Error).message}`, { cause: err });
          } finally {
            if (this.push.insecure) await client.close();
          }
          layersDone();
          // Upstream's words: the name alone when pushed by digest, else name:tag (latest when
          // none) with the digest, as containerd is handed it.
          const shown = this.push.pushByDigest ? referenceName(ref) : `${formatReference({ ...withDefaultTag(ref), digest: undefined })}@${img.root.digest}`;
          const m = oneOff(ctx.job.progress, ctx.vertex, `pushing manifest for ${shown}`);
          m();
        }
      }
      return imageResponse(img, this.opts.name || undefined);
    } finally {
      release();
    }
  }
}
