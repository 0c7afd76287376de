/**
 * The OCI image types loom reads and writes (descriptor, manifest, index, image config), their
 * validation when they come from outside (registry, archive, frontend), and their serialization in
 * Go's field order so loom's bytes and digests match upstream's for the same content.
 */
import { InvalidArgumentError } from '../util/errors.js';
import { isDigest, type Digest } from '../util/digest.js';
import { isIndexType, isManifestType, MediaType } from '../util/media-types.js';
import type { Platform } from '../util/platform.js';
import { sortedMap } from './go-json.js';

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface History {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** The container defaults of an image config (`config` field), Docker's capitalized names. */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
  [key: string]: unknown;
}

export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  variant?: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  config?: ContainerConfig;
  rootfs: { type: string; diff_ids: Digest[] };
  history?: History[];
  [key: string]: unknown;
}

function fail(where: string, msg: string): never {
  throw new InvalidArgumentError(`${where}: ${msg}`);
}

function parseJSONObject(bytes: Uint8Array, where: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    fail(where, `invalid JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(where, 'not a JSON object');
  return v as Record<string, unknown>;
}

function stringMap(v: unknown, where: string, field: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) fail(where, `${field} must be an object of strings`);
  for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
    if (typeof s !== 'string') fail(where, `${field}[${JSON.stringify(k)}] must be a string`);
  }
  return v as Record<string, string>;
}

function parsePlatformField(v: unknown, where: string): Platform | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) fail(where, 'platform must be an object');
  const o = v as Record<string, unknown>;
  if (typeof o.architecture !== 'string' || typeof o.os !== 'string') fail(where, 'platform needs string os and architecture');
  const p: Platform = { architecture: o.architecture, os: o.os };
  if (typeof o['os.version'] === 'string' && o['os.version']) p['os.version'] = o['os.version'];
  if (Array.isArray(o['os.features']) && o['os.features'].length) p['os.features'] = o['os.features'].map(String);
  if (typeof o.variant === 'string' && o.variant) p.variant = o.variant;
  return p;
}

/** Validates one descriptor object; `where` names the document and field for the error message. */
export function parseDescriptor(v: unknown, where: string): Descriptor {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(where, 'descriptor must be an object');
  const o = v as Record<string, unknown>;
  if (typeof o.mediaType !== 'string' || o.mediaType === '') fail(where, 'descriptor has no mediaType');
  if (typeof o.digest !== 'string' || !isDigest(o.digest)) {
    fail(where, `descriptor has invalid digest ${JSON.stringify(o.digest)} (only sha256 is supported)`);
  }
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
    fail(where, `descriptor ${o.digest} has invalid size ${JSON.stringify(o.size)}`);
  }
  const d: Descriptor = { mediaType: o.mediaType, digest: o.digest, size: o.size };
  if (Array.isArray(o.urls) && o.urls.length) d.urls = o.urls.map(String);
  const ann = stringMap(o.annotations, where, `annotations of ${o.digest}`);
  if (ann && Object.keys(ann).length) d.annotations = { ...ann };
  const p = parsePlatformField(o.platform, `${where}: ${o.digest}`);
  if (p) d.platform = p;
  if (typeof o.artifactType === 'string' && o.artifactType) d.artifactType = o.artifactType;
  return d;
}

function checkSchema(o: Record<string, unknown>, where: string): void {
  if (o.schemaVersion !== 2) {
    if (o.schemaVersion === 1) fail(where, 'Docker schema1 manifests are not supported');
    fail(where, `unsupported schemaVersion ${JSON.stringify(o.schemaVersion)}`);
  }
}

/**
 * What kind of manifest document these bytes are: the `mediaType` field when present, else guessed
 * from the shape (an index has `manifests`, a manifest has `config`) as containerd does for
 * registries that answer with a generic content type.
 */
export function detectManifestType(bytes: Uint8Array, where: string): string {
  const o = parseJSONObject(bytes, where);
  if (typeof o.mediaType === 'string' && o.mediaType) return o.mediaType;
  if (o.schemaVersion === 1) return MediaType.DockerManifestSchema1;
  if (Array.isArray(o.manifests)) return MediaType.OciIndex;
  if (o.config !== undefined) return MediaType.OciManifest;
  fail(where, 'cannot tell the manifest type: no mediaType, manifests or config field');
}

/** Parses an image manifest (Docker schema2 or OCI); `expectedType` is checked against the body's mediaType. */
export function parseManifest(bytes: Uint8Array, where: string, expectedType?: string): Manifest {
  const o = parseJSONObject(bytes, where);
  checkSchema(o, where);
  const mt = typeof o.mediaType === 'string' ? o.mediaType : undefined;
  if (mt !== undefined && mt !== '' && !isManifestType(mt)) fail(where, `media type ${mt} is not an image manifest`);
  if (expectedType && mt && mt !== expectedType) fail(where, `body media type ${mt} does not match descriptor media type ${expectedType}`);
  if (o.config === undefined) fail(where, 'manifest has no config');
  const config = parseDescriptor(o.config, `${where}: config`);
  if (o.layers !== undefined && o.layers !== null && !Array.isArray(o.layers)) fail(where, 'layers must be an array');
  const layers = ((o.layers as unknown[] | null | undefined) ?? []).map((l, i) => parseDescriptor(l, `${where}: layers[${i}]`));
  const m: Manifest = { schemaVersion: 2, config, layers };
  if (mt) m.mediaType = mt;
  if (typeof o.artifactType === 'string' && o.artifactType) m.artifactType = o.artifactType;
  if (o.subject) m.subject = parseDescriptor(o.subject, `${where}: subject`);
  const ann = stringMap(o.annotations, where, 'annotations');
  if (ann && Object.keys(ann).length) m.annotations = { ...ann };
  return m;
}

/** Parses an index / manifest list (Docker or OCI). */
export function parseIndex(bytes: Uint8Array, where: string, expectedType?: string): Index {
  const o = parseJSONObject(bytes, where);
  checkSchema(o, where);
  const mt = typeof o.mediaType === 'string' ? o.mediaType : undefined;
  if (mt !== undefined && mt !== '' && !isIndexType(mt)) fail(where, `media type ${mt} is not an image index`);
  if (expectedType && mt && mt !== expectedType) fail(where, `body media type ${mt} does not match descriptor media type ${expectedType}`);
  if (!Array.isArray(o.manifests)) fail(where, 'index has no manifests array');
  const idx: Index = {
    schemaVersion: 2,
    manifests: o.manifests.map((d, i) => parseDescriptor(d, `${where}: manifests[${i}]`)),
  };
  if (mt) idx.mediaType = mt;
  if (typeof o.artifactType === 'string' && o.artifactType) idx.artifactType = o.artifactType;
  if (o.subject) idx.subject = parseDescriptor(o.subject, `${where}: subject`);
  const ann = stringMap(o.annotations, where, 'annotations');
  if (ann && Object.keys(ann).length) idx.annotations = { ...ann };
  return idx;
}

/** Parses an image config; only the fields loom relies on are checked, the rest is kept as is. */
export function parseImageConfig(bytes: Uint8Array, where: string): ImageConfig {
  const o = parseJSONObject(bytes, where);
  if (typeof o.architecture !== 'string' || typeof o.os !== 'string') fail(where, 'image config needs string os and architecture');
  const rootfs = o.rootfs as Record<string, unknown> | undefined;
  if (rootfs !== undefined && (typeof rootfs !== 'object' || rootfs === null)) fail(where, 'rootfs must be an object');
  const diffIds = (rootfs?.diff_ids ?? []) as unknown;
  if (!Array.isArray(diffIds)) fail(where, 'rootfs.diff_ids must be an array');
  diffIds.forEach((d, i) => {
    if (typeof d !== 'string' || !isDigest(d)) fail(where, `rootfs.diff_ids[${i}] is not a sha256 digest: ${JSON.stringify(d)}`);
  });
  if (o.history !== undefined && o.history !== null && !Array.isArray(o.history)) fail(where, 'history must be an array');
  if (o.config !== undefined && o.config !== null && (typeof o.config !== 'object' || Array.isArray(o.config))) {
    fail(where, 'config must be an object');
  }
  return { ...o, rootfs: { type: String(rootfs?.type ?? 'layers'), diff_ids: diffIds as Digest[] } } as ImageConfig;
}

/** A platform in Go's field order (architecture, os, os.version, os.features, variant). */
export function platformJSON(p: Platform): Platform {
  const out: Platform = { architecture: p.architecture, os: p.os };
  if (p['os.version']) out['os.version'] = p['os.version'];
  if (p['os.features']?.length) out['os.features'] = [...p['os.features']];
  if (p.variant) out.variant = p.variant;
  return out;
}

/** A descriptor in Go's field order with sorted annotations, ready for goJSON. */
export function descriptorJSON(d: Descriptor): Descriptor {
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (d.urls?.length) out.urls = [...d.urls];
  if (d.annotations && Object.keys(d.annotations).length) out.annotations = sortedMap(d.annotations)!;
  if (d.platform) out.platform = platformJSON(d.platform);
  if (d.artifactType) out.artifactType = d.artifactType;
  return out;
}

/** A manifest in the field order BuildKit's image writer marshals (mediaType first). */
export function manifestJSON(m: Manifest): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (m.mediaType) out.mediaType = m.mediaType;
  out.schemaVersion = 2;
  if (m.artifactType) out.artifactType = m.artifactType;
  out.config = descriptorJSON(m.config);
  out.layers = m.layers.map(descriptorJSON);
  if (m.subject) out.subject = descriptorJSON(m.subject);
  if (m.annotations && Object.keys(m.annotations).length) out.annotations = sortedMap(m.annotations);
  return out;
}

/** An index in the field order BuildKit's image writer marshals (mediaType first). */
export function indexJSON(idx: Index): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (idx.mediaType) out.mediaType = idx.mediaType;
  out.schemaVersion = 2;
  if (idx.artifactType) out.artifactType = idx.artifactType;
  out.manifests = idx.manifests.map(descriptorJSON);
  if (idx.subject) out.subject = descriptorJSON(idx.subject);
  if (idx.annotations && Object.keys(idx.annotations).length) out.annotations = sortedMap(idx.annotations);
  return out;
}
