import http2, { type ClientHttp2Stream } from 'node:http2';
import { CancelledError } from '../../util/errors.js';
import type { CallMetadata } from '../types.js';
import { FramedStream } from './framed-stream.js';
import { GrpcCode, SessionCallError, statusFromHeaders } from './grpc-status.js';
import { headersToMetadata } from './metadata.js';

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/**
 * The calling side of one gRPC call through the tunnel (the daemon end). The call's outcome is its
 * grpc-status, from the trailers or from a trailers-only response; a stream reset without status
 * becomes CANCELLED (we or the peer cancelled) or UNAVAILABLE (the tunnel went away).
 */
export class ClientCall<Send, Recv> extends FramedStream<Send, Recv> {
  #status: SessionCallError | null | undefined;
  #headers: Promise<CallMetadata>;
  #localErr: Error | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => this.close(new CancelledError(`${this.method}: context canceled`));

  constructor(opts: {
    h2: ClientHttp2Stream;
    method: string;
    encode: (msg: Send) => Uint8Array;
    encodeFrames?: (msgs: readonly Send[]) => Buffer;
    decode: (payload: Buffer) => Recv;
    signal?: AbortSignal;
  }) {
    const metadata: CallMetadata = {};
    super({ ...opts, metadata });
    const h2 = opts.h2;
    this.#headers = new Promise<CallMetadata>((resolve, reject) => {
      h2.once('response', (headers) => {
        const status = headers[':status'];
        Object.assign(metadata, headersToMetadata(headers));
        if (status !== 200) {
          this.#status = new SessionCallError({
            grpcCode: status === 404 ? GrpcCode.UNIMPLEMENTED : GrpcCode.UNKNOWN,
            message: `${this.method}: unexpected HTTP status ${String(status)}`,
            method: this.method,
          });
        } else {
          const st = statusFromHeaders(headers, this.method);
          if (st !== undefined) this.#status = st;
        }
        resolve(metadata);
      });
      h2.once('close', () => reject(this.#closeError()));
    });
    // The headers promise is awaited by stream(); a failure is reported there or through recv().
    this.#headers.catch(() => undefined);
    h2.on('trailers', (trailers) => {
      const st = statusFromHeaders(trailers, this.method);
      if (st !== undefined) this.#status = st;
    });
    h2.on('error', () => {
      // The error's meaning is read from the close below (rstCode, status); without a listener it would throw.
    });
    h2.once('end', () => {
      // The peer finished (trailers or a trailers-only response). If we are still sending, the call
      // is over all the same: reset our half so the stream is freed, as grpc-go does.
      if (this.#status === undefined) return;
      this.finishRecv(this.#status ?? undefined);
      if (!h2.destroyed && !h2.writableEnded) h2.close(NGHTTP2_NO_ERROR);
    });
    h2.once('close', () => {
      this.#signal?.removeEventListener('abort', this.#onAbort);
      this.finishRecv(this.#closeError() ?? undefined);
    });
    this.#signal = opts.signal;
    if (opts.signal) {
      if (opts.signal.aborted) queueMicrotask(this.#onAbort);
      else opts.signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  /** Resolves with the response headers, or rejects with the call's error if it failed before any. */
  headers(): Promise<CallMetadata> {
    return this.#headers;
  }

  #closeError(): Error | null {
    if (this.#localErr) return this.#localErr;
    if (this.#status !== undefined) return this.#status;
    const code = this.h2.rstCode;
    if (code === NGHTTP2_CANCEL) return new CancelledError(`${this.method}: canceled by the session peer`);
    if (code === NGHTTP2_REFUSED_STREAM) {
      return new SessionCallError({ grpcCode: GrpcCode.UNAVAILABLE, message: `${this.method}: stream refused by the session peer`, method: this.method });
    }
    return new SessionCallError({
      grpcCode: GrpcCode.UNAVAILABLE,
      message: `${this.method}: session stream closed without a status${code ? ` (HTTP/2 error ${code})` : ''}`,
      method: this.method,
    });
  }

  protected onProtocolError(err: Error): void {
    this.#localErr = err;
    this.h2.close(NGHTTP2_CANCEL);
  }

  end(): void {
    if (!this.h2.writableEnded && !this.h2.destroyed) this.h2.end();
  }

  /** Cancels the call: RST_STREAM(CANCEL) to the peer; recv() then throws `err` (or CANCELLED). */
  close(err?: Error): void {
    if (this.recvFinished || this.h2.destroyed) return;
    this.#localErr = err ?? new CancelledError(`${this.method}: context canceled`);
    this.h2.close(NGHTTP2_CANCEL);
  }
}
