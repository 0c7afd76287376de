/**
 * Control.Solve and Control.Status messages by hand: what every build of loom's buildctl sends and
 * receives, without protobuf-es' descriptors of control.proto. Control.ListWorkers too: buildx's
 * docker-container driver runs `buildctl debug workers` until the daemon answers.
 *
 * Building those descriptors (control.proto and all it imports: ops.proto, worker.proto, the
 * source policy, google.rpc.Status) is done when their generated modules load and was the largest
 * single part of the client's start-up; a build that sends no LLB definition needs none of them,
 * so the client loads them (control-client.ts) only for the other calls and for definitions.
 * The objects made here are the ones protobuf-es makes (same fields, defaults and type names);
 * test/unit/client/control-codec.test.ts checks both directions against protobuf-es.
 */
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import type { ListWorkersResponse, SolveRequest, SolveResponse, StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning } from '../gen/buildkit/control_pb.js';
import type { Platform, Position, ProgressGroup, Range, SourceInfo } from '../gen/buildkit/ops_pb.js';
import type { BuildkitVersion, CDIDevice, GCPolicy, WorkerRecord } from '../gen/buildkit/worker_pb.js';
import { WireReader, WireType, WireWriter } from '../util/proto-wire.js';

type Init<T> = { [K in Exclude<keyof T, '$typeName' | '$unknown'>]?: unknown };
type UnknownField = { no: number; wireType: number; data: Uint8Array };

/** The SolveRequest fields this encoder writes; a request using any other needs protobuf-es. */
export interface FastSolveRequest {
  Ref?: string;
  Exporter?: string;
  ExporterAttrs?: Record<string, string>;
  Session?: string;
  Frontend?: string;
  FrontendAttrs?: Record<string, string>;
  Cache?: { Exports?: { Type?: string; Attrs?: Record<string, string> }[]; Imports?: { Type?: string; Attrs?: Record<string, string> }[] };
  Entitlements?: string[];
  Internal?: boolean;
  Exporters?: { Type?: string; Attrs?: Record<string, string> }[];
  EnableSessionExporter?: boolean;
  SourcePolicySession?: string;
  CompatibilityVersion?: bigint;
  ProxyNetwork?: boolean;
}

const FAST_SOLVE_FIELDS = new Set<string>([
  'Ref', 'Exporter', 'ExporterAttrs', 'Session', 'Frontend', 'FrontendAttrs', 'Cache', 'Entitlements', 'Internal', 'Exporters',
  'EnableSessionExporter', 'SourcePolicySession', 'CompatibilityVersion', 'ProxyNetwork',
]);
const FAST_CACHE_FIELDS = new Set<string>(['Exports', 'Imports']);

/**
 * Whether `req` (a SolveRequest init object) only uses what encodeSolveRequest writes: no LLB
 * definition, frontend inputs, source policy or the deprecated cache fields.
 */
export function isFastSolveRequest(req: Init<SolveRequest>): req is FastSolveRequest {
  for (const [k, v] of Object.entries(req)) {
    if (v === undefined) continue;
    if (!FAST_SOLVE_FIELDS.has(k)) return false;
    if (k === 'Cache' && Object.entries(v as object).some(([ck, cv]) => cv !== undefined && !FAST_CACHE_FIELDS.has(ck))) return false;
  }
  return true;
}

function entry(field: number, w: WireWriter, e: { Type?: string; Attrs?: Record<string, string> }): void {
  w.bytesAlways(field, new WireWriter().string(1, e.Type ?? '').stringMap(2, e.Attrs).finish());
}

/** SolveRequest in wire form, byte for byte what protobuf-es' toBinary(create(SolveRequestSchema, req)) gives. */
export function encodeSolveRequest(req: FastSolveRequest): Buffer {
  const w = new WireWriter();
  w.string(1, req.Ref ?? '');
  w.string(3, req.Exporter ?? '');
  w.stringMap(4, req.ExporterAttrs);
  w.string(5, req.Session ?? '');
  w.string(6, req.Frontend ?? '');
  w.stringMap(7, req.FrontendAttrs);
  if (req.Cache) {
    const c = new WireWriter();
    for (const e of req.Cache.Exports ?? []) entry(4, c, e);
    for (const e of req.Cache.Imports ?? []) entry(5, c, e);
    w.bytesAlways(8, c.finish());
  }
  for (const e of req.Entitlements ?? []) w.bytesAlways(9, Buffer.from(e));
  w.bool(11, req.Internal ?? false);
  for (const e of req.Exporters ?? []) entry(13, w, e);
  w.bool(14, req.EnableSessionExporter ?? false);
  w.string(15, req.SourcePolicySession ?? '');
  w.int64(16, req.CompatibilityVersion ?? 0n);
  w.bool(17, req.ProxyNetwork ?? false);
  return w.finish();
}

