import type { Timestamp } from '@bufbuild/protobuf/wkt';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { sha256 } from './digest.js';
import { clarifyNameError } from './errors.js';

/**
 * Progress of one build, in the shape of BuildKit's StatusResponse but free of protobuf so the
 * solver and ops can write it. control/ converts it for the wire.
 */
export interface VertexEvent {
  digest: string;
  inputs: string[];
  name: string;
  cached?: boolean;
  started?: Date;
  completed?: Date;
  error?: string;
  progressGroup?: { id: string; name: string; weak: boolean };
}

export interface StatusEvent {
  id: string;
  vertex: string;
  name: string;
  current: number;
  total: number;
  timestamp: Date;
  started?: Date;
  completed?: Date;
}

export interface LogEvent {
  vertex: string;
  stream: 1 | 2;
  data: Uint8Array;
  timestamp: Date;
}

export interface WarningEvent {
  vertex: string;
  level: number;
  short: string;
  detail: string[];
  url?: string;
}

export type ProgressEvent =
  | { kind: 'vertex'; vertex: VertexEvent }
  | { kind: 'status'; status: StatusEvent }
  | { kind: 'log'; log: LogEvent }
  | { kind: 'warning'; warning: WarningEvent };

type Listener = (batch: ProgressEvent[] | null) => void;

/** What a kept build record shows in place of the output of a step that read secrets. */
export const SECRET_OUTPUT_NOTE = '[output not kept with the build record: the step read secrets or printed one]\n';

/** The vertex an event is about. */
export function vertexOf(ev: ProgressEvent): string {
  switch (ev.kind) {
    case 'vertex':
      return ev.vertex.digest;
    case 'status':
      return ev.status.vertex;
    case 'log':
      return ev.log.vertex;
    case 'warning':
      return ev.warning.vertex;
  }
}

/**
 * A build's progress stream: writers append events, readers subscribe and get everything already
 * written (a Status call may come before or after Solve) and then live events until close().
 * Events are kept for the life of the build so late subscribers see the whole history.
 */
export class ProgressBus {
  readonly #events: ProgressEvent[] = [];
  readonly #listeners = new Set<Listener>();
  #closed = false;
  #pending: ProgressEvent[] = [];
  #flushScheduled = false;
  /** Vertices started and not completed, by digest (their last event). */
  readonly #open = new Map<string, VertexEvent>();
  /** Statuses started and not completed, by vertex, then by id (their last event). */
  readonly #openStatuses = new Map<string, Map<string, StatusEvent>>();

