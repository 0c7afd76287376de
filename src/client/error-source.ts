import type { ErrorSource } from '../util/errors.js';
import { decodeRpcStatus } from '../util/proto-wire.js';

/**
 * The errdefs.Source details of a failed call (grpc-status-details-bin, decoded: a
 * google.rpc.Status, each detail the Go struct as JSON): the Dockerfile lines the error is about.
 */
export function detailsSources(raw: Uint8Array): ErrorSource[] {
  let details;
  try {
    details = decodeRpcStatus(raw).details;
  } catch {
    return [];
  }
  const out: ErrorSource[] = [];
  for (const d of details) {
    if (!d.typeUrl.endsWith('errdefs.Source+json')) continue;
    try {
      const v = JSON.parse(Buffer.from(d.value).toString('utf8')) as {
        info?: { filename?: string; data?: string };
        ranges?: { start?: { line?: number; character?: number }; end?: { line?: number; character?: number } }[];
      };
      out.push({
        filename: v.info?.filename ?? '',
        data: Buffer.from(v.info?.data ?? '', 'base64'),
        language: '',
        ranges: (v.ranges ?? []).map((r) => ({ start: { line: r.start?.line ?? 0, character: r.start?.character ?? 0 }, end: { line: r.end?.line ?? 0, character: r.end?.character ?? 0 } })),
      });
    } catch {
      // A detail loom cannot read is left out, as upstream's client skips unknown details.
    }
  }
  return out;
}

/** The lines of a source an error is about, framed as upstream's errdefs.Source.Print writes them. */
export function formatSource(s: ErrorSource): string {
  const lines = Buffer.from(s.data).toString('utf8').split('\n');
  if (s.ranges.length === 0) return '';
  let start = Infinity;
  let end = 0;
  for (const r of s.ranges) {
    const e = Math.max(r.end.line, r.start.line);
    start = Math.min(start, r.start.line);
    end = Math.max(end, e);
  }
  if (start > lines.length || start < 1) return '';
  end = Math.min(end, lines.length);
  const pad = end === start ? 4 : 2;
  const first = start;
  // Context lines around the span, alternating before and after, as upstream's loop does.
  for (let p = 0; p < pad; p++) {
    if (start > 1) {
      start--;
      p++;
    }
    if (end !== lines.length) {
      end++;
      p++;
    }
  }
  let out = `${s.filename}:${first}\n--------------------\n`;
  for (let i = start; i <= end; i++) {
    const hit = s.ranges.some((r) => r.start.line <= i && Math.max(r.end.line, r.start.line) >= i);
    out += ` ${String(i).padStart(3)} | ${hit ? '>>>' : '   '} ${lines[i - 1]}\n`;
  }
  return out + '--------------------\n';
}