export function encodeStatusRequest(ref: string): Buffer {
  return new WireWriter().string(1, ref).finish();
}

/** Keeps a field this decoder does not model as protobuf-es keeps an unknown one. */
function unknown(r: WireReader, msg: { $unknown?: UnknownField[] }, no: number, wire: number): void {
  const start = r.pos;
  r.skip(wire);
  (msg.$unknown ??= []).push({ no, wireType: wire, data: r.slice(start, r.pos) });
}

export function decodeSolveResponse(b: Uint8Array): SolveResponse {
  const r = new WireReader(b, 'moby.buildkit.v1.SolveResponse');
  const m = { $typeName: 'moby.buildkit.v1.SolveResponse', ExporterResponse: {} } as SolveResponse;
  while (!r.done) {
    const [f, w] = r.tag();
    if (f === 1 && w === WireType.LEN) r.mapEntry(m.ExporterResponse);
    else unknown(r, m, f, w);
  }
  return m;
}

function timestamp(r: WireReader): Timestamp {
  const s = r.sub('google.protobuf.Timestamp');
  const t = { $typeName: 'google.protobuf.Timestamp', seconds: 0n, nanos: 0 } as Timestamp;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.VARINT) t.seconds = s.int64();
    else if (f === 2 && w === WireType.VARINT) t.nanos = s.int32();
    else unknown(s, t, f, w);
  }
  return t;
}

function progressGroup(r: WireReader): ProgressGroup {
  const s = r.sub('pb.ProgressGroup');
  const g = { $typeName: 'pb.ProgressGroup', id: '', name: '', weak: false } as ProgressGroup;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) g.id = s.string();
    else if (f === 2 && w === WireType.LEN) g.name = s.string();
    else if (f === 3 && w === WireType.VARINT) g.weak = s.varint() !== 0;
    else unknown(s, g, f, w);
  }
  return g;
}

function vertex(r: WireReader): Vertex {
  const s = r.sub('moby.buildkit.v1.Vertex');
  const v = { $typeName: 'moby.buildkit.v1.Vertex', digest: '', inputs: [], name: '', cached: false, error: '' } as unknown as Vertex;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) v.digest = s.string();
    else if (f === 2 && w === WireType.LEN) v.inputs.push(s.string());
    else if (f === 3 && w === WireType.LEN) v.name = s.string();
    else if (f === 4 && w === WireType.VARINT) v.cached = s.varint() !== 0;
    else if (f === 5 && w === WireType.LEN) v.started = timestamp(s);
    else if (f === 6 && w === WireType.LEN) v.completed = timestamp(s);
    else if (f === 7 && w === WireType.LEN) v.error = s.string();
    else if (f === 8 && w === WireType.LEN) v.progressGroup = progressGroup(s);
    else unknown(s, v, f, w);
  }
  return v;
}

function vertexStatus(r: WireReader): VertexStatus {
  const s = r.sub('moby.buildkit.v1.VertexStatus');
  const v = { $typeName: 'moby.buildkit.v1.VertexStatus', ID: '', vertex: '', name: '', current: 0n, total: 0n } as unknown as VertexStatus;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) v.ID = s.string();
    else if (f === 2 && w === WireType.LEN) v.vertex = s.string();
    else if (f === 3 && w === WireType.LEN) v.name = s.string();
    else if (f === 4 && w === WireType.VARINT) v.current = s.int64();
    else if (f === 5 && w === WireType.VARINT) v.total = s.int64();
    else if (f === 6 && w === WireType.LEN) v.timestamp = timestamp(s);
    else if (f === 7 && w === WireType.LEN) v.started = timestamp(s);
    else if (f === 8 && w === WireType.LEN) v.completed = timestamp(s);
    else unknown(s, v, f, w);
  }
  return v;
}

