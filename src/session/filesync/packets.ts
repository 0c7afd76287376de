import { create, toBinary } from '@bufbuild/protobuf';
import { PacketSchema, Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import type { Stat } from '../../gen/fsutil/stat_pb.js';
import type { MessageStream } from '../types.js';
// Every stream of packets is written and read by the hand-written codec (it registers itself).
import './codec.js';

export type PacketStream = MessageStream<Packet, Packet>;

const NO_DATA = new Uint8Array(0);

// STAT and DATA packets are plain objects of the message's shape: a listing makes one per entry,
// and the reflective create() was a measurable part of it.
export function statPacket(stat?: Stat): Packet {
  return { $typeName: PacketSchema.typeName as Packet['$typeName'], type: Packet_PacketType.PACKET_STAT, stat, ID: 0, data: NO_DATA };
}

export function reqPacket(id: number): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_REQ, ID: id });
}

export function dataPacket(id: number, data?: Uint8Array): Packet {
  return { $typeName: PacketSchema.typeName as Packet['$typeName'], type: Packet_PacketType.PACKET_DATA, stat: undefined, ID: id, data: data ?? NO_DATA };
}

export function finPacket(): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_FIN });
}

export function errPacket(message: string): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_ERR, data: new TextEncoder().encode(message) });
}

function varintLen(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

/** 2^(7k): a varint of a value below VARINT_LIMITS[k] takes k bytes. */
const VARINT_LIMITS = Array.from({ length: 10 }, (_, k) => 1n << BigInt(7 * k));

/** Bytes of an int64 field's varint (negative values take ten). Comparisons only: no bigint arithmetic. */
function int64Len(v: bigint): number {
  if (v < 0n) return 10;
  for (let k = 1; k < 10; k++) if (v < VARINT_LIMITS[k]!) return k;
  return 10;
}

/** A proto3 string field with its tag (one byte: field numbers here are below 16); 0 when empty. */
function stringFieldLen(s: string): number {
  if (s === '') return 0;
  const n = Buffer.byteLength(s);
  return 1 + varintLen(n) + n;
}

/** The encoded size of a Stat without xattrs, field by field as proto3 writes it (defaults left out). */
function statLen(s: Stat): number {
  let n = stringFieldLen(s.path) + stringFieldLen(s.linkname);
  if (s.mode !== 0) n += 1 + varintLen(s.mode >>> 0);
  if (s.uid !== 0) n += 1 + varintLen(s.uid >>> 0);
  if (s.gid !== 0) n += 1 + varintLen(s.gid >>> 0);
  if (s.size !== 0n) n += 1 + int64Len(s.size);
  if (s.modTime !== 0n) n += 1 + int64Len(s.modTime);
  if (s.devmajor !== 0n) n += 1 + int64Len(s.devmajor);
  if (s.devminor !== 0n) n += 1 + int64Len(s.devminor);
  return n;
}

/**
 * The encoded size of a packet: upstream's progress counts these bytes ("transferring
 * context: 2.1kB"), so both ends report the same numbers. DATA, and STAT without xattrs, are
 * computed without encoding the packet again (a listing has one STAT per entry).
 */
export function packetSize(p: Packet): number {
  if (p.type === Packet_PacketType.PACKET_DATA && p.stat === undefined) {
    let n = 2;
    if (p.ID !== 0) n += 1 + varintLen(p.ID);
    if (p.data.length > 0) n += 1 + varintLen(p.data.length) + p.data.length;
    return n;
  }
  if (p.type === Packet_PacketType.PACKET_STAT && p.ID === 0 && p.data.length === 0) {
    if (p.stat === undefined) return 0;
    if (Object.keys(p.stat.xattrs).length === 0) {
      const n = statLen(p.stat);
      return 1 + varintLen(n) + n;
    }
  }
  return toBinary(PacketSchema, p).length;
}

export function packetTypeName(t: number): string {
  return Packet_PacketType[t] ?? `unknown(${t})`;
}

/**
 * One writer at a time on a stream: file readers and the control loop send concurrently, and a
 * MessageStream promises nothing about overlapping send() calls.
 */
export class SerialSender {
  #tail: Promise<void> = Promise.resolve();
  readonly #stream: PacketStream;

  constructor(opts: { stream: PacketStream }) {
    this.#stream = opts.stream;
  }

  send(p: Packet): Promise<void> {
    return this.#chain(() => this.#stream.send(p));
  }

  /** Several packets in order, as one write where the stream can. */
  sendMany(ps: readonly Packet[]): Promise<void> {
    const s = this.#stream;
    return this.#chain(async () => {
      if (s.sendMany) await s.sendMany(ps);
      else for (const p of ps) await s.send(p);
    });
  }

  #chain(fn: () => Promise<void>): Promise<void> {
    const next = this.#tail.then(fn);
    // Keep the chain alive after a failure; the caller of this send sees the error.
    this.#tail = next.catch(() => undefined);
    return next;
  }
}

/** Waits a little for a courtesy message (ERR) that a stuck stream may never take. */
export async function bestEffort(p: Promise<unknown>, ms = 2000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}
