import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StepObserver, StepOutcome } from '../solver/types.js';
import { sha256 } from '../util/digest.js';
import { log as rootLog } from '../util/log.js';
import type { ProgressEvent } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import type { ReadSource, ResolvedImage } from './build-info.js';
import { decodeStatusStream, encodeStatusStream } from './status-codec.js';

const log = () => rootLog.child({ sub: 'history' });

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
  /** The request's frontend attributes and exporters, and what the exporters answered (absent in records of older loom). */
  frontendAttrs?: Record<string, string>;
  exporters?: { type: string; attrs: Record<string, string> }[];
  exporterResponse?: Record<string, string>;
  /** Kept beyond `keep` until unpinned (buildx history: UpdateBuildHistory). */
  pinned?: boolean;
  /** The failed build's error code (loom's ErrorCode: CANCELLED, UNKNOWN...). */
  errorCode?: string;
  /** The vertices its progress told of, as upstream's records count them (absent in records of older loom). */
  vertices?: { total: number; cached: number; completed: number };
  /** Its progress stream as kept (BuildRecords' logs directory), replayed to a Status call for the build. */
  logs?: { digest: string; size: number };
}

/** What the build history API streams: a build started (active), completed, or deleted. */
export interface BuildRecordEvent {
  type: 'started' | 'complete' | 'deleted';
  record: BuildRecordData;
}

/** What a build's record starts with, besides its ref and frontend. */
export interface BuildRequestInfo {
  /** A client's internal build (buildx asking for the frontend's capabilities, a --call request): kept out of the records, as upstream's history. */
  internal?: boolean;
  frontendAttrs?: Record<string, string>;
  exporters?: { type: string; attrs: Record<string, string> }[];
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

  /** Where each record's progress stream is kept (absent: records keep none). */
  readonly #logsDir: string | undefined;

  constructor(opts: { kv: RecordKv; sizeOf: (refId: string) => number; keep?: number; logsDir?: string }) {
    this.#kv = opts.kv;
    this.#logsDir = opts.logsDir;
    this.#sizeOf = opts.sizeOf;
    this.#keep = opts.keep ?? 200;
  }

  readonly #active = new Map<string, BuildRecorder>();
  readonly #listeners = new Set<(ev: BuildRecordEvent) => void>();

