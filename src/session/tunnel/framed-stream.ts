import type { Http2Stream } from 'node:http2';
import { CancelledError, LoomError } from '../../util/errors.js';
import { encodeFrame, encodeFrames } from '../../util/grpc-frame.js';
import type { CallMetadata, MessageStream } from '../types.js';

/** How many decoded messages may wait for the reader before the HTTP/2 stream is paused (backpressure). */
const HIGH_WATER = 16;

export interface FramedStreamOptions<Send, Recv> {
  h2: Http2Stream;
  method: string;
  encode: (msg: Send) => Uint8Array;
  decode: (payload: Buffer) => Recv;
  /** Several messages as gRPC frames in one buffer, for types whose codec can (see codecs.ts). */
  encodeFrames?: (msgs: readonly Send[]) => Buffer;
  metadata: CallMetadata;
  maxMessageSize?: number;
}

/**
 * gRPC messages over one HTTP/2 stream, the part both ends of the tunnel share: framing, a bounded
 * receive queue that pauses the stream when the reader lags, and write backpressure.
 * How the call ends (trailers on the server, status on the client) is the subclass's business:
 * it calls `finishRecv(err?)` exactly once when no more messages can arrive.
 */
export abstract class FramedStream<Send, Recv> implements MessageStream<Send, Recv> {
  readonly metadata: CallMetadata;
  protected readonly h2: Http2Stream;
  protected readonly method: string;
  readonly #encode: (msg: Send) => Uint8Array;
  readonly #decode: (payload: Buffer) => Recv;
  readonly #encodeFrames: ((msgs: readonly Send[]) => Buffer) | undefined;
  readonly #decoder: ChunkedFrameDecoder;
  readonly #queue: Recv[] = [];
  #recvDone = false;
  #recvErr: Error | undefined;
  #wake: (() => void) | undefined;
  #iterating = false;

  constructor(opts: FramedStreamOptions<Send, Recv>) {
    this.h2 = opts.h2;
    this.method = opts.method;
    this.metadata = opts.metadata;
    this.#encode = opts.encode;
    this.#decode = opts.decode;
    this.#encodeFrames = opts.encodeFrames;
    this.#decoder = new ChunkedFrameDecoder(opts.maxMessageSize ?? 64 * 1024 * 1024);
    this.h2.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  #onData(chunk: Buffer): void {
    if (this.#recvDone) return;
    let frames: Buffer[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      this.onProtocolError(new LoomError('INTERNAL', `${this.method}: ${(err as Error).message}`, { cause: err }));
      return;
    }
    for (const f of frames) {
      let msg: Recv;
      try {
        msg = this.#decode(f);
      } catch (err) {
        this.onProtocolError(new LoomError('INTERNAL', `${this.method}: cannot decode message: ${(err as Error).message}`, { cause: err }));
        return;
      }
      this.#queue.push(msg);
    }
    if (this.#queue.length >= HIGH_WATER) this.h2.pause();
    this.#notify();
  }

  /** A malformed frame or message: the subclass fails the call. */
  protected abstract onProtocolError(err: Error): void;

  protected finishRecv(err?: Error): void {
    if (this.#recvDone) return;
    this.#recvDone = true;
    this.#recvErr = err;
    this.#notify();
  }

  protected get recvFinished(): boolean {
    return this.#recvDone;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  send(msg: Send): Promise<void> {
    return this.#write(() => encodeFrame(this.#encode(msg)));
  }

  /** Several messages as one HTTP/2 write: one DATA frame (or a few) instead of one per message. */
  sendMany(msgs: readonly Send[]): Promise<void> {
    const batch = this.#encodeFrames;
    if (batch) return this.#write(() => batch(msgs));
    return this.#write(() => encodeFrames(msgs.map((m) => this.#encode(m))));
  }

  /** Messages already in gRPC frames (a typed stream's batch encoder made them). */
  sendFrames(frames: Buffer): Promise<void> {
    return this.#write(() => frames);
  }

  async #write(frame: () => Buffer): Promise<void> {
    if (this.h2.destroyed || this.h2.writableEnded) {
      throw this.sendClosedError();
    }
    const data = frame();
    await new Promise<void>((resolve, reject) => {
      const ok = this.h2.write(data, (err) => {
        if (err) reject(this.sendClosedError(err));
      });
      if (ok) {
        resolve();
        return;
      }
      // Not flushed yet: wait until HTTP/2 flow control lets the frame out, or the stream dies.
      const cleanup = (): void => {
        this.h2.off('drain', onDrain);
        this.h2.off('close', onClose);
      };
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (): void => {
        cleanup();
        reject(this.sendClosedError());
      };
      this.h2.on('drain', onDrain);
      this.h2.on('close', onClose);
    });
  }

  /** The error a send on a finished stream reports: the call's own status when known. */
  protected sendClosedError(cause?: Error): Error {
    return this.#recvErr ?? new CancelledError(`${this.method}: stream is closed`, { cause });
  }

  abstract end(): void;
  abstract close(err?: Error): void;

  recv(): AsyncIterable<Recv> {
    if (this.#iterating) throw new LoomError('INTERNAL', `${this.method}: recv() may only be iterated once`);
    this.#iterating = true;
    return { [Symbol.asyncIterator]: () => this.#iterate() };
  }

  async *#iterate(): AsyncGenerator<Recv> {
    for (;;) {
      if (this.#queue.length > 0) {
        const m = this.#queue.shift()!;
        if (this.#queue.length < HIGH_WATER / 2 && this.h2.isPaused()) this.h2.resume();
        yield m;
        continue;
      }
      if (this.#recvDone) {
        if (this.#recvErr) throw this.#recvErr;
        return;
      }
      await new Promise<void>((r) => (this.#wake = r));
    }
  }
}

/**
 * gRPC frames out of HTTP/2 DATA chunks. Chunks are kept as a list and joined once per frame:
 * a message of several MiB arrives in hundreds of 16 KiB chunks, and joining the buffer on every
 * chunk (as util/grpc-frame's FrameDecoder does) copies it hundreds of times.
 */
class ChunkedFrameDecoder {
  readonly #max: number;
  #chunks: Buffer[] = [];
  #len = 0;
  /** Length of the frame being collected (payload), once its 5-byte header is in. */
  #need = -1;

  constructor(max: number) {
    this.#max = max;
  }

  push(chunk: Buffer): Buffer[] {
    this.#chunks.push(chunk);
    this.#len += chunk.length;
    const out: Buffer[] = [];
    for (;;) {
      if (this.#need < 0) {
        if (this.#len < 5) break;
        const hdr = this.#take(5);
        if (hdr[0] !== 0) throw new Error('compressed gRPC frames are not supported');
        const n = hdr.readUInt32BE(1);
        if (n > this.#max) throw new Error(`gRPC frame of ${n} bytes exceeds the limit of ${this.#max}`);
        this.#need = n;
      }
      if (this.#len < this.#need) break;
      out.push(this.#take(this.#need));
      this.#need = -1;
    }
    return out;
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    let res: Buffer;
    if (first.length >= n) {
      res = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      res = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.#chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(res, off, 0, k);
        off += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#len -= n;
    return res;
  }
}
