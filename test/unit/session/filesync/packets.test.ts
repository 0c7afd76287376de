import { create, toBinary } from '@bufbuild/protobuf';
import { describe, expect, test } from 'vitest';
import { StatSchema } from '../../../../src/gen/fsutil/stat_pb.js';
import { PacketSchema, Packet_PacketType } from '../../../../src/gen/fsutil/wire_pb.js';
import { dataPacket, errPacket, finPacket, packetSize, reqPacket, statPacket } from '../../../../src/session/filesync/packets.js';
import { compareNames } from '../../../../src/session/filesync/walker.js';

describe('packetSize', () => {
  test('is the encoded length of every kind of packet (progress shows these bytes)', () => {
    const stats = [
      create(StatSchema, {}),
      create(StatSchema, { path: 'a', mode: 0o644 }),
      create(StatSchema, { path: 'src/pkg7/file7.js', mode: 0o100644, uid: 1000, gid: 1000, size: 38n, modTime: 1_763_900_000_123_456_789n }),
      // Go's directory bit is the top bit of the mode: a five-byte varint.
      create(StatSchema, { path: 'dir', mode: (0x80000000 | 0o755) >>> 0, modTime: 1n }),
      create(StatSchema, { path: 'ünïcödé/名前', mode: 0o777 | 0x8000000, linkname: '../目标', modTime: -5n }),
      create(StatSchema, { path: 'dev/null', mode: 0x4000000 | 0x200000 | 0o666, devmajor: 1n, devminor: 3n, uid: 2 ** 32 - 1 }),
      create(StatSchema, { path: 'big', size: 2n ** 40n, modTime: 2n ** 62n }),
      create(StatSchema, { path: 'x'.repeat(300), linkname: 'y'.repeat(20000) }),
      create(StatSchema, { path: 'with-xattrs', xattrs: { 'user.a': new Uint8Array([1, 2, 3]), 'security.capability': new Uint8Array(20) } }),
    ];
    for (const s of stats) {
      const p = statPacket(s);
      expect(packetSize(p), s.path).toBe(toBinary(PacketSchema, p).length);
    }
    const others = [
      statPacket(),
      reqPacket(0),
      reqPacket(12345),
      dataPacket(7),
      dataPacket(0, new Uint8Array(100)),
      dataPacket(300, new Uint8Array(40000)),
      finPacket(),
      errPacket('boom'),
      create(PacketSchema, { type: Packet_PacketType.PACKET_STAT, ID: 3, stat: stats[1] }),
    ];
    for (const p of others) expect(packetSize(p)).toBe(toBinary(PacketSchema, p).length);
  });
});

describe('compareNames', () => {
  test('orders names by their UTF-8 bytes, as Go sorts them', () => {
    const names = ['b', 'a', 'A', 'aa', 'a.txt', 'a/b', '', 'é', 'z', '\u{E000}', '\u{1F600}', '\u{FFFD}', 'x\u{1F600}', 'x\u{E001}', 'x\u{D7FF}', '名'];
    const viaBytes = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect([...names].sort(compareNames)).toEqual(viaBytes);
    for (const x of names) for (const y of names) expect(Math.sign(compareNames(x, y)), `${x} vs ${y}`).toBe(Buffer.compare(Buffer.from(x), Buffer.from(y)));
  });
});
