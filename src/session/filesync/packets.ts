import { create, toBinary } from '@bufbuild/protobuf';
import { PacketSchema, Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import type { Stat } from '../../gen/fsutil/stat_pb.js';
import type { MessageStream } from '../types.js';

export type PacketStream = MessageStream<Packet, Packet>;

export function statPacket(stat?: Stat): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_STAT, stat });
}

export function reqPacket(id: number): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_REQ, ID: id });
}

export function dataPacket(id: number, data?: Uint8Array): Packet {
  return create(PacketSchema, { type: Packet_PacketType.PACKET_DATA, ID: id, data });
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

/**
 * The encoded size of a packet: upstream's progress counts these bytes ("transferring
 * context: 2.1kB"), so both ends report the same numbers. DATA is computed without re-encoding.
 */
export function packetSize(p: Packet): number {
  if (p.type === Packet_PacketType.PACKET_DATA && p.stat === undefined) {
    let n = 2;
    if (p.ID !== 0) n += 1 + varintLen(p.ID);
    if (p.data.length > 0) n += 1 + varintLen(p.data.length) + p.data.length;
    return n;
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
    const next = this.#tail.then(() => this.#stream.send(p));
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
