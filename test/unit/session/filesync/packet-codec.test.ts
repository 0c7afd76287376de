import { create, equals, fromBinary, toBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StatSchema } from '../../../../src/gen/fsutil/stat_pb.js';
import { PacketSchema, Packet_PacketType, type Packet } from '../../../../src/gen/fsutil/wire_pb.js';
import { decodePacket, encodePacket, encodePacketFrames } from '../../../../src/session/filesync/codec.js';
import { encodeFrame } from '../../../../src/util/grpc-frame.js';

const packets: Packet[] = [
  create(PacketSchema, {}),
  create(PacketSchema, { type: Packet_PacketType.PACKET_STAT }),
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: 'src/pkg0/file0.js', mode: 0o644, uid: 1000, gid: 1000, size: 27n, modTime: 1_795_471_929_444_123_456n }),
  }),
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: 'dir', mode: (0x80000000 | 0o755) >>> 0, modTime: -1_000_000_000n }),
  }),
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: 'ünïcødé/😀 name', linkname: '../target', mode: 0x8000000 | 0o777, size: (1n << 62n) + 5n }),
  }),
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: 'dev/null', mode: 0x4000000 | 0x200000 | 0o666, devmajor: 1n, devminor: 3n, size: -1n }),
  }),
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: 'caps', mode: 0o755, xattrs: { 'security.capability': new Uint8Array([1, 0, 0, 2]), 'user.empty': new Uint8Array() } }),
  }),
  // Bodies of 128 bytes and more: a length prefix of two bytes or three.
  create(PacketSchema, {
    type: Packet_PacketType.PACKET_STAT,
    stat: create(StatSchema, { path: `long/${'p'.repeat(300)}`, mode: 0o644, xattrs: { 'user.big': new Uint8Array(20_000).fill(7), 'user.mid': new Uint8Array(130).fill(1) } }),
  }),
  create(PacketSchema, { type: Packet_PacketType.PACKET_REQ, ID: 4_000_000_000 }),
  create(PacketSchema, { type: Packet_PacketType.PACKET_DATA, ID: 7, data: new Uint8Array(40_000).map((_, i) => i) }),
  create(PacketSchema, { type: Packet_PacketType.PACKET_DATA, ID: 7 }),
  create(PacketSchema, { type: Packet_PacketType.PACKET_FIN }),
  create(PacketSchema, { type: Packet_PacketType.PACKET_ERR, data: new TextEncoder().encode('boom') }),
];

describe('fsutil packet codec', () => {
  it('writes the bytes toBinary writes and reads back what fromBinary reads, for every kind of packet', () => {
    for (const p of packets) {
      const ours = encodePacket(p);
      const theirs = toBinary(PacketSchema, p);
      expect(Buffer.from(ours).toString('hex')).toBe(Buffer.from(theirs).toString('hex'));
      const back = decodePacket(theirs);
      expect(equals(PacketSchema, back, fromBinary(PacketSchema, theirs))).toBe(true);
      expect(equals(PacketSchema, back, p)).toBe(true);
    }
  });

  it('frames a batch into one buffer exactly as each packet framed on its own (unknown fields too)', () => {
    const withUnknown = decodePacket(Buffer.concat([toBinary(PacketSchema, packets[2]!), Buffer.from([(15 << 3) | 0, 42])]));
    // Many small STATs and a large DATA: the writer's first size guess is outgrown.
    const many = Array.from({ length: 300 }, (_, i) => create(PacketSchema, { stat: create(StatSchema, { path: `d/${'ü'.repeat(i % 40)}${i}`, mode: 0o644, modTime: BigInt(i) << 40n }) }));
    // Entries at the edges of the one-pass STAT writer: no path, nothing at all, a path at and just
    // past its length limits, a packet body of 127 and 128 bytes, the largest numbers.
    const edges = [
      create(StatSchema, { mode: 0o755, modTime: 5n }),
      create(StatSchema, {}),
      create(StatSchema, { path: 'a'.repeat(120), mode: 0o644 }),
      create(StatSchema, { path: 'a'.repeat(121), mode: 0o644 }),
      create(StatSchema, { path: 'é'.repeat(64), mode: 0o644 }),
      ...Array.from({ length: 12 }, (_, i) => create(StatSchema, { path: 'p'.repeat(90 + i), mode: 0xffffffff, uid: 0xffffffff, gid: 65534, size: (1n << 53n) - 1n, modTime: -1n })),
      create(StatSchema, { path: 'big', size: 1n << 53n }),
    ].map((stat) => create(PacketSchema, { stat }));
    const batch = [...packets, withUnknown, ...many, ...edges, create(PacketSchema, { type: Packet_PacketType.PACKET_DATA, ID: 1, data: new Uint8Array(70_000).fill(9) })];
    const expected = Buffer.concat(batch.map((p) => encodeFrame(toBinary(PacketSchema, p))));
    expect(encodePacketFrames(batch).equals(expected)).toBe(true);
    expect(encodePacketFrames([]).length).toBe(0);
  });

  it('leaves unknown fields to fromBinary, which keeps them', () => {
    const p = create(PacketSchema, { type: Packet_PacketType.PACKET_STAT, stat: create(StatSchema, { path: 'a' }) });
    const withUnknown = Buffer.concat([toBinary(PacketSchema, p), Buffer.from([(15 << 3) | 0, 42])]);
    const back = decodePacket(withUnknown);
    expect(back.stat?.path).toBe('a');
    expect(back.$unknown?.length).toBe(1);
    expect(Buffer.from(encodePacket(back)).equals(Buffer.from(toBinary(PacketSchema, back)))).toBe(true);
  });

  it('refuses a path or link target that is not UTF-8, naming it, rather than storing U+FFFD', () => {
    // A STAT as Go's fsutil sends a latin1 name: field 1 holding the raw bytes.
    const stat = (fields: Buffer) => Buffer.concat([Buffer.from([(1 << 3) | 0, Packet_PacketType.PACKET_STAT, (2 << 3) | 2, fields.length]), fields]);
    const field = (n: number, b: Buffer) => Buffer.concat([Buffer.from([(n << 3) | 2, b.length]), b]);
    const latin1 = Buffer.from('caf\xe9.txt', 'latin1');
    expect(() => decodePacket(stat(field(1, latin1)))).toThrow('file name "caf\\xe9.txt" is not valid UTF-8');
    expect(() => decodePacket(stat(Buffer.concat([field(1, Buffer.from('lnk')), field(7, Buffer.from([0x74, 0xff]))])))).toThrow('symlink "lnk" has a target that is not valid UTF-8: "t\\xff"');
    // With xattrs the packet goes through fromBinary, which reads names leniently: refused too.
    const xattr = field(10, Buffer.concat([field(1, Buffer.from('user.a')), field(2, Buffer.from('v'))]));
    expect(() => decodePacket(stat(Buffer.concat([field(1, latin1), xattr])))).toThrow(/is not valid UTF-8/);
    // Valid UTF-8, U+FFFD itself included, is kept.
    expect(decodePacket(stat(field(1, Buffer.from('\uFFFD ok')))).stat?.path).toBe('\uFFFD ok');
  });

  it('fails on truncated input as fromBinary does', () => {
    const whole = toBinary(PacketSchema, packets[2]!);
    for (const cut of [1, 3, whole.length - 1]) {
      expect(() => decodePacket(whole.subarray(0, cut))).toThrow();
    }
  });
});
