import type { StatusResponse } from '../../gen/buildkit/control_pb.js';
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import { fixed } from './format.js';

/**
 * The state of a build's progress as the display sees it, built from the daemon's StatusResponse
 * messages: vertexes with their merged run intervals, sub-statuses, logs split into lines and
 * warnings. Mirrors what upstream's progressui keeps, so that the plain printer can make the same
 * decisions (which vertex to show, when it is done, how long it took).
 */

/** Times are milliseconds since the epoch, fractional (keeps the daemon's sub-ms precision). */
export type Ms = number;

export function tsMs(t: Timestamp | undefined): Ms | undefined {
  if (!t) return undefined;
  return Number(t.seconds) * 1000 + t.nanos / 1e6;
}

export interface Interval {
  start: Ms;
  stop: Ms | undefined;
}

export interface VStatus {
  id: string;
  name: string;
  current: number;
  total: number;
  timestamp: Ms;
  started: Ms | undefined;
  completed: Ms | undefined;
}

export interface VWarning {
  level: number;
  short: string;
}

export class TraceVertex {
  digest: string;
  name = '';
  cached = false;
  error = '';
  started: Ms | undefined;
  completed: Ms | undefined;
  inGroup = false;
  hidden = false;
  /** Display number (#N), given when first printed. */
  index = 0;
  statuses: VStatus[] = [];
  byId = new Map<string, VStatus>();
  statusUpdates = new Set<string>();
  /** Lines formatted `#N <t> text`; the last may be partial. */
  logs: string[] = [];
  logsPartial = false;
  logsOffset = 0;
  /** The last lines printed, for the error summary. */
  logsBuffer: string[] = [];
  /** Every complete log line (tty mode shows them in the error summary). */
  allLogs: string[] = [];
  events: string[] = [];
  warnings: VWarning[] = [];
  warningIdx = 0;
  intervals = new Map<number, Interval>();
  merged: Interval[] = [];
  lastBlockTime: number | undefined;
  count = 0;
  prevKey: string | undefined;

  constructor(digest: string) {
    this.digest = digest;
  }

  bump(c: number): void {
    if (this.count === 0) this.lastBlockTime = Date.now();
    this.count += c;
  }

  mostRecent(): Interval | undefined {
    return this.merged.length ? this.merged[this.merged.length - 1] : undefined;
  }

  isStarted(): boolean {
    return this.merged.length > 0;
  }

  isCompleted(): boolean {
    const i = this.mostRecent();
    return i !== undefined && i.stop !== undefined;
  }

  /** Sum of merged run time in seconds (what `DONE 0.1s` prints). */
  runSeconds(now = Date.now()): number {
    let ms = 0;
    for (const i of this.merged) ms += (i.stop ?? now) - i.start;
    return ms / 1000;
  }
}

/** Overlapping intervals joined; one without a stop swallows everything after it. */
export function mergeIntervals(list: Interval[]): Interval[] {
  const ivs = [...list].sort((a, b) => a.start - b.start);
  if (ivs.length === 0) return [];
  const out: Interval[] = [];
  let cur = ivs[0]!;
  for (let i = 1; i < ivs.length; i++) {
    const next = ivs[i]!;
    if (cur.stop === undefined) {
      out.push(cur);
      return out;
    }
    if (cur.stop < next.start) {
      out.push(cur);
      cur = next;
      continue;
    }
    if (next.stop === undefined) {
      out.push({ start: cur.start, stop: undefined });
      return out;
    }
    if (cur.stop >= next.stop) continue;
    cur = { start: cur.start, stop: next.stop };
  }
  out.push(cur);
  return out;
}

interface Group {
  vertex: TraceVertex;
  subs: Map<string, { started?: Ms; completed?: Ms; cached: boolean; error: string; weak: boolean }>;
}

export class Trace {
  /** Vertexes in the order they started (for the error summary and the tty view). */
  readonly vertexes: TraceVertex[] = [];
  readonly byDigest = new Map<string, TraceVertex>();
  readonly updates = new Set<string>();
  readonly #groups = new Map<string, Group>();
  startTime: Ms | undefined;
  /** Local clock minus daemon clock, from the first vertex seen to start. */
  localTimeDiff = 0;

