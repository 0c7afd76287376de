/**
 * Image manifests and indexes as BuildKit v0.11's image writer makes them
 * (commitDistributionManifest, and the index of a multi-platform Commit): Docker schema2 or OCI
 * media types by the `oci-mediatypes` choice, layers converted to the same family, internal
 * annotations removed, JSON indented by two spaces, written to the content store.
 */
import type { ContentStore } from '../../content/store.js';
import { goJSONBytes } from '../../content/go-json.js';
import { descriptorJSON, indexJSON, manifestJSON, type Descriptor, type Index, type Manifest } from '../../content/oci.js';
import { sha256 } from '../../util/digest.js';
import { InvalidArgumentError, NotFoundError } from '../../util/errors.js';
import { convertLayerMediaType, isIndexType, isManifestType, MediaType } from '../../util/media-types.js';
import type { Platform } from '../../util/platform.js';

/** Layer annotations that are BuildKit/containerd bookkeeping, never exported. */
function exportedLayerAnnotations(a: Record<string, string> | undefined, oci: boolean): Record<string, string> | undefined {
  if (!a || !oci) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(a)) {
    if (k === 'containerd.io/uncompressed' || k === 'buildkit/createdat') continue;
    if (k.startsWith('containerd.io/distribution.source.')) continue;
    out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

export interface ManifestOptions {
  /** The image config bytes (from buildImageConfig). */
  config: Uint8Array;
  /** Layer blobs, base first, as they are in the store. */
  layers: Descriptor[];
  /** OCI media types (`oci-mediatypes=true`); else Docker schema2. */
  oci: boolean;
  /** Manifest annotations (`annotation-manifest.*`); a Docker manifest carries them too, as upstream's. */
  annotations?: Record<string, string>;
}

export interface BuiltManifest {
  manifest: Manifest;
  bytes: Buffer;
  descriptor: Descriptor;
  config: Descriptor;
}

/** The manifest for one platform, not yet stored. */
export function buildManifest(opts: ManifestOptions): BuiltManifest {
  const configDesc: Descriptor = {
    mediaType: opts.oci ? MediaType.OciConfig : MediaType.DockerConfig,
    digest: sha256(opts.config),
    size: opts.config.byteLength,
  };
  const layers = opts.layers.map((l) => {
    const d: Descriptor = { mediaType: convertLayerMediaType(l.mediaType, opts.oci), digest: l.digest, size: l.size };
    if (l.urls?.length) d.urls = [...l.urls];
    const ann = exportedLayerAnnotations(l.annotations, opts.oci);
    if (ann) d.annotations = ann;
    return d;
  });
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: opts.oci ? MediaType.OciManifest : MediaType.DockerManifest,
    config: configDesc,
    layers,
    ...(opts.annotations && Object.keys(opts.annotations).length ? { annotations: { ...opts.annotations } } : {}),
  };
  const json = manifestJSON(manifest);
  // As upstream's image writer (a Go list appended to from nothing): no layers is `"layers": null`.
  if (layers.length === 0) json.layers = null;
  const bytes = goJSONBytes(json, '  ');
  return {
    manifest,
    bytes,
    descriptor: { mediaType: manifest.mediaType!, digest: sha256(bytes), size: bytes.length },
    config: configDesc,
  };
}

/**
 * Builds and stores a manifest and its config. The layers must already be in the store (a missing one
 * is an error naming its digest). Returns the manifest descriptor, with `platform` when given (as an
 * index entry needs it) and `annotations` for the descriptor (`annotation-manifest-descriptor.*`).
 */
export async function writeManifest(
  store: ContentStore,
  opts: ManifestOptions & { platform?: Platform; descriptorAnnotations?: Record<string, string> },
): Promise<BuiltManifest> {
  for (const l of opts.layers) {
    if (!(await store.has(l.digest))) throw new NotFoundError(`layer ${l.digest}: not found in the content store`);
  }
  const built = buildManifest(opts);
  await store.writeBlob(opts.config, { digest: built.config.digest, size: built.config.size });
  await store.writeBlob(built.bytes, { digest: built.descriptor.digest, size: built.descriptor.size });
  const descriptor: Descriptor = { ...built.descriptor };
  if (opts.descriptorAnnotations && Object.keys(opts.descriptorAnnotations).length) descriptor.annotations = { ...opts.descriptorAnnotations };
  if (opts.platform) descriptor.platform = { ...opts.platform };
  return { ...built, descriptor };
}

export interface IndexOptions {
  /** Manifest descriptors, each with its platform, in the order the platforms were requested. */
  manifests: Descriptor[];
  oci: boolean;
  /** Index annotations (`annotation-index.*`); OCI only. */
  annotations?: Record<string, string>;
}

export interface BuiltIndex {
  index: Index;
  bytes: Buffer;
  descriptor: Descriptor;
}

/** A multi-platform index (OCI) or manifest list (Docker), not yet stored. */
export function buildIndex(opts: IndexOptions): BuiltIndex {
  if (!opts.oci && opts.annotations && Object.keys(opts.annotations).length) {
    throw new InvalidArgumentError('index annotations need OCI media types (oci-mediatypes=true)');
  }
  opts.manifests.forEach((m, i) => {
    if (!isManifestType(m.mediaType) && !isIndexType(m.mediaType)) {
      throw new InvalidArgumentError(`index entry ${i} (${m.digest}): media type ${m.mediaType} is not a manifest`);
    }
  });
  const index: Index = {
    schemaVersion: 2,
    mediaType: opts.oci ? MediaType.OciIndex : MediaType.DockerManifestList,
    manifests: opts.manifests.map((m) => descriptorJSON(m)),
    ...(opts.annotations && Object.keys(opts.annotations).length ? { annotations: { ...opts.annotations } } : {}),
  };
  const bytes = goJSONBytes(indexJSON(index), '  ');
  return { index, bytes, descriptor: { mediaType: index.mediaType!, digest: sha256(bytes), size: bytes.length } };
}

/** Builds and stores an index; every manifest it lists must be in the store. */
export async function writeIndex(
  store: ContentStore,
  opts: IndexOptions & { descriptorAnnotations?: Record<string, string> },
): Promise<BuiltIndex> {
  for (const m of opts.manifests) {
    if (!(await store.has(m.digest))) throw new NotFoundError(`manifest ${m.digest}: not found in the content store`);
  }
  const built = buildIndex(opts);
  await store.writeBlob(built.bytes, { digest: built.descriptor.digest, size: built.descriptor.size });
  const descriptor: Descriptor = { ...built.descriptor };
  if (opts.descriptorAnnotations && Object.keys(opts.descriptorAnnotations).length) descriptor.annotations = { ...opts.descriptorAnnotations };
  return { ...built, descriptor };
}
