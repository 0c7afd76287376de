/**
 * Image archives as BuildKit v0.11's oci and docker exporters stream them (both through containerd's
 * images/archive Export):
 *   - `oci`: an OCI image layout: oci-layout, index.json, blobs/sha256/<hex> for every blob of the
 *     image (all platforms); for a single-platform image also a manifest.json without tags
 *     (containerd writes one per manifest it exports and skips only the names), so `docker load`
 *     takes the file; an image index gets none;
 *   - `docker`: the same layout plus a manifest.json with Config, RepoTags and Layers for `docker load`.
 * index.json lists the image once per name, each entry annotated with `io.containerd.image.name` (the
 * full name) and `org.opencontainers.image.ref.name` (the tag). Entries are sorted by path and written
 * with Go's tar headers (zero times, root owner), so the bytes depend on the content only.
 */
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { createHash } from 'node:crypto';
import type { ContentStore } from '../../content/store.js';
import { goJSON } from '../../content/go-json.js';
import { descriptorJSON, parseManifest, type Descriptor } from '../../content/oci.js';
import { digestHex } from '../../util/digest.js';
import { InvalidArgumentError, LoomError, throwIfAborted } from '../../util/errors.js';
import { isIndexType, isManifestType } from '../../util/media-types.js';
import { familiarString, ociRefName, parseNormalizedNamed, withDefaultTag } from '../../registry/reference.js';
import { encodeHeader, padding, trailer } from './tar-header.js';
import { imageBlobs } from './walk.js';

/** containerd's image name annotation. */
export const ANNOTATION_IMAGE_NAME = 'io.containerd.image.name';
/** OCI's reference name annotation (the tag part of the name). */
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
/** OCI's creation time annotation, which upstream's oci exporter puts on the index.json entry. */
export const ANNOTATION_CREATED = 'org.opencontainers.image.created';

export interface ImageArchiveOptions {
  store: ContentStore;
  /** The image: a manifest, or (oci variant) an index. Its annotations go into index.json. */
  root: Descriptor;
  /**
   * Full image names (`docker.io/library/app:latest`), as upstream's exporter normalizes `name=`
   * (see normalizeImageNames). Each gives one index.json entry; none gives one unnamed entry.
   */
  names?: string[];
  signal?: AbortSignal;
}

interface TarRecord {
  name: string;
  mode: number;
  type: 'file' | 'directory';
  size: number;
  data?: Buffer;
  blob?: Descriptor;
}

/**
 * The oci exporter's name handling: each comma-separated name parsed as docker does, with `latest`
 * added when it has no tag (reference.TagNameOnly). An invalid name is an error naming it.
 */
