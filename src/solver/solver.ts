import { clone, toBinary } from '@bufbuild/protobuf';
import { OpSchema, PlatformSchema, type Platform } from '../gen/buildkit/ops_pb.js';
import { create } from '@bufbuild/protobuf';
import { outputCount, type Edge, type LoadedDefinition, type Vertex } from '../llb/definition.js';
import { checkEntitlements } from '../llb/entitlements.js';
import { sha256 } from '../util/digest.js';
import { fromPbPlatform } from '../util/pb-platform.js';
import { CacheKeyError, clarifyNameError, errorMessage, isAbortError, throwIfAborted, VertexError, withSources } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import type { ProgressBus } from '../util/progress.js';
import { sharedRun, type SharedRun } from '../util/shared-run.js';
import type { ContentSelector, JobContext, OpContext, OpImpl, OpResolver, PathPatterns, Ref, StepContentKey } from './types.js';

const log = () => rootLog.child({ sub: 'solver' });

/** Where results are remembered by cache key. The cache/ implementation persists it in SQLite. */
export interface ResultCache {
  lookup(key: string): Promise<Ref | undefined>;
  save(key: string, ref: Ref): void;
  /** Marks refs as held by a build so prune leaves them alone; returns the release function. */
  hold(refs: readonly Ref[]): () => void;
  /**
   * What each step was made from last time (by step identity: the op without its inputs), so a
   * miss can say which part changed. Values are the solver's own JSON.
   */
  stepHistory?: { get(identity: string): string | undefined; put(identity: string, value: string): void };
  /**
   * A step's key by its inputs' content (see JobRun#byContent) -> the key its result was saved
   * under; and `shape:…` entries, set for a step once it ran on a given set of other inputs;
   * `putOf` keeps a step's own content key and shape by its key, for cache exports.
   */
  contentKeys?: {
    get(contentKey: string): string | undefined;
    put(contentKey: string, key: string): void;
    putOf?(stepKey: string, c: StepContentKey): void;
  };
}

/** What a step's cache key is made of, remembered to explain a later miss. */
interface KeyParts {
  key: string;
  inputs: { name: string; key: string }[];
  extra: string;
}

/** The digest of some paths of a ref's tree (cache/selector-digest.ts). */
export type SelectorDigest = (ref: Ref, paths: string[], followSymlinks: boolean, wildcards?: boolean, patterns?: Record<string, PathPatterns>, lazyScan?: boolean) => Promise<string>;
/** Fails as SelectorDigest does when one of the paths is missing, digesting nothing. */
export type SelectorCheck = (ref: Ref, paths: string[], followSymlinks: boolean, lazyScan?: boolean, patterns?: Record<string, PathPatterns>) => Promise<void>;

/**
 * A step output found in an imported cache: fetched and unpacked only when something reads it (a
 * step that runs on it, an exporter, the gateway), as upstream's lazy refs. A build that exports
 * nothing downloads none of a fully cached graph's layers.
 */
interface Deferred {
  /** Materializes the output (once); its progress shows on `progressVertex` (the step reading it), else on its own step. */
  readonly deferred: (progressVertex?: string) => Promise<Ref>;
}
type Slot = Ref | Deferred;
const isDeferred = (s: Slot): s is Deferred => 'deferred' in s;

/** What Solver.solve gives a build: its result, materialized on the first call. */
export interface Solved {
  result(): Promise<Ref>;
  release(): void;
  stats: SolveStats;
}

/** Told of each step's outcome (metrics). */
export interface SolveObserver {
  step(outcome: 'cached' | 'run'): void;
}

export interface SolveStats {
  cached: number;
  run: number;
}

/**
 * Solves loaded LLB graphs. One Solver serves the daemon; identical steps of concurrent builds are
 * computed once (in-flight dedupe by cache key) and every build sees the shared result.
 */
export class Solver {
  readonly #resolve: OpResolver;
  readonly #cache: ResultCache;
  readonly #defaultPlatform: Platform;
  readonly #inflight = new Map<string, SharedRun<Ref[]>>();
  readonly #runners = new Map<string, { job: string; digest: string; progress: ProgressBus }>();

  readonly #observe: SolveObserver | undefined;
  /** Vertices each build has shown (upstream writes every vertex it loads, not started yet). */
  readonly #announced = new WeakMap<JobContext, Set<string>>();
  /** Per build, the keys of its solves' results (JobRunOptions.rootKeys). */
  readonly #rootKeys = new WeakMap<JobContext, Set<string>>();
  readonly #selectorDigest: SelectorDigest | undefined;
  readonly #selectorCheck: SelectorCheck | undefined;

  constructor(opts: { resolve: OpResolver; cache: ResultCache; defaultPlatform: Platform; observe?: SolveObserver; selectorDigest?: SelectorDigest; selectorCheck?: SelectorCheck }) {
    this.#observe = opts.observe;
    this.#selectorDigest = opts.selectorDigest;
    this.#selectorCheck = opts.selectorCheck;
    this.#resolve = opts.resolve;
    this.#cache = opts.cache;
    this.#defaultPlatform = opts.defaultPlatform;
  }

