/**
 * DIR/index.json of a client-side OCI layout, kept the way upstream's client keeps it
 * (client/ociindex.StoreIndex): entries are found by their `org.opencontainers.image.ref.name`
 * annotation (the tag); putting a tag replaces the entries with that tag and keeps the others.
 * After a `--export-cache type=local,dest=DIR` build the client puts the daemon's
 * `cache.manifest` descriptor under the cache's tag ("latest" unless tag= says otherwise), and
 * `--import-cache type=local,src=DIR` reads the tag back to learn which digest to import.
 *
 * The file is written as Go's json.Marshal of an image-spec Index writes it (field order,
 * omitted empty fields, sorted annotation keys), atomically (temp file and rename) so a reader
 * never sees half a file. Updates within this process are serialized per file; there is no
 * cross-process lock (upstream's is an flock on index.json.lock, which Node cannot take).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { goJSON, sortedMap } from '../../content/go-json.js';
import { isDigest } from '../../util/digest.js';
import { errorMessage, InvalidArgumentError, LoomError, NotFoundError } from '../../util/errors.js';

export const OCI_REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
const INDEX_FILE = 'index.json';
const LAYOUT_FILE = 'oci-layout';
const LAYOUT_CONTENT = '{"imageLayoutVersion":"1.0.0"}';

/** A descriptor as index.json holds it (image-spec's fields; `data` is base64 as Go writes []byte). */
export interface OciIndexDescriptor {
  mediaType?: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  data?: string;
  platform?: {
    architecture: string;
    os: string;
    'os.version'?: string;
    'os.features'?: string[];
    variant?: string;
  };
  artifactType?: string;
}

export interface OciIndexFile {
  schemaVersion: number;
  mediaType?: string;
  manifests: OciIndexDescriptor[];
  annotations?: Record<string, string>;
}

/** The index of the layout in `dir`. NotFoundError when there is no index.json; a malformed one names the file. */
export async function readOciIndex(dir: string): Promise<OciIndexFile> {
  const file = join(dir, INDEX_FILE);
  let raw: Buffer;
  try {
    raw = await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`could not read ${file}: no such file`, { cause: err });
    throw new LoomError('INTERNAL', `could not read ${file}: ${errorMessage(err)}`, { cause: err });
  }
  return parseIndexFile(raw, file);
}

/** The entry tagged `tag` (the first, if several), or undefined when no entry has that tag. */
export async function readOciIndexTag(dir: string, tag: string): Promise<OciIndexDescriptor | undefined> {
  const idx = await readOciIndex(dir);
  return idx.manifests.find((m) => m.annotations?.[OCI_REF_NAME_ANNOTATION] === tag);
}

const queues = new Map<string, Promise<void>>();

/**
 * Puts `desc` into DIR/index.json under `tag` (annotation org.opencontainers.image.ref.name),
 * dropping entries that had the same tag and keeping every other one, and writes DIR/oci-layout
 * when it is missing. An empty tag appends `desc` untagged, as upstream does.
 */
export async function updateOciIndex(dir: string, tag: string, desc: OciIndexDescriptor): Promise<void> {
  const file = join(dir, INDEX_FILE);
  const entry = descriptorOf(desc, `descriptor for ${file}`);
  const prev = queues.get(file) ?? Promise.resolve();
  const run = prev.then(() => put(dir, file, tag, entry));
  // The queue only orders updates; each caller sees its own outcome through `run`.
  const tail = run.catch(() => undefined);
  queues.set(file, tail);
  try {
    await run;
  } finally {
    if (queues.get(file) === tail) queues.delete(file);
  }
}

