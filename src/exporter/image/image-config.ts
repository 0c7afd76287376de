/**
 * The image config an exporter writes: the frontend's config (or a default one) with rootfs,
 * history and created time filled in from the exported layers, as BuildKit v0.11's image writer does
 * (exporter/containerimage/writer.go: normalizeLayersAndHistory + patchImageConfig). Serialized as Go
 * would (sorted top-level keys, Go escaping) so equal inputs give upstream's digests.
 */
import { goJSON, goTime } from '../../content/go-json.js';
import type { History } from '../../content/oci.js';
import { isDigest, type Digest } from '../../util/digest.js';
import { InvalidArgumentError } from '../../util/errors.js';
import { defaultPlatform, normalizePlatform, type Platform } from '../../util/platform.js';

/** The PATH upstream puts in a default Linux image config (system.DefaultPathEnv). */
export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** What the exporter knows of each layer of the image, base image layers first. */
export interface LayerRecord {
  /** The digest of the uncompressed layer tar (rootfs.diff_ids). */
  diffId: Digest;
  /** When the layer was made; fills history entries that lack a time. */
  createdAt?: Date | string;
  /** The step that made it; used as created_by for layers the config's history does not cover. */
  description?: string;
}

export interface ImageConfigOptions {
  /** The frontend's image config (JSON bytes or object). Absent: a default config for `platform`. */
  config?: Uint8Array | Record<string, unknown>;
  /** For the default config; default: the host's platform. */
  platform?: Platform;
  layers: LayerRecord[];
  /** SOURCE_DATE_EPOCH: history and created times later than this are clamped to it. */
  epoch?: Date;
  /** Build info bytes, stored base64 under `moby.buildkit.buildinfo.v1`; absent removes the key. */
  buildInfo?: Uint8Array;
  /** Inline cache bytes, stored base64 under `moby.buildkit.cache.v0`. */
  inlineCache?: Uint8Array;
}

/** BuildKit's defaultImageConfig: platform, `WorkingDir: /`, the default PATH, empty rootfs. */
export function defaultImageConfig(platform?: Platform): Record<string, unknown> {
  const p = normalizePlatform(platform ?? defaultPlatform());
  const img: Record<string, unknown> = { architecture: p.architecture };
  if (p.variant) img.variant = p.variant;
  img.os = p.os;
  img.config = { Env: [DEFAULT_PATH_ENV], WorkingDir: '/' };
  img.rootfs = { type: 'layers', diff_ids: [] };
  return img;
}

function toTime(v: Date | string | undefined): string | undefined {
  if (v === undefined) return undefined;
  return typeof v === 'string' ? v : goTime(v);
}

function timeValue(s: string, field: string): number {
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new InvalidArgumentError(`image config: ${field} is not a valid time: ${JSON.stringify(s)}`);
  return t;
}

/** A history entry with Go's field order and omitempty behaviour. */
function historyEntry(h: History): History {
  const out: History = {};
  if (h.created) out.created = h.created;
  if (h.created_by) out.created_by = h.created_by;
  if (h.author) out.author = h.author;
  if (h.comment) out.comment = h.comment;
  if (h.empty_layer) out.empty_layer = true;
  return out;
}

function parseHistory(v: unknown): History[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new InvalidArgumentError('image config: history must be an array');
  return v.map((h, i) => {
    if (typeof h !== 'object' || h === null) throw new InvalidArgumentError(`image config: history[${i}] must be an object`);
    const o = h as Record<string, unknown>;
    const str = (k: string): string | undefined => {
      const x = o[k];
      if (x === undefined || x === null) return undefined;
      if (typeof x !== 'string') throw new InvalidArgumentError(`image config: history[${i}].${k} must be a string`);
      return x;
    };
    return historyEntry({
      created: str('created'),
      created_by: str('created_by'),
      author: str('author'),
      comment: str('comment'),
      empty_layer: o.empty_layer === true,
    });
  });
}

