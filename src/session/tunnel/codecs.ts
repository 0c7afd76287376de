import { create, fromBinary, isMessage, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';

/**
 * Hand-written codecs for message types a session sends in bulk (fsutil's Packet: one per file of
 * a listing), used by every typed stream of the tunnel in place of the reflective toBinary and
 * fromBinary. A codec must produce exactly what those would.
 */
interface Codec {
  /** The message's full name (what the schema's typeName is), known without loading the schema. */
  typeName: string;
  encode(m: unknown): Uint8Array;
  decode(b: Uint8Array): unknown;
  /** Several messages as gRPC frames in one buffer (what encodeFrame(encode(m)) of each would make). */
  encodeFrames?(ms: readonly unknown[]): Buffer;
}

// By the schema object first: a codec's stream then never reads a property of its schema, which
// in the client's bundle is what builds the descriptors (scripts/bundle-cli.mjs); by name for
// another object describing the same type.
const bySchema = new Map<DescMessage, Codec>();
const byName = new Map<string, Codec>();

export function registerCodec<D extends DescMessage>(
  schema: D,
  codec: {
    typeName: MessageShape<D>['$typeName'];
    encode(m: MessageShape<D>): Uint8Array;
    decode(b: Uint8Array): MessageShape<D>;
    encodeFrames?(ms: readonly MessageShape<D>[]): Buffer;
  },
): void {
  bySchema.set(schema, codec as Codec);
  byName.set(codec.typeName, codec as Codec);
}

/** The type names codecs were registered with, by schema (the unit tests hold them to the schemas'). */
export function registeredCodecs(): [DescMessage, string][] {
  return [...bySchema].map(([schema, c]) => [schema, c.typeName]);
}

function codecOf(schema: DescMessage): Codec | undefined {
  return bySchema.get(schema) ?? byName.get(schema.typeName);
}

/** isMessage(m, schema) for a codec's type, without the schema. */
function isTyped(m: unknown, c: Codec): boolean {
  return typeof m === 'object' && m !== null && (m as { $typeName?: unknown }).$typeName === c.typeName;
}

/** `m` (a message, or the init object of one) in wire form. */
export function encodeMessage(schema: DescMessage, m: unknown): Uint8Array {
  const c = codecOf(schema);
  if (c) return c.encode(isTyped(m, c) ? m : create(schema, m as never));
  return toBinary(schema, isMessage(m, schema) ? m : create(schema, m as never));
}

/**
 * The batch encoder of `schema`'s codec, when it has one: messages (not init objects) to gRPC
 * frames in one buffer. Undefined for types without one; their streams frame message by message.
 */
export function framesEncoder(schema: DescMessage): ((ms: readonly unknown[]) => Buffer) | undefined {
  const c = codecOf(schema);
  if (!c?.encodeFrames) return undefined;
  const encodeFrames = c.encodeFrames;
  return (ms) => encodeFrames(ms.map((m) => (isTyped(m, c) ? m : create(schema, m as never))));
}

export function decodeMessage<D extends DescMessage>(schema: D, b: Uint8Array): MessageShape<D> {
  const c = codecOf(schema);
  return (c ? c.decode(b) : fromBinary(schema, b)) as MessageShape<D>;
}