  /** Buses that also get one vertex's events (see mirror), by vertex: the bus, its name for the vertex, and the sender. */
  readonly #mirrors = new Map<string, Set<{ to: ProgressBus; alias: string; send: (ev: ProgressEvent) => void }>>();
  /** Vertices whose step read secrets, and the values read (see kept()). */
  readonly #secretVertices = new Set<string>();
  readonly #secretValues: Buffer[] = [];

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Writes vertex `digest`'s events to `to` as well, those already written first, until the
   * returned function is called: another build waiting on this build's run of the very same step
   * shows its progress and logs too, as upstream's vertex shared by two builds. `as` is the other
   * build's own vertex event (its name, inputs and group replace this build's).
   */
  mirror(digest: string, to: ProgressBus, as: Omit<VertexEvent, 'started' | 'completed' | 'cached' | 'error'>): () => void {
    const send = (ev: ProgressEvent) => to.write(ev.kind === 'vertex' ? { kind: 'vertex', vertex: { ...ev.vertex, ...as } } : ev);
    if (this.#secretVertices.has(digest)) to.#markSecrets(digest, as.digest, this.#secretValues);
    for (const ev of this.#events) if (vertexOf(ev) === digest) send(ev);
    let set = this.#mirrors.get(digest);
    if (!set) this.#mirrors.set(digest, (set = new Set()));
    const entry = { to, alias: as.digest, send };
    set.add(entry);
    return () => {
      set.delete(entry);
      if (set.size === 0 && this.#mirrors.get(digest) === set) this.#mirrors.delete(digest);
    };
  }

  /**
   * Vertex `digest`'s step read `value` (a secret): the stream kept after the build (kept()) holds
   * none of that step's output, and no other output holding the value. Buses mirroring the vertex
   * learn it too.
   */
  secretRead(digest: string, value: Uint8Array): void {
    const values = [Buffer.from(value)];
    this.#markSecrets(digest, digest, values);
    for (const m of this.#mirrors.get(digest) ?? []) m.to.#markSecrets(digest, m.alias, values);
  }

  #markSecrets(digest: string, alias: string, values: readonly Buffer[]): void {
    this.#secretVertices.add(digest);
    this.#secretVertices.add(alias);
    for (const v of values) if (v.length > 0 && !this.#secretValues.some((k) => k.equals(v))) this.#secretValues.push(v);
  }

  /**
   * The events as a build record keeps them (see BuildRecords): the output of steps that read
   * secrets is left out, one line saying so in its place, and any other output holding a secret
   * value read in this build is left out too. What the client saw live is unchanged.
   */
  kept(): ProgressEvent[] {
    if (this.#secretVertices.size === 0) return [...this.#events];
    const out: ProgressEvent[] = [];
    const noted = new Set<string>();
    for (const ev of this.#events) {
      if (ev.kind !== 'log') {
        out.push(ev);
        continue;
      }
      const v = ev.log.vertex;
      const data = Buffer.from(ev.log.data.buffer, ev.log.data.byteOffset, ev.log.data.byteLength);
      const hidden = this.#secretVertices.has(v) || this.#secretValues.some((s) => data.includes(s));
      if (!hidden) {
        out.push(ev);
      } else if (!noted.has(v)) {
        noted.add(v);
        out.push({ kind: 'log', log: { ...ev.log, stream: 2, data: Buffer.from(SECRET_OUTPUT_NOTE) } });
      }
    }
    return out;
  }

  write(ev: ProgressEvent): void {
    if (this.#closed) return;
    if (ev.kind === 'vertex') {
      if (ev.vertex.completed) {
        this.#open.delete(ev.vertex.digest);
        // A step that ends (failing, say, in the middle of a push) ends its statuses first, as
        // upstream's do: its printer shows the step's ERROR only once they are done.
        const statuses = this.#openStatuses.get(ev.vertex.digest);
        if (statuses) {
          this.#openStatuses.delete(ev.vertex.digest);
          for (const st of statuses.values()) this.#append({ kind: 'status', status: { ...st, timestamp: ev.vertex.completed, completed: ev.vertex.completed } });
        }
      } else if (ev.vertex.started) this.#open.set(ev.vertex.digest, ev.vertex);
    } else if (ev.kind === 'status') {
      const st = ev.status;
      let statuses = this.#openStatuses.get(st.vertex);
      if (st.completed) statuses?.delete(st.id);
      else if (st.started) {
        if (!statuses) this.#openStatuses.set(st.vertex, (statuses = new Map()));
        statuses.set(st.id, st);
      }
    }
    this.#append(ev);
    const mirrors = this.#mirrors.get(vertexOf(ev));
    if (mirrors) for (const m of mirrors) m.send(ev);
  }

  #append(ev: ProgressEvent): void {
    this.#events.push(ev);
    this.#pending.push(ev);
    // Batch events written in the same tick into one StatusResponse, as upstream batches by time.
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(() => this.#flush());
    }
  }

  #flush(): void {
    this.#flushScheduled = false;
    const batch = this.#pending;
    this.#pending = [];
    if (batch.length === 0) return;
    for (const l of this.#listeners) l(batch);
  }

  /**
   * Ends every vertex still running with upstream's `context canceled` (clients print `CANCELED`),
   * as a failed or cancelled build's steps end upstream: called before close() when the build
   * stopped early, since those steps' own reports come after the stream has ended.
   */
  cancelOpen(): void {
    const now = new Date();
    for (const v of [...this.#open.values()]) this.vertex({ ...v, completed: now, error: 'context canceled' });
  }

  close(): void {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    for (const l of this.#listeners) l(null);
    this.#listeners.clear();
  }

  /**
   * The vertices this stream told of, as upstream's build records count them: every distinct
   * vertex (internal ones, exports and cancelled ones included), those any event marked cached,
   * and those any event marked completed. `leaveOut`: vertices upstream's stream would not have.
   */
  vertexCounts(leaveOut: ReadonlySet<string> = new Set()): { total: number; cached: number; completed: number } {
    const seen = new Map<string, { cached: boolean; completed: boolean }>();
    for (const ev of this.#events) {
      if (ev.kind !== 'vertex' || leaveOut.has(ev.vertex.digest)) continue;
      let v = seen.get(ev.vertex.digest);
      if (!v) seen.set(ev.vertex.digest, (v = { cached: false, completed: false }));
      if (ev.vertex.cached) v.cached = true;
      if (ev.vertex.completed) v.completed = true;
    }
    let cached = 0;
    let completed = 0;
    for (const v of seen.values()) {
      if (v.cached) cached++;
      if (v.completed) completed++;
    }
    return { total: seen.size, cached, completed };
  }

  /** Calls `fn` with the history, then with live batches; `null` means the build is over. */
  subscribe(fn: Listener): () => void {
    const history = this.#events.slice(0, this.#events.length - this.#pending.length);
    if (history.length) fn(history);
    if (this.#closed) {
      fn(null);
      return () => {};
    }
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Convenience for one vertex's life. */
  vertex(v: VertexEvent): void {
    this.write({ kind: 'vertex', vertex: { ...v } });
  }

  status(s: StatusEvent): void {
    this.write({ kind: 'status', status: { ...s } });
  }

  log(vertex: string, stream: 1 | 2, data: Uint8Array): void {
    this.write({ kind: 'log', log: { vertex, stream, data, timestamp: new Date() } });
  }

  warn(w: WarningEvent): void {
    this.write({ kind: 'warning', warning: w });
  }
}

export function ts(d: Date | undefined): Timestamp | undefined {
  return d ? timestampFromDate(d) : undefined;
}

/**
 * Runs `fn` as a vertex of its own (the exporters' "exporting to image" and such), named and
 * digested as upstream does: the digest is sha256 of `id`.
 */
export async function inVertex<T>(bus: ProgressBus, opts: { name: string; id: string }, fn: (vertex: string) => Promise<T>): Promise<T> {
  const digest = sha256(opts.id);
  const started = new Date();
  bus.vertex({ digest, inputs: [], name: opts.name, started });
  try {
    const r = await fn(digest);
    bus.vertex({ digest, inputs: [], name: opts.name, started, completed: new Date() });
    return r;
  } catch (caught) {
    const err = clarifyNameError(caught);
    bus.vertex({ digest, inputs: [], name: opts.name, started, completed: new Date(), error: err instanceof Error ? err.message : String(err) });
    throw err;
  }
}

/** A status line within a vertex that starts now and ends when the returned function is called. */
export function oneOff(bus: ProgressBus, vertex: string, name: string): (opts?: { current?: number; total?: number }) => void {
  const started = new Date();
  bus.status({ id: name, vertex, name, current: 0, total: 0, timestamp: started, started });
  return (o = {}) => {
    const now = new Date();
    bus.status({ id: name, vertex, name, current: o.current ?? 0, total: o.total ?? 0, timestamp: now, started, completed: now });
  };
}

/**
 * A status line counting bytes (a layer's download, "transferring context:", "copying files"),
 * started now: `update` reports progress at most every 100 ms (and always once `current` reaches a
 * known total), `done` completes it with the final count.
 */
export function byteStatus(
  bus: ProgressBus,
  vertex: string,
  name: string,
  total = 0,
  opts: { announce?: boolean } = {},
): { update: (current: number, total?: number) => void; done: (current: number) => void } {
  const started = new Date();
  let last = 0;
  // Announced at once with 0 bytes (a layer download, as upstream shows it), or only once bytes
  // move (a context transfer: upstream's first status comes with the first packets).
  if (opts.announce !== false) bus.status({ id: name, vertex, name, current: 0, total, timestamp: started, started });
  return {
    update(current, t = total) {
      const now = Date.now();
      if (now - last < 100 && !(t > 0 && current >= t)) return;
      last = now;
      bus.status({ id: name, vertex, name, current, total: t, timestamp: new Date(), started });
    },
    done(current) {
      const now = new Date();
      bus.status({ id: name, vertex, name, current, total, timestamp: now, started, completed: now });
    },
  };
}
