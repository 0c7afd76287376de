import type { ContentStore } from '../content/store.js';
import { descriptorJSON, type Descriptor } from '../content/oci.js';
import { goJSON } from '../content/go-json.js';
import { InvalidArgumentError, LoomError } from '../util/errors.js';
import type { Digest } from '../util/digest.js';
import { oneOff } from '../util/progress.js';
import { formatPlatform, normalizePlatform, parsePlatform, type Platform } from '../util/platform.js';
import { parseEpochAttr, SOURCE_DATE_EPOCH_ATTR } from './epoch.js';
import { buildImageConfig } from './image/image-config.js';
import { writeIndex, writeManifest } from './image/manifest.js';
import type { Compression, ExportContext, ExportSource, LayerProvider } from './types.js';

/** The image options every image-producing exporter (image, oci, docker) reads, as upstream's. */
export interface ImageCommitOptions {
  name: string;
  compression: Compression;
  /** force-compression: also recompress layers that have a blob of another compression. */
  forceCompression: boolean;
  /** compression-level, when given. */
  compressionLevel?: number;
  ociMediaTypes: boolean;
  /** Record the frontend's build info in the config (`buildinfo`, default true in v0.11). */
  buildInfo: boolean;
  /** SOURCE_DATE_EPOCH (`source-date-epoch`): the config's times are clamped to it. */
  epoch?: Date;
  /** `annotation*.KEY=VALUE` attributes, by the platform they name ('' for none). */
  annotations: Map<string, Annotations>;
  /** Attributes the exporter did not recognize: kept as metadata, as upstream does. */
  rest: Record<string, string>;
}

/** Where an annotation goes, as upstream's exporter annotation types. */
export interface Annotations {
  index: Record<string, string>;
  indexDescriptor: Record<string, string>;
  manifest: Record<string, string>;
  manifestDescriptor: Record<string, string>;
}

const emptyAnnotations = (): Annotations => ({ index: {}, indexDescriptor: {}, manifest: {}, manifestDescriptor: {} });

/** Upstream's annotation attribute: `annotation[-TYPE][[PLATFORM]].KEY`. */
const ANNOTATION_KEY = /^annotation(?:-([a-z-]+))?(?:\[([A-Za-z0-9_/-]+)\])?\.(\S+)$/;
const ANNOTATION_TYPES: Record<string, keyof Annotations> = {
  index: 'index',
  'index-descriptor': 'indexDescriptor',
  manifest: 'manifest',
  'manifest-descriptor': 'manifestDescriptor',
};

/** Adds one attribute to `group` when it is an annotation (false when it is not one). */
function parseAnnotation(group: Map<string, Annotations>, k: string, v: string): boolean {
  const m = ANNOTATION_KEY.exec(k);
  if (!m) return false;
  const type = ANNOTATION_TYPES[m[1] ?? 'manifest'];
  if (!type) throw new InvalidArgumentError(`unrecognized annotation type ${m[1]}`);
  let platform = '';
  if (m[2]) {
    try {
      platform = formatPlatform(normalizePlatform(parsePlatform(m[2])));
    } catch (err) {
      throw new InvalidArgumentError(`${k}: ${(err as Error).message}`, { cause: err });
    }
  }
  let a = group.get(platform);
  if (!a) group.set(platform, (a = emptyAnnotations()));
  a[type][m[3]!] = v;
  return true;
}

/**
 * The annotations for one platform's manifest (or, without one, the single manifest and the
 * index): index ones from every group, manifest ones from the unqualified group and the platform's.
 */
export function annotationsFor(group: Map<string, Annotations>, platform?: string): Annotations {
  const out = emptyAnnotations();
  for (const a of group.values()) {
    Object.assign(out.index, a.index);
    Object.assign(out.indexDescriptor, a.indexDescriptor);
  }
  for (const key of platform === undefined ? [''] : ['', platform]) {
    const a = group.get(key);
    if (!a) continue;
    Object.assign(out.manifest, a.manifest);
    Object.assign(out.manifestDescriptor, a.manifestDescriptor);
  }
  return out;
}

export function parseBool(v: string, key: string, def = true): boolean {
  if (v === '') return def;
  if (/^(1|t|true)$/i.test(v)) return true;
  if (/^(0|f|false)$/i.test(v)) return false;
  throw new InvalidArgumentError(`non-bool value specified for ${key}: ${JSON.stringify(v)}`);
}

