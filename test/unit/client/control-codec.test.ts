/**
 * The hand codecs of Control.Solve, Control.Status and Control.ListWorkers against protobuf-es: the same bytes out, the
 * same objects in, for many generated messages.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import {
  decodeListWorkersResponse,
  decodeSolveResponse,
  decodeStatusResponse,
  encodeListWorkersRequest,
  encodeSolveRequest,
  encodeStatusRequest,
  isFastSolveRequest,
  type FastSolveRequest,
} from '../../../src/client/control-codec.js';
import {
  ListWorkersRequestSchema,
  ListWorkersResponseSchema,
  SolveRequestSchema,
  SolveResponseSchema,
  StatusRequestSchema,
  StatusResponseSchema,
} from '../../../src/gen/buildkit/control_pb.js';
import { DefinitionSchema } from '../../../src/gen/buildkit/ops_pb.js';
import { StatusSchema } from '../../../src/gen/google/rpc/status_pb.js';
import { decodeRpcStatus } from '../../../src/util/proto-wire.js';

// A small deterministic generator (a failing case reproduces).
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function gen(seed: number) {
  const r = rng(seed);
  const int = (n: number): number => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const maybe = <T>(f: () => T): T | undefined => (r() < 0.5 ? f() : undefined);
  const str = (): string => pick(['', 'a', 'context', 'sha256:' + 'ab'.repeat(32), 'ünïcödé ✓', 'x'.repeat(200), 'line\nbreak']);
  const map = (): Record<string, string> => Object.fromEntries(Array.from({ length: int(4) }, () => [str() + int(9), str()]));
  const i64 = (): bigint => pick([0n, 1n, 127n, 128n, 16384n, 2n ** 40n, -1n, -(2n ** 63n), 2n ** 63n - 1n]);
  const list = <T>(f: () => T, n = 4): T[] => Array.from({ length: int(n) }, f);
  const bytes = (): Uint8Array => Uint8Array.from(list(() => int(256), 40));
  const ts = () => ({ seconds: pick([0n, 1700000000n, -5n, 2n ** 34n]), nanos: pick([0, 1, 999999999, 500]) });
  return { int, pick, maybe, str, map, i64, list, bytes, ts, r };
}

describe('SolveRequest', () => {
  it('encodes byte for byte as protobuf-es does', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const g = gen(seed);
      const entry = () => ({ Type: g.str(), Attrs: g.map() });
      const req: FastSolveRequest = {
        Ref: g.maybe(g.str),
        Exporter: g.maybe(g.str),
        ExporterAttrs: g.maybe(g.map),
        Session: g.maybe(g.str),
        Frontend: g.maybe(g.str),
        FrontendAttrs: g.maybe(g.map),
        Cache: g.maybe(() => ({ Exports: g.maybe(() => g.list(entry)), Imports: g.maybe(() => g.list(entry)) })),
        Entitlements: g.maybe(() => g.list(g.str)),
        Internal: g.maybe(() => g.r() < 0.5),
        Exporters: g.maybe(() => g.list(entry)),
        EnableSessionExporter: g.maybe(() => g.r() < 0.5),
        SourcePolicySession: g.maybe(g.str),
        CompatibilityVersion: g.maybe(g.i64),
        ProxyNetwork: g.maybe(() => g.r() < 0.5),
      };
      expect(isFastSolveRequest(req)).toBe(true);
      expect(Buffer.from(encodeSolveRequest(req)).toString('hex'), `seed ${seed}`).toBe(Buffer.from(toBinary(SolveRequestSchema, create(SolveRequestSchema, req))).toString('hex'));
    }
  });

  it('leaves requests with a definition, frontend inputs, a policy or deprecated cache fields to protobuf-es', () => {
    const def = create(DefinitionSchema, { def: [new Uint8Array([1])] });
    expect(isFastSolveRequest({ Ref: 'x', Definition: def })).toBe(false);
    expect(isFastSolveRequest({ FrontendInputs: { a: def } })).toBe(false);
    expect(isFastSolveRequest({ SourcePolicy: {} })).toBe(false);
    expect(isFastSolveRequest({ Cache: { ImportRefsDeprecated: ['a'] } })).toBe(false);
    expect(isFastSolveRequest({ Ref: 'x', Definition: undefined, Cache: { Exports: [], Imports: undefined } })).toBe(true);
  });
});

describe('StatusRequest, SolveResponse', () => {
  it('match protobuf-es', () => {
    for (const ref of ['', 'abc', 'ü'.repeat(100)]) {
      expect(Buffer.from(encodeStatusRequest(ref))).toEqual(Buffer.from(toBinary(StatusRequestSchema, create(StatusRequestSchema, { Ref: ref }))));
    }
    for (let seed = 1; seed <= 100; seed++) {
      const g = gen(seed);
      const bytes = toBinary(SolveResponseSchema, create(SolveResponseSchema, { ExporterResponse: g.map() }));
      expect(decodeSolveResponse(bytes)).toEqual(fromBinary(SolveResponseSchema, bytes));
    }
  });
});

describe('StatusResponse', () => {
  it('decodes to the objects protobuf-es makes, unknown fields kept alike', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const g = gen(seed);
      const pos = () => ({ line: g.pick([0, 1, 42, -1, 2 ** 31 - 1]), character: g.pick([0, 3, -7]) });
      const msg = create(StatusResponseSchema, {
        vertexes: g.list(() => ({
          digest: g.str(),
          inputs: g.list(g.str),
          name: g.str(),
          cached: g.r() < 0.5,
          started: g.maybe(g.ts),
          completed: g.maybe(g.ts),
          error: g.str(),
          progressGroup: g.maybe(() => ({ id: g.str(), name: g.str(), weak: g.r() < 0.5 })),
        })),
        statuses: g.list(() => ({ ID: g.str(), vertex: g.str(), name: g.str(), current: g.i64(), total: g.i64(), timestamp: g.maybe(g.ts), started: g.maybe(g.ts), completed: g.maybe(g.ts) })),
        logs: g.list(() => ({ vertex: g.str(), timestamp: g.maybe(g.ts), stream: g.i64(), msg: g.bytes() })),
        warnings: g.list(() => ({
          vertex: g.str(),
          level: g.i64(),
          short: g.bytes(),
          detail: g.list(g.bytes),
          url: g.str(),
          info: g.maybe(() => ({ filename: g.str(), data: g.bytes(), language: g.str() })),
          ranges: g.list(() => ({ start: g.maybe(pos), end: g.maybe(pos) })),
        })),
      });
      let bytes = toBinary(StatusResponseSchema, msg);
      // An unknown varint field and an unknown length-delimited one at the end.
      if (seed % 3 === 0) bytes = Buffer.concat([bytes, Buffer.from([15 << 3, 5, (14 << 3) | 2, 2, 0xaa, 0xbb])]);
      expect(decodeStatusResponse(bytes), `seed ${seed}`).toEqual(fromBinary(StatusResponseSchema, bytes));
    }
  });

  it("keeps a warning's LLB definition as an unknown field that re-encodes to the same message", () => {
    const msg = create(StatusResponseSchema, {
      warnings: [{ vertex: 'v', short: Buffer.from('w'), info: { filename: 'Dockerfile', data: Buffer.from('FROM x'), definition: { def: [new Uint8Array([1, 2, 3])] }, language: 'Dockerfile' } }],
    });
    const bytes = toBinary(StatusResponseSchema, msg);
    const ours = decodeStatusResponse(bytes);
    expect(ours.warnings[0]!.info!.filename).toBe('Dockerfile');
    expect(ours.warnings[0]!.info!.language).toBe('Dockerfile');
    expect(fromBinary(StatusResponseSchema, toBinary(StatusResponseSchema, ours))).toEqual(fromBinary(StatusResponseSchema, bytes));
  });

  it('refuses a truncated message, naming the type', () => {
    const bytes = toBinary(StatusResponseSchema, create(StatusResponseSchema, { vertexes: [{ digest: 'sha256:x', name: 'step' }] }));
    expect(() => decodeStatusResponse(bytes.subarray(0, bytes.length - 2))).toThrow(/cannot decode moby\.buildkit\.v1\.(StatusResponse|Vertex): /);
  });
});

describe('ListWorkers', () => {
  it('encodes the request and decodes the response as protobuf-es does', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const g = gen(seed);
      const filter = g.list(g.str);
      expect(Buffer.from(encodeListWorkersRequest(filter)).toString('hex'), `seed ${seed}`).toBe(
        Buffer.from(toBinary(ListWorkersRequestSchema, create(ListWorkersRequestSchema, { filter }))).toString('hex'),
      );
      const msg = create(ListWorkersResponseSchema, {
        record: g.list(() => ({
          ID: g.str(),
          Labels: g.map(),
          platforms: g.list(() => ({ Architecture: g.str(), OS: g.str(), Variant: g.str(), OSVersion: g.str(), OSFeatures: g.list(g.str) })),
          GCPolicy: g.list(() => ({ all: g.r() < 0.5, keepDuration: g.i64(), reservedSpace: g.i64(), filters: g.list(g.str), maxUsedSpace: g.i64(), minFreeSpace: g.i64() })),
          BuildkitVersion: g.maybe(() => ({ package: g.str(), version: g.str(), revision: g.str() })),
          CDIDevices: g.list(() => ({ Name: g.str(), AutoAllow: g.r() < 0.5, Annotations: g.map(), OnDemand: g.r() < 0.5 })),
        })),
      });
      let bytes = toBinary(ListWorkersResponseSchema, msg);
      if (seed % 3 === 0) bytes = Buffer.concat([bytes, Buffer.from([15 << 3, 5])]);
      expect(decodeListWorkersResponse(bytes), `seed ${seed}`).toEqual(fromBinary(ListWorkersResponseSchema, bytes));
    }
  });
});

describe('google.rpc.Status', () => {
  it('decodes code, message and details as protobuf-es reads them', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const g = gen(seed);
      const bytes = toBinary(
        StatusSchema,
        create(StatusSchema, { code: g.pick([0, 2, 13, -1]), message: g.str(), details: g.list(() => ({ typeUrl: g.str(), value: g.bytes() })) }),
      );
      const want = fromBinary(StatusSchema, bytes);
      expect(decodeRpcStatus(bytes)).toEqual({ code: want.code, message: want.message, details: want.details.map((d) => ({ typeUrl: d.typeUrl, value: d.value })) });
    }
  });
});
