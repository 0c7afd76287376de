import http2, { type ServerHttp2Stream } from 'node:http2';
import { CancelledError, LoomError } from '../../util/errors.js';
import type { CallMetadata } from '../types.js';
import { FramedStream } from './framed-stream.js';
import { statusTrailers } from './grpc-status.js';

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

/**
 * The serving side of one gRPC call through the tunnel (the client end). Response headers go out
 * with the first message or with the status; the status goes out as trailers after the last
 * message, or as a trailers-only response when nothing was sent (as grpc-go does).
 * `signal` fires when the caller cancels (RST_STREAM), the deadline passes, or the tunnel goes.
 */
export class ServerCall<Send, Recv> extends FramedStream<Send, Recv> {
  readonly #h2: ServerHttp2Stream;
  readonly #ac = new AbortController();
  #headersSent = false;
  #finished = false;
  #status: Error | undefined;

  constructor(opts: {
    h2: ServerHttp2Stream;
    method: string;
    metadata: CallMetadata;
    encode: (msg: Send) => Uint8Array;
    decode: (payload: Buffer) => Recv;
    timeoutMs?: number;
  }) {
    super(opts);
    const h2 = opts.h2;
    this.#h2 = h2;
    h2.on('end', () => this.finishRecv());
    h2.on('error', () => {
      // Reported through the close below.
    });
    h2.once('close', () => {
      clearTimeout(timer);
      if (h2.rstCode !== NGHTTP2_NO_ERROR || !this.#finished) {
        const err = new CancelledError(`${this.method}: canceled by the caller`);
        this.finishRecv(err);
        if (!this.#ac.signal.aborted) this.#ac.abort(err);
      } else {
        this.finishRecv();
      }
    });
    h2.on('wantTrailers', () => {
      h2.sendTrailers(statusTrailers(this.#status));
    });
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        const err = new LoomError('DEADLINE_EXCEEDED', `${this.method}: context deadline exceeded`);
        this.#ac.abort(err);
        this.close(err);
      }, opts.timeoutMs);
      timer.unref();
    }
  }

  get signal(): AbortSignal {
    return this.#ac.signal;
  }

  get finished(): boolean {
    return this.#finished;
  }

  #sendHeaders(): void {
    if (this.#headersSent) return;
    this.#headersSent = true;
    this.#h2.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  }

  override async send(msg: Send): Promise<void> {
    if (this.#finished) throw new CancelledError(`${this.method}: call already finished`);
    this.#sendHeaders();
    return super.send(msg);
  }

  override async sendMany(msgs: readonly Send[]): Promise<void> {
    if (this.#finished) throw new CancelledError(`${this.method}: call already finished`);
    this.#sendHeaders();
    return super.sendMany(msgs);
  }

  override async sendFrames(frames: Buffer): Promise<void> {
    if (this.#finished) throw new CancelledError(`${this.method}: call already finished`);
    this.#sendHeaders();
    return super.sendFrames(frames);
  }

  /** Finishes the call with status OK (idempotent; the first end or close wins). */
  end(): void {
    this.#finish(undefined);
  }

  /** Finishes the call with `err` as its status; without `err`, CANCELLED. */
  close(err?: Error): void {
    this.#finish(err ?? new CancelledError(`${this.method}: call closed`));
  }

  #finish(err: Error | undefined): void {
    if (this.#finished) return;
    this.#finished = true;
    const h2 = this.#h2;
    if (h2.destroyed || h2.closed) return;
    this.#status = err;
    if (!this.#headersSent) {
      // Trailers-only response: one HEADERS frame with END_STREAM.
      this.#headersSent = true;
      h2.respond({ ':status': 200, 'content-type': 'application/grpc', ...statusTrailers(err) }, { endStream: true });
      return;
    }
    if (h2.writableEnded) {
      h2.close(NGHTTP2_CANCEL);
      return;
    }
    h2.end();
  }

  protected onProtocolError(err: Error): void {
    this.close(err);
  }
}