/**
 * Makes history agree with the layers (normalizeLayersAndHistory): excess non-empty entries become
 * empty from the top, missing ones are added from layer metadata, and entries without a time get the
 * first new layer's time (or the previous entry's).
 */
export function normalizeHistory(history: History[], layers: LayerRecord[]): History[] {
  let h = history.map((x) => ({ ...x }));
  const historyLayers = h.filter((x) => !x.empty_layer).length;
  if (historyLayers > layers.length) {
    let l = 0;
    h = h.map((x) => {
      const y = { ...x };
      if (l >= layers.length) y.empty_layer = true;
      if (!y.empty_layer) l++;
      return y;
    });
  }
  if (layers.length > historyLayers) {
    for (const md of layers.slice(historyLayers)) {
      h.push(historyEntry({ created: toTime(md.createdAt), created_by: md.description, comment: 'buildkit.exporter.image.v0' }));
    }
  }
  let layerIndex = 0;
  for (const x of h) {
    if (!x.empty_layer) {
      if (!x.created) x.created = toTime(layers[layerIndex]?.createdAt);
      layerIndex++;
    }
  }
  // The first time after an entry without one; else the last known time.
  let created: string | undefined;
  let noCreated = false;
  for (const x of h) {
    if (x.created) {
      created = x.created;
      if (noCreated) break;
    } else {
      noCreated = true;
    }
  }
  noCreated = false;
  for (const x of h) {
    if (x.created) {
      if (noCreated) created = x.created;
    } else {
      noCreated = true;
      x.created = created;
    }
  }
  return h.map(historyEntry);
}

/**
 * The exported image config bytes. The caller writes them to the store (see manifest.ts); their
 * sha256 is the image ID.
 */
export function buildImageConfig(opts: ImageConfigOptions): Buffer {
  let m: Record<string, unknown>;
  if (opts.config === undefined) {
    m = defaultImageConfig(opts.platform);
  } else if (opts.config instanceof Uint8Array) {
    let v: unknown;
    try {
      v = JSON.parse(Buffer.from(opts.config).toString('utf8'));
    } catch (err) {
      throw new InvalidArgumentError(`failed to parse image config for patch: ${(err as Error).message}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new InvalidArgumentError('failed to parse image config for patch: not a JSON object');
    }
    m = v as Record<string, unknown>;
  } else {
    m = structuredClone(opts.config);
  }
  opts.layers.forEach((l, i) => {
    if (!isDigest(l.diffId)) throw new InvalidArgumentError(`layer ${i}: invalid diff ID ${JSON.stringify(l.diffId)}`);
  });

  // Go marshals the empty list it appends to as null: an image without layers has `diff_ids: null`.
  m.rootfs = { type: 'layers', diff_ids: opts.layers.length ? opts.layers.map((l) => l.diffId) : null };

  const history = normalizeHistory(parseHistory(m.history), opts.layers);
  const epoch = opts.epoch;
  if (epoch) {
    const e = epoch.getTime();
    for (const h of history) {
      if (!h.created || timeValue(h.created, 'history created') > e) h.created = goTime(epoch);
    }
  }
  // Go marshals an empty (nil) history as null; kept so scratch images get upstream's digests.
  m.history = history.length ? history.map(historyEntry) : null;

  if (typeof m.created === 'string' && epoch && timeValue(m.created, 'created') > epoch.getTime()) {
    m.created = goTime(epoch);
  }
  if (m.created === undefined) {
    let tm: string | null = null;
    for (const h of history) if (h.created) tm = h.created;
    m.created = tm;
  }

  if (opts.inlineCache) m['moby.buildkit.cache.v0'] = Buffer.from(opts.inlineCache).toString('base64');
  if (opts.buildInfo) m['moby.buildkit.buildinfo.v1'] = Buffer.from(opts.buildInfo).toString('base64');
  else delete m['moby.buildkit.buildinfo.v1'];

  const sorted: Record<string, unknown> = {};
  for (const k of Object.keys(m).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) sorted[k] = m[k];
  return Buffer.from(goJSON(sorted), 'utf8');
}
