import { create, fromBinary, isMessage, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';

/**
 * Hand-written codecs for message types a session sends in bulk (fsutil's Packet: one per file of
 * a listing), used by every typed stream of the tunnel in place of the reflective toBinary and
 * fromBinary. A codec must produce exactly what those would.
 */
interface Codec {
  encode(m: unknown): Uint8Array;
  decode(b: Uint8Array): unknown;
  /** Several messages as gRPC frames in one buffer (what encodeFrame(encode(m)) of each would make). */
  encodeFrames?(ms: readonly unknown[]): Buffer;
}

const codecs = new Map<string, Codec>();

export function registerCodec<D extends DescMessage>(
  schema: D,
  codec: { encode(m: MessageShape<D>): Uint8Array; decode(b: Uint8Array): MessageShape<D>; encodeFrames?(ms: readonly MessageShape<D>[]): Buffer },
): void {
  codecs.set(schema.typeName, codec as Codec);
}

/** `m` (a message, or the init object of one) in wire form. */
export function encodeMessage(schema: DescMessage, m: unknown): Uint8Array {
  const msg = isMessage(m, schema) ? m : create(schema, m as never);
  const c = codecs.get(schema.typeName);
  return c ? c.encode(msg) : toBinary(schema, msg);
}

/**
 * The batch encoder of `schema`'s codec, when it has one: messages (not init objects) to gRPC
 * frames in one buffer. Undefined for types without one; their streams frame message by message.
 */
export function framesEncoder(schema: DescMessage): ((ms: readonly unknown[]) => Buffer) | undefined {
  const c = codecs.get(schema.typeName);
  if (!c?.encodeFrames) return undefined;
  const encodeFrames = c.encodeFrames;
  return (ms) => encodeFrames(ms.map((m) => (isMessage(m, schema) ? m : create(schema, m as never))));
}

export function decodeMessage<D extends DescMessage>(schema: D, b: Uint8Array): MessageShape<D> {
  const c = codecs.get(schema.typeName);
  return (c ? c.decode(b) : fromBinary(schema, b)) as MessageShape<D>;
}
