/**
 * The image config the Dockerfile frontend produces (BuildKit's dockerfile2llb.Image, a Docker
 * flavoured OCI image config), read from base images and written back with Go's encoding/json
 * layout: struct fields in declaration order, maps with sorted keys, `omitempty` honoured, and
 * `OnBuild` always present (it has no omitempty upstream, so configs carry `"OnBuild":null`).
 * The bytes become `containerimage.config` in the build result.
 */
import { goJSON, sortedMap } from '../../content/go-json.js';
import type { Platform } from '../../util/platform.js';

export const DEFAULT_PATH_UNIX = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const DEFAULT_PATH_WINDOWS = 'c:\\Windows\\System32;c:\\Windows';

export function defaultPathEnv(os: string): string {
  return os === 'windows' ? DEFAULT_PATH_WINDOWS : DEFAULT_PATH_UNIX;
}

export interface HealthConfig {
  Test?: string[];
  /** Nanoseconds. */
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  Retries?: number;
}

export interface ImageConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  Healthcheck?: HealthConfig;
  ArgsEscaped?: boolean;
  OnBuild?: string[];
  StopTimeout?: number;
  Shell?: string[];
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

export interface Image {
  created?: string;
  author?: string;
  architecture: string;
  variant?: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  rootfs: { type: string; diff_ids: string[] | null };
  history?: HistoryEntry[];
  config: ImageConfig;
}

function strings(v: unknown, what: string): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new Error(`${what} must be an array of strings`);
  return [...(v as string[])];
}

function str(v: unknown, what: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new Error(`${what} must be a string`);
  return v;
}

function num(v: unknown, what: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`${what} must be an integer`);
  return v;
}

function set(v: unknown, what: string): Record<string, Record<string, never>> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new Error(`${what} must be an object`);
  return Object.fromEntries(Object.keys(v as object).map((k) => [k, {}]));
}

/**
 * Reads an image config as Go's json.Unmarshal into the struct would: unknown fields are dropped,
 * wrong types are errors. `created` is dropped (the frontend clears it).
 */
export function parseImageConfig(data: Uint8Array | string): Image {
  const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8');
  const j = JSON.parse(text) as Record<string, unknown>;
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('image config must be a JSON object');
  const c = (j.config ?? {}) as Record<string, unknown>;
  if (typeof c !== 'object' || Array.isArray(c)) throw new Error('config must be an object');
  const rootfs = (j.rootfs ?? {}) as Record<string, unknown>;
  const hc = c.Healthcheck as Record<string, unknown> | null | undefined;
  const labels = c.Labels as Record<string, unknown> | null | undefined;
  if (labels !== undefined && labels !== null) {
    for (const [k, v] of Object.entries(labels)) if (typeof v !== 'string') throw new Error(`label ${k} must be a string`);
  }
  const img: Image = {
    author: str(j.author, 'author'),
    architecture: str(j.architecture, 'architecture') ?? '',
    variant: str(j.variant, 'variant'),
    os: str(j.os, 'os') ?? '',
    'os.version': str(j['os.version'], 'os.version'),
    'os.features': strings(j['os.features'], 'os.features'),
    rootfs: { type: str(rootfs.type, 'rootfs.type') ?? '', diff_ids: strings(rootfs.diff_ids, 'rootfs.diff_ids') ?? null },
    history: Array.isArray(j.history)
      ? (j.history as Record<string, unknown>[]).map((h, i) => ({
          created: str(h.created, `history[${i}].created`),
          created_by: str(h.created_by, `history[${i}].created_by`),
          author: str(h.author, `history[${i}].author`),
          comment: str(h.comment, `history[${i}].comment`),
          empty_layer: h.empty_layer === true ? true : undefined,
        }))
      : undefined,
    config: {
      User: str(c.User, 'User'),
      ExposedPorts: set(c.ExposedPorts, 'ExposedPorts'),
      Env: strings(c.Env, 'Env'),
      Entrypoint: strings(c.Entrypoint, 'Entrypoint'),
      Cmd: strings(c.Cmd, 'Cmd'),
      Volumes: set(c.Volumes, 'Volumes'),
      WorkingDir: str(c.WorkingDir, 'WorkingDir'),
      Labels: labels ? ({ ...labels } as Record<string, string>) : undefined,
      StopSignal: str(c.StopSignal, 'StopSignal'),
      Healthcheck: hc
        ? {
            Test: strings(hc.Test, 'Healthcheck.Test'),
            Interval: num(hc.Interval, 'Healthcheck.Interval'),
            Timeout: num(hc.Timeout, 'Healthcheck.Timeout'),
            StartPeriod: num(hc.StartPeriod, 'Healthcheck.StartPeriod'),
            Retries: num(hc.Retries, 'Healthcheck.Retries'),
          }
        : undefined,
      ArgsEscaped: c.ArgsEscaped === true ? true : undefined,
      OnBuild: strings(c.OnBuild, 'OnBuild'),
      StopTimeout: num(c.StopTimeout, 'StopTimeout'),
      Shell: strings(c.Shell, 'Shell'),
    },
  };
  return img;
}

