import type { DescMessage, DescService, MessageShape } from '@bufbuild/protobuf';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
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
  return (msg) => {
    const bytes = toBinary(desc, msg as MessageShape<D>);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function deserializer<D extends DescMessage>(desc: D): (buf: Buffer) => MessageShape<D> {
  return (buf) => fromBinary(desc, buf);
}
