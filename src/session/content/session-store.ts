/**
 * A content store on the client's machine, reached through the build's session: the daemon end
 * of `--export-cache type=local,dest=DIR` / `--import-cache type=local,src=DIR` (and of OCI layout
 * stores). The client serves containerd's Content service; each call names the store with the
 * `buildkit-attachable-store-id` header. The exchanges follow containerd's gRPC proxy, so the same
 * code works against upstream buildctl (containerd's content server over a local store) and
 * against loom's client (session/client/content-store.ts).
 *
 * Trust: the bytes come from another machine, so reads are checked against the descriptor's size
 * and digest before the last byte is handed out; writes state the expected size and digest and the
 * store refuses to commit anything else.
 */
import { createHash } from 'node:crypto';
import {
  Content,
  WriteAction,
  type InfoResponse,
  type ReadContentResponse,
  type WriteContentResponse,
} from '../../gen/containerd/content_pb.js';
import { isDigest, type Digest } from '../../util/digest.js';
import { CancelledError, errorMessage, InvalidArgumentError, LoomError, NotFoundError, UnimplementedError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import type { CallMetadata, MessageStream, SessionCaller } from '../types.js';
import { STORE_ID_HEADER } from './store-id.js';

const log = rootLog.child({ sub: 'session-content' });

/** Largest data payload per Write message (containerd's content copy buffer is 1 MiB too). */
export const WRITE_CHUNK = 1 << 20;

/** How long a write waits for another writer of the same ref to finish (the store answers UNAVAILABLE meanwhile). */
const LOCK_WAIT_MS = 60_000;

export interface SessionContentStoreOptions {
  caller: SessionCaller;
  /** `local:<dir>`, `oci:<key>` or `export` (see store-id.ts). */
  storeId: string;
}

/** What a blob is expected to be. `size` may be omitted on reads: the store's Info supplies it. */
export interface BlobDescriptor {
  digest: Digest | string;
  size?: number;
  mediaType?: string;
}

export interface BlobInfo {
  digest: Digest;
  size: number;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface WriteOptions extends CallOptions {
  /**
   * The ingest's name in the store; writers of the same ref wait for each other. Default: the
   * digest, as upstream's WriteBlob, so two writers of one blob dedupe on the store's lock.
   */
  ref?: string;
}

export class SessionContentStore {
  readonly caller: SessionCaller;
  readonly storeId: string;
  readonly #md: CallMetadata;

  constructor(opts: SessionContentStoreOptions) {
    if (!opts.storeId) throw new InvalidArgumentError('session content store: empty store id');
    this.caller = opts.caller;
    this.storeId = opts.storeId;
    this.#md = { [STORE_ID_HEADER]: [opts.storeId] };
  }

  /** The committed blob's size, or undefined when the store does not have it. */
  async info(digest: Digest | string, opts?: CallOptions): Promise<BlobInfo | undefined> {
    const d = this.#digest(digest, 'info');
    this.#requireService();
    let res: InfoResponse;
    try {
      res = await this.caller.unary(Content.method.info, { digest: d }, { metadata: this.#md, signal: opts?.signal });
    } catch (err) {
      // NOT_FOUND is a missing blob, unless the client does not serve this store at all
      // (both are NOT_FOUND on the wire; the message tells them apart, upstream's and loom's).
      if (codeIs(err, 'NOT_FOUND') && !isUnknownStore(err)) return undefined;
      throw this.#wrap(err, `info ${d}`);
    }
    const size = Number(res.info?.size ?? -1n);
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new LoomError('INTERNAL', `content store ${this.storeId}: info ${d}: invalid size ${String(res.info?.size)} in the answer`);
    }
    return { digest: d, size };
  }

  async has(digest: Digest | string, opts?: CallOptions): Promise<boolean> {
    return (await this.info(digest, opts)) !== undefined;
  }

  /**
   * The blob's bytes in chunks. The chunk that completes the blob is yielded only after the size
   * and digest were checked, so a consumer that saw every byte saw the right bytes; a mismatch
   * throws instead. A missing blob is a NotFoundError naming the store and digest.
   */
  async *read(desc: BlobDescriptor, opts?: CallOptions): AsyncGenerator<Buffer> {
    const d = this.#digest(desc.digest, 'read');
    let size = desc.size;
    if (size === undefined) {
      const info = await this.info(d, opts);
      if (!info) throw new NotFoundError(`content store ${this.storeId}: blob ${d} not found`);
      size = info.size;
    }
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`content store ${this.storeId}: read ${d}: invalid size ${size}`);
    this.#requireService();
    const what = `read ${d}`;
    let s: MessageStream<unknown, ReadContentResponse>;
    try {
      s = await this.caller.stream(Content.method.read, { metadata: this.#md, signal: opts?.signal });
      // offset 0, size 0: the whole blob.
      await s.send({ digest: d, offset: 0n, size: 0n });
      s.end();
    } catch (err) {
      throw this.#wrap(err, what);
    }
    const hash = createHash('sha256');
    let got = 0;
    let held: Buffer | undefined;
    let done = false;
    try {
      try {
        for await (const m of s.recv()) {
          if (Number(m.offset) !== got) {
            throw own(new LoomError('INTERNAL', `content store ${this.storeId}: ${what}: chunk at offset ${m.offset}, expected ${got}`));
          }
          if (m.data.length === 0) continue;
          got += m.data.length;
          if (got > size) throw mismatch(this.storeId, d, `more than the expected ${size} bytes`);
          hash.update(m.data);
          if (held) yield held;
          held = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.length);
        }
      } catch (err) {
        if (isOwn(err)) throw err;
        if (codeIs(err, 'NOT_FOUND') && !isUnknownStore(err)) throw own(new NotFoundError(`content store ${this.storeId}: blob ${d} not found`, { cause: err }));
        throw this.#wrap(err, what);
      }
      if (got !== size) throw mismatch(this.storeId, d, `got ${got} bytes, expected ${size}`);
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== d) throw mismatch(this.storeId, d, `content has digest ${actual}`);
      done = true;
      if (held) yield held;
    } finally {
      // A consumer that stops early (or a failed check) must not leave the call open.
      if (!done) s.close(new CancelledError(`${what}: stopped`));
    }
  }

  /** The whole blob in memory, verified as read() does. */
  async readAll(desc: BlobDescriptor, opts?: CallOptions): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of this.read(desc, opts)) parts.push(c);
    return Buffer.concat(parts);
  }

  /**
   * Stores a blob under its digest. Nothing is sent when the store already has it (the store
   * answers the opening STAT with ALREADY_EXISTS, as containerd's does); otherwise the bytes go in
   * chunks of at most 1 MiB and the store commits them only if they have `desc.size` bytes and
   * digest `desc.digest`. A Readable passed as `data` is consumed, or destroyed if not needed.
   */
  async write(desc: BlobDescriptor, data: Uint8Array | AsyncIterable<Uint8Array>, opts?: WriteOptions): Promise<void> {
    const d = this.#digest(desc.digest, 'write');
    const size = desc.size;
    if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
      throw new InvalidArgumentError(`content store ${this.storeId}: write ${d}: invalid size ${String(size)}`);
    }
    if (data instanceof Uint8Array) {
      // Whole buffers are checked here: a wrong descriptor is the caller's bug, not worth a transfer.
      if (data.length !== size) throw mismatch(this.storeId, d, `data has ${data.length} bytes, descriptor says ${size}`);
      const actual = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      if (actual !== d) throw mismatch(this.storeId, d, `data has digest ${actual}`);
    }
    this.#requireService();
    const ref = opts?.ref ?? d;
    const what = `write ${d}`;

    const opened = await this.#openWriter(ref, d, size, opts?.signal);
    if (!opened) {
      discard(data);
      return;
    }
    const { stream: s, next } = opened;
    let committed = false;
    try {
      const hash = createHash('sha256');
      let offset = 0;
      const sendData = async (chunk: Buffer): Promise<void> => {
        await s.send({ action: WriteAction.WRITE, offset: BigInt(offset), data: chunk });
        const res = await next();
        offset += chunk.length;
        if (Number(res.offset) !== offset) {
          throw own(new LoomError('INTERNAL', `content store ${this.storeId}: ${what}: store is at offset ${res.offset} after a write, expected ${offset}`));
        }
      };
      for await (const chunk of rechunk(data, WRITE_CHUNK)) {
        if (offset + chunk.length > size) throw mismatch(this.storeId, d, `data is longer than the expected ${size} bytes`);
        hash.update(chunk);
        await sendData(chunk);
      }
      if (offset !== size) throw mismatch(this.storeId, d, `data has ${offset} bytes, descriptor says ${size}`);
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== d) throw mismatch(this.storeId, d, `data has digest ${actual}`);

      await s.send({ action: WriteAction.COMMIT, total: BigInt(size), offset: BigInt(offset), expected: d });
      let res: WriteContentResponse;
      try {
        res = await next();
      } catch (err) {
        // Someone else committed the same blob while we wrote: it is there, which is what we wanted.
        if (codeIs(err, 'ALREADY_EXISTS')) {
          committed = true;
          return;
        }
        throw err;
      }
      if (Number(res.offset) !== size || res.digest !== d) {
        throw own(new LoomError('INTERNAL', `content store ${this.storeId}: ${what}: store committed ${res.digest || '(no digest)'} with ${res.offset} bytes`));
      }
      committed = true;
    } catch (err) {
      s.close(new CancelledError(`${what}: failed`));
      await this.#abort(ref);
      if (isOwn(err)) throw err;
      throw this.#wrap(err, what);
    } finally {
      discard(data);
      if (committed) await finish(s);
    }
  }

  /** Writes every blob that the store does not have yet; `get` supplies the bytes of one. */
  async writeAll(
    descs: BlobDescriptor[],
    get: (desc: BlobDescriptor) => Promise<Uint8Array | AsyncIterable<Uint8Array>>,
    opts?: CallOptions,
  ): Promise<void> {
    for (const desc of descs) {
      if (await this.has(desc.digest, opts)) continue;
      await this.write(desc, await get(desc), opts);
    }
  }

  /**
   * Opens a Write call and negotiates it (STAT with ref, total and expected digest). Returns
   * undefined when the store already has the blob. Another writer holding the same ref makes the
   * store answer UNAVAILABLE: wait and retry, as containerd's OpenWriter does.
   */
  async #openWriter(
    ref: string,
    d: Digest,
    size: number,
    signal: AbortSignal | undefined,
  ): Promise<{ stream: MessageStream<unknown, WriteContentResponse>; next: () => Promise<WriteContentResponse> } | undefined> {
    const started = Date.now();
    let backoff = 16;
    for (;;) {
      let s: MessageStream<unknown, WriteContentResponse> | undefined;
      try {
        s = await this.caller.stream(Content.method.write, { metadata: this.#md, signal });
        const it = s.recv()[Symbol.asyncIterator]();
        const next = async (): Promise<WriteContentResponse> => {
          const r = await it.next();
          if (r.done) throw own(new LoomError('INTERNAL', `content store ${this.storeId}: write ${d}: the store ended the write without an answer`));
          return r.value;
        };
        await s.send({ action: WriteAction.STAT, ref, total: BigInt(size), expected: d });
        const st = await next();
        if (Number(st.offset) > 0) {
          // A partial ingest of this ref is left from an earlier attempt. The first WRITE at offset
          // 0 makes the store start over, so nothing needs resuming.
          log.debug({ store: this.storeId, ref, offset: Number(st.offset) }, 'restarting partial ingest');
        }
        return { stream: s, next };
      } catch (err) {
        s?.close();
        if (codeIs(err, 'ALREADY_EXISTS')) return undefined;
        const sessionGone = signal?.aborted || err instanceof CancelledError;
        if (codeIs(err, 'UNAVAILABLE') && !sessionGone && Date.now() - started < LOCK_WAIT_MS && isLockedError(err)) {
          await sleep(Math.random() * backoff, signal);
          backoff = Math.min(backoff * 2, 2048);
          continue;
        }
        throw isOwn(err) ? err : this.#wrap(err, `write ${d}`);
      }
    }
  }

  /** Drops what a failed write left in the store; best effort, the write's own error matters more. */
  async #abort(ref: string): Promise<void> {
    try {
      await this.caller.unary(Content.method.abort, { ref }, { metadata: this.#md, signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      log.debug({ store: this.storeId, ref, err: errorMessage(err) }, 'abort after failed write');
    }
  }

  #digest(digest: string, op: string): Digest {
    if (!isDigest(digest)) throw new InvalidArgumentError(`content store ${this.storeId}: ${op}: invalid digest ${JSON.stringify(digest)}`);
    return digest;
  }

  #requireService(): void {
    if (!this.caller.supports(Content.method.info)) {
      throw new UnimplementedError(
        `content store ${this.storeId}: session ${this.caller.id} does not serve ${Content.typeName} (the client attached no content stores)`,
      );
    }
  }

  /** A failed call as a LoomError that keeps the peer's code and names the store and the operation. */
  #wrap(err: unknown, what: string): LoomError {
    const code = err instanceof LoomError ? err.code : 'INTERNAL';
    return new LoomError(code, `content store ${this.storeId}: ${what}: ${errorMessage(err)}`, { cause: err });
  }
}