function vertexLog(r: WireReader): VertexLog {
  const s = r.sub('moby.buildkit.v1.VertexLog');
  const v = { $typeName: 'moby.buildkit.v1.VertexLog', vertex: '', stream: 0n, msg: new Uint8Array(0) } as unknown as VertexLog;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) v.vertex = s.string();
    else if (f === 2 && w === WireType.LEN) v.timestamp = timestamp(s);
    else if (f === 3 && w === WireType.VARINT) v.stream = s.int64();
    else if (f === 4 && w === WireType.LEN) v.msg = s.bytes();
    else unknown(s, v, f, w);
  }
  return v;
}

function position(r: WireReader): Position {
  const s = r.sub('pb.Position');
  const p = { $typeName: 'pb.Position', line: 0, character: 0 } as Position;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.VARINT) p.line = s.int32();
    else if (f === 2 && w === WireType.VARINT) p.character = s.int32();
    else unknown(s, p, f, w);
  }
  return p;
}

function range(r: WireReader): Range {
  const s = r.sub('pb.Range');
  const g = { $typeName: 'pb.Range' } as Range;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) g.start = position(s);
    else if (f === 2 && w === WireType.LEN) g.end = position(s);
    else unknown(s, g, f, w);
  }
  return g;
}

/** SourceInfo, but for its LLB definition: the client never reads it, and it is kept as an unknown field (re-encoding keeps it). */
function sourceInfo(r: WireReader): SourceInfo {
  const s = r.sub('pb.SourceInfo');
  const i = { $typeName: 'pb.SourceInfo', filename: '', data: new Uint8Array(0), language: '' } as SourceInfo;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) i.filename = s.string();
    else if (f === 2 && w === WireType.LEN) i.data = s.bytes();
    else if (f === 4 && w === WireType.LEN) i.language = s.string();
    else unknown(s, i, f, w);
  }
  return i;
}

function vertexWarning(r: WireReader): VertexWarning {
  const s = r.sub('moby.buildkit.v1.VertexWarning');
  const v = { $typeName: 'moby.buildkit.v1.VertexWarning', vertex: '', level: 0n, short: new Uint8Array(0), detail: [], url: '', ranges: [] } as unknown as VertexWarning;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) v.vertex = s.string();
    else if (f === 2 && w === WireType.VARINT) v.level = s.int64();
    else if (f === 3 && w === WireType.LEN) v.short = s.bytes();
    else if (f === 4 && w === WireType.LEN) v.detail.push(s.bytes());
    else if (f === 5 && w === WireType.LEN) v.url = s.string();
    else if (f === 6 && w === WireType.LEN) v.info = sourceInfo(s);
    else if (f === 7 && w === WireType.LEN) v.ranges.push(range(s));
    else unknown(s, v, f, w);
  }
  return v;
}

export function decodeStatusResponse(b: Uint8Array): StatusResponse {
  const r = new WireReader(b, 'moby.buildkit.v1.StatusResponse');
  const m = { $typeName: 'moby.buildkit.v1.StatusResponse', vertexes: [], statuses: [], logs: [], warnings: [] } as unknown as StatusResponse;
  while (!r.done) {
    const [f, w] = r.tag();
    if (f === 1 && w === WireType.LEN) m.vertexes.push(vertex(r));
    else if (f === 2 && w === WireType.LEN) m.statuses.push(vertexStatus(r));
    else if (f === 3 && w === WireType.LEN) m.logs.push(vertexLog(r));
    else if (f === 4 && w === WireType.LEN) m.warnings.push(vertexWarning(r));
    else unknown(r, m, f, w);
  }
  return m;
}

export function encodeListWorkersRequest(filter: readonly string[]): Buffer {
  const w = new WireWriter();
  for (const f of filter) w.bytesAlways(1, Buffer.from(f));
  return w.finish();
}

