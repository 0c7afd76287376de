import type { Platform } from '../gen/buildkit/ops_pb.js';
import type { JobContext, Ref } from '../solver/types.js';

/**
 * A build's result as exporters receive it: one ref, or one per platform for a multi-platform
 * build, plus the frontend's metadata (image config JSON under `containerimage.config`, or
 * `containerimage.config/<platform id>` per platform).
 */
export interface ExportSource {
  ref?: Ref;
  /** Multi-platform results, keyed by platform id (`linux/arm64`), in the client's order. */
  refs?: { id: string; platform: Platform; ref: Ref }[];
  metadata: Record<string, Uint8Array>;
  /**
   * The inline cache config for an image of `ref` made of `layers` (an inline cache export was
   * asked for); undefined when there is none.
   */
  inlineCache?: (ref: Ref, layers: readonly LayerDescriptor[]) => Buffer | undefined;
}

/**
 * The directory a multi-platform result's platform goes to in the local and tar exporters, as
 * upstream's: the platform id with `/` as `_` (`linux/arm64` -> `linux_arm64`).
 */
export function platformDir(id: string): string {
  return id.replace(/\//g, '_');
}

/** One compressed layer of a ref's chain, its blob already in the content store. */
export interface LayerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar. */
  diffId: string;
}

export type Compression = 'gzip' | 'uncompressed' | 'zstd';

export function isCompression(c: string): c is Compression {
  return c === 'gzip' || c === 'uncompressed' || c === 'zstd';
}

export interface LayerOptions {
  compression: Compression;
  ociMediaTypes: boolean;
  /**
   * Upstream's force-compression. False: a layer that already has a blob of another compression
   * keeps it (new layers take `compression`). Undefined or true: every layer in `compression`.
   */
  force?: boolean;
  /** Upstream's compression-level (gzip's level; zstd's speed, see zstdLevel). */
  level?: number;
  signal?: AbortSignal;
}

/**
 * Turns a ref's layer chain into blobs (computed once per diff and compression, then reused).
 * Implemented in cache/layers.ts.
 */
export interface LayerProvider {
  layers(ref: Ref, opts: LayerOptions & { onLayer?: (d: LayerDescriptor) => void }): Promise<LayerDescriptor[]>;
  /**
   * Where each layer of the ref's chain came from, in chain order: when it was made and the step
   * that made it (`pulled from <image>@<digest>`, `mount / from exec ...`), as upstream's layer
   * refs carry them for the image history.
   */
  origins(ref: Ref): LayerOrigin[];
}

export interface LayerOrigin {
  createdAt?: Date;
  description: string;
}

export interface ExportContext {
  job: JobContext;
  /** The progress vertex the exporter reports under. */
  vertex: string;
  /**
   * The exporter's place in the request's list. Files it sends the client carry it
   * (buildkit-attachable-exporter-id), so a client with several outputs (buildctl v0.13 and
   * later) writes each where its output said; older clients ignore it.
   */
  exporterId?: number;
}

export interface ExporterInstance {
  /** The progress vertex name, as upstream's ("exporting to image"). */
  readonly vertexName: string;
  export(ctx: ExportContext, src: ExportSource): Promise<Record<string, string>>;
}

/** An exporter by name (`image`, `oci`, `docker`, `local`, `tar`). `resolve` validates attrs. */
export interface Exporter {
  readonly name: string;
  resolve(attrs: Record<string, string>): ExporterInstance;
}