  /**
   * Solves `def` within a build. Its result (read with `result()`, which materializes an output
   * taken from an imported cache) stays held until `release()`; callers export it and then release.
   */
  async solve(job: JobContext, def: LoadedDefinition): Promise<Solved> {
    checkEntitlements(def, job.entitlements);
    this.#announce(job, def);
    const run = new JobRun({
      rootKeys: setOfJob(this.#rootKeys, job),
      job,
      resolve: this.#resolve,
      cache: this.#cache,
      inflight: this.#inflight,
      runners: this.#runners,
      defaultPlatform: this.#defaultPlatform,
      observe: this.#observe,
      selectorDigest: this.#selectorDigest,
      selectorCheck: this.#selectorCheck,
      unlazied: unlaziedMerges(def),
    });
    try {
      if (def.result) run.keysOf(def.result.vertex);
      await Promise.race([run.slot(def.result), run.failed]);
      await run.recordKnownSteps();
      return { result: () => run.edge(def.result), release: () => run.release(), stats: run.stats };
    } catch (err) {
      run.release();
      throw err;
    }
  }

  /**
   * As upstream's solver, every vertex a build loads is written to its progress once, not started
   * yet, before anything runs, in the order upstream's clients receive them: the result first, each
   * vertex before its inputs (the reverse of upstream's inputs-first load). The order is what
   * clients see: buildctl and buildx keep a progress group's members in a Go map filled in arrival
   * order and reveal a group with only a weak member started (COPY --link's copy) when, iterating,
   * an error comes before another member; with the merge first, upstream's clients mostly show a
   * failed COPY --link's copy as no step at all, and loom's client (insertion order) always does.
   */
  #announce(job: JobContext, def: LoadedDefinition): void {
    if (!def.result) return;
    const shown = setOfJob(this.#announced, job);
    const loaded: Vertex[] = [];
    const visit = (v: Vertex) => {
      if (shown.has(v.digest)) return;
      shown.add(v.digest);
      for (const i of v.inputs) visit(i.vertex);
      loaded.push(v);
    };
    visit(def.result.vertex);
    for (const v of loaded.reverse()) job.progress.vertex(vertexEvent(v, {}));
  }
}

/** The set `sets` keeps for a build, made on first use. */
function setOfJob(sets: WeakMap<JobContext, Set<string>>, job: JobContext): Set<string> {
  let set = sets.get(job);
  if (!set) sets.set(job, (set = new Set()));
  return set;
}

/**
 * The inputs' keys. When one fails because a copy source is not there, a source of `v`'s own
 * that is not there either is the error: of a build's missing copy sources, upstream mostly
 * reports the one nearest the result (its keys by content are worked out side by side, not each
 * after those below it). Other failures are the error at once.
 */
async function nearestKeyError<T>(v: Vertex, inputs: Promise<T>[]): Promise<T[]> {
  try {
    return await Promise.all(inputs);
  } catch (first) {
    const missingSource = (e: unknown) => e instanceof VertexError && e.cause instanceof CacheKeyError;
    if (!missingSource(first)) throw first;
    const own = (await Promise.allSettled(inputs)).find((r) => r.status === 'rejected' && missingSource(r.reason) && (r.reason as VertexError).digest === v.digest);
    throw own ? (own as PromiseRejectedResult).reason : first;
  }
}

/**
 * The merges whose tree a step of the graph reads (an exec or file op on them, not another merge or
 * a diff, which take only their layers): those upstream makes real ("unlazies") during the build,
 * showing a "merging" status on the merge's step (a COPY --link's). Loom makes every merge at
 * once; the status tells the same story as upstream's.
 */
function unlaziedMerges(def: LoadedDefinition): Set<string> {
  const out = new Set<string>();
  if (!def.result) return out;
  const lazy = (v: Vertex) => v.op.op.case === 'merge' || v.op.op.case === 'diff';
  const seen = new Set<string>();
  const visit = (v: Vertex) => {
    if (seen.has(v.digest)) return;
    seen.add(v.digest);
    for (const i of v.inputs) {
      if (!lazy(v) && i.vertex.op.op.case === 'merge') out.add(i.vertex.digest);
      visit(i.vertex);
    }
  };
  visit(def.result.vertex);
  return out;
}

interface JobRunOptions {
  job: JobContext;
  resolve: OpResolver;
  cache: ResultCache;
  inflight: Map<string, SharedRun<Ref[]>>;
  /** The keys of the results of the build's solves so far (see #compute). */
  rootKeys: Set<string>;
  /** Who runs each in-flight step (see #runShared). */
  runners: Map<string, { job: string; digest: string; progress: ProgressBus }>;
  defaultPlatform: Platform;
  observe: SolveObserver | undefined;
  selectorDigest: SelectorDigest | undefined;
  selectorCheck: SelectorCheck | undefined;
  unlazied: ReadonlySet<string>;
}

/** The state of one build's walk over its graph: memoized keys and results per vertex. */
class JobRun {
  readonly stats: SolveStats = { cached: 0, run: 0 };
  readonly #o: JobRunOptions;
  readonly #keys = new Map<string, Promise<string>>();
  readonly #vertexByDigest = new Map<string, Vertex>();
  readonly #results = new Map<string, Promise<Slot[]>>();
  readonly #releases: (() => void)[] = [];
  readonly #impls = new Map<string, OpImpl>();
  readonly #parts = new Map<string, KeyParts>();
  /**
   * The key a step would have had if neither it nor a step below it ignored the cache (its own
   * key is then this build's): its result is saved under that key too, so a later build finds it,
   * as upstream's, which keeps every result under the usual keys.
   */
  readonly #usualKeys = new Map<string, string>();
  /** The key by content of a step about to run (see #byContent), to find its result by later. */
  readonly #contentKeys = new Map<string, { shape: string; key: Promise<string | undefined> }>();
  /** Vertices already shown as cached (hit, or an input of a hit). */
  readonly #reported = new Set<string>();

  /** Rejects with the first failure of a step started ahead of need (see #key): the build fails then, not when that step is next read. */
  readonly failed: Promise<never>;
  readonly #fail: (err: unknown) => void;

  constructor(o: JobRunOptions) {
    this.#o = o;
    let fail!: (err: unknown) => void;
    this.failed = new Promise<never>((_, reject) => (fail = reject));
    this.failed.catch(() => undefined);
    this.#fail = fail;
  }

  /** The build's keys, all worked out (set by keysOf; see #failEarly). */
  #keysKnown: Promise<unknown> | undefined;
  /** Local directories still being transferred for their keys. */
  #transfers = 0;

  /** Starts working out the keys of `v` and all below it (see #failEarly). */
  keysOf(v: Vertex): void {
    this.#root = v.digest;
    this.#keysKnown = this.#key(v);
    this.#keysKnown.catch(() => undefined);
  }

  /** The result vertex of this solve (see keysOf and rootKeys). */
  #root: string | undefined;

  /**
   * A step started ahead of need failed. Upstream's content keys of a local directory are ready as
   * soon as its transfer ends (it hashes files as they arrive), so a key that cannot be computed
   * (a copy source that is not there) fails a build before any step that fails after the
   * transfers; loom's take a walk of the tree, so the failure waits for the build's keys then. A
   * step that fails while a transfer is still running fails the build at once, as upstream's.
   */
  #failEarly(err: unknown): void {
    if (!this.#keysKnown || this.#transfers > 0) this.#fail(err);
    else this.#keysKnown.then(() => this.#fail(err), () => undefined);
  }

