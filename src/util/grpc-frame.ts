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
