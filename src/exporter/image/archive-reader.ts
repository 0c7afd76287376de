/**
 * Reads an OCI image layout tar (as upstream's oci exporter writes it, or a docker archive that also
 * carries the layout) into the content store: every blob verified against its path's digest, then
 * index.json parsed and every image it lists checked to be complete.
 */
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import type { ContentStore } from '../../content/store.js';
import { parseIndex, type Index } from '../../content/oci.js';
import { isDigest, type Digest } from '../../util/digest.js';
import { InvalidArgumentError, LoomError } from '../../util/errors.js';
import { imageBlobs } from './walk.js';

export interface DockerManifestEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[] | null;
}

export interface ImportedArchive {
  /** index.json: the images the archive holds, with their annotations (names, created). */
  index: Index;
  /** `imageLayoutVersion` from oci-layout. */
  layoutVersion: string;
  /** manifest.json of a docker archive, if present. */
  dockerManifest?: DockerManifestEntry[];
  /** Digests of the blobs the archive carried. */
  blobs: Digest[];
}

async function readAll(s: AsyncIterable<Uint8Array>, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of s) {
    n += c.byteLength;
    if (n > limit) throw new InvalidArgumentError(`${what}: larger than ${limit} bytes`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}

/** Imports an OCI layout tar stream into the store. `where` names the archive in errors. */
export async function importOciArchive(store: ContentStore, src: Readable, where = 'archive'): Promise<ImportedArchive> {
  const extract = tar.extract();
  const feeding = pipeline(src, extract);
  let indexBytes: Buffer | undefined;
  let layoutBytes: Buffer | undefined;
  let dockerBytes: Buffer | undefined;
  const blobs: Digest[] = [];
  try {
    for await (const e of extract) {
      // tar-stream's entry is a Readable of Buffers; its typings say unknown.
      const entry = e as typeof e & AsyncIterable<Uint8Array>;
      const name = entry.header.name.replace(/^\.\//, '');
      const type = entry.header.type;
      if (type !== 'file' && type !== 'contiguous-file') {
        entry.resume();
        continue;
      }
      const m = /^blobs\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(name);
      if (m) {
        const digest = `${m[1]}:${m[2]}`;
        if (!isDigest(digest)) throw new InvalidArgumentError(`${where}: unsupported blob ${name} (only sha256 is supported)`);
        try {
          await store.writeStream(entry, { digest, size: entry.header.size });
        } catch (err) {
          const e = err as LoomError;
          throw new LoomError(e.code ?? 'INTERNAL', `${where}: blob ${name}: ${e.message}`, { cause: err });
        }
        blobs.push(digest);
      } else if (name === 'index.json') {
        indexBytes = await readAll(entry, 8 << 20, `${where}: index.json`);
      } else if (name === 'oci-layout') {
        layoutBytes = await readAll(entry, 1 << 16, `${where}: oci-layout`);
      } else if (name === 'manifest.json') {
        dockerBytes = await readAll(entry, 8 << 20, `${where}: manifest.json`);
      } else {
        entry.resume();
      }
    }
    await feeding;
  } catch (err) {
    src.destroy();
    await feeding.catch(() => undefined);
    throw err;
  }

  if (!layoutBytes) throw new InvalidArgumentError(`${where}: not an OCI image layout: no oci-layout file`);
  let layoutVersion: string;
  try {
    layoutVersion = String((JSON.parse(layoutBytes.toString('utf8')) as { imageLayoutVersion?: unknown }).imageLayoutVersion ?? '');
  } catch {
    throw new InvalidArgumentError(`${where}: oci-layout is not valid JSON`);
  }
  if (!layoutVersion.startsWith('1.')) throw new InvalidArgumentError(`${where}: unsupported imageLayoutVersion ${JSON.stringify(layoutVersion)}`);
  if (!indexBytes) throw new InvalidArgumentError(`${where}: no index.json`);
  const index = parseIndex(indexBytes, `${where}: index.json`);
  for (const d of index.manifests) await imageBlobs(store, d, { skipMissingNondistributable: true });

  const out: ImportedArchive = { index, layoutVersion, blobs };
  if (dockerBytes) {
    try {
      out.dockerManifest = JSON.parse(dockerBytes.toString('utf8')) as DockerManifestEntry[];
    } catch {
      throw new InvalidArgumentError(`${where}: manifest.json is not valid JSON`);
    }
  }
  return out;
}
