/**
 * The gRPC message framing on HTTP/2 (1 byte compressed flag, 4 bytes big-endian length, payload).
 * Used where loom speaks gRPC over a stream grpc-js cannot own: the session tunnel.
 */
export function encodeFrame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + payload.byteLength);
  putFrameHeader(out, 0, payload.byteLength);
  out.set(payload, 5);
  return out;
}

/** Several payloads framed one after another in one buffer (one write instead of one per message). */
export function encodeFrames(payloads: readonly Uint8Array[]): Buffer {
  let total = 0;
  for (const p of payloads) total += 5 + p.byteLength;
  const out = Buffer.allocUnsafe(total);
  let pos = 0;
  for (const p of payloads) {
    putFrameHeader(out, pos, p.byteLength);
    out.set(p, pos + 5);
    pos += 5 + p.byteLength;
  }
  return out;
}

/** Writes a frame's 5-byte header (uncompressed, `len` bytes of message to follow) at `at`. */
export function putFrameHeader(b: Uint8Array, at: number, len: number): void {
  b[at] = 0;
  b[at + 1] = len >>> 24;
  b[at + 2] = (len >>> 16) & 0xff;
  b[at + 3] = (len >>> 8) & 0xff;
  b[at + 4] = len & 0xff;
}