function platform(r: WireReader): Platform {
  const s = r.sub('pb.Platform');
  const p = { $typeName: 'pb.Platform', Architecture: '', OS: '', Variant: '', OSVersion: '', OSFeatures: [] } as unknown as Platform;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) p.Architecture = s.string();
    else if (f === 2 && w === WireType.LEN) p.OS = s.string();
    else if (f === 3 && w === WireType.LEN) p.Variant = s.string();
    else if (f === 4 && w === WireType.LEN) p.OSVersion = s.string();
    else if (f === 5 && w === WireType.LEN) p.OSFeatures.push(s.string());
    else unknown(s, p, f, w);
  }
  return p;
}

function gcPolicy(r: WireReader): GCPolicy {
  const s = r.sub('moby.buildkit.v1.types.GCPolicy');
  const g = { $typeName: 'moby.buildkit.v1.types.GCPolicy', all: false, keepDuration: 0n, reservedSpace: 0n, filters: [], maxUsedSpace: 0n, minFreeSpace: 0n } as unknown as GCPolicy;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.VARINT) g.all = s.varint() !== 0;
    else if (f === 2 && w === WireType.VARINT) g.keepDuration = s.int64();
    else if (f === 3 && w === WireType.VARINT) g.reservedSpace = s.int64();
    else if (f === 4 && w === WireType.LEN) g.filters.push(s.string());
    else if (f === 5 && w === WireType.VARINT) g.maxUsedSpace = s.int64();
    else if (f === 6 && w === WireType.VARINT) g.minFreeSpace = s.int64();
    else unknown(s, g, f, w);
  }
  return g;
}

function buildkitVersion(r: WireReader): BuildkitVersion {
  const s = r.sub('moby.buildkit.v1.types.BuildkitVersion');
  const v = { $typeName: 'moby.buildkit.v1.types.BuildkitVersion', package: '', version: '', revision: '' } as BuildkitVersion;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) v.package = s.string();
    else if (f === 2 && w === WireType.LEN) v.version = s.string();
    else if (f === 3 && w === WireType.LEN) v.revision = s.string();
    else unknown(s, v, f, w);
  }
  return v;
}

function cdiDevice(r: WireReader): CDIDevice {
  const s = r.sub('moby.buildkit.v1.types.CDIDevice');
  const d = { $typeName: 'moby.buildkit.v1.types.CDIDevice', Name: '', AutoAllow: false, Annotations: {}, OnDemand: false } as unknown as CDIDevice;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) d.Name = s.string();
    else if (f === 2 && w === WireType.VARINT) d.AutoAllow = s.varint() !== 0;
    else if (f === 3 && w === WireType.LEN) s.mapEntry(d.Annotations);
    else if (f === 4 && w === WireType.VARINT) d.OnDemand = s.varint() !== 0;
    else unknown(s, d, f, w);
  }
  return d;
}

function workerRecord(r: WireReader): WorkerRecord {
  const s = r.sub('moby.buildkit.v1.types.WorkerRecord');
  const rec = { $typeName: 'moby.buildkit.v1.types.WorkerRecord', ID: '', Labels: {}, platforms: [], GCPolicy: [], CDIDevices: [] } as unknown as WorkerRecord;
  while (!s.done) {
    const [f, w] = s.tag();
    if (f === 1 && w === WireType.LEN) rec.ID = s.string();
    else if (f === 2 && w === WireType.LEN) s.mapEntry(rec.Labels);
    else if (f === 3 && w === WireType.LEN) rec.platforms.push(platform(s));
    else if (f === 4 && w === WireType.LEN) rec.GCPolicy.push(gcPolicy(s));
    else if (f === 5 && w === WireType.LEN) rec.BuildkitVersion = buildkitVersion(s);
    else if (f === 6 && w === WireType.LEN) rec.CDIDevices.push(cdiDevice(s));
    else unknown(s, rec, f, w);
  }
  return rec;
}

export function decodeListWorkersResponse(b: Uint8Array): ListWorkersResponse {
  const r = new WireReader(b, 'moby.buildkit.v1.ListWorkersResponse');
  const m = { $typeName: 'moby.buildkit.v1.ListWorkersResponse', record: [] } as unknown as ListWorkersResponse;
  while (!r.done) {
    const [f, w] = r.tag();
    if (f === 1 && w === WireType.LEN) m.record.push(workerRecord(r));
    else unknown(r, m, f, w);
  }
  return m;
}
