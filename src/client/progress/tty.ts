import { bytes, fixed } from './format.js';
import type { Trace } from './trace.js';

/**
 * `--progress tty`: a live view redrawn in place, in upstream's layout
 * (`[+] Building 1.2s (3/5)` then ` => name   0.3s` per step, sub-statuses as ` => => id`).
 * Simpler than upstream's: no embedded terminal of each step's output.
 */
export class TtyDisplay {
  readonly #w: (s: string) => void;
  readonly #width: () => number;
  readonly #height: () => number;
  #lineCount = 0;
  #repeated = false;
  readonly #phase: string;

  constructor(opts: { write: (s: string) => void; width: () => number; height: () => number; phase?: string }) {
    this.#w = opts.write;
    this.#width = opts.width;
    this.#height = opts.height;
    this.#phase = opts.phase ?? 'Building';
  }

  print(t: Trace, final: boolean): void {
    const width = Math.max(this.#width(), 40);
    const height = Math.max(this.#height(), 5);
    const now = Date.now();
    const shift = t.localTimeDiff;
    type Job = { name: string; seconds: number; completed: boolean; status: string; error: boolean; canceled: boolean };
    const jobs: Job[] = [];
    let total = 0;
    let done = 0;
    const seen = new Set<string>();
    for (const [dgst, v] of t.byDigest) {
      if (v.digest !== dgst || v.hidden || seen.has(dgst)) continue;
      seen.add(dgst);
      total++;
      if (v.isCompleted()) done++;
    }
    for (const v of t.vertexes) {
      let name = v.name.replace(/\t/g, ' ');
      const canceled = v.error !== '' && v.error.endsWith('context canceled');
      const error = v.error !== '' && !canceled;
      if (canceled) name = 'CANCELED ' + name;
      else if (error) name = 'ERROR ' + name;
      if (v.cached) name = 'CACHED ' + name;
      let secs = 0;
      for (const i of v.merged) secs += ((i.stop ?? now - shift) - i.start) / 1000;
      jobs.push({ name, seconds: secs, completed: v.merged.every((i) => i.stop !== undefined), status: '', error, canceled });
      for (const s of v.statuses) {
        const st = s.total !== 0 ? `${bytes(s.current)} / ${bytes(s.total)}` : s.current !== 0 ? bytes(s.current) : '';
        const secsS = s.started !== undefined ? ((s.completed ?? now - shift) - s.started) / 1000 : 0;
        jobs.push({ name: '=> ' + s.id, seconds: secsS, completed: s.completed !== undefined, status: st, error: false, canceled: false });
      }
      for (const wn of v.warnings) jobs.push({ name: 'WARN: ' + wn.short, seconds: 0, completed: true, status: '', error: false, canceled: true });
    }
    let shown = jobs;
    if (!final && jobs.length > height - 2) shown = jobs.slice(jobs.length - (height - 2));

    let out = '';
    // Back to where the previous frame began.
    if (this.#repeated) out += `\x1b[${this.#lineCount + 1}A`;
    out += '\r\x1b[?25l';
    this.#repeated = true;
    const start = t.startTime !== undefined ? t.startTime + shift : now;
    const status = done > 0 && done === total && final ? 'FINISHED' : '';
    out += align(`[+] ${this.#phase} ${fixed((now - start) / 1000, 1)}s (${done}/${total}) ${status}`, '', width) + '\n';
    let lines = 0;
    for (const j of shown) {
      const pfx = ' => ';
      const timer = ` ${fixed(j.seconds < 0.05 ? 0 : j.seconds, 1)}s`;
      let left = width - pfx.length - timer.length - 1;
      let showStatus = false;
      if (j.status && left + j.status.length > 20) {
        showStatus = true;
        left -= j.status.length + 1;
      }
      if (left < 12) continue;
      let line = pfx + (j.name.length > left ? j.name.slice(0, left) : j.name);
      if (showStatus) line += ' ' + j.status;
      line = align(line, timer, width);
      if (j.completed) {
        const color = j.canceled ? '\x1b[33m' : j.error ? '\x1b[31m' : '\x1b[34m';
        line = color + line + '\x1b[0m';
      }
      out += line + '\n';
      lines++;
    }
    for (let i = lines; i < this.#lineCount; i++) out += ' '.repeat(width) + '\n';
    if (this.#lineCount > lines) out += `\x1b[${this.#lineCount - lines}A`;
    out += '\x1b[?25h';
    this.#lineCount = Math.max(lines, 0);
    this.#w(out);
  }
}

function align(l: string, r: string, w: number): string {
  const pad = w - r.length - 1;
  return (l.length < pad ? l + ' '.repeat(pad - l.length) : l) + ' ' + r;
}