export function parseImageCommitOptions(attrs: Record<string, string>, defaults: { ociMediaTypes: boolean }): ImageCommitOptions {
  const o: ImageCommitOptions = {
    name: '',
    compression: 'gzip',
    forceCompression: false,
    ociMediaTypes: defaults.ociMediaTypes,
    buildInfo: true,
    epoch: parseEpochAttr(attrs),
    annotations: new Map(),
    rest: {},
  };
  for (const [k, v] of Object.entries(attrs)) {
    if (parseAnnotation(o.annotations, k, v)) continue;
    switch (k) {
      case SOURCE_DATE_EPOCH_ATTR:
        break;
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
        o.compressionLevel = Number(v);
        break;
      case 'force-compression':
        o.forceCompression = parseBool(v, k);
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
  // As upstream's image writer: an annotation for a platform the result lacks is refused, and
  // annotations outside the manifest itself need OCI media types, which they turn on.
  const multi = src.refs !== undefined && src.refs.length > 0;
  let oci = opts.ociMediaTypes;
  for (const [platform, a] of opts.annotations) {
    if (platform !== '' && multi && !src.refs!.some((r) => formatPlatform(normalizePlatform(refPlatform(r.platform))) === platform)) {
      throw new InvalidArgumentError(`invalid annotation: no platform ${platform} found in source`);
    }
    if (Object.keys(a.index).length + Object.keys(a.indexDescriptor).length + Object.keys(a.manifestDescriptor).length > 0) oci = true;
  }
  const one = async (ref: ExportSource['ref'], platform: Platform, configKey: string, annotations: Annotations) => {
    const layersDone = oneOff(bus, ctx.vertex, 'exporting layers');
    const layers = ref ? await deps.layers.layers(ref, { compression: opts.compression, force: opts.forceCompression, level: opts.compressionLevel, ociMediaTypes: oci, signal: ctx.job.signal }) : [];
    layersDone();
    const buildInfoKey = configKey.replace('containerimage.config', 'containerimage.buildinfo');
    // Each layer's origin (when and by what step it was made) fills the history, as upstream's
    // image writer does from its layer refs.
    const origins = ref ? deps.layers.origins(ref) : [];
    const configBytes = buildImageConfig({
      config: src.metadata[configKey],
      platform,
      layers: layers.map((l, i) => ({ diffId: l.diffId as Digest, createdAt: origins[i]?.createdAt, description: origins[i]?.description })),
      epoch: opts.epoch,
      // Upstream records build info for a result with a filesystem only (none for FROM scratch with no files).
      buildInfo: opts.buildInfo && ref ? (src.metadata[buildInfoKey] ?? src.metadata['containerimage.buildinfo']) : undefined,
      inlineCache: ref ? src.inlineCache?.(ref, layers) : undefined,
    });
    const layerDescs: Descriptor[] = layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest as Digest, size: l.size }));
    const built = await writeManifest(deps.content, {
      config: configBytes,
      layers: layerDescs,
      oci,
      platform,
      annotations: annotations.manifest,
      descriptorAnnotations: annotations.manifestDescriptor,
    });
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
      const p = refPlatform(r.platform);
      const built = await one(r.ref, p, `containerimage.config/${r.id}`, annotationsFor(opts.annotations, formatPlatform(normalizePlatform(p))));
      manifests.push(built.descriptor);
    }
    const top = annotationsFor(opts.annotations);
    const idx = await writeIndex(deps.content, { manifests, oci, annotations: top.index, descriptorAnnotations: top.indexDescriptor });
    const d = oneOff(bus, ctx.vertex, `exporting manifest list ${idx.descriptor.digest}`);
    d();
    blobs.push(idx.descriptor);
    return { root: idx.descriptor, blobs };
  }
  // As upstream's image writer (exptypes.ParsePlatforms): the result's one platform is the one its
  // frontend listed (the Dockerfile frontend always lists it), else its config's, else the daemon's;
  // it names the config to use and goes on the image's descriptor (index.json, the exporter's
  // containerimage.descriptor). A listing of none leaves the descriptor without a platform.
  const listed = src.metadata['refs.platforms'] ? listedPlatforms(src.metadata) : [singlePlatform(src.metadata['containerimage.config'], deps.defaultPlatform)];
  mappedPlatforms(src, 'cannot export multiple platforms without multi-platform enabled');
  const configKey = listed.length === 1 && src.metadata[`containerimage.config/${listed[0]!.id}`] ? `containerimage.config/${listed[0]!.id}` : 'containerimage.config';
  const annotations = annotationsFor(opts.annotations);
  if (Object.keys(annotations.index).length + Object.keys(annotations.indexDescriptor).length > 0) {
    throw new InvalidArgumentError('index annotations not supported for single platform export');
  }
  const built = await one(src.ref, deps.defaultPlatform, configKey, annotations);
  const root: Descriptor = { ...built.descriptor };
  delete root.platform;
  if (listed.length === 1) root.platform = listed[0]!.platform;
  return { root, configDigest: built.config.digest, blobs };
}

