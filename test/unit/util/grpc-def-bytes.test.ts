import { randomBytes } from 'node:crypto';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { BytesMessageSchema } from '../../../src/gen/buildkit/control_pb.js';
import { StatSchema } from '../../../src/gen/fsutil/stat_pb.js';
import { decodeBytesOnly, deserializer, encodeBytesOnly, serializer } from '../../../src/util/grpc-def.js';

describe('hand-made BytesMessage codec', () => {
  const sizes = [0, 1, 50, 127, 128, 300, 16383, 16384, 70000, 2_100_000];

  it('encodes byte for byte as protobuf-es does, for every length class of the varint', () => {
    for (const n of sizes) {
      const data = randomBytes(n);
      const want = Buffer.from(toBinary(BytesMessageSchema, create(BytesMessageSchema, { data })));
      expect(encodeBytesOnly(data).equals(want), `length ${n}`).toBe(true);
    }
  });

  it('decodes what protobuf-es encodes, and serializer/deserializer round-trip', () => {
    const ser = serializer(BytesMessageSchema);
    const de = deserializer(BytesMessageSchema);
    for (const n of sizes) {
      const data = randomBytes(n);
      const wire = Buffer.from(toBinary(BytesMessageSchema, create(BytesMessageSchema, { data })));
      expect(Buffer.from(decodeBytesOnly(wire, 'x')).equals(data)).toBe(true);
      const back = de(ser(create(BytesMessageSchema, { data })));
      expect(back.$typeName).toBe('moby.buildkit.v1.BytesMessage');
      expect(Buffer.from(back.data).equals(data)).toBe(true);
      // What protobuf-es reads from our encoding is the same message.
      expect(Buffer.from(fromBinary(BytesMessageSchema, ser({ data })).data).equals(data)).toBe(true);
    }
  });

  it('skips unknown fields of every wire type and keeps the last data field', () => {
    // field 2 varint 300, field 3 fixed64, field 1 "ab", field 4 fixed32, field 5 bytes "zz", field 1 "cd"
    const wire = Buffer.from([0x10, 0xac, 0x02, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 2, 0x61, 0x62, 0x25, 9, 9, 9, 9, 0x2a, 2, 0x7a, 0x7a, 0x0a, 2, 0x63, 0x64]);
    expect(Buffer.from(decodeBytesOnly(wire, 'x')).toString()).toBe('cd');
    expect(Buffer.from(fromBinary(BytesMessageSchema, wire).data).toString()).toBe('cd');
  });

  it('refuses truncated input with an error naming the message type', () => {
    expect(() => decodeBytesOnly(Buffer.from([0x0a, 5, 1, 2]), 'moby.buildkit.v1.BytesMessage')).toThrow(/BytesMessage.*past the end/);
    expect(() => decodeBytesOnly(Buffer.from([0x0a, 0x80]), 'T')).toThrow(/truncated varint/);
    expect(() => decodeBytesOnly(Buffer.from([0x0b]), 'T')).toThrow(/wire type 3/);
  });

  it('other messages keep the reflective codec', () => {
    const ser = serializer(StatSchema);
    const msg = create(StatSchema, { path: 'a/b', mode: 0o644, size: 12n });
    expect(Buffer.from(ser(msg)).equals(Buffer.from(toBinary(StatSchema, msg)))).toBe(true);
  });
});
