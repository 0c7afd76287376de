import { vertexOf, type ProgressEvent } from '../util/progress.js';

/** How long a step's output waits after the step first showed, at most. */
const HOLD_MS = 150;

/**
 * Paces a build's progress for one Status stream: the output of a step that started a moment ago
 * is held back briefly. Clients number a step when they first print it, and print at most every
 * 100 ms; output that arrives before (a quick `RUN echo`) is printed as `#0` by upstream's
 * clients. Upstream's daemon gets this for free from its slower container start. A step's output
 * keeps its order, steps that start or end meanwhile wait behind it, and everything is flushed
 * before the stream ends.
 */
export class StatusPacer {
  readonly #write: (events: ProgressEvent[]) => void;
  readonly #end: () => void;
  readonly #holdMs: number;
  /** When the client first sees each step (its start may be held behind an earlier step's output). */
  readonly #firstSeen = new Map<string, number>();
  /** The order steps first came in. */
  readonly #order = new Map<string, number>();
  /** Held output, in arrival order, with the time it may go. */
  #held: { due: number; vertex: string; ev: ProgressEvent }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #ended = false;

  constructor(opts: { write: (events: ProgressEvent[]) => void; end: () => void; holdMs?: number }) {
    this.#write = opts.write;
    this.#end = opts.end;
    this.#holdMs = opts.holdMs ?? HOLD_MS;
  }

  push(batch: ProgressEvent[]): void {
    if (this.#ended) return;
    const now = Date.now();
    const out: ProgressEvent[] = [];
    const heldVertices = new Set(this.#held.map((h) => h.vertex));
    for (const ev of batch) {
      const v = vertexOf(ev);
      const first = ev.kind === 'vertex' && !this.#firstSeen.has(v);
      if (first) {
        this.#firstSeen.set(v, now);
        this.#order.set(v, this.#order.size);
      }
      const seen = this.#firstSeen.get(v);
      // Once a step has held output, everything after it of that step waits too (its end
      // included), so the client sees them in order. Output of a step shown a while ago, or of
      // none this stream knows, goes at once.
      const hold = heldVertices.has(v) || (ev.kind === 'log' && seen !== undefined && now - seen < this.#holdMs);
      // A step that starts or ends while the output of one seen before it is held goes after that
      // output: the next step of a chain, or the cache summary after a quick last RUN. Clients
      // number steps in the order they print them, and print the steps that completed together
      // in the order of their end times: a step's start overtaking the earlier step's end showed
      // the chain's steps out of order (`#8 [4/5] ...` after `#7 [5/5] ...`).
      const after = !hold && ev.kind === 'vertex' ? this.#latestDueBefore(v) : undefined;
      if (!hold && after === undefined) {
        out.push(ev);
        continue;
      }
      // A step first shown when the held output goes: its own output is held from then on.
      if (after !== undefined && first) this.#firstSeen.set(v, after);
      this.#held.push({ due: after ?? (seen ?? now) + this.#holdMs, vertex: v, ev });
      heldVertices.add(v);
    }
    if (out.length > 0) this.#write(out);
    this.#schedule();
  }

  /** When the held output of steps first seen before `v` goes, if any is held. */
  #latestDueBefore(v: string): number | undefined {
    const order = this.#order.get(v) ?? Infinity;
    let due: number | undefined;
    for (const h of this.#held) {
      if (h.vertex !== v && (this.#order.get(h.vertex) ?? -Infinity) <= order) due = Math.max(due ?? 0, h.due);
    }
    return due;
  }

  /** The build's progress is complete: held output goes out, then the stream ends. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#timer) clearTimeout(this.#timer);
    const rest = this.#held.map((h) => h.ev);
    this.#held = [];
    if (rest.length > 0) this.#write(rest);
    this.#end();
  }

  /** The stream is gone: nothing more is written. */
  close(): void {
    this.#ended = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#held = [];
  }

  #schedule(): void {
    if (this.#timer || this.#held.length === 0) return;
    const next = Math.min(...this.#held.map((h) => h.due));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#release();
    }, Math.max(0, next - Date.now()));
  }

  #release(): void {
    if (this.#ended) return;
    const now = Date.now();
    // What is due goes in the order it came. A step's held events are due in their order (the
    // first may wait for an earlier step's output, the rest for the step's own hold, which ends
    // no sooner), so no event overtakes another of its step.
    const out = this.#held.filter((h) => h.due <= now).map((h) => h.ev);
    this.#held = this.#held.filter((h) => h.due > now);
    if (out.length > 0) this.#write(out);
    this.#schedule();
  }
}
