import type { ContentStore } from '../content/store.js';
import type { Descriptor } from '../content/oci.js';
import { InvalidArgumentError } from '../util/errors.js';
import type { Digest } from '../util/digest.js';
import { oneOff } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import { buildImageConfig } from './image/image-config.js';
import { writeIndex, writeManifest } from './image/manifest.js';
import type { Compression, ExportContext, ExportSource, LayerProvider } from './types.js';

/** The image options every image-producing exporter (image, oci, docker) reads, as upstream's. */
export interface ImageCommitOptions {
  name: string;
  compression: Compression;
  ociMediaTypes: boolean;
  /** Record the frontend's build info in the config (`buildinfo`, default true in v0.11). */
  buildInfo: boolean;
  /** Attributes the exporter did not recognize: kept as metadata, as upstream does. */
  rest: Record<string, string>;
}

export function parseBool(v: string, key: string, def = true): boolean {
  if (v === '') return def;
  if (/^(1|t|true)$/i.test(v)) return true;
  if (/^(0|f|false)$/i.test(v)) return false;
  throw new InvalidArgumentError(`non-bool value specified for ${key}: ${JSON.stringify(v)}`);
}

export function parseImageCommitOptions(attrs: Record<string, string>, defaults: { ociMediaTypes: boolean }): ImageCommitOptions {
  const o: ImageCommitOptions = { name: '', compression: 'gzip', ociMediaTypes: defaults.ociMediaTypes, buildInfo: true, rest: {} };
  for (const [k, v] of Object.entries(attrs)) {
    switch (k) {
      case 'name':
        o.name = v;
        break;
      case 'compression':
        if (v !== 'gzip' && v !== 'uncompressed' && v !== 'zstd' && v !== 'estargz') {
          throw new InvalidArgumentError(`unsupported compression type ${JSON.stringify(v)}`);
        }
        if (v === 'estargz') throw new InvalidArgumentError('compression=estargz is not supported by loom');
        o.compression = v;
        break;
      case 'compression-level':
        if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`non-int value ${v} specified for compression-level`);
        break;
      case 'force-compression':
        parseBool(v, k);
        break;
      case 'oci-mediatypes':
        o.ociMediaTypes = parseBool(v, k);
        break;
      case 'buildinfo':
        o.buildInfo = parseBool(v, k);
        break;
      case 'buildinfo-attrs':
      case 'attestation-inline':
        parseBool(v, k);
        break;
      default:
        o.rest[k] = v;
    }
  }
  return o;
}

export interface CommittedImage {
  /** The manifest, or the index of a multi-platform result. */
  root: Descriptor;
  /** The config digest (single-platform results only). */
  configDigest?: Digest;
  /** Every blob the image references (layers, configs, manifests). */
  blobs: Descriptor[];
}

/**
 * Writes the result as an image into the content store, as upstream's ImageWriter.Commit: layers
 * from each ref's chain ("exporting layers"), then config and manifest per platform, then an index
 * when the result has several platforms.
 */
export async function commitImage(
  deps: { content: ContentStore; layers: LayerProvider; defaultPlatform: Platform },
  ctx: ExportContext,
  src: ExportSource,
  opts: ImageCommitOptions,
): Promise<CommittedImage> {
  const bus = ctx.job.progress;
  const blobs: Descriptor[] = [];
  const one = async (ref: ExportSource['ref'], platform: Platform, configKey: string) => {
    const layersDone = oneOff(bus, ctx.vertex, 'exporting layers');
    const layers = ref ? await deps.layers.layers(ref, { compression: opts.compression, ociMediaTypes: opts.ociMediaTypes, signal: ctx.job.signal }) : [];
    layersDone();
    const buildInfoKey = configKey.replace('containerimage.config', 'containerimage.buildinfo');
    const configBytes = buildImageConfig({
      config: src.metadata[configKey],
      platform,
      layers: layers.map((l) => ({ diffId: l.diffId as Digest })),
      buildInfo: opts.buildInfo ? (src.metadata[buildInfoKey] ?? src.metadata['containerimage.buildinfo']) : undefined,
      inlineCache: ref ? src.inlineCache?.(ref, layers) : undefined,
    });
    const layerDescs: Descriptor[] = layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest as Digest, size: l.size }));
    const built = await writeManifest(deps.content, { config: configBytes, layers: layerDescs, oci: opts.ociMediaTypes, platform });
    const m = oneOff(bus, ctx.vertex, `exporting manifest ${built.descriptor.digest}`);
    m();
    const c = oneOff(bus, ctx.vertex, `exporting config ${built.config.digest}`);
    c();
    blobs.push(...layerDescs, built.config, { ...built.descriptor, platform: undefined });
    return built;
  };
  if (src.refs && src.refs.length > 0) {
    const manifests: Descriptor[] = [];
    for (const r of src.refs) {
      const p = { os: r.platform.OS, architecture: r.platform.Architecture, ...(r.platform.Variant ? { variant: r.platform.Variant } : {}) };
      const built = await one(r.ref, p, `containerimage.config/${r.id}`);
      manifests.push(built.descriptor);
    }
    const idx = await writeIndex(deps.content, { manifests, oci: opts.ociMediaTypes });
    const d = oneOff(bus, ctx.vertex, `exporting manifest list ${idx.descriptor.digest}`);
    d();
    blobs.push(idx.descriptor);
    return { root: idx.descriptor, blobs };
  }
  const built = await one(src.ref, deps.defaultPlatform, 'containerimage.config');
  const root: Descriptor = { ...built.descriptor };
  delete root.platform;
  return { root, configDigest: built.config.digest, blobs };
}

/** The exporter response keys upstream's image exporters return. */
export function imageResponse(img: CommittedImage, name?: string): Record<string, string> {
  const resp: Record<string, string> = {};
  if (name) resp['image.name'] = name;
  resp['containerimage.digest'] = img.root.digest;
  if (img.configDigest) resp['containerimage.config.digest'] = img.configDigest;
  resp['containerimage.descriptor'] = Buffer.from(JSON.stringify({ mediaType: img.root.mediaType, digest: img.root.digest, size: img.root.size })).toString('base64');
  return resp;
}
