/**
 * Media types of image manifests, indexes, configs and layers, Docker schema2 and OCI. Registries and
 * archives hand us either family; every consumer accepts both and the exporters pick one by the
 * `oci-mediatypes` option, as upstream does.
 */

export const MediaType = {
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  DockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  /** Schema1 is recognised only to refuse it with a clear message. */
  DockerManifestSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerManifestSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',

  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OciLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  OciLayerNondistributableZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  OciLayout: 'application/vnd.oci.layout.header.v1+json',
  OciEmpty: 'application/vnd.oci.empty.v1+json',

  /** BuildKit's attestation manifests carry in-toto statements as layers. */
  InTotoLayer: 'application/vnd.in-toto+json',
} as const;

export type KnownMediaType = (typeof MediaType)[keyof typeof MediaType];

/** The Accept header a registry client sends for manifests: every type loom can read. */
export const MANIFEST_ACCEPT: readonly string[] = [
  MediaType.DockerManifest,
  MediaType.DockerManifestList,
  MediaType.OciManifest,
  MediaType.OciIndex,
];

export function isIndexType(mt: string): boolean {
  return mt === MediaType.OciIndex || mt === MediaType.DockerManifestList;
}

export function isManifestType(mt: string): boolean {
  return mt === MediaType.OciManifest || mt === MediaType.DockerManifest;
}

export function isConfigType(mt: string): boolean {
  return mt === MediaType.OciConfig || mt === MediaType.DockerConfig;
}

export function isSchema1Type(mt: string): boolean {
  return mt === MediaType.DockerManifestSchema1 || mt === MediaType.DockerManifestSchema1Signed;
}

export type LayerCompression = 'uncompressed' | 'gzip' | 'zstd';

const LAYER_TYPES: Record<string, { compression: LayerCompression; nondistributable: boolean; oci: boolean }> = {
  [MediaType.DockerLayer]: { compression: 'uncompressed', nondistributable: false, oci: false },
  [MediaType.DockerLayerGzip]: { compression: 'gzip', nondistributable: false, oci: false },
  [MediaType.DockerLayerZstd]: { compression: 'zstd', nondistributable: false, oci: false },
  [MediaType.DockerForeignLayerGzip]: { compression: 'gzip', nondistributable: true, oci: false },
  [MediaType.OciLayer]: { compression: 'uncompressed', nondistributable: false, oci: true },
  [MediaType.OciLayerGzip]: { compression: 'gzip', nondistributable: false, oci: true },
  [MediaType.OciLayerZstd]: { compression: 'zstd', nondistributable: false, oci: true },
  [MediaType.OciLayerNondistributable]: { compression: 'uncompressed', nondistributable: true, oci: true },
  [MediaType.OciLayerNondistributableGzip]: { compression: 'gzip', nondistributable: true, oci: true },
  [MediaType.OciLayerNondistributableZstd]: { compression: 'zstd', nondistributable: true, oci: true },
};

export function isLayerType(mt: string): boolean {
  return mt in LAYER_TYPES;
}

/** Foreign (Windows base) layers must not be pushed or archived: their URLs say where they live. */
export function isNondistributable(mt: string): boolean {
  return LAYER_TYPES[mt]?.nondistributable ?? false;
}

/** The compression a layer media type declares; undefined for a type that is not a layer. */
export function layerCompression(mt: string): LayerCompression | undefined {
  return LAYER_TYPES[mt]?.compression;
}

/**
 * The layer media type for a compression in the chosen family. Upstream converts every layer of an
 * exported image to the manifest's family (compression.ConvertAllLayerMediaTypes), so an OCI
 * manifest never lists Docker layer types and the reverse.
 */
export function layerMediaType(compression: LayerCompression, oci: boolean, nondistributable = false): string {
  if (oci) {
    if (nondistributable) {
      return compression === 'gzip'
        ? MediaType.OciLayerNondistributableGzip
        : compression === 'zstd'
          ? MediaType.OciLayerNondistributableZstd
          : MediaType.OciLayerNondistributable;
    }
    return compression === 'gzip' ? MediaType.OciLayerGzip : compression === 'zstd' ? MediaType.OciLayerZstd : MediaType.OciLayer;
  }
  if (nondistributable) return MediaType.DockerForeignLayerGzip;
  return compression === 'gzip'
    ? MediaType.DockerLayerGzip
    : compression === 'zstd'
      ? MediaType.DockerLayerZstd
      : MediaType.DockerLayer;
}

/** A layer type converted to the other family (or kept), keeping its compression. Non-layer types pass through. */
export function convertLayerMediaType(mt: string, oci: boolean): string {
  const info = LAYER_TYPES[mt];
  if (!info || info.oci === oci) return mt;
  return layerMediaType(info.compression, oci, info.nondistributable);
}