  release(): void {
    this.#released = true;
    for (const r of this.#releases.splice(0)) r();
  }

  /** Set by release(): steps still finishing after a failed build hold nothing (see #hold). */
  #released = false;

  /**
   * For a mode=max cache export: the steps whose keys this build computed but whose results it
   * never needed (a hit further down the graph) are recorded from the local cache too, so the
   * exported cache holds every step, as after a build that ran them.
   */
  async recordKnownSteps(): Promise<void> {
    const hooks = this.#o.job.cache;
    if (!hooks || (!hooks.wantsAll && !hooks.recordKey)) return;
    for (const [digest, p] of this.#keys) {
      const v = this.#vertexByDigest.get(digest);
      if (!v || isLocalSource(v)) continue;
      const key = await p.catch(() => undefined);
      if (!key) continue;
      const n = Math.max(1, outputCount(v.op));
      // Every step's key, sources' too, for exports that name steps by key (a step that ignored
      // the cache by the key later builds find it under).
      const usual = this.#usualKeys.get(digest) ?? key;
      for (let i = 0; i < n; i++) hooks.recordKey?.(`${usual}#${i}`);
      if (!hooks.wantsAll || v.op.op.case === 'source' || this.#results.has(digest)) continue;
      for (let i = 0; i < n; i++) {
        const r = await this.#o.cache.lookup(`${key}#${i}`);
        if (r) hooks.record(`${key}#${i}`, r);
      }
    }
  }

  /** The output `e` names, materialized. */
  async edge(e: Edge): Promise<Ref> {
    const s = await this.slot(e);
    return isDeferred(s) ? await s.deferred() : s;
  }

  /** The output `e` names, computed or found, without materializing one from an imported cache. */
  async slot(e: Edge): Promise<Slot> {
    const s = (await this.#result(e.vertex))[e.index];
    if (!s) throw new Error(`op ${e.vertex.digest} produced no output ${e.index}`);
    return s;
  }

  /** One implementation object per vertex and build: ops keep what cacheKey() learnt for run(). */
  #impl(v: Vertex): OpImpl {
    const impls = this.#o.job.ops ?? this.#impls;
    let impl = impls.get(v.digest);
    if (!impl) {
      impl = this.#o.resolve(v);
      impls.set(v.digest, impl);
    }
    return impl;
  }

  #ctx(v: Vertex): OpContext {
    const j = this.#o.job;
    return {
      id: j.id,
      signal: j.signal,
      progress: j.progress,
      entitlements: j.entitlements,
      session: () => j.session(),
      cache: j.cache,
      vertex: v,
      platform: v.op.platform ?? this.#o.defaultPlatform,
    };
  }

  readonly #transferBound = new Map<string, boolean>();

  /** Whether `v`'s key waits on a local directory's transfer: it is one, or stands on one. */
  #waitsOnTransfer(v: Vertex): boolean {
    let w = this.#transferBound.get(v.digest);
    if (w === undefined) {
      w = isLocalSource(v) || v.inputs.some((i) => this.#waitsOnTransfer(i.vertex));
      this.#transferBound.set(v.digest, w);
    }
    return w;
  }

  /** The vertex's cache key: the op without its inputs' digests, the inputs' keys, and the op's own extra. */
  #key(v: Vertex): Promise<string> {
    let p = this.#keys.get(v.digest);
    if (!p) {
      this.#vertexByDigest.set(v.digest, v);
      p = (async () => {
        const selectors = this.#impl(v).inputSelectors?.() ?? [];
        // The inputs upstream's cache map hashes by content; a step that ignores the cache is not
        // looked up by them.
        const contentSels = v.op.op.case === 'source' ? undefined : this.#impl(v).contentSelectors?.();
        const content = v.metadata?.ignoreCache === true ? undefined : contentSels;
        const byContent = v.inputs.some((i, n) => content?.[n] && !isLocalSource(i.vertex));
        // A step whose key waits on a local directory's transfer: what it is built on, when no
        // cache holds it, is needed whatever the transfer brings (the step's key is new), so it
        // starts now and runs beside the transfer (a RUN before `COPY . /app`, or below a COPY
        // --link of the context), as upstream starts a step no cache record can match. Only the
        // inputs whose results the step's own result stands on (see chainInputs): a cache
        // exported with mode=min holds those whenever it holds the step.
        const early = byContent ? undefined : this.#waitsOnTransfer(v) && chainInputs(v);
        const keyed = await nearestKeyError(
          v,
          v.inputs.map(async (i, n): Promise<{ key: string; usual: string }> => {
            const of = await this.#key(i.vertex);
            // As this input's key would be if no step below ignored the cache.
            const usualOf = this.#usualKeys.get(i.vertex.digest) ?? of;
            // The key of a step that may be keyed by content waits on its inputs' results (see
            // #byContent). An input no cache names is needed whatever happens (the step's key is
            // new: either its content finds an earlier result or the step runs), so it starts
            // now: the stages a step copies from, and the step it runs on, are made side by side,
            // not one after the other as each key in turn waits on its inputs. One an imported
            // cache names by its key alone is not: a step found further on needs nothing of it
            // (a mode=min cache holds a COPY --from, not the stage it copied from).
            if ((byContent || (early && early.has(n) && !this.#waitsOnTransfer(i.vertex))) && !(await this.#known(of, i.index))) this.slot(i).catch((err: unknown) => this.#failEarly(err));
            // A local directory read only at a few paths keys the step by those paths' content:
            // editing an unrelated file of the context keeps the step cached (upstream's
            // content-based cache keys). Other inputs are keyed whole.
            const sel = selectors[n];
            const whole = (of: string) => {
              const k = `${of}#${i.index}`;
              // Wildcard patterns key only a local source by what they match; other inputs whole.
              return !sel || sel.wildcards ? k : `${k}|paths:${JSON.stringify(sel.paths)}${sel.patterns ? `|patterns:${JSON.stringify(sel.patterns)}` : ''}`;
            };
            // A local directory the step may not be keyed by the content of (upstream's cache map
            // gives it no content hash: the base a step runs on or copies onto, as FROM a local
            // named context) is keyed by the build, as upstream keys local sources by session:
            // what is built on it runs again in every build. Read-only, it is keyed by content.
            if (isLocalSource(i.vertex) && !contentSels?.[n]) {
              const k = `${whole(of)}|build:${this.#o.job.id}`;
              return { key: k, usual: k };
            }
            // Ops may leave selected paths out of their own key (exec mounts do, as upstream):
            // they always enter here.
            const digest = sel && this.#contentDigest(i.vertex);
            if (!sel || !digest) return { key: whole(of), usual: whole(usualOf) };
            const ref = await this.edge(i);
            // A path the step reads that is not there fails the step here, as upstream's key does.
            const selKey = await this.#guard(v, () => digest(ref, sel.paths, sel.followSymlinks, sel.wildcards, sel.patterns));
            const byPaths = sel.wildcards ? `sel:wildcards:${selKey}` : `sel:${selKey}`;
            return { key: byPaths, usual: byPaths };
          }),
        );
        const inputKeys = keyed.map((k) => k.key);
        // Sources do real work to find their key (resolve a tag, sync a directory): they show as a
        // vertex even when everything after them is cached, as upstream's do.
        // So do other steps without inputs (a WORKDIR on scratch, a heredoc's file), as upstream
        // shows such a step done when it works out its key, even when its result is not needed.
        // (Not again in a later solve of the same build, as a frontend's final solve of the remote
        // context its own solve read: the vertex keeps what it showed, CACHED or DONE.)
        const isSource = v.op.op.case === 'source' || v.inputs.length === 0;
        const shows = isSource && !this.#o.job.steps?.seen?.(v.digest);
        const started = new Date();
        if (shows) this.#report(v, { started });
        const extra = await this.#guard(v, () => this.#impl(v).cacheKey(this.#ctx(v)));
        if (shows) this.#report(v, { started, completed: new Date() });
        if (isSource) {
          if (v.op.op.case === 'source') this.#o.job.steps?.source?.(v.op.op.value.identifier, this.#impl(v).pin?.() ?? extra, fromPbPlatform(v.op.platform ?? this.#o.defaultPlatform));
        }
        const keyOf = (inputs: readonly string[]) => sha256(JSON.stringify({ op: opDigestWithoutInputs(v), platform: keyPlatform(v, this.#o.defaultPlatform), inputs, extra }));
        const key = keyOf(inputKeys);
        this.#parts.set(v.digest, { key, inputs: v.inputs.map((i, n) => ({ name: i.vertex.name, key: inputKeys[n]! })), extra });
        const belowIgnored = keyed.some((k) => k.usual !== k.key);
        const usual = belowIgnored ? keyOf(keyed.map((k) => k.usual)) : key;
        if (v.metadata?.ignoreCache !== true) {
          const k = byContent ? await this.#byContent(v, key, content!, inputKeys, extra) : key;
          // (A step its content found under an earlier build's key goes by that key: nothing below
          // it is this build's own any more.)
          if (belowIgnored && k === key) this.#usualKeys.set(v.digest, usual);
          return k;
        }
        // A step the client asked to run (--no-cache, or a no-cache stage) runs, and so does what
        // is built on it: its key is this build's own, so nothing after it is found in the cache
        // under it either, as with upstream, where a step that ignores the cache gives the steps
        // after it no keys to match. Its result, and those of the steps after it, are also saved
        // under their usual keys for later builds.
        this.#usualKeys.set(v.digest, usual);
        return sha256(`${key}|no-cache|${this.#o.job.id}`);
      })();
      this.#keys.set(v.digest, p);
      if (isLocalSource(v)) {
        this.#transfers++;
        p.then(
          () => this.#transfers--,
          () => this.#transfers--,
        );
      }
    }
    return p;
  }

  #result(v: Vertex): Promise<Slot[]> {
    let p = this.#results.get(v.digest);
    if (!p) {
      p = this.#compute(v);
      this.#results.set(v.digest, p);
    }
    return p;
  }

  async #compute(v: Vertex): Promise<Slot[]> {
    const { job } = this.#o;
    throwIfAborted(job.signal);
    const key = await this.#key(v);
    const ignore = v.metadata?.ignoreCache === true;
    const n = Math.max(1, outputCount(v.op));
    // A local source's result is the snapshot its key's transfer just made of this session's
    // directory, never an earlier build's of the same content: that one's files may carry other
    // times (a touched file, another checkout), and a step that is not cached (another COPY
    // destination) copies what it is given. Upstream keys local sources by session, so they are
    // never cached either (DONE, not CACHED); steps reading them are keyed by content.
    const local = isLocalSource(v);
    if (!ignore && !local) {
      const hit = (await this.#lookup(key, n)) ?? (await this.#imported(v, key, n));
      // Another solve of this build with the same result (a multi-platform build's platforms
      // when the target stage does not depend on the platform): upstream merges this solve's
      // result into that one, and nothing of it shows.
      const isRoot = v.digest === this.#root;
      const sameResult = isRoot && this.#o.rootKeys.has(key);
      if (isRoot) this.#o.rootKeys.add(key);
      if (hit) {
        const refs = hit.filter((s): s is Ref => !isDeferred(s));
        this.#hold(refs);
        if (sameResult) return hit;
        // Done earlier in this build (a frontend's own solve, then its final one): upstream's
        // build shares that result and shows nothing more of the step, which stays DONE.
        if (job.steps?.seen?.(v.digest)) return hit;
        const now = new Date();
        this.#report(v, { started: now, completed: now, cached: true });
        this.#reported.add(v.digest);
        this.stats.cached++;
        await this.#reportCachedInputs(v);
        this.#o.observe?.step('cached');
        // (An imported output is recorded when it is materialized.)
        if (v.op.op.case !== 'source') hit.forEach((r, i) => isDeferred(r) || job.cache?.record(`${key}#${i}`, r));
        job.steps?.step({ digest: v.digest, name: v.name, cached: true, reason: '', durationMs: 0, refs });
        return hit;
      }
    }
    return this.#runShared(v, key, n);
  }

  /** Runs the step; identical work of concurrent builds runs once (the first computes, others wait on it). */
  async #runShared(v: Vertex, key: string, n: number): Promise<Ref[]> {
    const { job } = this.#o;
    const ignore = v.metadata?.ignoreCache === true;
    const local = isLocalSource(v);
    const flightKey = ignore || local ? `${key}:${local ? 'local' : 'nocache'}:${job.id}` : key;
    // (A waiting build whose runner stopped runs the step itself: its own run shows then.)
    let ranHere = false;
    let unmirror: (() => void) | undefined;
    const refs = await sharedRun(
      this.#o.inflight,
      flightKey,
      job.signal,
      () => {
        ranHere = true;
        const me = { job: job.id, digest: v.digest, progress: job.progress };
        this.#o.runners.set(flightKey, me);
        return this.#run(v, key, n).finally(() => {
          if (this.#o.runners.get(flightKey) === me) this.#o.runners.delete(flightKey);
        });
      },
      () => {
        log().debug({ vertex: v.digest }, 'joining in-flight computation of an identical step');
        // Another build's run of this very vertex is this build's too, as upstream's vertex
        // shared by two builds: it shows here as it runs, logs included, and so do the steps
        // below it (joined in flight, or cached when done already). Another vertex's run under
        // the same key (a multi-platform build's copies in a platform-independent stage) is not
        // shown again, as upstream's edge merged into one already running.
        const runner = this.#o.runners.get(flightKey);
        if (!runner || runner.digest !== v.digest || runner.job === job.id) return;
        unmirror = runner.progress.mirror(v.digest, job.progress, vertexEvent(v, {}));
        for (const i of v.inputs) this.slot(i).catch(() => undefined);
      },
    ).finally(() => unmirror?.());
    this.#hold(refs);
    if (unmirror && !ranHere) {
      // In this build's record and summary as a step run (once, for both builds).
      this.stats.run++;
      this.#o.observe?.step('run');
      this.#o.job.steps?.step({ digest: v.digest, name: v.name, cached: false, reason: 'run once for this build and another at the same time', durationMs: 0, refs });
    }
    return refs;
  }

  async #run(v: Vertex, key: string, n: number): Promise<Ref[]> {
    const slots = await Promise.all(v.inputs.map((i) => this.slot(i)));
    throwIfAborted(this.#o.job.signal);
    const started = new Date();
    this.#report(v, { started });
    // Inputs found in an imported cache are fetched now, their progress on this step.
    const inputs = await Promise.all(slots.map((s) => (isDeferred(s) ? s.deferred(v.digest) : s)));
    const reason = this.#explainMiss(v, v.metadata?.ignoreCache === true);
    let refs: Ref[];
    try {
      // Inputs keyed by the paths read rather than their content (a stage's result): a path that
      // is not there fails here, in the words of a key that holds content (local sources' keys
      // already did).
      const check = this.#o.selectorCheck;
      if (check) {
        for (const [n, sel] of (this.#impl(v).inputSelectors?.() ?? []).entries()) {
          if (sel && !sel.wildcards && inputs[n] && !this.#contentDigest(v.inputs[n]!.vertex)) await check(inputs[n]!, sel.paths, sel.followSymlinks, true, sel.patterns);
        }
      }
      const merging = this.#o.unlazied.has(v.digest) ? this.#merging(v) : undefined;
      try {
        refs = await this.#impl(v).run(this.#ctx(v), inputs);
      } finally {
        merging?.();
      }
    } catch (caught) {
      const err = clarifyNameError(caught);
      const e = err instanceof VertexError ? err : withSources(new VertexError({ digest: v.digest, name: v.name, cause: err }), v.sources ?? []);
      this.#report(v, { started, completed: new Date(), error: isAbortError(err) ? 'context canceled' : stepErrorText(err) });
      throw e;
    }
    const completed = new Date();
    this.#report(v, { started, completed });
    // A local source whose content did not change counts as cached, as it did when it came from
    // the cache: the build reused what it had (its progress line says DONE, as upstream's).
    const unchanged = isLocalSource(v) && reason === '';
    this.#o.job.steps?.step({ digest: v.digest, name: v.name, cached: unchanged, reason, durationMs: unchanged ? 0 : completed.getTime() - started.getTime(), refs });
    if (unchanged) this.stats.cached++;
    else this.stats.run++;
    this.#o.observe?.step(unchanged ? 'cached' : 'run');
    const usual = this.#usualKeys.get(v.digest);
    refs.forEach((r, i) => {
      this.#o.cache.save(`${key}#${i}`, r);
      if (usual) this.#o.cache.save(`${usual}#${i}`, r);
      if (v.op.op.case !== 'source') {
        this.#o.job.cache?.record(`${key}#${i}`, r);
        if (usual) this.#o.job.cache?.record(`${usual}#${i}`, r);
      }
    });
    const byContent = this.#contentKeys.get(v.digest);
    if (byContent) {
      const aliases = this.#o.cache.contentKeys;
      const saved = byContent.key.then((ck) => {
        if (!ck || !aliases) return;
        aliases.put(ck, key);
        aliases.put(byContent.shape, '1');
        aliases.putOf?.(key, { content: ck, shape: byContent.shape });
      }).catch((err: unknown) => log().warn({ vertex: v.digest, err: errorMessage(err) }, 'could not save the content key of a step'));
      // A cache export reads them with the step's records: they are there before the build ends.
      if (this.#o.job.cache?.exporting) await saved;
    }
    const parts = this.#parts.get(v.digest);
    if (parts) {
      this.#o.cache.stepHistory?.put(stepIdentity(v, this.#o.defaultPlatform), JSON.stringify(parts));
      // By name too: a step whose definition changed (a build-arg in its env, say) has a new
      // identity, but usually the same name, and a later miss can say what changed in it.
      if (v.name || v.location) this.#o.cache.stepHistory?.put(stepNameKey(v, this.#o.defaultPlatform), JSON.stringify(opShape(v)));
    }
    if (refs.length < n) throw new VertexError({ digest: v.digest, name: v.name, cause: new Error(`expected ${n} outputs, got ${refs.length}`) });
    return refs;
  }

  /**
   * Upstream's content-based cache keys, for inputs other than local sources (those are keyed by
   * content already): when a step's key finds nothing, here or in an imported cache, its inputs
   * are made and the content of what it reads from them (OpImpl.contentSelectors) stands for them
   * in a second key. An earlier build's result saved under an equal second key is this step's:
   * the step takes that build's key, so the steps after it are found as well. A stage rebuilt by
   * --no-cache, or a RUN changed without changing what it wrote, then leaves a COPY --from of it
   * and everything after cached. `sels` are the step's contentSelectors, one of them for an
   * input other than a local source. Returns the key the step goes by.
   */
  async #byContent(v: Vertex, key: string, sels: ContentSelector[], inputKeys: readonly string[], extra: string): Promise<string> {
    const digest = this.#o.selectorDigest;
    const aliases = this.#o.cache.contentKeys;
    if (!digest || !aliases) return key;
    // The local cache's content keys, else those of the caches the build imports.
    const imports = this.#o.job.cache;
    const alias = async (name: string) => aliases.get(name) ?? (imports?.importedContentKey ? await imports.importedContentKey(name).catch(() => undefined) : undefined);
    const byContent = (i: Edge, n: number) => sels[n] && !isLocalSource(i.vertex);
    const n = Math.max(1, outputCount(v.op));
    if (await this.#found(key, n)) return key;
    const identity = { op: opDigestWithoutInputs(v), platform: keyPlatform(v, this.#o.defaultPlatform), extra };
    const contentKey = async () => {
      const content = await Promise.all(
        v.inputs.map(async (i, idx) => {
          const sel = sels[idx];
          return sel && byContent(i, idx) ? `content:${await digest(await this.edge(i), sel.paths, sel.followSymlinks, sel.wildcards, sel.patterns, true)}` : inputKeys[idx]!;
        }),
      );
      return sha256(JSON.stringify({ ...identity, content }));
    };
    // No earlier build ran this step on these other inputs (a cold build, a changed base): no
    // content can find anything. The content key is then worked out beside the step's run, for
    // later builds, rather than before it.
    const shape = `shape:${sha256(JSON.stringify({ ...identity, inputs: v.inputs.map((i, idx) => (byContent(i, idx) ? 'content' : inputKeys[idx])) }))}`;
    if (!(await alias(shape))) {
      const ck = contentKey();
      this.#contentKeys.set(v.digest, { shape, key: ck.catch(() => undefined) });
      // A path the step reads that is not there fails the build as soon as the input it is read
      // from is made, as upstream's key by content does, not when the step's turn to run comes
      // (after the steps below it, which may fail first). A failed input fails on its own.
      ck.catch((err: unknown) => {
        if (err instanceof CacheKeyError) this.#guard(v, () => Promise.reject(err)).catch((e: unknown) => this.#fail(e));
      });
      return key;
    }
    let ck: string;
    try {
      ck = await contentKey();
    } catch (err) {
      // A failed input fails the build; a path that is not there fails the step when it runs,
      // in its own words.
      if (isAbortError(err) || err instanceof VertexError) throw err;
      return key;
    }
    const earlier = await alias(ck);
    if (earlier && earlier !== key && (await this.#found(earlier, n))) return earlier;
    this.#contentKeys.set(v.digest, { shape, key: Promise.resolve(ck) });
    return key;
  }

  /** Whether outputs from..from+n-1 of the step under `key` are in the local cache or an imported one. */
  async #found(key: string, n: number, from = 0): Promise<boolean> {
    for (let i = from; i < from + n; i++) {
      if (!(await this.#o.cache.lookup(`${key}#${i}`)) && !(await this.#inImport(`${key}#${i}`))) return false;
    }
    return true;
  }

  async #lookup(key: string, n: number): Promise<Ref[] | undefined> {
    const refs: Ref[] = [];
    for (let i = 0; i < n; i++) {
      const r = await this.#o.cache.lookup(`${key}#${i}`);
      if (!r) return undefined;
      refs.push(r);
    }
    return refs;
  }

  /**
   * A step's outputs from the build's imported caches, when they hold all of them: deferred, each
   * materialized (layers fetched and unpacked, then saved in the local cache so the next build hits
   * locally) when first read. A build that exports its cache materializes them at once, as it
   * records every output it used. A cache that cannot be read, or an output that cannot be
   * materialized, is no reason to fail the build: the step runs instead.
   */
  async #imported(v: Vertex, key: string, n: number): Promise<Slot[] | undefined> {
    const hooks = this.#o.job.cache;
    if (!hooks) return undefined;
    const found: ((ctx: OpContext, progressVertex?: string) => Promise<Ref>)[] = [];
    for (let i = 0; i < n; i++) {
      let m: ((ctx: OpContext, progressVertex?: string) => Promise<Ref>) | undefined;
      try {
        m = await hooks.findImported(`${key}#${i}`);
      } catch (err) {
        if (isAbortError(err)) throw err;
        this.#importFailed(v, err);
        return undefined;
      }
      if (!m) return undefined;
      found.push(m);
    }
    let ran: Promise<Ref[]> | undefined;
    const slots = found.map((materialize, i): Deferred => {
      let p: Promise<Ref> | undefined;
      return {
        deferred: (progressVertex) =>
          (p ??= (async () => {
            let r: Ref;
            try {
              r = await materialize(this.#ctx(v), progressVertex);
            } catch (err) {
              if (isAbortError(err)) throw err;
              this.#importFailed(v, err);
              ran ??= this.#runShared(v, key, n);
              return (await ran)[i]!;
            }
            this.#o.cache.save(`${key}#${i}`, r);
            this.#hold([r]);
            if (v.op.op.case !== 'source') this.#o.job.cache?.record(`${key}#${i}`, r);
            return r;
          })()),
      };
    });
    if (!hooks.eager) return slots;
    // Materialized now, before the step shows as cached (its layers' progress on it); one that
    // fails makes the step run as a miss.
    try {
      const refs = await Promise.all(found.map((m) => m(this.#ctx(v))));
      refs.forEach((r, i) => {
        this.#o.cache.save(`${key}#${i}`, r);
        if (v.op.op.case !== 'source') this.#o.job.cache?.record(`${key}#${i}`, r);
      });
      return refs;
    } catch (err) {
      if (isAbortError(err)) throw err;
      this.#importFailed(v, err);
      return undefined;
    }
  }

  #importFailed(v: Vertex, err: unknown): void {
    this.#o.job.progress.warn({ vertex: v.digest, level: 1, short: `cache import failed, running the step: ${errorMessage(err)}`, detail: [] });
  }

  /**
   * A cache hit never needs its inputs' results, but they are cached too (here or in an imported
   * cache): show them as such, as upstream does for a fully cached build (sources already showed
   * their resolve).
   */
  async #reportCachedInputs(v: Vertex): Promise<void> {
    for (const i of v.inputs) {
      const u = i.vertex;
      if (this.#reported.has(u.digest) || u.op.op.case === 'source' || u.inputs.length === 0 || this.#results.has(u.digest) || this.#o.job.steps?.seen?.(u.digest)) continue;
      this.#reported.add(u.digest);
      const key = await this.#keys.get(u.digest);
      if (!key || !(await this.#known(key, i.index))) continue;
      const now = new Date();
      this.#report(u, { started: now, completed: now, cached: true });
      // In the build's record and summary as a cached step; its bytes are in the hit's chain.
      this.#o.job.steps?.step({ digest: u.digest, name: u.name, cached: true, reason: '', durationMs: 0, refs: [] });
      await this.#reportCachedInputs(u);
    }
  }

  /**
   * Whether a cache names output `index` of the step under `key`: the local cache or an imported
   * one holds its result, or an imported one its key alone (a mode=min cache's steps below its
   * results).
   */
  async #known(key: string, index: number): Promise<boolean> {
    if (await this.#found(key, 1, index)) return true;
    try {
      return (await this.#o.job.cache?.knowsImported?.(`${key}#${index}`)) === true;
    } catch (err) {
      if (isAbortError(err)) throw err;
      return false;
    }
  }

  /** Whether the build's imported caches hold the output (nothing is fetched); a cache that cannot be read holds nothing. */
  async #inImport(output: string): Promise<boolean> {
    try {
      return (await this.#o.job.cache?.findImported(output)) !== undefined;
    } catch (err) {
      if (isAbortError(err)) throw err;
      return false;
    }
  }

  /**
   * Says in the step's progress why it runs instead of coming from the cache: a --no-cache, the first
   * build of this step, which input changed (by the input step's name), what a source found changed,
   * or that the earlier result is gone (pruned).
   */
  #explainMiss(v: Vertex, ignored: boolean): string {
    let why: string;
    if (ignored) {
      // Clients mark the steps (buildctl --no-cache on a definition, the Dockerfile frontend's
      // no-cache for all or some stages), as upstream's; the daemon has no build-wide switch.
      why = 'cache disabled for this step (--no-cache)';
    } else {
      const now = this.#parts.get(v.digest);
      const prevText = this.#o.cache.stepHistory?.get(stepIdentity(v, this.#o.defaultPlatform));
      if (!now || !prevText) {
        const byName = v.name || v.location ? this.#o.cache.stepHistory?.get(stepNameKey(v, this.#o.defaultPlatform)) : undefined;
        const diff = byName ? describeShapeChange(JSON.parse(byName) as Record<string, unknown>, opShape(v)) : [];
        why = diff.length ? `the step's definition changed: ${diff.join('; ')}` : 'no earlier build of this step (new or changed definition)';
      } else {
        const prev = JSON.parse(prevText) as KeyParts;
        const changed: string[] = [];
        if (prev.extra !== now.extra) {
          changed.push(v.op.op.case === 'source' ? `source content changed (${short(prev.extra)} -> ${short(now.extra)})` : 'the step\'s own inputs changed');
        }
        now.inputs.forEach((inp, i) => {
          if (prev.inputs[i]?.key !== inp.key) changed.push(`input ${i} changed: ${inp.name}`);
        });
        // A local source runs every build (see #compute): unchanged, it missed nothing.
        if (!changed.length && isLocalSource(v)) return '';
        why = changed.length ? changed.join('; ') : 'the earlier result is no longer in the cache (pruned)';
      }
    }
    // A status line of the step, complete at once. Not a log: clients number a log by the step's
    // place in their output, which a log sent with the step's start does not have yet (they
    // print "#0"). Complete, because clients key open status lines by their text and would
    // print the same reason of several steps once.
    const text = `cache miss: ${why}`;
    const now = new Date();
    this.#o.job.progress.status({ id: text, vertex: v.digest, name: text, current: 0, total: 0, timestamp: now, started: now, completed: now });
    return why;
  }

  /** Starts the "merging" status line of a merge step (see unlaziedMerges); returns its end. */
  #merging(v: Vertex): () => void {
    const started = new Date();
    const status = { id: 'merging', vertex: v.digest, name: 'merging', current: 0, total: 0, started };
    this.#o.job.progress.status({ ...status, timestamp: started });
    return () => {
      const now = new Date();
      this.#o.job.progress.status({ ...status, timestamp: now, completed: now });
    };
  }

  #hold(refs: readonly Ref[]): void {
    // A step that finishes after the build failed and released its refs (the others did not stop
    // at once) must not hold its result for good: prune --all could never remove it, and a later
    // build would find it in the cache.
    if (this.#released) return;
    this.#releases.push(this.#o.cache.hold(refs));
  }

  /**
   * How a step's key takes the content of the paths it reads from this input: a local source's
   * are digested at key time; undefined for other inputs, keyed by the paths alone (and checked
   * when the step runs).
   */
  #contentDigest(input: Vertex): SelectorDigest | undefined {
    return isLocalSource(input) ? this.#o.selectorDigest : undefined;
  }

  async #guard<T>(v: Vertex, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (caught) {
      if (caught instanceof VertexError) throw caught;
      const err = clarifyNameError(caught);
      const now = new Date();
      this.#report(v, { started: now, completed: now, error: stepErrorText(err) });
      throw withSources(new VertexError({ digest: v.digest, name: v.name, cause: err }), v.sources ?? []);
    }
  }

  #report(v: Vertex, s: VertexState): void {
    this.#o.job.progress.vertex(vertexEvent(v, s));
  }
}

type VertexState = { started?: Date; completed?: Date; cached?: boolean; error?: string };

/** A vertex's progress event: its digest, inputs, name and progress group, in state `s`. */
function vertexEvent(v: Vertex, s: VertexState) {
  const pg = v.metadata?.progressGroup;
  return {
    digest: v.digest,
    inputs: v.inputs.map((i) => i.vertex.digest),
    name: v.name,
    ...s,
    progressGroup: pg ? { id: pg.id, name: pg.name, weak: pg.weak } : undefined,
  };
}

/** What a failed step's own progress says: a key's failure without the build's prefix, as upstream's. */
function stepErrorText(err: unknown): string {
  return err instanceof CacheKeyError ? err.detail : errorMessage(err);
}

const opKeyMemo = new WeakMap<Vertex, string>();

/** The op's digest with its inputs' digests blanked: inputs enter the key through their own keys. */
function opDigestWithoutInputs(v: Vertex): string {
  let d = opKeyMemo.get(v);
  if (!d) {
    const op = clone(OpSchema, v.op);
    for (const i of op.inputs) i.digest = '';
    op.platform = undefined;
    if (op.op.case === 'source') {
      // Which session or client machine sent a local directory does not change its content, which
      // enters the key through the op's own cacheKey().
      delete op.op.value.attrs['local.session'];
      delete op.op.value.attrs['local.unique'];
    }
    if (op.op.case === 'exec') {
      // As upstream's exec cache map: proxy settings and the addresses of extra hosts do not change
      // what a step makes, and mount selectors are keyed through the inputs (inputSelectors).
      const e = op.op.value;
      if (e.meta) {
        e.meta.proxyEnv = undefined;
        for (const h of e.meta.extraHosts) h.IP = '';
      }
      for (const m of e.mounts) m.selector = '';
    }
    d = sha256(toBinary(OpSchema, op));
    opKeyMemo.set(v, d);
  }
  return d;
}

function platformKey(v: Vertex, def: Platform): string {
  const p = v.op.platform ?? create(PlatformSchema, def);
  return [p.OS, p.Architecture, p.Variant].join('/');
}

/**
 * The platform a step's cache key holds: none for file, merge and diff ops, whose work does not
 * depend on it (as upstream, whose cache maps for them leave the platform out). The same copy
 * made for two platforms of one build (a stage FROM scratch) is then one step: it runs once and
 * both platforms' images share its layer.
 */
function keyPlatform(v: Vertex, def: Platform): string {
  const c = v.op.op.case;
  return c === 'file' || c === 'merge' || c === 'diff' ? '' : platformKey(v, def);
}

export { log as solverLog };

/** A step's identity across builds: its op without its inputs, and its platform. */
function stepIdentity(v: Vertex, def: Platform): string {
  return sha256(`${opDigestWithoutInputs(v)}|${platformKey(v, def)}`);
}

function short(s: string): string {
  const m = /sha256:([0-9a-f]{12})/.exec(s);
  if (m) return m[1]!;
  return s.length > 24 ? `${s.slice(0, 21)}...` : s || '(none)';
}

/**
 * The inputs a step's result is built on, as layers below its own: a file op's (a copy from
 * another stage is keyed by content, so made anyway), a merge's, and the root file system of an
 * exec. Not a diff's lower, nor an exec's other mounts.
 */
function chainInputs(v: Vertex): Set<number> {
  const op = v.op.op;
  if (op.case === 'file' || op.case === 'merge') return new Set(v.inputs.map((_, n) => n));
  if (op.case === 'exec') return new Set(op.value.mounts.filter((m) => m.dest === '/' && m.input >= 0).map((m) => Number(m.input)));
  return new Set();
}

function isLocalSource(v: Vertex): boolean {
  return v.op.op.case === 'source' && v.op.op.value.identifier.startsWith('local://');
}

/** History key of a step by its name and platform (see #run). */
function stepNameKey(v: Vertex, def: Platform): string {
  // Where the frontend made it is steadier than the name, which shows expanded build args.
  return sha256(v.location ? `loc|${v.location}|${platformKey(v, def)}` : `name|${v.name}|${platformKey(v, def)}`);
}

/**
 * What a step is, in comparable fields: for an exec its command, env (by variable), working dir,
 * user and mounts; for other ops their definition as JSON fields.
 */
function opShape(v: Vertex): Record<string, unknown> {
  const op = v.op.op;
  if (op.case === 'exec') {
    const m = op.value.meta;
    const env: Record<string, string> = {};
    for (const e of m?.env ?? []) {
      const i = e.indexOf('=');
      env[i < 0 ? e : e.slice(0, i)] = i < 0 ? '' : e.slice(i + 1);
    }
    return {
      command: JSON.stringify(m?.args ?? []),
      ...Object.fromEntries(Object.entries(env).map(([k, val]) => [`env ${k}`, val])),
      workdir: m?.cwd ?? '',
      user: m?.user ?? '',
      network: String(op.value.network),
      security: String(op.value.security),
      mounts: JSON.stringify(op.value.mounts.map((x) => [x.dest, x.mountType, x.selector, x.readonly])),
    };
  }
  if (op.case === 'source') {
    // The scheme is what the step is (an image, a git checkout, a URL, the local context); the
    // rest of the identifier is what changed.
    const id = op.value.identifier;
    return { kind: `source ${id.slice(0, Math.max(0, id.indexOf('://')))}`, source: id, definition: opDigestWithoutInputs(v) };
  }
  return { kind: op.case ?? '', definition: opDigestWithoutInputs(v) };
}

/** The fields that differ between two shapes, as `name: old -> new` (at most four). */
function describeShapeChange(prev: Record<string, unknown>, now: Record<string, unknown>): string[] {
  const out: string[] = [];
  // An exec and another kind of op at the same place (another Dockerfile's line 5) are not one
  // step changed: nothing to compare.
  if ('command' in prev !== 'command' in now) return out;
  // Nor are two other ops of different kinds (an image and a git checkout at another project's
  // line 3). Shapes stored before ops had a kind are compared only as execs.
  if (!('command' in now) && prev.kind !== now.kind) return out;
  const keys = new Set([...Object.keys(prev), ...Object.keys(now)]);
  const show = (x: unknown, max: number) => (x === undefined ? '(unset)' : JSON.stringify(x).length > max ? `${JSON.stringify(x).slice(0, max - 3)}..."` : JSON.stringify(x));
  for (const k of keys) {
    if (prev[k] === now[k]) continue;
    if (k === 'definition') {
      // Named by a field above when one shows what changed (a source's identifier).
      if (!out.length) out.push('its options changed');
      continue;
    }
    // A source's identifier in full: an image's digest is what tells two pulls apart.
    const max = k === 'source' ? 160 : 42;
    out.push(`${k}: ${show(prev[k], max)} -> ${show(now[k], max)}`);
  }
  if (out.length > 4) return [...out.slice(0, 4), `${out.length - 4} more`];
  return out;
}