export function normalizeImageNames(names: string | string[] | undefined): string[] {
  if (names === undefined || names === '') return [];
  const list = Array.isArray(names) ? names : names.split(',');
  return list.map((n) => {
    try {
      const r = withDefaultTag(parseNormalizedNamed(n));
      return `${r.domain}/${r.path}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
    } catch (err) {
      throw new InvalidArgumentError(`failed to parse ${n}: ${(err as Error).message}`, { cause: err });
    }
  });
}

/** containerd's addNameAnnotation: the descriptor copied with both name annotations set. */
function named(root: Descriptor, name: string): Descriptor {
  return {
    ...root,
    annotations: { ...root.annotations, [ANNOTATION_IMAGE_NAME]: name, [ANNOTATION_REF_NAME]: ociRefName(name) },
  };
}

/** The short form docker load shows (`app:latest`), as containerd's familiarizeReference. */
function familiarize(name: string): string {
  return familiarString(withDefaultTag(parseNormalizedNamed(name)));
}

function jsonRecord(name: string, mode: number, value: unknown): TarRecord {
  const data = Buffer.from(goJSON(value), 'utf8');
  return { name, mode, type: 'file', size: data.length, data };
}

function blobPath(d: Descriptor): string {
  return `blobs/sha256/${digestHex(d.digest)}`;
}

async function collect(opts: ImageArchiveOptions, docker: boolean): Promise<TarRecord[]> {
  const { store, root } = opts;
  const names = opts.names ?? [];
  if (!isManifestType(root.mediaType) && !isIndexType(root.mediaType)) {
    throw new InvalidArgumentError(`only manifests may be exported: ${root.digest} has media type ${root.mediaType}`);
  }
  if (docker && isIndexType(root.mediaType)) {
    throw new InvalidArgumentError('docker exporter does not currently support exporting manifest lists');
  }
  const entries = names.length ? names.map((n) => named(root, n)) : [root];
  const records: TarRecord[] = [
    jsonRecord('oci-layout', 0o444, { imageLayoutVersion: '1.0.0' }),
    jsonRecord('index.json', 0o644, { schemaVersion: 2, manifests: entries.map(descriptorJSON) }),
  ];
  const blobs = await imageBlobs(store, root, { skipMissingNondistributable: true });
  for (const d of blobs) records.push({ name: blobPath(d), mode: 0o444, type: 'file', size: d.size, blob: d });
  if (isManifestType(root.mediaType)) {
    const m = parseManifest(await store.readAll(root.digest), `manifest ${root.digest}`, root.mediaType);
    // The oci variant leaves the names out (containerd's WithSkipDockerManifest).
    const repoTags = docker ? names.map(familiarize) : [];
    records.push(
      jsonRecord('manifest.json', 0o644, [
        {
          Config: blobPath(m.config),
          // Go marshals the empty slices containerd leaves nil as null.
          RepoTags: repoTags.length ? repoTags : null,
          Layers: m.layers.length ? m.layers.map(blobPath) : null,
        },
      ]),
    );
  }
  if (blobs.length) {
    records.push({ name: 'blobs/', mode: 0o755, type: 'directory', size: 0 });
    records.push({ name: 'blobs/sha256/', mode: 0o755, type: 'directory', size: 0 });
  }
  records.sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  return records.filter((r, i) => i === 0 || records[i - 1]!.name !== r.name);
}

async function put(out: Writable, buf: Buffer): Promise<void> {
  if (buf.length === 0) return;
  if (!out.write(buf)) await once(out, 'drain');
}

async function writeRecords(out: Writable, store: ContentStore, records: TarRecord[], signal?: AbortSignal): Promise<void> {
  for (const r of records) {
    throwIfAborted(signal);
    await put(out, encodeHeader({ name: r.name, mode: r.mode, size: r.size, type: r.type }));
    if (r.data) {
      await put(out, r.data);
    } else if (r.blob) {
      const d = r.blob;
      const hash = createHash('sha256');
      let n = 0;
      const src = await store.read(d.digest);
      try {
        for await (const chunk of src) {
          throwIfAborted(signal);
          const c = chunk as Buffer;
          n += c.length;
          if (n > d.size) break;
          hash.update(c);
          await put(out, c);
        }
      } finally {
        src.destroy();
      }
      // The tar is already partly written: a store that changed under us must fail the export loudly.
      if (n !== d.size || `sha256:${hash.digest('hex')}` !== d.digest) {
        throw new LoomError('INTERNAL', `unexpected content for ${d.digest} in the content store (${n} bytes, expected ${d.size})`);
      }
    }
    if (r.type === 'file') await put(out, padding(r.size));
  }
  await put(out, trailer());
}

/** Streams an OCI image layout tar of `root` (all platforms) to `out`. Does not end `out`. */
export async function writeOciArchive(out: Writable, opts: ImageArchiveOptions): Promise<void> {
  const records = await collect(opts, false);
  await writeRecords(out, opts.store, records, opts.signal);
}

/** Streams a Docker archive (`docker load` format with the OCI layout too) of a single manifest. Does not end `out`. */
export async function writeDockerArchive(out: Writable, opts: ImageArchiveOptions): Promise<void> {
  const records = await collect(opts, true);
  await writeRecords(out, opts.store, records, opts.signal);
}