  update(s: StatusResponse): void {
    const touchedGroups: string[] = [];
    for (const v of s.vertexes) {
      const started = tsMs(v.started);
      const completed = tsMs(v.completed);
      if (this.startTime === undefined && started !== undefined) this.startTime = started;
      const pg = v.progressGroup;
      if (pg && pg.id) {
        let g = this.#groups.get(pg.id);
        if (!g) {
          const gv = new TraceVertex(pg.id);
          gv.name = pg.name;
          gv.hidden = true;
          g = { vertex: gv, subs: new Map() };
          this.#groups.set(pg.id, g);
          this.byDigest.set(pg.id, gv);
        }
        if (!touchedGroups.includes(pg.id)) touchedGroups.push(pg.id);
        g.subs.set(v.digest, { started, completed, cached: v.cached, error: v.error, weak: pg.weak });
        // Logs and statuses of a grouped vertex go to its group.
        const alias = this.byDigest.get(v.digest);
        if (!alias || alias.inGroup || alias === g.vertex) this.byDigest.set(v.digest, g.vertex);
        continue;
      }
      let vt = this.byDigest.get(v.digest);
      const prevStarted = vt?.isStarted() ?? false;
      if (!vt) {
        vt = new TraceVertex(v.digest);
        this.byDigest.set(v.digest, vt);
      }
      if (started !== undefined) {
        const key = `${v.name}|${started}|${completed ?? ''}|${v.cached}|${v.error}`;
        if (key !== vt.prevKey) {
          vt.bump(1);
          this.updates.add(v.digest);
        }
        vt.prevKey = key;
      }
      if (started !== undefined && !prevStarted) {
        if (this.localTimeDiff === 0) this.localTimeDiff = Date.now() - started;
        this.vertexes.push(vt);
      }
      // A repeated not-started vertex after it started must not reset it.
      if (!(prevStarted && started === undefined)) {
        vt.name = v.name;
        vt.cached = v.cached;
        vt.error = v.error;
        vt.started = started;
        vt.completed = completed;
      }
      if (started !== undefined) {
        vt.intervals.set(started, { start: started, stop: completed });
        vt.merged = mergeIntervals([...vt.intervals.values()]);
      }
    }
    for (const id of touchedGroups) this.#refreshGroup(this.#groups.get(id)!);

    for (const st of s.statuses) {
      const v = this.byDigest.get(st.vertex);
      if (!v) continue;
      const prev = v.byId.get(st.ID);
      const ns: VStatus = {
        id: st.ID,
        name: st.name,
        current: Number(st.current),
        total: Number(st.total),
        timestamp: tsMs(st.timestamp) ?? Date.now(),
        started: tsMs(st.started),
        completed: tsMs(st.completed),
      };
      if (prev) Object.assign(prev, ns);
      else v.byId.set(st.ID, ns);
      if (ns.started !== undefined && (!prev || prev.started === undefined)) v.statuses.push(v.byId.get(st.ID)!);
      v.statusUpdates.add(st.ID);
      this.updates.add(v.digest);
      v.bump(1);
    }
    for (const w of s.warnings) {
      const v = this.byDigest.get(w.vertex);
      if (!v) continue;
      v.warnings.push({ level: Number(w.level), short: Buffer.from(w.short).toString('utf8') });
      v.bump(1);
    }
    for (const l of s.logs) {
      const v = this.byDigest.get(l.vertex);
      if (!v) continue;
      const text = Buffer.from(l.msg).toString('utf8');
      if (text.length === 0) continue;
      const parts = text.split('\n');
      const complete = parts[parts.length - 1] === '';
      if (complete) parts.pop();
      parts.forEach((line, i) => {
        if (i === 0 && v.logsPartial && v.logs.length > 0) {
          v.logs[v.logs.length - 1] += line;
          if (v.allLogs.length > 0) v.allLogs[v.allLogs.length - 1] += line;
          return;
        }
        const ival = v.mostRecent();
        const ts = ival ? ((tsMs(l.timestamp) ?? ival.start) - ival.start) / 1000 : 0;
        const prec = ts < 10 ? 3 : ts < 100 ? 2 : 1;
        const formatted = `#${v.index} ${fixed(ts, prec)} ${line}`;
        v.logs.push(formatted);
        v.allLogs.push(formatted);
      });
      v.logsPartial = !complete;
      this.updates.add(v.digest);
      v.bump(1);
    }
  }

  #refreshGroup(g: Group): void {
    const v = g.vertex;
    const wasHidden = v.hidden;
    const beforeKey = `${v.cached}|${v.error}|${JSON.stringify([...v.intervals.values()])}`;
    let cached = true;
    let error = '';
    for (const sub of g.subs.values()) {
      if (sub.started !== undefined) {
        v.intervals.set(sub.started, { start: sub.started, stop: sub.completed });
        if (!sub.weak) v.hidden = false;
      }
      cached = cached && sub.cached;
      if (!error) error = sub.error;
      else v.hidden = false;
    }
    v.cached = cached;
    v.error = error;
    v.merged = mergeIntervals([...v.intervals.values()]);
    if (v.isStarted() && this.localTimeDiff === 0) this.localTimeDiff = Date.now() - v.merged[0]!.start;
    if (v.hidden) return;
    if (wasHidden) this.vertexes.push(v);
    const afterKey = `${v.cached}|${v.error}|${JSON.stringify([...v.intervals.values()])}`;
    if (afterKey !== beforeKey || wasHidden) {
      v.bump(1);
      this.updates.add(v.digest);
    }
  }
}
