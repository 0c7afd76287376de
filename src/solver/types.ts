import type { Platform } from '../gen/buildkit/ops_pb.js';
import type { Platform as UtilPlatform } from '../util/platform.js';
import type { Vertex } from '../llb/definition.js';
import type { SessionCaller } from '../session/types.js';
import type { ProgressBus } from '../util/progress.js';
import type { LayerPair } from '../cache/metadata.js';

/**
 * An immutable result: a committed snapshot plus the chain of diffs that make it (what an image
 * export turns into layers). Refs are records of the cache; the solver hands them around by value.
 */
export interface Ref {
  readonly id: string;
  readonly snapshot: string;
  readonly chain: readonly LayerPair[];
  /** The snapshot's tree on disk. Read-only by contract: ops copy before they change anything. */
  readonly dir: string;
}

/** A result that is materialized when first read (see Solver.solve). */
export type LazyRef = () => Promise<Ref>;

/** What every op sees of the build it runs in. */
export interface JobContext {
  /** The build's ref (SolveRequest.Ref). */
  readonly id: string;
  readonly signal: AbortSignal;
  readonly progress: ProgressBus;
  /** Entitlements both granted by the daemon and requested by the client. */
  readonly entitlements: ReadonlySet<string>;
  /** The client's session for this build; rejects when it never comes or is gone. */
  session(): Promise<SessionCaller>;
  /** The build's cache imports and exports, when it asked for any. */
  readonly cache?: BuildCacheHooks;
  /** Told of every step the build solved (the build record: cached or run, and why). */
  readonly steps?: StepObserver;
  /**
   * The build's op implementations by vertex digest, shared by all its solves (a multi-platform
   * build solves once per platform): a vertex the solves have in common, such as the context both
   * platforms copy from, is transferred, resolved or downloaded once per build, as upstream's
   * shared vertices. Without it, each solve has its own.
   */
  readonly ops?: Map<string, OpImpl>;
}

export interface StepOutcome {
  digest: string;
  name: string;
  cached: boolean;
  /** Why the step ran instead of coming from the cache; empty for a cached step. */
  reason: string;
  durationMs: number;
  refs: readonly Ref[];
}

export interface StepObserver {
  step(outcome: StepOutcome): void;
  /** Whether step `digest` already ran or was found cached in this build (an earlier solve of it). */
  seen?(digest: string): boolean;
  /** A source the build read, what pinned it (an image's digest, a download's content digest), for which platform. */
  source?(identifier: string, pin: string, platform?: UtilPlatform): void;
  /** An image reference the build's frontend resolved (ResolveImageConfig), the digest it named, for which platform it asked. */
  resolvedImage?(ref: string, digest: string, platform?: UtilPlatform): void;
}

/** How the solver reaches a build's imported caches and tells its cache exporters what it used. */
export interface BuildCacheHooks {
  /**
   * Whether an imported cache holds a step output (`<key>#<index>`) the local cache lacks: if so,
   * the function that materializes it (fetches and unpacks its layers), which the solver calls
   * only when something reads the output. Rejects when an import cannot be read.
   */
  findImported(key: string): Promise<((ctx: OpContext, progressVertex?: string) => Promise<Ref>) | undefined>;
  /**
   * Imported outputs are materialized as soon as they are found: the build exports its result
   * (which then reads it) or its cache (which records every output the build used).
   */
  readonly eager?: boolean;
  /** The build imports caches (whose hits may leave a step's inputs unneeded). */
  readonly importing?: boolean;
  /** A step output this build produced or took from the cache, for cache export. */
  record(key: string, ref: Ref): void;
  /**
   * A step output whose key this build worked out, with or without its result: a cache export
   * names it by key when it does not carry its result (see buildCacheConfig).
   */
  recordKey?(key: string): void;
  /** Whether an imported cache names the output (`<key>#<index>`), by its result or by key alone. */
  knowsImported?(key: string): Promise<boolean>;
  /** The build exports its cache to a registry or a directory (not only inline). */
  readonly exporting?: boolean;
  /** What an imported cache's content keys say of `name` (a content key or a shape marker). */
  importedContentKey?(name: string): Promise<string | undefined>;
  /**
   * Every step's output is wanted (a mode=max export), also those of steps a cache hit further
   * down the graph never needed to visit: the solver records them from the local cache.
   */
  readonly wantsAll?: boolean;
}

export interface OpContext extends JobContext {
  readonly vertex: Vertex;
  /** The platform the op runs for: the op's own, else the worker's default. */
  readonly platform: Platform;
}

/**
 * One op kind's implementation. The solver computes a vertex's cache key from the op (minus its
 * inputs' digests), its inputs' keys, and `cacheKey()`; on a miss it materializes the inputs and
 * calls `run()`.
 */
export interface OpImpl {
  /**
   * Identity beyond the op definition: what the op will read that the definition does not pin
   * (an image tag's manifest digest, a local directory's content). May do I/O. '' when the
   * definition is enough.
   */
  cacheKey(ctx: OpContext): Promise<string>;
  /**
   * A source's pin for build information, after cacheKey(), when it is not cacheKey()'s value (an
   * image's is the digest its reference resolved to, an index's for a multi-platform image).
   */
  pin?(): string | undefined;
  /**
   * For each op input, the paths the op reads from it, when it reads nothing else (a copy's
   * sources); null where the whole input matters. The solver keys such inputs by those paths'
   * content, so changes elsewhere in them keep the step cached. With `wildcards`, a path holding a
   * glob character is a pattern (a wildcard copy source): only a local source's input is then keyed
   * by what the patterns match (upstream's wildcard checksum); other inputs are keyed whole.
   */
  inputSelectors?(): ContentSelector[];
  /**
   * For each op input, the paths whose content may stand for the input when the step's usual key
   * misses (upstream's content-based cache keys): a copy's sources, a read-only mount. A step whose
   * input was made again with the same content at those paths (a stage rebuilt by --no-cache, a
   * RUN changed without changing what it wrote) is then found in the cache, and so is what follows
   * it. null where the input cannot be keyed by content (the tree an action changes, the root).
   * The paths may cover more than the op reads, never less.
   * With `wildcards`, a path holding a glob character is a pattern (a wildcard copy source): what
   * it matches stands for it. A path in `patterns` is a copy source filtered by include/exclude
   * patterns: only what they keep (and the directories above it) stands for it.
   */
  contentSelectors?(): ContentSelector[];
  /** Produces the op's outputs (one per output index) from its inputs (one per Op.inputs entry). */
  run(ctx: OpContext, inputs: readonly Ref[]): Promise<Ref[]>;
}

/** See OpImpl.contentSelectors. */
export type ContentSelector = { paths: string[]; followSymlinks: boolean; wildcards?: boolean; patterns?: Record<string, PathPatterns> } | null;

/** A path's patterns: one set, or several when copies read the same path with different ones. */
export type PathPatterns = CopyPatterns | CopyPatterns[];

/** Each pattern set of a path's. */
export function patternSets(p: PathPatterns): CopyPatterns[] {
  return Array.isArray(p) ? p : [p];
}

/** A copy's include and exclude patterns, matched against paths below its source. */
export interface CopyPatterns {
  include: string[];
  exclude: string[];
  /** Paths (from the root) that something kept must be at or below (COPY --parents names them). */
  required?: string[];
}

/** A step's content key and the marker saying a build ran it on its other inputs (see Solver #byContent). */
export interface StepContentKey {
  content: string;
  shape: string;
}

export type OpResolver = (v: Vertex) => OpImpl;
