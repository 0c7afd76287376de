/**
 * The content store: immutable blobs addressed by sha256 digest, on the file system.
 *
 * Layout under `root`:
 *   content/blobs/sha256/<hex>   committed blobs (mode 0444)
 *   content/ingest/<random>      writes in progress
 *
 * A blob becomes visible only by an atomic rename after its size and digest were checked and its
 * bytes fsynced, so a daemon killed mid-write never leaves a partial blob under blobs/; whatever it
 * left in ingest/ is removed when the store is opened. Concurrent writers of the same digest each
 * write their own ingest file; the renames replace identical bytes, so readers never see a mix.
 *
 * A size or digest that disagrees with what the caller expected is a FAILED_PRECONDITION error
 * (containerd's code for it) naming the digests.
 *
 * Contract: one ContentStore per root per process (opening a second one would remove the first
 * one's ingests). Metadata (labels, leases, GC roots) lives in the cache's SQLite, not here.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { open, readdir, readFile, rename, rm, stat, chmod, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { InvalidArgumentError, LoomError, NotFoundError, throwIfAborted } from '../util/errors.js';
import { digestHex, isDigest, type Digest } from '../util/digest.js';
import { log } from '../util/log.js';

/** Blobs up to this size are read with one synchronous call (see readAll). */
const SMALL_READ = 1024 * 1024;

/** What a caller expects of a blob it writes: checked at commit when given. */
export interface Expected {
  digest?: Digest;
  size?: number;
  /** Kept only to be returned in the committed descriptor. */
  mediaType?: string;
}

export interface BlobInfo {
  digest: Digest;
  size: number;
}

/** A committed blob's descriptor: mediaType is the caller's, or application/octet-stream. */
export interface CommittedDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
}

/** A blob being written. Exactly one of commit() or abort() must be called; both are idempotent-safe. */
export interface Writer {
  /** Appends bytes; resolves when they reached the file (back-pressure for the caller). */
  write(chunk: Uint8Array): Promise<void>;
  /** Bytes written so far. */
  readonly offset: number;
  /** Checks size and digest against what was expected, fsyncs and makes the blob visible. */
  commit(): Promise<CommittedDescriptor>;
  /** Discards what was written. */
  abort(): Promise<void>;
}

export interface ContentStoreOptions {
  /** The daemon's state directory; the store uses `<root>/content`. */
  root: string;
}

const OCTET = 'application/octet-stream';

export class ContentStore {
  readonly root: string;
  readonly #blobs: string;
  readonly #ingest: string;
  readonly #log = log.child({ sub: 'content' });

