import { Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import type { Stat } from '../../gen/fsutil/stat_pb.js';
import type { MessageStream } from '../types.js';
// The hand-written codec writes and reads every stream of packets (it registers itself with the
// tunnel on import) and counts their sizes.
import { encodedPacketSize, PACKET_TYPE_NAME } from './codec.js';

export type PacketStream = MessageStream<Packet, Packet>;

const NO_DATA = new Uint8Array(0);

// Packets are plain objects of the message's shape, what create(PacketSchema, ...) makes: a
// listing makes one per entry, and the reflective create() was a measurable part of it (and, in
// the client's bundle, would build the descriptors; see scripts/bundle-cli.mjs).
export function statPacket(stat?: Stat): Packet {
  return { $typeName: PACKET_TYPE_NAME, type: Packet_PacketType.PACKET_STAT, stat, ID: 0, data: NO_DATA };
}

export function reqPacket(id: number): Packet {
  return { $typeName: PACKET_TYPE_NAME, type: Packet_PacketType.PACKET_REQ, stat: undefined, ID: id, data: NO_DATA };
}

export function dataPacket(id: number, data?: Uint8Array): Packet {
  return { $typeName: PACKET_TYPE_NAME, type: Packet_PacketType.PACKET_DATA, stat: undefined, ID: id, data: data ?? NO_DATA };
}

export function finPacket(): Packet {
  return { $typeName: PACKET_TYPE_NAME, type: Packet_PacketType.PACKET_FIN, stat: undefined, ID: 0, data: NO_DATA };
}

export function errPacket(message: string): Packet {
  return { $typeName: PACKET_TYPE_NAME, type: Packet_PacketType.PACKET_ERR, stat: undefined, ID: 0, data: new TextEncoder().encode(message) };
}

/**
 * The encoded size of a packet: upstream's progress counts these bytes ("transferring
 * context: 2.1kB"), so both ends report the same numbers. Counted by the codec's own field layout
 * without encoding the packet again (a listing has one STAT per entry).
 */
export function packetSize(p: Packet): number {
  return encodedPacketSize(p);
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
