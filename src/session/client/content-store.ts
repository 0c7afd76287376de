/**
 * containerd.services.content.v1.Content served on the client's session: the client's end of
 * `--export-cache type=local,dest=DIR`, `--import-cache type=local,src=DIR` and OCI layout stores.
 * One service serves several stores; each call picks one with the `buildkit-attachable-store-id`
 * header (`local:<dir>` and so on, see session/content/store-id.ts).
 *
 * A store is a directory laid out as an OCI image layout (what containerd's local store writes):
 *   DIR/blobs/sha256/<hex>   committed blobs, read-only
 *   DIR/ingest/loom-<rand>   writes in progress
 * A blob appears under blobs/ only by a rename after its size and digest were checked and its
 * bytes fsynced; a failed, cancelled or aborted write leaves nothing behind.
 *
 * The answers follow containerd's content server over its local store (codes and message shapes),
 * because upstream daemons drive this service with containerd's proxy client: an expected digest
 * already present is ALREADY_EXISTS (the daemon's "skip"), a second writer of a busy ref gets
 * UNAVAILABLE "locked" (it retries), and a commit that does not match is FAILED_PRECONDITION.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { chmod, mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  Content,
  ReadContentResponseSchema,
  WriteAction,
  WriteContentRequestSchema,
  WriteContentResponseSchema,
  ListContentResponseSchema,
  InfoSchema,
  StatusSchema,
  type Info,
  type Status,
  type WriteContentRequest,
  ReadContentRequestSchema,
  ListContentRequestSchema,
} from '../../gen/containerd/content_pb.js';
import { digestHex, isDigest, type Digest } from '../../util/digest.js';
import { CancelledError, errorMessage, InvalidArgumentError, LoomError, NotFoundError, UnavailableError, UnimplementedError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import { STORE_ID_HEADER } from '../content/store-id.js';
import { methodPath } from '../tunnel/metadata.js';
import { GrpcCode, SessionCallError } from '../tunnel/grpc-status.js';
import { typedHandler, unaryHandler, type CallContext, type SessionServices } from '../tunnel/server.js';

export { readOciIndex, readOciIndexTag, updateOciIndex, OCI_REF_NAME_ANNOTATION, type OciIndexDescriptor } from './oci-index.js';

const log = rootLog.child({ sub: 'content-service' });

/** Bytes per Read answer (containerd's server uses a 1 MiB buffer). */
const READ_CHUNK = 1 << 20;
/** containerd's List sends infos in batches of this many. */
const LIST_BATCH = 100;

export interface ContentStoreServiceOptions {
  /** Store id (`local:<dir>`, `oci:<key>`, `export`) to the directory that holds its blobs/sha256. */
  stores: Map<string, string> | Record<string, string>;
}

/**
 * The session services for a set of stores. Directories are created when the first blob is
 * written (an import-only store is never created).
 */
