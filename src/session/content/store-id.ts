/**
 * How the daemon names a content store the client serves on its session. The client serves one
 * containerd Content service for all of its stores; every call carries the chosen store's id in
 * this request header (upstream: session/content.GRPCHeaderID). Both ends import it from here.
 */
export const STORE_ID_HEADER = 'buildkit-attachable-store-id';

/**
 * Ids upstream uses:
 * - `local:<dir>`: `--export-cache/--import-cache type=local` (dest= / src= exactly as the user
 *   wrote it; the client does not normalise it, so both ends see the same string).
 * - `oci:<key>`: an OCI layout the client shares as a source (`--oci-layout key=dir`).
 * - `export`: the oci/docker exporters' directory output.
 */
export const LOCAL_STORE_PREFIX = 'local:';
export const OCI_STORE_PREFIX = 'oci:';
export const EXPORT_STORE_ID = 'export';

/** The id of a `type=local` cache store: `local:` + the dest/src attribute, unchanged. */
export function localCacheStoreId(dir: string): string {
  return LOCAL_STORE_PREFIX + dir;
}
