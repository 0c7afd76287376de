import { bytes, fixed } from './format.js';
import type { Trace, TraceVertex } from './trace.js';

const ANTI_FLICKER_S = 5;
const MAX_DELAY_MS = 10_000;
const MIN_TIME_DELTA_MS = 5_000;
const MIN_PROGRESS_DELTA = 0.05;
const LOGS_BUFFER_SIZE = 10;

/**
 * `--progress plain`: upstream's text format, line for line. One vertex is "current" at a time;
 * switching away from an unfinished one prints `#N ...`, and a finished vertex prints
 * `#N DONE 1.2s`, `#N CACHED`, `#N CANCELED` or `#N ERROR: msg`. Status lines (pulls, transfers)
 * are printed when they moved by 5% or 5 s, or completed.
 */
export class PlainPrinter {
  readonly #w: (s: string) => void;
  #current = '';
  #notFirst = false;
  #nextIndex = 0;
  readonly #last = new Map<string, { current: number; timestamp: number }>();

  constructor(opts: { write: (s: string) => void }) {
    this.#w = opts.write;
  }

  #printVtx(t: Trace, dgst: string): void {
    const v = t.byDigest.get(dgst);
    if (!v) return;
    const w = this.#w;
    if (v.index === 0) v.index = ++this.#nextIndex;
    if (dgst !== this.#current) {
      if (this.#current !== '') {
        const old = t.byDigest.get(this.#current)!;
        if (old.logsPartial) w('\n');
        old.logsOffset = 0;
        old.count = 0;
        w(`#${old.index} ...\n`);
      }
      if (this.#notFirst) w('\n');
      else this.#notFirst = true;
      const name = process.env.PROGRESS_NO_TRUNC === '0' && v.name.length > 72 ? v.name.slice(0, 72) + '...' : v.name;
      w(`#${v.index} ${name}\n`);
    }
    if (v.events.length) v.logsOffset = 0;
    for (const ev of v.events) w(`#${v.index} ${ev}\n`);
    v.events = [];

    let isOpenStatus = false;
    for (const s of v.statuses) {
      if (!v.statusUpdates.has(s.id)) continue;
      const last = this.#last.get(s.id);
      if (last && s.completed === undefined) {
        const progressDelta = s.total > 0 ? (s.current - last.current) / s.total : 0;
        const timeDelta = s.timestamp - last.timestamp;
        if (progressDelta < MIN_PROGRESS_DELTA && timeDelta < MIN_TIME_DELTA_MS) continue;
      }
      this.#last.set(s.id, { current: s.current, timestamp: s.timestamp });
      let b = '';
      if (s.total !== 0) b = ` ${bytes(s.current)} / ${bytes(s.total)}`;
      else if (s.current !== 0) b = ` ${bytes(s.current)}`;
      let tm = '';
      const end = s.completed ?? s.timestamp;
      if (s.started !== undefined) {
        const diff = (end - s.started) / 1000;
        if (diff > 0.01) tm = ` ${fixed(diff, 1)}s`;
      }
      if (s.completed !== undefined) tm += ' done';
      else isOpenStatus = true;
      w(`#${v.index} ${s.id}${b}${tm}\n`);
    }
    v.statusUpdates.clear();

    for (; v.warningIdx < v.warnings.length; v.warningIdx++) w(`#${v.index} WARN: ${v.warnings[v.warningIdx]!.short}\n`);

    v.logs.forEach((l0, i) => {
      const l = i === 0 ? l0.slice(v.logsOffset) : l0;
      w(l);
      if (i !== v.logs.length - 1 || !v.logsPartial) w('\n');
      if (!v.logsPartial || i !== v.logs.length - 1) pushRing(v.logsBuffer, l0);
    });
    if (v.logs.length > 0) {
      if (v.logsPartial) {
        v.logs = v.logs.slice(-1);
        v.logsOffset = v.logs[0]!.length;
      } else {
        v.logs = [];
        v.logsOffset = 0;
      }
    }

    this.#current = dgst;
    if (v.isCompleted() && !isOpenStatus) {
      this.#current = '';
      v.count = 0;
      if (v.logsPartial) w('\n');
      if (v.error) {
        if (v.error.endsWith('context canceled')) w(`#${v.index} CANCELED\n`);
        else w(`#${v.index} ERROR: ${v.error}\n`);
      } else if (v.cached) {
        w(`#${v.index} CACHED\n`);
      } else {
        const tm = v.merged.length ? ` ${fixed(v.runSeconds(), 1)}s` : '';
        w(`#${v.index} DONE${tm}\n`);
      }
    }
    t.updates.delete(dgst);
  }

  /** Prints what changed since the last call. */
  print(t: Trace): void {
    const completed: TraceVertex[] = [];
    const rest = new Set<string>();
    for (const dgst of t.updates) {
      const v = t.byDigest.get(dgst);
      if (!v || v.hidden || v.digest !== dgst) continue;
      if (v.isCompleted()) completed.push(v);
      else rest.add(dgst);
    }
    const current = this.#current;
    const completedSet = new Set(completed.map((v) => v.digest));
    if (completedSet.has(current)) this.#printVtx(t, current);
    completed.sort((a, b) => a.mostRecent()!.stop! - b.mostRecent()!.stop!);
    for (const v of completed) if (v.digest !== current) this.#printVtx(t, v.digest);

    if (rest.size === 0) {
      if (current !== '') {
        const v = t.byDigest.get(current);
        if (v && v.isStarted() && !v.isCompleted()) return;
      }
      for (const [dgst, v] of t.byDigest) {
        if (v.digest === dgst && v.isStarted() && !v.isCompleted() && !v.hidden) {
          this.#printVtx(t, dgst);
          return;
        }
      }
      return;
    }

    if (rest.has(current)) this.#printVtx(t, current);

    const now = Date.now();
    const stats = new Map<string, { blockMs: number; speed: number; share: number; overLimit: boolean }>();
    let sum = 0;
    let max = '';
    if (current !== '') rest.add(current);
    for (const dgst of rest) {
      const v = t.byDigest.get(dgst);
      if (!v || v.lastBlockTime === undefined) continue;
      const blockMs = now - v.lastBlockTime;
      const speed = v.count / Math.max(blockMs / 1000, 1e-9);
      const overLimit = blockMs > MAX_DELAY_MS && dgst !== current;
      stats.set(dgst, { blockMs, speed, share: 0, overLimit });
      sum += speed;
      if (overLimit || max === '' || stats.get(max)!.speed < speed) max = dgst;
    }
    for (const s of stats.values()) s.share = sum > 0 ? s.speed / sum : 0;

    if (completedSet.has(current) || current === '') {
      if (max) this.#printVtx(t, max);
      return;
    }
    for (const dgst of rest) {
      if (stats.get(dgst)?.overLimit) {
        this.#printVtx(t, dgst);
        return;
      }
    }
    const cur = stats.get(current);
    if (cur && (1 / (1 - cur.share)) * ANTI_FLICKER_S < cur.blockMs / 1000) {
      if (max) this.#printVtx(t, max);
    }
  }
}

function pushRing(buf: string[], line: string): void {
  buf.push(line);
  if (buf.length > LOGS_BUFFER_SIZE) buf.shift();
}

/** The summary after the build: each failed vertex's last log lines between `------` rulers. */
export function errorLogs(t: Trace, mode: 'plain' | 'tty'): string {
  let out = '';
  for (const v of t.vertexes) {
    if (!v.error || v.error.endsWith('context canceled')) continue;
    out += '------\n';
    out += ` > ${v.name}:\n`;
    const lines = mode === 'tty' ? v.allLogs.slice(-LOGS_BUFFER_SIZE * 100) : v.logsBuffer;
    for (const l of lines) out += l + '\n';
    out += '------\n';
  }
  return out;
}
