import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { timestampDate, timestampFromDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import { StatusResponseSchema, VertexLogSchema, VertexSchema, VertexStatusSchema, VertexWarningSchema, type StatusResponse } from '../gen/buildkit/control_pb.js';
import { ProgressGroupSchema } from '../gen/buildkit/ops_pb.js';
import type { ProgressEvent } from '../util/progress.js';

/*
 * A build's progress as BuildKit's Status stream carries it, both ways: events to a
 * StatusResponse for the wire, and the stream kept with a build record (upstream's
 * `application/vnd.buildkit.status.v0` blob: each StatusResponse as a little-endian uint32 length
 * and its protobuf bytes) written and read back.
 */

/** One StatusResponse's events, in the order clients read them: vertexes, statuses, logs, warnings. */
export function statusResponse(batch: ProgressEvent[]): StatusResponse {
  const resp = create(StatusResponseSchema, {});
  const ts = (d: Date | undefined) => (d ? timestampFromDate(d) : undefined);
  for (const ev of batch) {
    switch (ev.kind) {
      case 'vertex': {
        const v = ev.vertex;
        resp.vertexes.push(
          create(VertexSchema, {
            digest: v.digest,
            inputs: v.inputs,
            name: v.name,
            cached: v.cached ?? false,
            started: ts(v.started),
            completed: ts(v.completed),
            error: v.error ?? '',
            progressGroup: v.progressGroup ? create(ProgressGroupSchema, v.progressGroup) : undefined,
          }),
        );
        break;
      }
      case 'status': {
        const s = ev.status;
        resp.statuses.push(
          create(VertexStatusSchema, {
            ID: s.id,
            vertex: s.vertex,
            name: s.name,
            current: BigInt(Math.round(s.current)),
            total: BigInt(Math.round(s.total)),
            timestamp: ts(s.timestamp),
            started: ts(s.started),
            completed: ts(s.completed),
          }),
        );
        break;
      }
      case 'log':
        resp.logs.push(
          create(VertexLogSchema, {
            vertex: ev.log.vertex,
            timestamp: ts(ev.log.timestamp),
            stream: BigInt(ev.log.stream),
            msg: ev.log.data,
          }),
        );
        break;
      case 'warning':
        resp.warnings.push(
          create(VertexWarningSchema, {
            vertex: ev.warning.vertex,
            level: BigInt(ev.warning.level),
            short: Buffer.from(ev.warning.short),
            detail: ev.warning.detail.map((d) => Buffer.from(d)),
            url: ev.warning.url ?? '',
          }),
        );
        break;
    }
  }
  return resp;
}

const RANK: Record<ProgressEvent['kind'], number> = { vertex: 0, status: 1, log: 2, warning: 3 };
/** Bytes of log output per stored StatusResponse, at most (one larger log chunk goes alone). */
const MAX_LOG_BYTES = 1 << 20;

/**
 * The events as a stored status stream. A new StatusResponse starts wherever the events' order
 * is not the one a StatusResponse is read in, so reading the stream back gives them in order.
 */
export function encodeStatusStream(events: readonly ProgressEvent[]): Buffer {
  const out: Buffer[] = [];
  let batch: ProgressEvent[] = [];
  let rank = -1;
  let logBytes = 0;
  const flush = () => {
    if (batch.length === 0) return;
    const msg = toBinary(StatusResponseSchema, statusResponse(batch));
    const len = Buffer.alloc(4);
    len.writeUInt32LE(msg.length);
    out.push(len, Buffer.from(msg.buffer, msg.byteOffset, msg.byteLength));
    batch = [];
    rank = -1;
    logBytes = 0;
  };
  for (const ev of events) {
    const size = ev.kind === 'log' ? ev.log.data.byteLength : 0;
    if (RANK[ev.kind] < rank || (size > 0 && logBytes + size > MAX_LOG_BYTES)) flush();
    batch.push(ev);
    rank = RANK[ev.kind];
    logBytes += size;
  }
  flush();
  return Buffer.concat(out);
}

/** A stored status stream's events; `what` names it in the error a damaged stream gives. */
export function decodeStatusStream(buf: Uint8Array, what: string): ProgressEvent[] {
  const events: ProgressEvent[] = [];
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let off = 0; off < view.length; ) {
    if (off + 4 > view.length) throw new Error(`${what}: truncated status stream at byte ${off}`);
    const len = view.readUInt32LE(off);
    if (off + 4 + len > view.length) throw new Error(`${what}: truncated status stream at byte ${off}`);
    events.push(...progressEvents(fromBinary(StatusResponseSchema, view.subarray(off + 4, off + 4 + len))));
    off += 4 + len;
  }
  return events;
}

/** A StatusResponse's events, in the order clients read them. */
export function progressEvents(resp: StatusResponse): ProgressEvent[] {
  const date = (t: Timestamp | undefined) => (t ? timestampDate(t) : undefined);
  const events: ProgressEvent[] = [];
  for (const v of resp.vertexes) {
    events.push({
      kind: 'vertex',
      vertex: {
        digest: v.digest,
        inputs: [...v.inputs],
        name: v.name,
        ...(v.cached ? { cached: true } : {}),
        ...(v.started ? { started: date(v.started) } : {}),
        ...(v.completed ? { completed: date(v.completed) } : {}),
        ...(v.error ? { error: v.error } : {}),
        ...(v.progressGroup ? { progressGroup: { id: v.progressGroup.id, name: v.progressGroup.name, weak: v.progressGroup.weak } } : {}),
      },
    });
  }
  for (const s of resp.statuses) {
    events.push({
      kind: 'status',
      status: {
        id: s.ID,
        vertex: s.vertex,
        name: s.name,
        current: Number(s.current),
        total: Number(s.total),
        timestamp: date(s.timestamp) ?? new Date(0),
        ...(s.started ? { started: date(s.started) } : {}),
        ...(s.completed ? { completed: date(s.completed) } : {}),
      },
    });
  }
  for (const l of resp.logs) {
    events.push({ kind: 'log', log: { vertex: l.vertex, stream: l.stream === 2n ? 2 : 1, data: l.msg, timestamp: date(l.timestamp) ?? new Date(0) } });
  }
  for (const w of resp.warnings) {
    const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');
    events.push({ kind: 'warning', warning: { vertex: w.vertex, level: Number(w.level), short: text(w.short), detail: w.detail.map(text), ...(w.url ? { url: w.url } : {}) } });
  }
  return events;
}
