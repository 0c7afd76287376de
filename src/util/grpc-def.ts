import type { DescMessage, DescService, MessageShape } from '@bufbuild/protobuf';
import { fromBinary, ScalarType, toBinary } from '@bufbuild/protobuf';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';

/**
 * Turns a generated protobuf-es service descriptor into the definition grpc-js serves and calls.
 * Keys are the methods' local names (`localName`, lower camel case), paths are `/pkg.Service/Method`.
 */
export function grpcServiceDef(service: DescService): ServiceDefinition {
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === 'client_streaming' || m.methodKind === 'bidi_streaming',
      responseStream: m.methodKind === 'server_streaming' || m.methodKind === 'bidi_streaming',
      requestSerialize: serializer(m.input),
      requestDeserialize: deserializer(m.input),
      responseSerialize: serializer(m.output),
      responseDeserialize: deserializer(m.output),
      originalName: m.name,
    } as MethodDefinition<unknown, unknown>;
  }
  return def as ServiceDefinition;
}

export function serializer<D extends DescMessage>(desc: D): (msg: unknown) => Buffer {
  if (isBytesOnly(desc)) return (msg) => encodeBytesOnly((msg as { data?: Uint8Array }).data);
  return (msg) => {
    const bytes = toBinary(desc, msg as MessageShape<D>);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function deserializer<D extends DescMessage>(desc: D): (buf: Buffer) => MessageShape<D> {
  if (isBytesOnly(desc)) return (buf) => ({ $typeName: desc.typeName, data: decodeBytesOnly(buf, desc.typeName) }) as unknown as MessageShape<D>;
  return (buf) => fromBinary(desc, buf);
}

/**
 * A message of one field, `bytes data = 1` (BytesMessage: every message of the session tunnel,
 * DiffCopy and ForwardAgent). Thousands of them cross the tunnel per build, mostly tiny: they are
 * encoded and decoded by hand, the data taken without a copy, instead of by reflection.
 */
function isBytesOnly(desc: DescMessage): boolean {
  const f = desc.fields;
  return f.length === 1 && f[0]!.number === 1 && f[0]!.fieldKind === 'scalar' && f[0]!.scalar === ScalarType.BYTES;
}

export function encodeBytesOnly(data: Uint8Array | undefined): Buffer {
  const n = data?.byteLength ?? 0;
  if (n === 0) return Buffer.alloc(0);
  const head: number[] = [0x0a];
  for (let v = n; ; ) {
    if (v < 0x80) {
      head.push(v);
      break;
    }
    head.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  const out = Buffer.allocUnsafe(head.length + n);
  out.set(head, 0);
  out.set(data!, head.length);
  return out;
}

/** The last `data` field of an encoded one-bytes-field message; other fields are skipped, as protobuf readers do. */
export function decodeBytesOnly(buf: Uint8Array, typeName: string): Uint8Array {
  let data: Uint8Array = new Uint8Array(0);
  let pos = 0;
  const varint = (): number => {
    let v = 0;
    for (let mul = 1; ; mul *= 128) {
      if (pos >= buf.length) throw new Error(`cannot decode ${typeName}: truncated varint`);
      const b = buf[pos++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      if (mul > 2 ** 49) throw new Error(`cannot decode ${typeName}: varint too long`);
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 2) {
      const len = varint();
      if (pos + len > buf.length) throw new Error(`cannot decode ${typeName}: field ${field} runs past the end`);
      if (field === 1) data = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 0) {
      varint();
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else {
      throw new Error(`cannot decode ${typeName}: unsupported wire type ${wire}`);
    }
    if (pos > buf.length) throw new Error(`cannot decode ${typeName}: truncated field ${field}`);
  }
  return data;
}
