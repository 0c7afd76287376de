import { fromBinary, toBinary } from '@bufbuild/protobuf';
import type { Stat } from '../../gen/fsutil/stat_pb.js';
import { PacketSchema, Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import { putFrameHeader } from '../../util/grpc-frame.js';
import { registerCodec } from '../tunnel/codecs.js';
import { protocolError, type FileSyncError } from './errors.js';

/**
 * The type names of fsutil's Packet and Stat (PacketSchema.typeName, StatSchema.typeName), written
 * out: every plain message object of this directory carries one, and reading a schema's would
 * build the descriptors in the client's bundle (scripts/bundle-cli.mjs). A unit test holds them equal.
 */
export const PACKET_TYPE_NAME: Packet['$typeName'] = 'fsutil.types.Packet';
export const STAT_TYPE_NAME: Stat['$typeName'] = 'fsutil.types.Stat';

/**
 * fsutil's Packet (and its Stat) written and read by hand, field by field as proto3 lays them out
 * (see proto/fsutil/wire.proto and stat.proto): a listing sends one STAT packet per entry, and the
 * reflective toBinary/fromBinary were a large part of sending or receiving 2,000 of them. The
 * result is the same bytes toBinary writes (fields in number order, defaults left out, map entries
 * in insertion order) and the same message fromBinary makes. Anything the reader does not expect
 * (an unknown field, a wire type other than the schema's) goes to fromBinary, which keeps unknown
 * fields and reports malformed input the usual way.
 */

const utf8Decoder = new TextDecoder('utf-8', { fatal: false });
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A file name (or link target) whose bytes are not UTF-8. Go's client sends names as the file
 * system has them; loom keeps names as JavaScript strings, which would turn such bytes into U+FFFD
 * and store a different name, so the transfer is refused instead, naming the entry (bytes that are
 * not UTF-8 shown as \xNN).
 */
export function nonUtf8NameError(what: 'path' | 'link target', bytes: Uint8Array, path?: string): FileSyncError {
  let shown = '';
  for (let i = 0; i < bytes.length; ) {
    // The longest valid UTF-8 sequence at i, else one byte shown escaped.
    let ok = '';
    for (let n = Math.min(4, bytes.length - i); n >= 1 && !ok; n--) {
      try {
        ok = strictUtf8.decode(bytes.subarray(i, i + n));
      } catch {
        /* shorter */
      }
      if (ok) i += n;
    }
    if (!ok) shown += `\\x${bytes[i++]!.toString(16).padStart(2, '0')}`;
    else shown += ok;
  }
  const msg = what === 'path' ? `file name "${shown}" is not valid UTF-8` : `symlink ${JSON.stringify(path ?? '')} has a target that is not valid UTF-8: "${shown}"`;
  return protocolError(`${msg}; loom cannot store such names yet (rename the file, or leave it out: in a build context, with .dockerignore)`, what === 'path' ? shown : path);
}
const TWO_53 = 2n ** 53n;

/** Where a message's fields go: bytes (Writer) or only their count (Sizer). */
interface Sink {
  varint(v: number): void;
  int64(v: bigint): void;
  string(s: string): void;
  bytes(b: Uint8Array): void;
  /** Opens a length-delimited field; `endLen` with the returned mark closes it. */
  beginLen(): number;
  endLen(start: number): void;
}

function varintLen(v: number): number {
  let n = 1;
  for (; v >= 0x80; v = Math.floor(v / 128)) n++;
  return n;
}

/** 2^(7k): a varint of a value below VARINT_LIMITS[k] takes k bytes. */
const VARINT_LIMITS = Array.from({ length: 10 }, (_, k) => 1n << BigInt(7 * k));

/** Bytes of an int64's varint (negative values take ten). Comparisons only: no bigint arithmetic. */
function int64Len(v: bigint): number {
  if (v < 0n) return 10;
  for (let k = 1; k < 10; k++) if (v < VARINT_LIMITS[k]!) return k;
  return 10;
}

/** Writes `v` (a non-negative integer below 2^53) as a varint at `pos`; returns the position after it. */
function putVarint(b: Buffer, pos: number, v: number): number {
  while (v >= 0x80) {
    b[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  b[pos++] = v;
  return pos;
}

/**
 * Writes an int64 as proto3 does (negative values as their 64-bit two's complement, ten bytes) at
 * `pos`; returns the position after it. Beyond 2^53 (every modTime in nanoseconds) the value is
 * split once into two 32-bit halves and shifted as numbers: a BigInt shift per 7 bits was most of
 * encoding a STAT packet.
 */
function putInt64(b: Buffer, pos: number, v: bigint): number {
  if (v >= 0n && v < TWO_53) return putVarint(b, pos, Number(v));
  const u = BigInt.asUintN(64, v);
  let lo = Number(u & 0xffffffffn);
  let hi = Number(u >> 32n);
  while (hi !== 0 || lo > 0x7f) {
    b[pos++] = (lo & 0x7f) | 0x80;
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  b[pos++] = lo;
  return pos;
}

/** Counts the bytes a Writer would write. */
class Sizer implements Sink {
  n = 0;
  varint(v: number): void {
    this.n += varintLen(v);
  }
  int64(v: bigint): void {
    this.n += int64Len(v);
  }
  string(s: string): void {
    const len = Buffer.byteLength(s);
    this.n += varintLen(len) + len;
  }
  bytes(b: Uint8Array): void {
    this.n += varintLen(b.length) + b.length;
  }
  beginLen(): number {
    return this.n;
  }
  endLen(start: number): void {
    this.n += varintLen(this.n - start);
  }
}

class Writer implements Sink {
  buf: Buffer;
  pos = 0;
  constructor(size: number) {
    // Node's pool serves small sizes: most packets cost no allocation of their own.
    this.buf = Buffer.allocUnsafe(size);
  }
  #grow(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
  string(s: string): void {
    const n = Buffer.byteLength(s);
    this.varint(n);
    this.#grow(n);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }
  varint(v: number): void {
    this.#grow(10);
    this.pos = putVarint(this.buf, this.pos, v);
  }
  /** An int64 as proto3 writes it (see putInt64). */
  int64(v: bigint): void {
    this.#grow(10);
    this.pos = putInt64(this.buf, this.pos, v);
  }
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.#grow(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  /** Room for a gRPC frame header, written by putFrameHeader once the message's length is known. */
  frameHeader(): number {
    this.#grow(5);
    const at = this.pos;
    this.pos += 5;
    return at;
  }
  /**
   * The gRPC frame of a STAT packet for the common entry (no link name, device numbers or xattrs;
   * a path, and a whole packet, short enough for one-byte lengths), written in one pass without the
   * Sink's method per field: a listing is thousands of these, encoded mostly before V8 optimizes
   * anything.
   * Returns false, having written nothing, for any other entry (the general writer takes it).
   */
  statFrame(st: Stat): boolean {
    if (st.linkname !== '' || st.devmajor !== 0n || st.devminor !== 0n || st.size < 0n || st.size >= TWO_53) return false;
    for (const _ in st.xattrs) return false;
    const path = st.path;
    if (path.length > 120) return false;
    this.#grow(path.length * 3 + 48);
    const b = this.buf;
    const start = this.pos;
    // frame header (5), packet field 2 tag and length (2), stat field 1 tag and length (2)
    let pos = start + 9;
    const pathLen = path === '' ? 0 : b.write(path, pos, 'utf8');
    if (pathLen > 127) return false;
    pos += pathLen;
    if (st.mode !== 0) {
      b[pos++] = 0x10;
      pos = putVarint(b, pos, st.mode >>> 0);
    }
    if (st.uid !== 0) {
      b[pos++] = 0x18;
      pos = putVarint(b, pos, st.uid >>> 0);
    }
    if (st.gid !== 0) {
      b[pos++] = 0x20;
      pos = putVarint(b, pos, st.gid >>> 0);
    }
    if (st.size !== 0n) {
      b[pos++] = 0x28;
      pos = putVarint(b, pos, Number(st.size));
    }
    if (st.modTime !== 0n) {
      b[pos++] = 0x30;
      pos = putInt64(b, pos, st.modTime);
    }
    const statLen = pos - (start + 7);
    if (statLen > 127) return false;
    // Packet: field 2 (stat); its type (STAT, 0), ID and data are defaults and left out.
    const packetLen = statLen + 2;
    putFrameHeader(b, start, packetLen);
    b[start + 5] = 0x12;
    b[start + 6] = statLen;
    if (path !== '') {
      b[start + 7] = 0x0a;
      b[start + 8] = pathLen;
    } else {
      // No path field: the fields after it move up two bytes.
      b.copyWithin(start + 7, start + 9, pos);
      pos -= 2;
      putFrameHeader(b, start, packetLen - 2);
      b[start + 6] = statLen - 2;
    }
    this.pos = pos;
    return true;
  }
  raw(b: Uint8Array): void {
    this.#grow(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  /**
   * Reserves one byte for a length prefix; `endLen` writes it, shifting the body only when the
   * length needs more (128 bytes or more: rare for a STAT, whose body is mostly a path).
   */
  beginLen(): number {
    this.#grow(1);
    this.pos += 1;
    return this.pos;
  }
  endLen(start: number): void {
    const len = this.pos - start;
    if (len < 0x80) {
      this.buf[start - 1] = len;
      return;
    }
    const extra = varintLen(len) - 1;
    this.#grow(extra);
    this.buf.copyWithin(start + extra, start, this.pos);
    this.pos = start - 1;
    this.varint(len);
    this.pos += len;
  }
}

function writeStat(w: Sink, s: Stat): void {
  if (s.path !== '') {
    w.varint((1 << 3) | 2);
    w.string(s.path);
  }
  if (s.mode !== 0) {
    w.varint(2 << 3);
    w.varint(s.mode >>> 0);
  }
  if (s.uid !== 0) {
    w.varint(3 << 3);
    w.varint(s.uid >>> 0);
  }
  if (s.gid !== 0) {
    w.varint(4 << 3);
    w.varint(s.gid >>> 0);
  }
  if (s.size !== 0n) {
    w.varint(5 << 3);
    w.int64(s.size);
  }
  if (s.modTime !== 0n) {
    w.varint(6 << 3);
    w.int64(s.modTime);
  }
  if (s.linkname !== '') {
    w.varint((7 << 3) | 2);
    w.string(s.linkname);
  }
  if (s.devmajor !== 0n) {
    w.varint(8 << 3);
    w.int64(s.devmajor);
  }
  if (s.devminor !== 0n) {
    w.varint(9 << 3);
    w.int64(s.devminor);
  }
  for (const [k, v] of Object.entries(s.xattrs)) {
    w.varint((10 << 3) | 2);
    const start = w.beginLen();
    w.varint((1 << 3) | 2);
    w.string(k);
    w.varint((2 << 3) | 2);
    w.bytes(v);
    w.endLen(start);
  }
}

function writePacket(w: Sink, p: Packet): void {
  if (p.type !== 0) {
    w.varint(1 << 3);
    w.varint(p.type);
  }
  if (p.stat !== undefined) {
    w.varint((2 << 3) | 2);
    const start = w.beginLen();
    writeStat(w, p.stat);
    w.endLen(start);
  }
  if (p.ID !== 0) {
    w.varint(3 << 3);
    w.varint(p.ID >>> 0);
  }
  if (p.data.length > 0) {
    w.varint((4 << 3) | 2);
    w.bytes(p.data);
  }
}

const hasUnknown = (p: Packet): boolean => !!(p.$unknown?.length || p.stat?.$unknown?.length);

/** The wire bytes of a packet, as toBinary(PacketSchema, p) writes them. */
export function encodePacket(p: Packet): Uint8Array {
  if (hasUnknown(p)) return toBinary(PacketSchema, p);
  const w = new Writer(64 + p.data.length + (p.stat ? p.stat.path.length * 3 + p.stat.linkname.length * 3 : 0));
  writePacket(w, p);
  return w.buf.subarray(0, w.pos);
}

/**
 * Packets as the gRPC frames of a stream (5-byte header, then encodePacket's bytes each), written
 * into one buffer: a listing goes out in batches of hundreds of STAT packets, and a buffer per
 * packet, then a frame per packet, then their concatenation copied each twice.
 */
export function encodePacketFrames(ps: readonly Packet[]): Buffer {
  let estimate = 0;
  for (const p of ps) estimate += 69 + p.data.length + (p.stat ? p.stat.path.length * 3 + p.stat.linkname.length * 3 : 0);
  const w = new Writer(estimate);
  for (const p of ps) {
    const unknown = hasUnknown(p);
    if (!unknown && p.type === Packet_PacketType.PACKET_STAT && p.stat && p.ID === 0 && p.data.length === 0 && w.statFrame(p.stat)) continue;
    const at = w.frameHeader();
    if (unknown) w.raw(toBinary(PacketSchema, p));
    else writePacket(w, p);
    putFrameHeader(w.buf, at, w.pos - at - 5);
  }
  return w.buf.subarray(0, w.pos);
}

/** The length of encodePacket(p), counted without writing anything. */
export function encodedPacketSize(p: Packet): number {
  if (hasUnknown(p)) return toBinary(PacketSchema, p).length;
  const s = new Sizer();
  writePacket(s, p);
  return s.n;
}

/** Thrown inside the reader for input it leaves to fromBinary. */
class Unexpected extends Error {}

class Reader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= this.end) throw new Unexpected();
      const b = this.buf[this.pos++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
    throw new Unexpected(); // beyond 2^56: read as bigint by fromBinary
  }
  /** An int64 varint: up to ten bytes, the 64-bit two's complement of negative values. */
  int64(): bigint {
    let lo = 0; // bits 0-27
    let hi = 0; // bits 28 and up
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Unexpected();
      const b = this.buf[this.pos++]!;
      if (i < 4) lo += (b & 0x7f) * 2 ** (7 * i);
      else hi += (b & 0x7f) * 2 ** (7 * (i - 4));
      if (b < 0x80) {
        if (hi === 0) return BigInt(lo);
        return BigInt.asIntN(64, (BigInt(hi) << 28n) | BigInt(lo));
      }
    }
    throw new Unexpected();
  }
  uint32(): number {
    return this.varint() >>> 0;
  }
  string(): string {
    const n = this.len();
    const v = utf8Decoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return v;
  }
  /** A path or link target: refused when it is not UTF-8 (see nonUtf8NameError). */
  name(what: 'path' | 'link target', path?: string): string {
    const n = this.len();
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    let v: string;
    try {
      v = strictUtf8.decode(bytes);
    } catch {
      throw nonUtf8NameError(what, bytes, path);
    }
    this.pos += n;
    return v;
  }
  len(): number {
    const n = this.varint();
    if (this.pos + n > this.end) throw new Unexpected();
    return n;
  }
}

function readStat(r: Reader): Stat {
  const s: Stat = {
    $typeName: STAT_TYPE_NAME,
    path: '',
    mode: 0,
    uid: 0,
    gid: 0,
    size: 0n,
    modTime: 0n,
    linkname: '',
    devmajor: 0n,
    devminor: 0n,
    xattrs: {},
  };
  while (r.pos < r.end) {
    const tag = r.varint();
    switch (tag) {
      case (1 << 3) | 2:
        s.path = r.name('path');
        break;
      case 2 << 3:
        s.mode = r.uint32();
        break;
      case 3 << 3:
        s.uid = r.uint32();
        break;
      case 4 << 3:
        s.gid = r.uint32();
        break;
      case 5 << 3:
        s.size = r.int64();
        break;
      case 6 << 3:
        s.modTime = r.int64();
        break;
      case (7 << 3) | 2:
        s.linkname = r.name('link target', s.path);
        break;
      case 8 << 3:
        s.devmajor = r.int64();
        break;
      case 9 << 3:
        s.devminor = r.int64();
        break;
      default:
        throw new Unexpected(); // xattrs and anything else: fromBinary
    }
  }
  return s;
}

/** The packet in `b`, as fromBinary(PacketSchema, b) reads it. */
export function decodePacket(b: Uint8Array): Packet {
  try {
    const r = new Reader(b, 0, b.length);
    const p: Packet = { $typeName: PACKET_TYPE_NAME, type: 0, stat: undefined, ID: 0, data: new Uint8Array(0) };
    while (r.pos < r.end) {
      const tag = r.varint();
      switch (tag) {
        case 1 << 3:
          p.type = r.varint() | 0;
          break;
        case (2 << 3) | 2: {
          const n = r.len();
          p.stat = readStat(new Reader(b, r.pos, r.pos + n));
          r.pos += n;
          break;
        }
        case 3 << 3:
          p.ID = r.uint32();
          break;
        case (4 << 3) | 2: {
          const n = r.len();
          p.data = b.subarray(r.pos, r.pos + n);
          r.pos += n;
          break;
        }
        default:
          throw new Unexpected();
      }
    }
    return p;
  } catch (err) {
    if (!(err instanceof Unexpected)) throw err;
    // fromBinary reads names leniently (U+FFFD for bytes that are not UTF-8): such a name is
    // refused as the fast path refuses it.
    const p = fromBinary(PacketSchema, b);
    if (p.stat && (p.stat.path.includes('\uFFFD') || p.stat.linkname.includes('\uFFFD'))) {
      const bad = p.stat.path.includes('\uFFFD') ? 'path' : 'link target';
      throw nonUtf8NameError(bad, Buffer.from(bad === 'path' ? p.stat.path : p.stat.linkname), p.stat.path);
    }
    return p;
  }
}

registerCodec(PacketSchema, { typeName: PACKET_TYPE_NAME, encode: encodePacket, decode: decodePacket, encodeFrames: encodePacketFrames });