function mismatch(storeId: string, d: Digest, detail: string): LoomError {
  return own(new LoomError('FAILED_PRECONDITION', `content store ${storeId}: blob ${d}: ${detail}`));
}

function codeIs(err: unknown, code: LoomError['code']): boolean {
  return err instanceof LoomError && err.code === code;
}

/** Errors this file raised already name the store and blob; anything else (the peer's status, the tunnel) gets wrapped. */
const ownErrors = new WeakSet<Error>();
function own<E extends Error>(err: E): E {
  ownErrors.add(err);
  return err;
}
function isOwn(err: unknown): err is LoomError {
  return err instanceof LoomError && ownErrors.has(err);
}

function isUnknownStore(err: unknown): boolean {
  return /\bunknown store\b/.test(errorMessage(err));
}

/** containerd's ref lock answer ("ref ... locked for ..."), as opposed to a session that went away. */
function isLockedError(err: unknown): boolean {
  return /\blocked\b/.test(errorMessage(err));
}

/** Ends a finished Write call: the store closes its side after the commit; extra answers are ignored. */
async function finish(s: MessageStream<unknown, unknown>): Promise<void> {
  s.end();
  try {
    for await (const _ of s.recv()) {
      // containerd's server repeats the commit answer once; nothing else is expected.
    }
  } catch (err) {
    log.debug({ err: errorMessage(err) }, 'content write: status after commit');
  }
}

/** Releases a source write() did not read to the end (a Readable would otherwise stay open). */
function discard(data: Uint8Array | AsyncIterable<Uint8Array>): void {
  const r = data as { destroy?: () => void; destroyed?: boolean };
  if (!(data instanceof Uint8Array) && typeof r.destroy === 'function' && !r.destroyed) r.destroy();
}

/** Regroups a byte source into chunks of exactly `size` bytes (the last may be shorter). */
async function* rechunk(data: Uint8Array | AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  if (data instanceof Uint8Array) {
    const b = Buffer.from(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
    return;
  }
  let parts: Buffer[] = [];
  let n = 0;
  for await (const c0 of data) {
    let c = Buffer.from(c0.buffer, c0.byteOffset, c0.length);
    while (c.length > 0) {
      const take = Math.min(size - n, c.length);
      parts.push(c.subarray(0, take));
      n += take;
      c = c.subarray(take);
      if (n === size) {
        yield Buffer.concat(parts, n);
        parts = [];
        n = 0;
      }
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new CancelledError('context canceled', { cause: signal.reason }));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new CancelledError('context canceled', { cause: signal?.reason }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
