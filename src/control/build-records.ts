import type { StepObserver, StepOutcome } from '../solver/types.js';
import type { Platform } from '../util/platform.js';
import type { ReadSource, ResolvedImage } from './build-info.js';

/** What loom keeps of a finished build: each step, cached or run and why, and totals. */
export interface BuildRecordData {
  ref: string;
  frontend: string;
  startedAt: number;
  completedAt: number;
  error: string;
  stepsCached: number;
  stepsRun: number;
  bytesReused: number;
  steps: { digest: string; name: string; cached: boolean; reason: string; durationMs: number; bytes: number }[];
}

/** The key-value part of the index the records live in (cache/metadata.ts). */
export interface RecordKv {
  kvGet(ns: string, key: string): string | undefined;
  kvPut(ns: string, key: string, value: string): void;
  kvDelete(ns: string, key: string): void;
  kvAll(ns: string): { key: string; value: string }[];
}

const NS = 'build-record';

/**
 * The records of recent builds, kept in the daemon's index so they survive restarts; the oldest
 * go beyond `keep`. Read through loom's Inspect service (`buildctl debug build <ref>`).
 */
export class BuildRecords {
  readonly #kv: RecordKv;
  readonly #sizeOf: (refId: string) => number;
  readonly #keep: number;

  constructor(opts: { kv: RecordKv; sizeOf: (refId: string) => number; keep?: number }) {
    this.#kv = opts.kv;
    this.#sizeOf = opts.sizeOf;
    this.#keep = opts.keep ?? 200;
  }

  begin(ref: string, frontend: string): BuildRecorder {
    return new BuildRecorder({ ref, frontend, sizeOf: this.#sizeOf, save: (r) => this.#save(r) });
  }

  get(ref: string): BuildRecordData | undefined {
    const v = this.#kv.kvGet(NS, ref);
    return v ? (JSON.parse(v) as BuildRecordData) : undefined;
  }

  /** The most recent builds, newest first. */
  list(limit: number): BuildRecordData[] {
    return this.#all().slice(0, limit);
  }

  #all(): BuildRecordData[] {
    return this.#kv
      .kvAll(NS)
      .map((e) => JSON.parse(e.value) as BuildRecordData)
      .sort((a, b) => b.startedAt - a.startedAt);
  }

  #saves = 0;

  #save(r: BuildRecordData): void {
    this.#kv.kvPut(NS, r.ref, JSON.stringify(r));
    // Trimming reads every record: done now and then, not after each build.
    if (this.#saves++ % 25 !== 0) return;
    const all = this.#all();
    for (const old of all.slice(this.#keep)) this.#kv.kvDelete(NS, old.ref);
  }
}

/** Collects one build's steps (several solves of one build report into it). */
export class BuildRecorder implements StepObserver {
  readonly #o: { ref: string; frontend: string; sizeOf: (refId: string) => number; save: (r: BuildRecordData) => void };
  readonly #started = Date.now();
  readonly #steps = new Map<string, BuildRecordData['steps'][number]>();
  /** Sources read by the build, their pins and platforms, in the order read (build info). */
  readonly sources: ReadSource[] = [];
  /** Image references the frontend resolved, the digests they named, for which platform (build info). */
  readonly resolvedImages: ResolvedImage[] = [];

  constructor(o: { ref: string; frontend: string; sizeOf: (refId: string) => number; save: (r: BuildRecordData) => void }) {
    this.#o = o;
  }

  step(o: StepOutcome): void {
    // A vertex solved again by a later solve of the same build (a frontend's final solve) is
    // already known: its first outcome is what happened.
    if (this.#steps.has(o.digest)) return;
    let bytes = 0;
    for (const r of o.refs) bytes += this.#o.sizeOf(r.id);
    this.#steps.set(o.digest, { digest: o.digest, name: o.name, cached: o.cached, reason: o.reason, durationMs: o.durationMs, bytes });
  }

  source(identifier: string, pin: string, platform?: Platform): void {
    this.sources.push({ id: identifier, pin, platform });
  }

  resolvedImage(ref: string, digest: string, platform?: Platform): void {
    this.resolvedImages.push({ ref, digest, platform });
  }

  summary(): { stepsCached: number; stepsRun: number; bytesReused: number } {
    let stepsCached = 0;
    let stepsRun = 0;
    let bytesReused = 0;
    for (const s of this.#steps.values()) {
      if (s.cached) {
        stepsCached++;
        bytesReused += s.bytes;
      } else {
        stepsRun++;
      }
    }
    return { stepsCached, stepsRun, bytesReused };
  }

  finish(error?: string): BuildRecordData {
    const r: BuildRecordData = {
      ref: this.#o.ref,
      frontend: this.#o.frontend,
      startedAt: this.#started,
      completedAt: Date.now(),
      error: error ?? '',
      ...this.summary(),
      steps: [...this.#steps.values()],
    };
    this.#o.save(r);
    return r;
  }
}