function refPlatform(p: { OS: string; Architecture: string; Variant?: string }): Platform {
  return { os: p.OS, architecture: p.Architecture, ...(p.Variant ? { variant: p.Variant } : {}) };
}

/**
 * Fails as upstream's exporters do for a result that lists several platforms but holds no ref per
 * platform: a multi-platform build whose every platform's result is empty (a FROM scratch stage
 * without a filesystem change) leaves no map of refs, and `message` is the exporter's words.
 */
export function mappedPlatforms(src: ExportSource, message: string): void {
  if (!src.refs?.length && listedPlatforms(src.metadata).length > 1) throw new LoomError('UNKNOWN', message);
}

/**
 * The platforms a result's `refs.platforms` metadata lists
 * (`{"Platforms":[{"ID":"linux/arm64","Platform":{...}}]}`), in order; none when it is absent.
 */
export function listedPlatforms(md: Record<string, Uint8Array>): { id: string; platform: Platform }[] {
  const raw = md['refs.platforms'];
  if (!raw) return [];
  let listed: { ID?: unknown; Platform?: { os?: unknown; architecture?: unknown; variant?: unknown } }[];
  try {
    listed = (JSON.parse(Buffer.from(raw).toString()) as { Platforms?: typeof listed }).Platforms ?? [];
  } catch (err) {
    throw new InvalidArgumentError(`invalid refs.platforms metadata: ${(err as Error).message}`);
  }
  return listed.map((p) => {
    const pl = p.Platform;
    if (typeof p.ID !== 'string' || typeof pl?.os !== 'string' || typeof pl.architecture !== 'string') {
      throw new InvalidArgumentError(`invalid refs.platforms metadata: ${JSON.stringify(p)} needs an ID and a platform with os and architecture`);
    }
    return { id: p.ID, platform: { os: pl.os, architecture: pl.architecture, ...(typeof pl.variant === 'string' && pl.variant ? { variant: pl.variant } : {}) } };
  });
}

/** The platform of a result no frontend listed: its config's os and architecture, else the daemon's. */
function singlePlatform(config: Uint8Array | undefined, def: Platform): { id: string; platform: Platform } {
  let p: Platform = def;
  if (config?.length) {
    let c: { os?: unknown; architecture?: unknown; variant?: unknown };
    try {
      c = JSON.parse(Buffer.from(config).toString()) as typeof c;
    } catch (err) {
      throw new InvalidArgumentError(`invalid containerimage.config metadata: ${(err as Error).message}`);
    }
    if (typeof c.os === 'string' && c.os && typeof c.architecture === 'string' && c.architecture) {
      p = { os: c.os, architecture: c.architecture, ...(typeof c.variant === 'string' && c.variant ? { variant: c.variant } : {}) };
    }
  }
  p = normalizePlatform(p);
  return { id: formatPlatform(p), platform: p };
}

/** The exporter response keys upstream's image exporters return. */
export function imageResponse(img: CommittedImage, name?: string): Record<string, string> {
  const resp: Record<string, string> = {};
  if (name) resp['image.name'] = name;
  resp['containerimage.digest'] = img.root.digest;
  if (img.configDigest) resp['containerimage.config.digest'] = img.configDigest;
  // The descriptor as upstream marshals it: its annotations and platform included.
  resp['containerimage.descriptor'] = Buffer.from(goJSON(descriptorJSON(img.root))).toString('base64');
  return resp;
}
