import type { Definition, ProgressGroup, Range, SourceInfo } from '../gen/buildkit/ops_pb.js';

/**
 * JSON bytes as Go's encoding/json writes them. Image manifests, indexes and configs are addressed by
 * the digest of their bytes, so to produce the same digests as upstream for the same content we must
 * serialize the same way: Go escapes `<`, `>`, `&`, U+2028 and U+2029, sorts map keys, and writes
 * struct fields in declaration order (callers build objects in that order; see oci.ts).
 */

const GO_ESCAPES: Record<string, string> = {
  '<': '\\u003c',
  '>': '\\u003e',
  '&': '\\u0026',
  '\u2028': '\\u2028',
  '\u2029': '\\u2029',
};

/**
 * Go's json.Marshal (indent '') or json.MarshalIndent(v, "", indent). Object keys keep their
 * insertion order: pass maps through `sortedMap` where Go would marshal a map.
 */
export function goJSON(value: unknown, indent = ''): string {
  const s = JSON.stringify(value, null, indent === '' ? undefined : indent);
  if (s === undefined) throw new TypeError('value is not serializable to JSON');
  // JSON.stringify never emits these characters outside strings, so replacing them everywhere only
  // touches string contents.
  return s.replace(/[<>&\u2028\u2029]/g, (c) => GO_ESCAPES[c]!);
}

export function goJSONBytes(value: unknown, indent = ''): Buffer {
  return Buffer.from(goJSON(value, indent), 'utf8');
}

/** A copy of a string map with keys in Go's map order (sorted by byte value); undefined stays undefined. */
export function sortedMap<V>(m: Record<string, V> | undefined): Record<string, V> | undefined {
  if (m === undefined) return undefined;
  const out: Record<string, V> = {};
  for (const k of Object.keys(m).sort(compareBytes)) out[k] = m[k]!;
  return out;
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * Go's RFC3339Nano time format as encoding/json writes time.Time: UTC `Z`, fractional seconds with
 * trailing zeros removed (and no fraction at all when it is zero).
 */
export function goTime(d: Date): string {
  if (Number.isNaN(d.getTime())) throw new TypeError('invalid date');
  const iso = d.toISOString(); // 2024-01-02T03:04:05.678Z
  return iso.replace(/\.(\d*?)0*Z$/, (_m, frac: string) => (frac ? `.${frac}Z` : 'Z'));
}

/** A source position as BuildKit's pb.Position marshals: zero fields left out (omitempty). */
export interface GoPositionJSON {
  line?: number;
  character?: number;
}

/** Source ranges (Dockerfile lines) as BuildKit's pb.Range marshals them with encoding/json. */
export function goRangesJSON(ranges: readonly { start: { line: number; character: number }; end: { line: number; character: number } }[]): { start: GoPositionJSON; end: GoPositionJSON }[] {
  const pos = (p: { line: number; character: number }): GoPositionJSON => ({ ...(p.line ? { line: p.line } : {}), ...(p.character ? { character: p.character } : {}) });
  return ranges.map((r) => ({ start: pos(r.start), end: pos(r.end) }));
}

/** A []byte as Go's encoding/json writes it: standard base64. */
export function goBytesJSON(b: Uint8Array): string {
  return Buffer.from(b).toString('base64');
}

/** A pb.Definition as upstream's Go JSON encoding writes it (gogo's field names and omitempty rules). */
export function definitionGoJSON(def: Definition): Record<string, unknown> {
  const b64 = goBytesJSON;
  const sorted = <V>(m: Record<string, V>) => Object.fromEntries(Object.keys(m).sort().map((k) => [k, m[k]!]));
  const meta = Object.keys(def.metadata).length === 0 ? null : Object.fromEntries(
    Object.keys(def.metadata).sort().map((k) => {
      const m = def.metadata[k]!;
      return [k, {
        ...(m.ignoreCache ? { ignore_cache: true } : {}),
        ...(Object.keys(m.description).length > 0 ? { description: sorted(m.description) } : {}),
        ...(m.exportCache ? { export_cache: m.exportCache.Value ? { Value: true } : {} } : {}),
        ...(Object.keys(m.caps).length > 0 ? { caps: sorted(m.caps) } : {}),
        ...(m.progressGroup ? { progress_group: progressGroupGoJSON(m.progressGroup) } : {}),
      }];
    }),
  );
  const src = def.Source;
  const source = src
    ? {
        ...(Object.keys(src.locations).length > 0
          ? {
              locations: Object.fromEntries(
                Object.keys(src.locations).sort().map((k) => {
                  const ls = src.locations[k]!.locations;
                  return [k, ls.length > 0 ? { locations: ls.map((l) => ({ ...(l.sourceIndex ? { sourceIndex: l.sourceIndex } : {}), ...(l.ranges.length > 0 ? { ranges: pbRangesGoJSON(l.ranges) } : {}) })) } : {}];
                }),
              ),
            }
          : {}),
        ...(src.infos.length > 0 ? { infos: src.infos.map(sourceInfoGoJSON) } : {}),
      }
    : undefined;
  return { ...(def.def.length > 0 ? { def: def.def.map(b64) } : {}), metadata: meta, ...(source ? { Source: source } : {}) };
}

/** A pb.SourceInfo as Go's encoding/json writes it (zero fields left out). */
export function sourceInfoGoJSON(i: SourceInfo): Record<string, unknown> {
  return {
    ...(i.filename ? { filename: i.filename } : {}),
    ...(i.data.length > 0 ? { data: goBytesJSON(i.data) } : {}),
    ...(i.definition ? { definition: definitionGoJSON(i.definition) } : {}),
    ...(i.language ? { language: i.language } : {}),
  };
}

/** A pb.ProgressGroup as Go's encoding/json writes it (zero fields left out). */
export function progressGroupGoJSON(pg: ProgressGroup): Record<string, unknown> {
  return { ...(pg.id ? { id: pg.id } : {}), ...(pg.name ? { name: pg.name } : {}), ...(pg.weak ? { weak: true } : {}) };
}

/** pb.Ranges (whose positions may be absent on the wire) as goRangesJSON writes them. */
export function pbRangesGoJSON(ranges: readonly Range[]): ReturnType<typeof goRangesJSON> {
  const zero = { line: 0, character: 0 };
  return goRangesJSON(ranges.map((r) => ({ start: r.start ?? zero, end: r.end ?? zero })));
}
