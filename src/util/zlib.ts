import { constants, createGunzip, createGzip, type Gunzip, type Gzip } from 'node:zlib';

/**
 * Output chunk size of loom's gzip streams. Node's default (16 KiB) makes every 16 KiB of output a
 * trip through the thread pool and a stream chunk: gzip of 32 MiB took 2.5-3.0 s that way on this
 * VM against 1.45-1.65 s with 256 KiB chunks (gzipSync: 1.5 s), and gunzip of 32 MiB 170-240 ms
 * against 56-66 ms. Larger chunks gain little more; each stream holds one such buffer.
 */
export const ZLIB_CHUNK = 256 * 1024;

/** A gzip stream at the default level, as upstream compresses layers, or at `level` (compression-level, clamped to gzip's 0-9). */
export function gzipStream(level?: number): Gzip {
  const l = level === undefined ? constants.Z_DEFAULT_COMPRESSION : Math.min(9, Math.max(0, level));
  return createGzip({ level: l, chunkSize: ZLIB_CHUNK });
}

export function gunzipStream(): Gunzip {
  return createGunzip({ chunkSize: ZLIB_CHUNK });
}