  begin(ref: string, frontend: string, info: BuildRequestInfo = {}): BuildRecorder {
    if (info.internal) return new BuildRecorder({ ref, frontend, info, sizeOf: this.#sizeOf, save: () => {} });
    const rec = new BuildRecorder({
      ref,
      frontend,
      info,
      sizeOf: this.#sizeOf,
      save: (r, progress) => {
        this.#active.delete(ref);
        if (progress) this.#keepLogs(r, progress);
        this.#save(r);
        this.#emit({ type: 'complete', record: r });
      },
    });
    this.#active.set(ref, rec);
    this.#emit({ type: 'started', record: rec.snapshot() });
    return rec;
  }

  /** The builds running now, as their records stand. */
  active(): BuildRecordData[] {
    return [...this.#active.values()].map((r) => r.snapshot());
  }

  /** Told of every build that starts or completes and every record deleted, until the returned function is called. */
  subscribe(fn: (ev: BuildRecordEvent) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Pins or unpins a completed build's record, or deletes it. False when there is no such record. */
  update(ref: string, change: { pinned?: boolean; delete?: boolean }): boolean {
    const r = this.get(ref);
    if (!r) return false;
    if (change.delete) {
      this.#kv.kvDelete(NS, ref);
      this.#dropLogs(r);
      this.#emit({ type: 'deleted', record: r });
      return true;
    }
    if (change.pinned !== undefined) this.#kv.kvPut(NS, ref, JSON.stringify({ ...r, pinned: change.pinned }));
    return true;
  }

  #emit(ev: BuildRecordEvent): void {
    for (const fn of this.#listeners) fn(ev);
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
    const all = this.#all().filter((r) => !r.pinned);
    for (const old of all.slice(this.#keep)) {
      this.#kv.kvDelete(NS, old.ref);
      this.#dropLogs(old);
    }
  }

  /**
   * The progress events of completed build `ref` as kept, for a Status call that comes after the
   * build (`docker buildx history logs`); undefined when there is no such record. A record kept
   * without its stream (older loom, or a write that failed) has none to give.
   */
  logsOf(ref: string): readonly ProgressEvent[] | undefined {
    const r = this.get(ref);
    if (!r || !r.completedAt) return undefined;
    if (!r.logs || !this.#logsDir) return [];
    const file = this.#logsFile(this.#logsDir, r.logs.digest);
    try {
      return decodeStatusStream(readFileSync(file), `progress of build ${ref} (${file})`);
    } catch (err) {
      log().warn({ ref, err: (err as Error).message }, 'could not read the progress kept with a build record');
      return [];
    }
  }

  /** Writes the record's progress stream (upstream's status blob) and names it in the record. */
  #keepLogs(r: BuildRecordData, progress: readonly ProgressEvent[]): void {
    if (!this.#logsDir) return;
    try {
      const data = encodeStatusStream(progress);
      const digest = sha256(data);
      mkdirSync(this.#logsDir, { recursive: true });
      const file = this.#logsFile(this.#logsDir, digest);
      writeFileSync(`${file}.tmp`, data);
      renameSync(`${file}.tmp`, file);
      r.logs = { digest, size: data.length };
    } catch (err) {
      log().warn({ ref: r.ref, err: (err as Error).message }, 'could not keep the progress of a build with its record');
    }
  }

  #dropLogs(r: BuildRecordData): void {
    if (r.logs && this.#logsDir) rmSync(this.#logsFile(this.#logsDir, r.logs.digest), { force: true });
  }

  /** The file a progress stream of digest `digest` is kept in. */
  #logsFile(dir: string, digest: string): string {
    return join(dir, digest.replace(/^sha256:/, ''));
  }
}

/** Collects one build's steps (several solves of one build report into it). */
export class BuildRecorder implements StepObserver {
  readonly #o: { ref: string; frontend: string; info?: BuildRequestInfo; sizeOf: (refId: string) => number; save: (r: BuildRecordData, progress?: readonly ProgressEvent[]) => void };
  readonly #started = Date.now();
  readonly #steps = new Map<string, BuildRecordData['steps'][number]>();
  /** Sources read by the build, their pins and platforms, in the order read (build info). */
  readonly sources: ReadSource[] = [];
  /** Image references the frontend resolved, the digests they named, for which platform (build info). */
  readonly resolvedImages: ResolvedImage[] = [];

  constructor(o: { ref: string; frontend: string; info?: BuildRequestInfo; sizeOf: (refId: string) => number; save: (r: BuildRecordData, progress?: readonly ProgressEvent[]) => void }) {
    this.#o = o;
  }

  seen(digest: string): boolean {
    return this.#steps.has(digest);
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

  /** The record as it stands (a running build's has no completion time). */
  snapshot(): BuildRecordData {
    return {
      ref: this.#o.ref,
      frontend: this.#o.frontend,
      startedAt: this.#started,
      completedAt: 0,
      error: '',
      ...this.summary(),
      steps: [...this.#steps.values()],
      ...(this.#o.info?.frontendAttrs ? { frontendAttrs: this.#o.info.frontendAttrs } : {}),
      ...(this.#o.info?.exporters ? { exporters: this.#o.info.exporters } : {}),
    };
  }

  /** The digest of loom's own cache-summary vertex, once written (upstream's records do not count it). */
  summaryVertex?: string;

  /** Completes the record: `progress` is the build's whole progress stream, counted and kept with it. */
  finish(error?: string, exporterResponse?: Record<string, string>, errorCode?: string, progress?: { events: readonly ProgressEvent[]; vertices: BuildRecordData['vertices'] }): BuildRecordData {
    const r: BuildRecordData = { ...this.snapshot(), completedAt: Date.now(), error: error ?? '' };
    if (progress) r.vertices = progress.vertices;
    if (exporterResponse) r.exporterResponse = exporterResponse;
    if (error && errorCode) r.errorCode = errorCode;
    this.#o.save(r, progress?.events);
    return r;
  }
}