async function put(dir: string, file: string, tag: string, desc: OciIndexDescriptor): Promise<void> {
  await mkdir(dir, { recursive: true });
  let idx: OciIndexFile = { schemaVersion: 0, manifests: [] };
  try {
    const raw = await readFile(file);
    if (raw.length > 0) idx = parseIndexFile(raw, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (idx.schemaVersion === 0) idx.schemaVersion = 2;
  if (tag !== '') {
    desc = { ...desc, annotations: { ...(desc.annotations ?? {}), [OCI_REF_NAME_ANNOTATION]: tag } };
    idx.manifests = idx.manifests.filter((m) => m.annotations?.[OCI_REF_NAME_ANNOTATION] !== tag);
  }
  idx.manifests.push(desc);
  await writeAtomic(file, goJSON(indexJSON(idx)));
  await writeFile(join(dir, LAYOUT_FILE), LAYOUT_CONTENT, { flag: 'wx', mode: 0o644 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
}

async function writeAtomic(file: string, content: string): Promise<void> {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, content, { mode: 0o644 });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new LoomError('INTERNAL', `could not write ${file}: ${errorMessage(err)}`, { cause: err });
  }
}

function parseIndexFile(raw: Buffer, file: string): OciIndexFile {
  let o: unknown;
  try {
    o = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new InvalidArgumentError(`could not unmarshal ${file}: ${errorMessage(err)}`, { cause: err });
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new InvalidArgumentError(`could not unmarshal ${file}: not a JSON object`);
  const r = o as Record<string, unknown>;
  const sv = r.schemaVersion ?? 0;
  if (typeof sv !== 'number' || !Number.isInteger(sv)) throw new InvalidArgumentError(`could not unmarshal ${file}: schemaVersion ${JSON.stringify(sv)} is not a number`);
  const ms = r.manifests ?? [];
  if (!Array.isArray(ms)) throw new InvalidArgumentError(`could not unmarshal ${file}: manifests is not an array`);
  const idx: OciIndexFile = { schemaVersion: sv, manifests: ms.map((m, i) => descriptorOf(m, `${file}: manifests[${i}]`)) };
  if (typeof r.mediaType === 'string' && r.mediaType) idx.mediaType = r.mediaType;
  const ann = stringMap(r.annotations, `${file}: annotations`);
  if (ann) idx.annotations = ann;
  return idx;
}

/** A checked copy of a descriptor with only image-spec's fields (what Go's decoder keeps). */
function descriptorOf(v: unknown, where: string): OciIndexDescriptor {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError(`${where}: descriptor must be an object`);
  const o = v as Record<string, unknown>;
  if (typeof o.digest !== 'string' || !isDigest(o.digest)) throw new InvalidArgumentError(`${where}: invalid digest ${JSON.stringify(o.digest)}`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) {
    throw new InvalidArgumentError(`${where}: descriptor ${o.digest} has invalid size ${JSON.stringify(o.size)}`);
  }
  const d: OciIndexDescriptor = { digest: o.digest, size: o.size };
  if (o.mediaType !== undefined && o.mediaType !== null) {
    if (typeof o.mediaType !== 'string') throw new InvalidArgumentError(`${where}: mediaType of ${o.digest} is not a string`);
    if (o.mediaType) d.mediaType = o.mediaType;
  }
  if (Array.isArray(o.urls) && o.urls.length) d.urls = o.urls.map(String);
  const ann = stringMap(o.annotations, `${where}: annotations of ${o.digest}`);
  if (ann) d.annotations = ann;
  if (typeof o.data === 'string' && o.data) d.data = o.data;
  if (o.platform !== undefined && o.platform !== null) {
    const p = o.platform as Record<string, unknown>;
    if (typeof p !== 'object' || typeof p.architecture !== 'string' || typeof p.os !== 'string') {
      throw new InvalidArgumentError(`${where}: platform of ${o.digest} needs string os and architecture`);
    }
    d.platform = { architecture: p.architecture, os: p.os };
    if (typeof p['os.version'] === 'string' && p['os.version']) d.platform['os.version'] = p['os.version'];
    if (Array.isArray(p['os.features']) && p['os.features'].length) d.platform['os.features'] = p['os.features'].map(String);
    if (typeof p.variant === 'string' && p.variant) d.platform.variant = p.variant;
  }
  if (typeof o.artifactType === 'string' && o.artifactType) d.artifactType = o.artifactType;
  return d;
}

function stringMap(v: unknown, where: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new InvalidArgumentError(`${where}: must be an object of strings`);
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'string') throw new InvalidArgumentError(`${where}: value of ${JSON.stringify(k)} is not a string`);
    out[k] = x;
  }
  return Object.keys(out).length ? out : undefined;
}

/** Go's field order for image-spec's Index and Descriptor, map keys sorted. */
function indexJSON(idx: OciIndexFile): Record<string, unknown> {
  const out: Record<string, unknown> = { schemaVersion: idx.schemaVersion };
  if (idx.mediaType) out.mediaType = idx.mediaType;
  out.manifests = idx.manifests.map(descriptorJSON);
  if (idx.annotations) out.annotations = sortedMap(idx.annotations);
  return out;
}

function descriptorJSON(d: OciIndexDescriptor): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (d.mediaType) out.mediaType = d.mediaType;
  out.digest = d.digest;
  out.size = d.size;
  if (d.urls?.length) out.urls = d.urls;
  if (d.annotations) out.annotations = sortedMap(d.annotations);
  if (d.data) out.data = d.data;
  if (d.platform) out.platform = d.platform;
  if (d.artifactType) out.artifactType = d.artifactType;
  return out;
}