/** dockerfile2llb's emptyImage: the config of `FROM scratch`. */
export function emptyImage(p: Platform): Image {
  const img: Image = {
    architecture: p.architecture,
    os: p.os,
    rootfs: { type: 'layers', diff_ids: null },
    config: { WorkingDir: '/', Env: ['PATH=' + defaultPathEnv(p.os)] },
  };
  if (p.variant) img.variant = p.variant;
  return img;
}

/**
 * dockerfile2llb's clone: Env, Cmd and Entrypoint are copied; the maps (Labels, ExposedPorts,
 * Volumes), Healthcheck and History are shared with the parent, as Go's struct copy shares them.
 * Sharing the maps is upstream behaviour a child stage can observe (labels added by one child of a
 * stage show in its later siblings), so loom keeps it.
 */
export function cloneImage(src: Image): Image {
  return {
    ...src,
    history: src.history ? [...src.history] : undefined,
    config: {
      ...src.config,
      Env: [...(src.config.Env ?? [])],
      Cmd: [...(src.config.Cmd ?? [])],
      Entrypoint: [...(src.config.Entrypoint ?? [])],
    },
  };
}

function nonEmpty<T>(a: T[] | undefined): T[] | undefined {
  return a && a.length > 0 ? a : undefined;
}

function nonEmptyMap<V>(m: Record<string, V> | undefined): Record<string, V> | undefined {
  return m && Object.keys(m).length > 0 ? sortedMap(m) : undefined;
}

/** The config as Go marshals dockerfile2llb.Image. */
export function imageToJSON(img: Image): string {
  const c = img.config;
  const hc = c.Healthcheck
    ? {
        Test: nonEmpty(c.Healthcheck.Test),
        Interval: c.Healthcheck.Interval || undefined,
        Timeout: c.Healthcheck.Timeout || undefined,
        StartPeriod: c.Healthcheck.StartPeriod || undefined,
        Retries: c.Healthcheck.Retries || undefined,
      }
    : undefined;
  const config = {
    User: c.User || undefined,
    ExposedPorts: nonEmptyMap(c.ExposedPorts),
    Env: nonEmpty(c.Env),
    Entrypoint: nonEmpty(c.Entrypoint),
    Cmd: nonEmpty(c.Cmd),
    Volumes: nonEmptyMap(c.Volumes),
    WorkingDir: c.WorkingDir || undefined,
    Labels: nonEmptyMap(c.Labels),
    StopSignal: c.StopSignal || undefined,
    Healthcheck: hc,
    ArgsEscaped: c.ArgsEscaped || undefined,
    OnBuild: c.OnBuild ?? null,
    StopTimeout: c.StopTimeout,
    Shell: nonEmpty(c.Shell),
  };
  const out = {
    created: img.created,
    author: img.author || undefined,
    architecture: img.architecture,
    variant: img.variant || undefined,
    os: img.os,
    'os.version': img['os.version'] || undefined,
    'os.features': nonEmpty(img['os.features']),
    rootfs: { type: img.rootfs.type, diff_ids: img.rootfs.diff_ids },
    history: nonEmpty(img.history)?.map((h) => ({
      created: h.created,
      created_by: h.created_by || undefined,
      author: h.author || undefined,
      comment: h.comment || undefined,
      empty_layer: h.empty_layer || undefined,
    })),
    config,
  };
  return goJSON(out);
}

export function imageToBytes(img: Image): Uint8Array {
  return Buffer.from(imageToJSON(img), 'utf8');
}