export function contentStoreService(opts: ContentStoreServiceOptions): SessionServices {
  const entries = opts.stores instanceof Map ? [...opts.stores] : Object.entries(opts.stores);
  const stores = new Map<string, DirStore>();
  for (const [id, dir] of entries) {
    if (!id) throw new InvalidArgumentError('content store: empty store id');
    if (!dir) throw new InvalidArgumentError(`content store ${id}: empty directory`);
    stores.set(id, new DirStore({ id, dir }));
  }
  const choose = (ctx: CallContext): DirStore => {
    const values = ctx.metadata[STORE_ID_HEADER] ?? [];
    if (values.length === 0) throw new InvalidArgumentError(`request lacks metadata "${STORE_ID_HEADER}"`);
    const s = stores.get(values[0]!);
    if (!s) throw new NotFoundError(`unknown store ${values[0]}`);
    return s;
  };
  const m = Content.method;
  return {
    [methodPath(m.info)]: unaryHandler(m.info, async (req, ctx) => {
      const s = choose(ctx);
      const d = validDigest(req.digest);
      return { info: await s.info(d) };
    }),
    [methodPath(m.update)]: unaryHandler(m.update, async (_req, ctx) => {
      choose(ctx);
      // containerd's local store without a label store answers the same: blobs here carry no labels.
      throw new LoomError('FAILED_PRECONDITION', 'update not supported on immutable content store: failed precondition');
    }),
    [methodPath(m.list)]: typedHandler(ListContentRequestSchema, ListContentResponseSchema, async (stream, ctx) => {
      const s = choose(ctx);
      const req = await single(stream.recv(), ctx.method);
      if (req.filters.some((f) => f !== '')) throw new UnimplementedError(`content store ${s.id}: list filters are not supported: ${JSON.stringify(req.filters)}`);
      let batch: Info[] = [];
      for await (const info of s.list()) {
        batch.push(info);
        if (batch.length >= LIST_BATCH) {
          await stream.send({ info: batch } as never);
          batch = [];
        }
      }
      if (batch.length > 0) await stream.send({ info: batch } as never);
    }),
    [methodPath(m.delete)]: unaryHandler(m.delete, async (req, ctx) => {
      const s = choose(ctx);
      await s.delete(validDigest(req.digest));
      return {};
    }),
    [methodPath(m.read)]: typedHandler(ReadContentRequestSchema, ReadContentResponseSchema, async (stream, ctx) => {
      const s = choose(ctx);
      const req = await single(stream.recv(), ctx.method);
      const d = validDigest(req.digest);
      for await (const chunk of s.read(d, Number(req.offset), Number(req.size), ctx.signal)) {
        await stream.send({ offset: BigInt(chunk.offset), data: chunk.data } as never);
      }
    }),
    [methodPath(m.status)]: unaryHandler(m.status, async (req, ctx) => {
      const s = choose(ctx);
      const st = s.status(req.ref);
      if (!st) throw new NotFoundError(`could not get status for ref ${JSON.stringify(req.ref)}: not found`);
      return { status: st };
    }),
    [methodPath(m.listStatuses)]: unaryHandler(m.listStatuses, async (req, ctx) => {
      const s = choose(ctx);
      if (req.filters.some((f) => f !== '')) throw new UnimplementedError(`content store ${s.id}: status filters are not supported: ${JSON.stringify(req.filters)}`);
      return { statuses: s.statuses() };
    }),
    [methodPath(m.write)]: typedHandler(WriteContentRequestSchema, WriteContentResponseSchema, async (stream, ctx) => {
      const s = choose(ctx);
      const it = stream.recv()[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done) return;
      const send = (res: Record<string, unknown>): Promise<void> => stream.send(res as never);
      await s.serveWrite(first.value, it, send, ctx.signal);
    }),
    [methodPath(m.abort)]: unaryHandler(m.abort, async (req, ctx) => {
      const s = choose(ctx);
      await s.abort(req.ref);
      return {};
    }),
  };
}

/** The one request of a server-streaming call. */
async function single<T>(msgs: AsyncIterable<T>, method: string): Promise<T> {
  for await (const m of msgs) return m;
  throw new InvalidArgumentError(`${method}: no request message`);
}

function validDigest(s: string): Digest {
  // Only sha256 is stored (blobs/sha256); containerd rejects malformed digests the same way.
  if (!isDigest(s)) throw new InvalidArgumentError(`${JSON.stringify(s)} failed validation`);
  return s;
}

/** One write in progress: holds its ref's lock until it commits, fails or is aborted. */
interface Ingest {
  ref: string;
  startedAt: Date;
  updatedAt: Date;
  offset: number;
  total: number;
  expected: string;
  hash: Hash;
  /** Opened at the first byte (a write that only negotiates leaves no file). */
  fh?: FileHandle;
  tmp?: string;
  aborted: AbortController;
}

class DirStore {
  readonly id: string;
  readonly dir: string;
  readonly #blobs: string;
  readonly #ingestDir: string;
  readonly #ingests = new Map<string, Ingest>();

  constructor(opts: { id: string; dir: string }) {
    this.id = opts.id;
    this.dir = opts.dir;
    this.#blobs = join(opts.dir, 'blobs', 'sha256');
    this.#ingestDir = join(opts.dir, 'ingest');
  }

  #path(d: Digest): string {
    return join(this.#blobs, digestHex(d));
  }

  async #stat(d: Digest): Promise<{ size: number; mtime: Date } | undefined> {
    try {
      const st = await stat(this.#path(d));
      if (!st.isFile()) return undefined;
      return { size: st.size, mtime: st.mtime };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      throw new LoomError('INTERNAL', `content store ${this.id}: stat ${d}: ${errorMessage(err)}`, { cause: err });
    }
  }

  async info(d: Digest): Promise<Info> {
    const st = await this.#stat(d);
    if (!st) throw new NotFoundError(`content ${d}: not found`);
    return infoOf(d, st);
  }

