/**
 * Names the client writes out instead of reading them from the descriptors (in the client's
 * bundle, reading a descriptor builds them all: scripts/bundle-cli.mjs): each must be what the
 * descriptor says, or the daemon would find no such method or the codec would not be used.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StatSchema } from '../../../../src/gen/fsutil/stat_pb.js';
import { PacketSchema, Packet_PacketType } from '../../../../src/gen/fsutil/wire_pb.js';
import { Health } from '../../../../src/gen/grpc/health_pb.js';
import { Auth } from '../../../../src/gen/session/auth_pb.js';
import { FileSync } from '../../../../src/gen/session/filesync_pb.js';
import { AUTH_PATHS } from '../../../../src/session/client/auth.js';
import { DIFFCOPY_PATH } from '../../../../src/session/client/file-sync.js';
import { HEALTH_CHECK_PATH } from '../../../../src/session/client/health.js';
import { encodePacket, PACKET_TYPE_NAME, STAT_TYPE_NAME } from '../../../../src/session/filesync/codec.js';
import { errPacket, finPacket, reqPacket } from '../../../../src/session/filesync/packets.js';
import { registeredCodecs } from '../../../../src/session/tunnel/codecs.js';
import { methodPath } from '../../../../src/session/tunnel/metadata.js';

describe('names written out', () => {
  it("method paths are the descriptors'", () => {
    for (const [k, p] of Object.entries(AUTH_PATHS)) expect(p).toBe(methodPath(Auth.method[k as keyof typeof AUTH_PATHS]));
    expect(Object.keys(AUTH_PATHS).sort()).toEqual(Object.keys(Auth.method).sort());
    expect(HEALTH_CHECK_PATH).toBe(methodPath(Health.method.check));
    expect(DIFFCOPY_PATH).toBe(methodPath(FileSync.method.diffCopy));
  });

  it("type names are the schemas', for the plain objects and for every registered codec", () => {
    expect(PACKET_TYPE_NAME).toBe(PacketSchema.typeName);
    expect(STAT_TYPE_NAME).toBe(StatSchema.typeName);
    const codecs = registeredCodecs();
    expect(codecs.length).toBeGreaterThan(0);
    for (const [schema, typeName] of codecs) expect(typeName).toBe(schema.typeName);
  });

  it('plain REQ, FIN and ERR packets are what create() makes, on the wire too', () => {
    const pairs = [
      [reqPacket(7), create(PacketSchema, { type: Packet_PacketType.PACKET_REQ, ID: 7 })],
      [finPacket(), create(PacketSchema, { type: Packet_PacketType.PACKET_FIN })],
      [errPacket('boom'), create(PacketSchema, { type: Packet_PacketType.PACKET_ERR, data: new TextEncoder().encode('boom') })],
    ] as const;
    for (const [plain, made] of pairs) {
      expect(plain).toEqual(made);
      expect(Buffer.from(encodePacket(plain))).toEqual(Buffer.from(toBinary(PacketSchema, made)));
    }
  });
});
