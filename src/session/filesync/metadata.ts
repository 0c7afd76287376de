import type { CallMetadata } from '../types.js';

/**
 * Request metadata of the filesync calls. The daemon names the client directory and its filters in
 * the headers of `/moby.filesync.v1.FileSync/DiffCopy`; exporters describe their output in the
 * headers of `/moby.filesync.v1.FileSend/DiffCopy`. Header names are upstream's, unchanged.
 */

export const KEY_DIR_NAME = 'dir-name';
export const KEY_INCLUDE_PATTERNS = 'include-patterns';
export const KEY_EXCLUDE_PATTERNS = 'exclude-patterns';
export const KEY_FOLLOW_PATHS = 'followpaths';
/** v0.11: the client's own excludes (docker CLI's .dockerignore) give way to the daemon's. Dropped later upstream. */
export const KEY_OVERRIDE_EXCLUDES = 'override-excludes';
/** Prefix of the exporter response values sent along FileSend (`exporter-md-image.name`, ...). */
export const KEY_EXPORTER_META_PREFIX = 'exporter-md-';
/** Newer upstream: which of the client's exporters a FileSend stream is for (absent in v0.11). */
export const KEY_EXPORTER_ID = 'buildkit-attachable-exporter-id';
/** Newer upstream: the daemon can send one local export per platform (`1`). */
export const KEY_EXPORTER_MULTI_PLATFORM = 'buildkit-exporter-multi-platform';
/** Newer upstream: `<key>-encoded: 1` says the values of `<key>` are URL query escaped. */
export const ENCODED_SUFFIX = '-encoded';

export interface DiffCopyRequest {
  dirName: string;
  includePatterns?: string[];
  excludePatterns?: string[];
  followPaths?: string[];
  /** v0.11's override-excludes: let these excludes replace the directory's own. */
  overrideExcludes?: boolean;
}

/**
 * The headers the daemon sends when it calls the client's FileSync.DiffCopy. Lists that are
 * undefined are left out (upstream tells nil from empty the same way). Values with non-ASCII
 * characters cannot go in a gRPC header as they are: they are escaped and flagged `-encoded`, as
 * newer upstream does (v0.11 clients do not decode them; there is no better choice).
 */
export function diffCopyMetadata(req: DiffCopyRequest): CallMetadata {
  const md: CallMetadata = {};
  if (req.overrideExcludes) md[KEY_OVERRIDE_EXCLUDES] = ['true'];
  if (req.includePatterns !== undefined) md[KEY_INCLUDE_PATTERNS] = [...req.includePatterns];
  if (req.excludePatterns !== undefined) md[KEY_EXCLUDE_PATTERNS] = [...req.excludePatterns];
  if (req.followPaths !== undefined) md[KEY_FOLLOW_PATHS] = [...req.followPaths];
  md[KEY_DIR_NAME] = [req.dirName];
  return encodeMetadata(md);
}

/**
 * The serving side's reading of a DiffCopy request's headers (both v0.11 and newer senders).
 * Missing lists stay undefined; a missing dir name is `""`, as upstream.
 */
export function parseDiffCopyMetadata(md: CallMetadata): DiffCopyRequest {
  const d = decodeMetadata(md);
  const list = (k: string): string[] | undefined => (d[k] !== undefined ? [...d[k]!] : undefined);
  return {
    dirName: d[KEY_DIR_NAME]?.[0] ?? '',
    includePatterns: list(KEY_INCLUDE_PATTERNS),
    excludePatterns: list(KEY_EXCLUDE_PATTERNS),
    followPaths: list(KEY_FOLLOW_PATHS),
    overrideExcludes: d[KEY_OVERRIDE_EXCLUDES]?.[0] === 'true',
  };
}

/**
 * Headers for FileSend.DiffCopy carrying an exporter's response values (the oci and docker
 * exporters send theirs so the client can name the output; tar and local send none).
 * `exporterId` (the exporter's place in the request) routes the files on clients with several
 * outputs (v0.13 and later); v0.11 clients ignore it.
 */
export function exporterMetadata(values: Record<string, string>, opts?: { exporterId?: number; multiPlatform?: boolean }): CallMetadata {
  const md: CallMetadata = {};
  for (const [k, v] of Object.entries(values)) md[(KEY_EXPORTER_META_PREFIX + k).toLowerCase()] = [v];
  if (opts?.exporterId !== undefined) md[KEY_EXPORTER_ID] = [String(opts.exporterId)];
  if (opts?.multiPlatform) md[KEY_EXPORTER_MULTI_PLATFORM] = ['1'];
  return md;
}

/** The client's reading of exporter values from FileSend headers: several values join with `,`. */
export function parseExporterMetadata(md: CallMetadata): {
  values: Record<string, string>;
  exporterId: number | undefined;
  multiPlatform: boolean;
} {
  const values: Record<string, string> = {};
  for (const [k, v] of Object.entries(md)) {
    if (k.startsWith(KEY_EXPORTER_META_PREFIX)) values[k.slice(KEY_EXPORTER_META_PREFIX.length)] = v.join(',');
  }
  const idText = md[KEY_EXPORTER_ID]?.[0];
  const id = idText !== undefined && /^-?\d+$/.test(idText) ? Number(idText) : undefined;
  return { values, exporterId: id, multiPlatform: (md[KEY_EXPORTER_MULTI_PLATFORM] ?? []).includes('1') };
}

function encodeMetadata(md: CallMetadata): CallMetadata {
  const out: CallMetadata = {};
  for (const [k, values] of Object.entries(md)) {
    // eslint-disable-next-line no-control-regex
    const needs = values.some((v) => /[^\x00-\x7f]/.test(v));
    out[k] = needs ? values.map(goQueryEscape) : values;
    if (needs) out[k + ENCODED_SUFFIX] = ['1'];
  }
  return out;
}

const GO_TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);

function decodeMetadata(md: CallMetadata): CallMetadata {
  const out: CallMetadata = {};
  for (const [k, values] of Object.entries(md)) {
    const flag = md[k + ENCODED_SUFFIX]?.[0];
    out[k] = flag !== undefined && GO_TRUE.has(flag) ? values.map(goQueryUnescape) : values;
  }
  return out;
}

/** Go's url.QueryEscape: unreserved characters kept, space as `+`, the rest `%XX` of UTF-8. */
export function goQueryEscape(s: string): string {
  let out = '';
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-_.~]/.test(c)) out += c;
    else if (c === ' ') out += '+';
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Go's url.QueryUnescape; a malformed escape gives `""` (upstream ignores the error). */
export function goQueryUnescape(s: string): string {
  const chars = Array.from(s);
  const bytes: number[] = [];
  const enc = new TextEncoder();
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '%') {
      const hex = (chars[i + 1] ?? '') + (chars[i + 2] ?? '');
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return '';
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (c === '+') bytes.push(0x20);
    else bytes.push(...enc.encode(c));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}