  constructor(opts: ContentStoreOptions) {
    this.root = join(opts.root, 'content');
    this.#blobs = join(this.root, 'blobs', 'sha256');
    this.#ingest = join(this.root, 'ingest');
    mkdirSync(this.#blobs, { recursive: true });
    mkdirSync(this.#ingest, { recursive: true });
    // Whatever is in ingest/ belongs to a previous process that died mid-write: never visible, now gone.
    for (const name of readdirSync(this.#ingest)) {
      rmSync(join(this.#ingest, name), { recursive: true, force: true });
    }
  }

  /** The file holding a committed blob (it may not exist: use has/info first). */
  path(d: { digest: Digest } | Digest): string {
    const digest = typeof d === 'string' ? d : d.digest;
    if (!isDigest(digest)) throw new InvalidArgumentError(`invalid digest ${JSON.stringify(digest)}`);
    return join(this.#blobs, digestHex(digest));
  }

  async info(d: { digest: Digest } | Digest): Promise<BlobInfo | undefined> {
    const digest = typeof d === 'string' ? d : d.digest;
    // Synchronous, as readAll's small reads: a promise per metadata call waits for a turn of the
    // event loop, which a context transfer running beside makes long, and resolving an image by
    // digest from the store is a chain of these.
    const st = statSync(this.path(digest), { throwIfNoEntry: false });
    return st ? { digest, size: st.size } : undefined;
  }

  async has(d: { digest: Digest } | Digest): Promise<boolean> {
    return (await this.info(d)) !== undefined;
  }

  /** A stream of the blob's bytes; NotFoundError naming the digest when it is absent. */
  async read(d: { digest: Digest } | Digest, opts?: { start?: number }): Promise<Readable> {
    const digest = typeof d === 'string' ? d : d.digest;
    const file = this.path(digest);
    // Open first so a missing blob is an error here, not an 'error' event later.
    let fh: FileHandle;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      throw this.#notFound(digest, err);
    }
    // The stream owns the handle and closes it when it ends or is destroyed.
    return fh.createReadStream({ start: opts?.start, autoClose: true });
  }

  async readAll(d: { digest: Digest } | Digest): Promise<Buffer> {
    const digest = typeof d === 'string' ? d : d.digest;
    try {
      const file = this.path(digest);
      // Manifests and configs, mostly: read in one call when small.
      const st = statSync(file);
      return st.size <= SMALL_READ ? readFileSync(file) : await readFile(file);
    } catch (err) {
      throw this.#notFound(digest, err);
    }
  }

  /** Writes a whole blob in one go. With `expected`, a size or digest mismatch is an error naming both. */
  async writeBlob(data: Uint8Array | string, expected?: Expected): Promise<CommittedDescriptor> {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const w = await this.ingest(expected);
    try {
      await w.write(buf);
      return await w.commit();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  /**
   * Starts writing a blob. When `expected.digest` is already committed (and its size agrees), the
   * returned writer still accepts bytes and verifies them, so callers need no special case; use
   * has() first to skip a transfer.
   */
  async ingest(expected?: Expected): Promise<Writer> {
    if (expected?.digest !== undefined && !isDigest(expected.digest)) {
      throw new InvalidArgumentError(`invalid expected digest ${JSON.stringify(expected.digest)}`);
    }
    const tmp = join(this.#ingest, randomBytes(12).toString('hex'));
    const fh = await open(tmp, 'wx', 0o644);
    return new IngestWriter({ fh, tmp, expected, blobsDir: this.#blobs, pathOf: (d) => this.path(d) });
  }

  /**
   * Copies a stream into the store, verifying as ingest() does. `onProgress` sees the running byte
   * count; `signal` aborts the copy and discards the partial ingest.
   */
  async writeStream(
    src: AsyncIterable<Uint8Array>,
    expected?: Expected,
    opts?: { signal?: AbortSignal; onProgress?: (written: number) => void },
  ): Promise<CommittedDescriptor> {
    const w = await this.ingest(expected);
    try {
      for await (const chunk of src) {
        throwIfAborted(opts?.signal);
        await w.write(chunk);
        opts?.onProgress?.(w.offset);
      }
      throwIfAborted(opts?.signal);
      return await w.commit();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  /** Removes a blob; a missing blob is not an error (GC may race with another delete). */
  async delete(d: { digest: Digest } | Digest): Promise<boolean> {
    try {
      await rm(this.path(d));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Every committed blob, in no particular order. */
  async list(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = [];
    for (const name of await readdir(this.#blobs)) {
      const digest = `sha256:${name}`;
      if (!isDigest(digest)) continue;
      try {
        out.push({ digest, size: (await stat(join(this.#blobs, name))).size });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return out;
  }

  /** Count and total bytes of committed blobs. */
  async usage(): Promise<{ count: number; size: number }> {
    const all = await this.list();
    return { count: all.length, size: all.reduce((n, b) => n + b.size, 0) };
  }

  #notFound(digest: Digest, err: unknown): Error {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return new NotFoundError(`content ${digest}: not found`, { cause: err });
    }
    this.#log.warn({ digest, err }, 'reading blob failed');
    return err instanceof Error ? err : new Error(String(err));
  }
}

class IngestWriter implements Writer {
  readonly #fh: FileHandle;
  readonly #tmp: string;
  readonly #expected: Expected | undefined;
  readonly #blobsDir: string;
  readonly #pathOf: (d: Digest) => string;
  readonly #hash: Hash = createHash('sha256');
  #offset = 0;
  #done = false;
  /** Serializes writes: callers may not await each write before issuing the next. */
  #chain: Promise<void> = Promise.resolve();
  /** The first failed write: the hash then covers bytes the file lacks, so commit must refuse. */
  #writeError: Error | undefined;

  constructor(opts: { fh: FileHandle; tmp: string; expected: Expected | undefined; blobsDir: string; pathOf: (d: Digest) => string }) {
    this.#fh = opts.fh;
    this.#tmp = opts.tmp;
    this.#expected = opts.expected;
    this.#blobsDir = opts.blobsDir;
    this.#pathOf = opts.pathOf;
  }

  get offset(): number {
    return this.#offset;
  }

  write(chunk: Uint8Array): Promise<void> {
    if (this.#done) return Promise.reject(new LoomError('FAILED_PRECONDITION', 'write after commit or abort'));
    const exp = this.#expected;
    if (exp?.size !== undefined && this.#offset + chunk.byteLength > exp.size) {
      const what = exp.digest ?? 'blob';
      return Promise.reject(
        new LoomError('FAILED_PRECONDITION', `content ${what}: got more than the expected ${exp.size} bytes`),
      );
    }
    this.#offset += chunk.byteLength;
    this.#hash.update(chunk);
    const p = this.#chain.then(() => {
      if (this.#writeError) throw this.#writeError;
      // Synchronous, as the filesync receiver's writes: a chunk goes to the page cache in
      // microseconds, and an awaited write on the thread pool waits for a turn of the event loop
      // (a 1 MiB layer pulled beside a context transfer took half a second in 64 KiB round trips).
      for (let off = 0; off < chunk.byteLength; ) off += writeSync(this.#fh.fd, chunk, off, chunk.byteLength - off);
    });
    this.#chain = p.catch((err: unknown) => {
      this.#writeError ??= err instanceof Error ? err : new Error(String(err));
    });
    return p;
  }

  async commit(): Promise<CommittedDescriptor> {
    if (this.#done) throw new LoomError('FAILED_PRECONDITION', 'commit after commit or abort');
    await this.#chain;
    this.#done = true;
    const exp = this.#expected;
    const digest = `sha256:${this.#hash.digest('hex')}` as Digest;
    const size = this.#offset;
    try {
      if (this.#writeError) throw this.#writeError;
      if (exp?.size !== undefined && exp.size !== size) {
        throw new LoomError('FAILED_PRECONDITION', `content ${exp.digest ?? digest}: unexpected size ${size}, expected ${exp.size}`);
      }
      if (exp?.digest !== undefined && exp.digest !== digest) {
        throw new LoomError('FAILED_PRECONDITION', `content digest mismatch: expected ${exp.digest}, got ${digest} (${size} bytes)`);
      }
      await this.#fh.sync();
      await this.#fh.close();
      await chmod(this.#tmp, 0o444);
      await rename(this.#tmp, this.#pathOf(digest));
      await syncDir(this.#blobsDir);
    } catch (err) {
      await this.#fh.close().catch(() => undefined);
      await rm(this.#tmp, { force: true });
      throw err;
    }
    return { mediaType: exp?.mediaType ?? OCTET, digest, size };
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#chain;
    await this.#fh.close().catch(() => undefined);
    await rm(this.#tmp, { force: true });
  }
}

/** fsync of a directory makes a rename in it durable across a power loss. */
async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Some file systems refuse fsync on directories; the rename is still atomic, only less durable.
  } finally {
    await fh?.close().catch(() => undefined);
  }
}
