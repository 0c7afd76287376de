/**
 * The protobuf binary wire format, by hand, for the few messages encoded or decoded without
 * protobuf-es' reflection (see client/control-codec.ts for why). Proto3 rules: default values are
 * not written, unknown fields are skipped by the reader.
 */

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

export class WireWriter {
  #buf = Buffer.allocUnsafe(256);
  #pos = 0;

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + n));
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
  }

  varint(v: number): this {
    this.#room(10);
    while (v >= 0x80) {
      this.#buf[this.#pos++] = (v & 0x7f) | 0x80;
      v = Math.floor(v / 128);
    }
    this.#buf[this.#pos++] = v;
    return this;
  }

  tag(field: number, wire: number): this {
    return this.varint(field * 8 + wire);
  }

  /** A string field, left out when empty. */
  string(field: number, s: string): this {
    if (s === '') return this;
    const n = Buffer.byteLength(s);
    this.tag(field, WIRE_LEN).varint(n);
    this.#room(n);
    this.#pos += this.#buf.write(s, this.#pos, 'utf8');
    return this;
  }

  /** A length-delimited field of these bytes, written even when empty (a set message field). */
  bytesAlways(field: number, b: Uint8Array): this {
    this.tag(field, WIRE_LEN).varint(b.length);
    this.#room(b.length);
    this.#buf.set(b, this.#pos);
    this.#pos += b.length;
    return this;
  }

  bool(field: number, v: boolean): this {
    return v ? this.tag(field, WIRE_VARINT).varint(1) : this;
  }

  /** An int64 field (two's complement for negatives, as protobuf), left out when zero. */
  int64(field: number, v: bigint): this {
    if (v === 0n) return this;
    let u = BigInt.asUintN(64, v);
    this.tag(field, WIRE_VARINT);
    this.#room(10);
    while (u >= 0x80n) {
      this.#buf[this.#pos++] = Number(u & 0x7fn) | 0x80;
      u >>= 7n;
    }
    this.#buf[this.#pos++] = Number(u);
    return this;
  }

  /** A map<string, string> field: one entry message per key, in the object's key order. */
  stringMap(field: number, m: Readonly<Record<string, string>> | undefined): this {
    if (!m) return this;
    // Entries write both fields even when empty, as protobuf-es does.
    for (const k of Object.keys(m)) this.bytesAlways(field, new WireWriter().bytesAlways(1, Buffer.from(k)).bytesAlways(2, Buffer.from(m[k]!)).finish());
    return this;
  }

  finish(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }
}

export class WireReader {
  readonly #b: Uint8Array;
  pos: number;
  readonly end: number;
  readonly #what: string;

  constructor(b: Uint8Array, what: string, start = 0, end = b.length) {
    this.#b = b;
    this.pos = start;
    this.end = end;
    this.#what = what;
  }

  #fail(why: string): never {
    throw new Error(`cannot decode ${this.#what}: ${why}`);
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    let v = 0;
    for (let mul = 1; ; mul *= 128) {
      if (this.pos >= this.end) this.#fail('truncated varint');
      const b = this.#b[this.pos++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      if (mul > 2 ** 56) this.#fail('varint too long');
    }
  }

  /** An int64 varint (negative values are ten bytes of two's complement). */
  int64(): bigint {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (this.pos >= this.end) this.#fail('truncated varint');
      if (shift > 63n) this.#fail('varint too long');
      const b = this.#b[this.pos++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asIntN(64, v);
    }
  }

  /** An int32 varint (negatives are sign-extended to 64 bits on the wire). */
  int32(): number {
    return Number(BigInt.asIntN(32, this.int64()));
  }

  /** The next field's number and wire type, checked for a known wire type. */
  tag(): [number, number] {
    const t = this.varint();
    const wire = t & 7;
    if (wire !== WIRE_VARINT && wire !== WIRE_I64 && wire !== WIRE_LEN && wire !== WIRE_I32) this.#fail(`unsupported wire type ${wire}`);
    return [Math.floor(t / 8), wire];
  }

  /** The bounds of a length-delimited field's body; the reader moves past it. */
  lenRange(): [number, number] {
    const n = this.varint();
    const start = this.pos;
    if (start + n > this.end) this.#fail('field runs past the end');
    this.pos += n;
    return [start, start + n];
  }

  bytes(): Uint8Array {
    const [s, e] = this.lenRange();
    return this.#b.slice(s, e);
  }

  string(): string {
    const [s, e] = this.lenRange();
    return Buffer.from(this.#b.buffer, this.#b.byteOffset + s, e - s).toString('utf8');
  }

  /** A reader over the next length-delimited field's body (a nested message). */
  sub(what: string): WireReader {
    const [s, e] = this.lenRange();
    return new WireReader(this.#b, what, s, e);
  }

  /** A copy of bytes [start, end) of the buffer (a field already read past). */
  slice(start: number, end: number): Uint8Array {
    return this.#b.slice(start, end);
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_I64) this.pos += 8;
    else if (wire === WIRE_LEN) this.lenRange();
    else this.pos += 4;
    if (this.pos > this.end) this.#fail('truncated field');
  }

  /** Reads a map<string, string> entry into `m`. */
  mapEntry(m: Record<string, string>): void {
    const r = this.sub(`${this.#what} map entry`);
    let k = '';
    let v = '';
    while (!r.done) {
      const [f, w] = r.tag();
      if (f === 1 && w === WIRE_LEN) k = r.string();
      else if (f === 2 && w === WIRE_LEN) v = r.string();
      else r.skip(w);
    }
    m[k] = v;
  }
}

export const WireType = { VARINT: WIRE_VARINT, I64: WIRE_I64, LEN: WIRE_LEN, I32: WIRE_I32 } as const;

/** A google.rpc.Status as the client reads it (grpc-status-details-bin): code, message, details. */
export interface RpcStatus {
  code: number;
  message: string;
  details: { typeUrl: string; value: Uint8Array }[];
}

/**
 * Decodes a google.rpc.Status (code 1, message 2, details 3 as google.protobuf.Any: type_url 1,
 * value 2) without loading its descriptors: only a failed call has one to read.
 */
export function decodeRpcStatus(b: Uint8Array): RpcStatus {
  const r = new WireReader(b, 'google.rpc.Status');
  const st: RpcStatus = { code: 0, message: '', details: [] };
  while (!r.done) {
    const [f, w] = r.tag();
    if (f === 1 && w === WireType.VARINT) st.code = r.int32();
    else if (f === 2 && w === WireType.LEN) st.message = r.string();
    else if (f === 3 && w === WireType.LEN) {
      const a = r.sub('google.protobuf.Any');
      const d: { typeUrl: string; value: Uint8Array } = { typeUrl: '', value: new Uint8Array(0) };
      while (!a.done) {
        const [af, aw] = a.tag();
        if (af === 1 && aw === WireType.LEN) d.typeUrl = a.string();
        else if (af === 2 && aw === WireType.LEN) d.value = a.bytes();
        else a.skip(aw);
      }
      st.details.push(d);
    } else r.skip(w);
  }
  return st;
}