  async *list(): AsyncGenerator<Info> {
    let names: string[];
    try {
      names = await readdir(this.#blobs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const name of names.sort()) {
      const d = `sha256:${name}`;
      if (!isDigest(d)) continue;
      const st = await this.#stat(d);
      if (!st) continue;
      yield infoOf(d, st);
    }
  }

  async delete(d: Digest): Promise<void> {
    try {
      await rm(this.#path(d));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`content ${d}: not found`);
      throw err;
    }
  }

  /** Chunks of the blob from `offset`, `size` bytes (0 or past the end: to the end), as containerd's Read. */
  async *read(d: Digest, offset: number, size: number, signal: AbortSignal): AsyncGenerator<{ offset: number; data: Buffer }> {
    let fh: FileHandle;
    try {
      fh = await open(this.#path(d), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`content ${d}: not found`);
      throw err;
    }
    try {
      const total = (await fh.stat()).size;
      if (offset < 0) offset = 0;
      if (offset > total) {
        throw new SessionCallError({ grpcCode: GrpcCode.OUT_OF_RANGE, message: `read past object length ${total} bytes`, method: methodPath(Content.method.read) });
      }
      if (size <= 0 || offset + size > total) size = total - offset;
      let sent = 0;
      while (sent < size) {
        if (signal.aborted) throw new CancelledError(`read ${d}: canceled`);
        const want = Math.min(READ_CHUNK, size - sent);
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fh.read(buf, 0, want, offset + sent);
        if (bytesRead === 0) throw new LoomError('INTERNAL', `content store ${this.id}: ${d} shrank while being read`);
        // Read answers carry the offset of their data relative to the request's start, as containerd's do.
        yield { offset: sent, data: buf.subarray(0, bytesRead) };
        sent += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }

  status(ref: string): Status | undefined {
    const w = this.#ingests.get(ref);
    return w ? statusOf(w) : undefined;
  }

  statuses(): Status[] {
    return [...this.#ingests.values()].map(statusOf);
  }

  /** Ends the write of `ref`: its stream fails and what it wrote is removed. */
  async abort(ref: string): Promise<void> {
    const w = this.#ingests.get(ref);
    if (!w) throw new NotFoundError(`ingest ref ${JSON.stringify(ref)}: not found`);
    w.aborted.abort();
    this.#ingests.delete(ref);
    await this.#discard(w);
  }

  /**
   * One Write call. Each request gets one answer; the call ends after COMMIT or when the daemon
   * stops sending. The ingest is dropped unless committed.
   */
  async serveWrite(
    first: WriteContentRequest,
    rest: AsyncIterator<WriteContentRequest>,
    send: (res: Record<string, unknown>) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const ref = first.ref;
    if (!ref) throw new InvalidArgumentError('first message must have a reference');
    if (this.#ingests.has(ref)) {
      const w = this.#ingests.get(ref)!;
      throw new UnavailableError(`ref ${ref} locked for ${Date.now() - w.startedAt.getTime()}ms (since ${w.startedAt.toISOString()}): unavailable`);
    }
    const now = new Date();
    const w: Ingest = {
      ref,
      startedAt: now,
      updatedAt: now,
      offset: 0,
      total: Number(first.total),
      expected: first.expected,
      hash: createHash('sha256'),
      aborted: new AbortController(),
    };
    this.#ingests.set(ref, w);
    let committed = false;
    try {
      let req = first;
      for (;;) {
        if (w.aborted.signal.aborted) throw new CancelledError(`write ${ref}: aborted`);
        if (signal.aborted) throw new CancelledError(`write ${ref}: canceled`);
        const res: Record<string, unknown> = { action: req.action, offset: BigInt(w.offset) };
        if (req.expected) {
          if (!isDigest(req.expected)) throw new InvalidArgumentError(`expected digest ${JSON.stringify(req.expected)} failed validation`);
          w.expected = req.expected;
          if (await this.#stat(req.expected)) throw new LoomError('ALREADY_EXISTS', `blob with expected digest ${req.expected} exists`);
        }
        if (req.total > 0n) w.total = Number(req.total);

        switch (req.action) {
          case WriteAction.STAT:
            res.digest = currentDigest(w);
            res.startedAt = ts(w.startedAt);
            res.updatedAt = ts(w.updatedAt);
            res.total = BigInt(w.total);
            break;
          case WriteAction.WRITE:
          case WriteAction.COMMIT: {
            const off = Number(req.offset);
            if (off > 0 && off !== w.offset) {
              throw new SessionCallError({
                grpcCode: GrpcCode.OUT_OF_RANGE,
                message: `write @${off} must occur at current offset ${w.offset}`,
                method: methodPath(Content.method.write),
              });
            }
            if (off === 0 && w.offset > 0) await this.#restart(w);
            if (req.data.length > 0) await this.#append(w, req.data);
            res.offset = BigInt(w.offset);
            if (req.action === WriteAction.COMMIT) {
              await this.#commit(w);
              committed = true;
            }
            res.digest = currentDigest(w);
            break;
          }
          default:
            throw new InvalidArgumentError(`write ${ref}: unknown action ${String(req.action)}`);
        }
        await send(res);
        if (committed) return;
        const next = await rest.next();
        if (next.done) return;
        req = next.value;
      }
    } finally {
      if (this.#ingests.get(ref) === w) this.#ingests.delete(ref);
      if (!committed) await this.#discard(w);
    }
  }

  async #append(w: Ingest, data: Uint8Array): Promise<void> {
    // An Abort may have removed the file while this request waited: never recreate it.
    if (w.aborted.signal.aborted) throw new CancelledError(`write ${w.ref}: aborted`);
    if (!w.fh) {
      await mkdir(this.#ingestDir, { recursive: true });
      w.tmp = join(this.#ingestDir, `loom-${randomBytes(12).toString('hex')}`);
      w.fh = await open(w.tmp, 'wx', 0o644);
    }
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await w.fh.write(data, done, data.length - done, w.offset + done);
      done += bytesWritten;
    }
    w.hash.update(data);
    w.offset += data.length;
    w.updatedAt = new Date();
  }

  /** A WRITE at offset 0 on a started ingest: start over (containerd truncates the same way). */
  async #restart(w: Ingest): Promise<void> {
    if (w.fh) await w.fh.truncate(0);
    w.hash = createHash('sha256');
    w.offset = 0;
    w.updatedAt = new Date();
  }

  async #commit(w: Ingest): Promise<void> {
    if (w.total > 0 && w.offset !== w.total) {
      throw new LoomError('FAILED_PRECONDITION', `unexpected commit size ${w.offset}, expected ${w.total}: failed precondition`);
    }
    const actual = currentDigest(w);
    if (w.expected && actual !== w.expected) {
      throw new LoomError('FAILED_PRECONDITION', `unexpected commit digest ${actual}, expected ${w.expected}: failed precondition`);
    }
    if (w.aborted.signal.aborted) throw new CancelledError(`write ${w.ref}: aborted`);
    if (!w.fh) {
      // An empty blob: nothing was written, so the file is made now.
      await mkdir(this.#ingestDir, { recursive: true });
      w.tmp = join(this.#ingestDir, `loom-${randomBytes(12).toString('hex')}`);
      w.fh = await open(w.tmp, 'wx', 0o644);
    }
    await w.fh.sync();
    await w.fh.close();
    w.fh = undefined;
    const target = this.#path(actual as Digest);
    if (await this.#stat(actual as Digest)) {
      throw new LoomError('ALREADY_EXISTS', `content ${actual}: already exists`);
    }
    await mkdir(this.#blobs, { recursive: true });
    // Read-only once committed, as containerd leaves its blobs.
    await chmod(w.tmp!, 0o444);
    await rename(w.tmp!, target);
    w.tmp = undefined;
    log.debug({ store: this.id, digest: actual, size: w.offset }, 'blob committed');
  }

  async #discard(w: Ingest): Promise<void> {
    const fh = w.fh;
    const tmp = w.tmp;
    w.fh = undefined;
    w.tmp = undefined;
    try {
      await fh?.close();
    } catch {
      // Already closed by a racing abort; removing the file below is what matters.
    }
    if (tmp) await rm(tmp, { force: true });
  }
}

function currentDigest(w: Ingest): string {
  return `sha256:${w.hash.copy().digest('hex')}`;
}

function ts(d: Date): Timestamp {
  return timestampFromDate(d);
}

function statusOf(w: Ingest): Status {
  return create(StatusSchema, {
    ref: w.ref,
    startedAt: ts(w.startedAt),
    updatedAt: ts(w.updatedAt),
    offset: BigInt(w.offset),
    total: BigInt(w.total),
    expected: w.expected,
  });
}

/** Blobs here carry no labels; both times are the file's mtime (containerd's local store does the same without a label store). */
function infoOf(d: Digest, st: { size: number; mtime: Date }): Info {
  return create(InfoSchema, { digest: d, size: BigInt(st.size), createdAt: ts(st.mtime), updatedAt: ts(st.mtime) });
}
