import type { StatusResponse } from '../../gen/buildkit/control_pb.js';
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import { goBytesJSON, goJSON, pbRangesGoJSON, progressGroupGoJSON, sourceInfoGoJSON } from '../../content/go-json.js';

/**
 * One Control.Status message as upstream buildctl's `--progress rawjson` prints it: the client's
 * SolveStatus (vertexes, statuses, logs, warnings) through Go's json.Encoder, one line per message.
 * Field names, order and omitempty rules are those of upstream's client types; times are UTC
 * RFC 3339 with nanoseconds, a missing status or log time is the Unix epoch (as Go's AsTime of
 * nil), bytes are base64.
 */
export function statusGoJSON(s: StatusResponse): string {
  const b64 = goBytesJSON;
  const out = {
    ...(s.vertexes.length > 0
      ? {
          vertexes: s.vertexes.map((v) => ({
            ...(v.digest ? { digest: v.digest } : {}),
            ...(v.inputs.length > 0 ? { inputs: v.inputs } : {}),
            ...(v.name ? { name: v.name } : {}),
            ...(v.started ? { started: timestampGo(v.started) } : {}),
            ...(v.completed ? { completed: timestampGo(v.completed) } : {}),
            ...(v.cached ? { cached: true } : {}),
            ...(v.error ? { error: v.error } : {}),
            ...(v.progressGroup ? { progressGroup: progressGroupGoJSON(v.progressGroup) } : {}),
          })),
        }
      : {}),
    ...(s.statuses.length > 0
      ? {
          statuses: s.statuses.map((st) => ({
            id: st.ID,
            ...(st.vertex ? { vertex: st.vertex } : {}),
            ...(st.name ? { name: st.name } : {}),
            ...(st.total ? { total: Number(st.total) } : {}),
            current: Number(st.current),
            timestamp: timestampGo(st.timestamp),
            ...(st.started ? { started: timestampGo(st.started) } : {}),
            ...(st.completed ? { completed: timestampGo(st.completed) } : {}),
          })),
        }
      : {}),
    ...(s.logs.length > 0
      ? {
          logs: s.logs.map((l) => ({
            ...(l.vertex ? { vertex: l.vertex } : {}),
            ...(l.stream ? { stream: Number(l.stream) } : {}),
            data: l.msg.length > 0 ? b64(l.msg) : null,
            timestamp: timestampGo(l.timestamp),
          })),
        }
      : {}),
    ...(s.warnings.length > 0
      ? {
          warnings: s.warnings.map((w) => ({
            ...(w.vertex ? { vertex: w.vertex } : {}),
            ...(w.level ? { level: Number(w.level) } : {}),
            ...(w.short.length > 0 ? { short: b64(w.short) } : {}),
            ...(w.detail.length > 0 ? { detail: w.detail.map(b64) } : {}),
            ...(w.url ? { url: w.url } : {}),
            ...(w.info ? { sourceInfo: sourceInfoGoJSON(w.info) } : {}),
            ...(w.ranges.length > 0 ? { range: pbRangesGoJSON(w.ranges) } : {}),
          })),
        }
      : {}),
  };
  return goJSON(out);
}

/** A protobuf Timestamp as Go's encoding/json writes the time.Time AsTime gives: UTC, nanoseconds with trailing zeros cut. */
export function timestampGo(t: Timestamp | undefined): string {
  const seconds = t ? t.seconds : 0n;
  const nanos = t ? t.nanos : 0;
  const base = new Date(Number(seconds) * 1000).toISOString().replace(/\.\d+Z$/, '');
  const frac = nanos ? `.${String(nanos).padStart(9, '0').replace(/0+$/, '')}` : '';
  return `${base}${frac}Z`;
}
