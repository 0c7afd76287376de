/**
 * The gRPC message framing on HTTP/2 (1 byte compressed flag, 4 bytes big-endian length, payload).
 * Used where loom speaks gRPC over a stream grpc-js cannot own: the session tunnel.
 */
export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + payload.byteLength);
  out[0] = 0;
  out.writeUInt32BE(payload.byteLength, 1);
  out.set(payload, 5);
  return out;
}

/** Accumulates bytes and yields whole frames. Compressed frames are refused (loom never negotiates compression). */
export class FrameDecoder {
  #buf: Buffer = Buffer.alloc(0);
  readonly #maxSize: number;

  constructor(opts: { maxSize?: number } = {}) {
    this.#maxSize = opts.maxSize ?? 64 * 1024 * 1024;
  }

  push(chunk: Buffer): Buffer[] {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const frames: Buffer[] = [];
    while (this.#buf.length >= 5) {
      if (this.#buf[0] !== 0) throw new Error('compressed gRPC frames are not supported');
      const len = this.#buf.readUInt32BE(1);
      if (len > this.#maxSize) throw new Error(`gRPC frame of ${len} bytes exceeds the limit of ${this.#maxSize}`);
      if (this.#buf.length < 5 + len) break;
      frames.push(this.#buf.subarray(5, 5 + len));
      this.#buf = this.#buf.subarray(5 + len);
    }
    return frames;
  }
}
