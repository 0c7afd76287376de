import { create } from '@bufbuild/protobuf';
import type { sendUnaryData, ServerDuplexStream, ServerUnaryCall, UntypedServiceImplementation } from '@grpc/grpc-js';
import { open, lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { APICapSchema } from '../gen/buildkit/caps_pb.js';
import type { Definition } from '../gen/buildkit/ops_pb.js';
import {
  EvaluateResponseSchema,
  InputsResponseSchema,
  PongResponseSchema,
  ReadDirResponseSchema,
  ReadFileResponseSchema,
  RefMapSchema,
  RefSchema,
  ResolveImageConfigResponseSchema,
  ResultSchema,
  ReturnResponseSchema,
  SolveResponseSchema,
  StatFileResponseSchema,
  WarnResponseSchema,
  type EvaluateRequest,
  type ReadDirRequest,
  type ReadFileRequest,
  type ResolveImageConfigRequest,
  type Result,
  type ReturnRequest,
  type SolveRequest as GatewaySolveRequest,
  type StatFileRequest,
  type WarnRequest,
} from '../gen/buildkit/gateway_pb.js';
import { StatSchema, type Stat } from '../gen/fsutil/stat_pb.js';
import { loadDefinition } from '../llb/definition.js';
import { goModeFromPosix } from '../session/filesync/mode.js';
import type { Solved, Solver } from '../solver/solver.js';
import type { JobContext, LazyRef, Ref } from '../solver/types.js';
import { frontendCacheImports, newCacheEntries, type CacheEntry } from '../cache/remote/build-cache.js';
import { CancelledError, InvalidArgumentError, NotFoundError, UnimplementedError } from '../util/errors.js';
import { resolveInRoot } from '../util/fs-safe.js';
import { PathFilter } from '../util/patterns.js';
import { inVertex } from '../util/progress.js';
import { fromPbPlatform } from '../util/pb-platform.js';
import { defaultPlatform, formatPlatform, type Platform } from '../util/platform.js';
import { failStream, toServiceError } from './grpc-status.js';
import { runFrontend } from './frontends.js';

/** The header naming the build a gateway call belongs to (set by BuildKit clients). */
export const BUILD_ID_HEADER = 'buildkit-controlapi-buildid';

/** What the gateway needs of the daemon beyond the build itself. */
export interface GatewayDeps {
  solver: Solver;
  /** `signal`, when given, cancels this resolve alone (the job's signal cancels every one). */
  resolveImageConfig(
    job: JobContext,
    ref: string,
    platform: ResolveImageConfigRequest['Platform'],
    mode: string,
    signal?: AbortSignal,
  ): Promise<{ digest: string; config: Uint8Array }>;
  workers(): import('../gen/buildkit/worker_pb.js').WorkerRecord[];
  /** The worker's platforms, native first. */
  platforms: import('../util/platform.js').Platform[];
}

/**
 * One build driven through the gateway: the client's build function solves definitions (each
 * result gets an id it can read files from) and finally calls Return with the build's result.
 * Refs stay held until the build ends (`release`).
 */
export class GatewayBuild {
  readonly job: JobContext;
  readonly inputs: Record<string, Definition>;
  readonly #deps: GatewayDeps;
  readonly #refs = new Map<string, Promise<Solved>>();
  readonly #releases: (() => void)[] = [];
  readonly #returned: Promise<ReturnRequest>;
  #resolveReturn!: (r: ReturnRequest) => void;
  #counter = 0;

  /** The client session the build's local sources come from. */
  readonly sessionId: string;
  /** The last frontend the client's build function asked for, and its options (build information). */
  frontendRequest: { frontend: string; attrs: Record<string, string> } | undefined;
  /** The cache imports of the build (Control.Solve's), which every solve of the build uses. */
  readonly cacheImports: readonly CacheEntry[];

  constructor(opts: { job: JobContext; inputs: Record<string, Definition>; deps: GatewayDeps; sessionId?: string; cacheImports?: readonly CacheEntry[] }) {
    this.job = opts.job;
    this.cacheImports = opts.cacheImports ?? [];
    this.sessionId = opts.sessionId ?? '';
    this.inputs = opts.inputs;
    this.#deps = opts.deps;
    this.#returned = new Promise((resolve) => (this.#resolveReturn = resolve));
  }

  /** Resolves with the client's Return, or rejects when the build is cancelled first. */
  waitReturn(): Promise<ReturnRequest> {
    return new Promise((resolve, reject) => {
      if (this.job.signal.aborted) {
        reject(new CancelledError('build cancelled before the client returned a result'));
        return;
      }
      const onAbort = () => reject(new CancelledError('build cancelled before the client returned a result'));
      this.job.signal.addEventListener('abort', onAbort, { once: true });
      void this.#returned.then((r) => {
        this.job.signal.removeEventListener('abort', onAbort);
        resolve(r);
      });
    });
  }

  returnResult(r: ReturnRequest): void {
    this.#resolveReturn(r);
  }

  async solve(def: Definition): Promise<string> {
    const id = `${this.job.id}-r${++this.#counter}`;
    const p = (async () => {
      const loaded = loadDefinition(def);
      const solved = await this.#deps.solver.solve(this.job, loaded);
      this.#releases.push(solved.release);
      return solved;
    })();
    p.catch(() => {});
    this.#refs.set(id, p);
    await p;
    return id;
  }

  /** A solved result, materialized (an output found in an imported cache is fetched and unpacked now). */
  async ref(id: string): Promise<Ref> {
    return (await this.#solved(id)).result();
  }

  /** A thunk for a solved result: what an export reads only if there is an exporter. */
  lazyRef(id: string): () => Promise<Ref> {
    const p = this.#solved(id);
    return async () => (await p).result();
  }

  #solved(id: string): Promise<Solved> {
    const p = this.#refs.get(id);
    if (!p) throw new NotFoundError(`no such ref: ${id}`);
    return p;
  }

  release(): void {
    for (const r of this.#releases.splice(0)) r();
  }
}

/** Routes gateway calls to their build by the build-id header, waiting briefly for it to register. */
export class GatewayForwarder {
  readonly #builds = new Map<string, GatewayBuild>();
  readonly #waiters = new Map<string, ((b: GatewayBuild) => void)[]>();

  register(id: string, b: GatewayBuild): () => void {
    this.#builds.set(id, b);
    for (const w of this.#waiters.get(id) ?? []) w(b);
    this.#waiters.delete(id);
    return () => {
      if (this.#builds.get(id) === b) this.#builds.delete(id);
    };
  }

  lookup(id: string, timeoutMs = 3000): Promise<GatewayBuild> {
    if (!id) return Promise.reject(new InvalidArgumentError(`no ${BUILD_ID_HEADER} header: gateway calls must name their build`));
    const b = this.#builds.get(id);
    if (b) return Promise.resolve(b);
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(id) ?? [];
      this.#waiters.set(id, list);
      const t = setTimeout(() => reject(new NotFoundError(`no such job ${id}`)), timeoutMs);
      list.push((found) => {
        clearTimeout(t);
        resolve(found);
      });
    });
  }
}

/** Frontend API caps and LLB caps loom announces in Ping: what it implements. */
const FRONTEND_CAPS = [
  'solve.base', 'solve.inlinereturn', 'resolveimage', 'resolveimage.resolvemode', 'readfile', 'return', 'returnmap',
  'readdir', 'statfile', 'importcaches', 'proto.refarray', 'reference.output', 'frontend.inputs', 'gateway.solve.metadata',
  'frontend.caps', 'gateway.solve.evaluate', 'gateway.evaluate', 'gateway.warnings',
];
const DISABLED_FRONTEND_CAPS = ['gateway.exec', 'gateway.exec.extrahosts', 'gateway.exec.signals', 'reference.attestations'];
const LLB_CAPS = [
  'source.image', 'source.image.resolvemode', 'source.image.layerlimit', 'source.local', 'source.local.unique', 'source.local.sessionid',
  'source.local.includepatterns', 'source.local.followpaths', 'source.local.excludepatterns', 'source.local.sharedkeyhint', 'source.local.differ',
  'source.git', 'source.git.keepgitdir', 'source.git.fullurl', 'source.git.httpauth', 'source.git.knownsshhosts', 'source.git.mountsshsock',
  'source.git.subdir', 'source.http', 'source.http.checksum', 'source.http.perm', 'soruce.http.uidgid', 'exec.meta.base',
  'exec.meta.cgroup.parent', 'exec.meta.network', 'exec.meta.proxyenv', 'exec.meta.security', 'exec.meta.security.devices.v1',
  'exec.meta.setsdefaultpath', 'exec.meta.ulimit', 'exec.meta.removemountstubs.recursive', 'exec.mount.bind',
  'exec.mount.bind.readwrite-nooutput', 'exec.mount.cache', 'exec.mount.cache.sharing', 'exec.mount.selector', 'exec.mount.tmpfs',
  'exec.mount.tmpfs.size', 'exec.mount.secret', 'exec.mount.ssh', 'exec.cgroup', 'exec.secretenv', 'file.base', 'file.rm.wildcard',
  'file.copy.includeexcludepatterns', 'file.rm.nofollowsymlink', 'constraints', 'platform', 'meta.ignorecache', 'meta.description',
  'meta.exportcache', 'mergeop', 'diffop', 'exporter.image.annotations', 'exporter.sourcedateepoch',
];

function caps(enabled: string[], disabled: string[] = []) {
  return [
    ...enabled.map((ID) => create(APICapSchema, { ID, Enabled: true })),
    ...disabled.map((ID) => create(APICapSchema, { ID, Enabled: false, DisabledReason: 'unsupported', DisabledReasonMsg: `${ID} is not supported by loom yet` })),
  ];
}

function buildIdOf(call: { metadata: { get(k: string): unknown[] } }): string {
  return String(call.metadata.get(BUILD_ID_HEADER)[0] ?? '');
}

/**
 * The progress vertex of an image config resolve, as upstream's bridge makes it: the digest of the
 * reference and the platform, so resolving the same image for the same platform twice in a build
 * (a named context and a FROM of one image) shows one vertex, named by the first.
 */
export function resolveVertexId(ref: string, platform: Platform | undefined): string {
  return ref + formatPlatform(platform ?? defaultPlatform());
}

/** The moby.buildkit.v1.frontend.LLBBridge handlers. */
export function gatewayHandlers(fwd: GatewayForwarder, deps: GatewayDeps): UntypedServiceImplementation {
  const unary =
    <Req, Res>(fn: (b: GatewayBuild, req: Req) => Promise<Res>) =>
    (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      fwd
        .lookup(buildIdOf(call as never))
        .then((b) => fn(b, call.request))
        .then(
          (res) => cb(null, res),
          // As the control API's Solve: upstream's gateway answers with the error's own status
          // only when it carries one (a cancelled build, an unsupported call), otherwise a plain
          // Unknown, so a frontend or buildx prints `failed to solve: <message>` with no code.
          (err) => cb(toServiceError(err, { build: true }) as never, null),
        );
    };
  return {
    ping: unary(async () =>
      create(PongResponseSchema, { FrontendAPICaps: caps(FRONTEND_CAPS, DISABLED_FRONTEND_CAPS), LLBCaps: caps(LLB_CAPS), Workers: deps.workers() }),
    ),
    solve: unary(async (b, req: GatewaySolveRequest) => {
      refuseSourcePolicies(req.SourcePolicies);
      if (req.Frontend) {
        // A client build function asking for a frontend (buildx build): run it here and hand back
        // its result for the client to Return.
        warnUnusedImports(b, [...req.CacheImports, ...frontendCacheImports(req.FrontendOpt)]);
        const out = await runFrontend(req.Frontend, b, { attrs: req.FrontendOpt, sessionId: b.sessionId, deps, platforms: deps.platforms });
        b.frontendRequest = { frontend: req.Frontend, attrs: req.FrontendOpt };
        const refOf = (id: string | undefined) => create(RefSchema, { id: id ?? '' });
        const result = out.multiPlatform
          ? create(ResultSchema, { result: { case: 'refs', value: create(RefMapSchema, { refs: Object.fromEntries(out.refs.map((r) => [r.platformId, refOf(r.id)])) }) }, metadata: out.metadata })
          : create(ResultSchema, { result: { case: 'ref', value: refOf(out.refs[0]?.id) }, metadata: out.metadata });
        return create(SolveResponseSchema, { ref: out.refs[0]?.id ?? '', result });
      }
      warnUnusedImports(b, req.CacheImports);
      if (!req.Definition || req.Definition.def.length === 0) {
        // An empty definition solves to an empty result.
        return create(SolveResponseSchema, { result: create(ResultSchema, {}) });
      }
      const id = await b.solve(req.Definition);
      if (!req.allowResultReturn) return create(SolveResponseSchema, { ref: id });
      return create(SolveResponseSchema, { ref: id, result: create(ResultSchema, { result: { case: 'ref', value: create(RefSchema, { id, def: req.Definition }) } }) });
    }),
    return: unary(async (b, req: ReturnRequest) => {
      b.returnResult(req);
      return create(ReturnResponseSchema, {});
    }),
    inputs: unary(async (b) => create(InputsResponseSchema, { Definitions: b.inputs })),
    evaluate: unary(async (b, req: EvaluateRequest) => {
      if (req.Ref) await b.ref(req.Ref);
      return create(EvaluateResponseSchema, {});
    }),
    resolveImageConfig: unary(async (b, req: ResolveImageConfigRequest) => {
      refuseSourcePolicies(req.SourcePolicies);
      const run = () => deps.resolveImageConfig(b.job, req.Ref, req.Platform, req.ResolveMode);
      const name = req.LogName || `resolve image config for ${req.Ref}`;
      const r = await inVertex(b.job.progress, { name, id: resolveVertexId(req.Ref, req.Platform ? fromPbPlatform(req.Platform) : undefined) }, run);
      return create(ResolveImageConfigResponseSchema, { Digest: r.digest, Config: r.config });
    }),
    readFile: unary(async (b, req: ReadFileRequest) => {
      const ref = await b.ref(req.Ref);
      const range = req.Range ? { offset: Number(req.Range.Offset), length: Number(req.Range.Length) } : undefined;
      return create(ReadFileResponseSchema, { Data: await readRefFile(ref.dir, req.FilePath, range, { maxBytes: 16 << 20 }) });
    }),
    readDir: unary(async (b, req: ReadDirRequest) => {
      const ref = await b.ref(req.Ref);
      const dir = await resolveInRoot(ref.dir, req.DirPath);
      const filter = req.IncludePattern ? new PathFilter({ includePatterns: [req.IncludePattern] }) : undefined;
      const entries: Stat[] = [];
      for (const name of (await readdir(dir)).sort()) {
        if (filter && filter.check(name, false).verdict !== 'include') continue;
        entries.push(await statOf(join(dir, name), name));
      }
      return create(ReadDirResponseSchema, { entries });
    }),
    statFile: unary(async (b, req: StatFileRequest) => {
      const ref = await b.ref(req.Ref);
      const p = await resolveInRoot(ref.dir, req.Path);
      return create(StatFileResponseSchema, { stat: await statOf(p, req.Path) });
    }),
    warn: unary(async (b, req: WarnRequest) => {
      b.job.progress.warn({
        vertex: req.digest,
        level: Number(req.level),
        short: Buffer.from(req.short).toString(),
        detail: req.detail.map((d) => Buffer.from(d).toString()),
        url: req.url,
      });
      return create(WarnResponseSchema, {});
    }),
    newContainer: unary(async () => {
      throw new UnimplementedError('interactive containers (NewContainer) are not supported by loom yet');
    }),
    releaseContainer: unary(async () => {
      throw new UnimplementedError('interactive containers (ReleaseContainer) are not supported by loom yet');
    }),
    execProcess(call: ServerDuplexStream<unknown, unknown>) {
      failStream(call, new UnimplementedError('interactive containers (ExecProcess) are not supported by loom yet'));
    },
  };
}

/**
 * A file of a solved result, resolved inside it (symlinks followed within the tree), optionally a
 * byte range (length 0: to the end). `maxBytes` bounds what one reply may carry.
 */
export async function readRefFile(dir: string, path: string, range?: { offset: number; length: number }, opts: { maxBytes?: number } = {}): Promise<Buffer> {
  const p = await resolveInRoot(dir, path);
  const fh = await open(p, 'r').catch((err: NodeJS.ErrnoException) => {
    // Go's words, as upstream's (which opens the file in a temporary mount of the result):
    // `open <mount>/nope/Missing.Dockerfile: no such file or directory`; the path here is the
    // file's in the result.
    throw new NotFoundError(err.code === 'ENOENT' ? `open /${path.replace(/^\/+/, '')}: no such file or directory` : `failed to read ${path}: ${err.message}`);
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`failed to read ${path}: not a regular file`);
    const off = range?.offset ?? 0;
    const len = range && range.length > 0 ? range.length : st.size - off;
    if (opts.maxBytes !== undefined && len > opts.maxBytes) {
      throw new InvalidArgumentError(`failed to read ${path}: ${len} bytes exceed the ${opts.maxBytes >> 20} MiB message limit`);
    }
    const buf = Buffer.alloc(Math.max(0, Math.min(len, st.size - off)));
    await fh.read(buf, 0, buf.length, off);
    return buf;
  } finally {
    await fh.close();
  }
}

async function statOf(p: string, name: string): Promise<Stat> {
  const st = await lstat(p).catch((err: NodeJS.ErrnoException) => {
    throw new NotFoundError(`stat ${name}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`);
  });
  return create(StatSchema, {
    path: name,
    mode: goModeFromPosix(st.mode),
    uid: st.uid,
    gid: st.gid,
    size: BigInt(st.size),
    modTime: BigInt(Math.round(st.mtimeMs * 1e6)),
    linkname: st.isSymbolicLink() ? await readlink(p) : '',
  });
}

/** A gateway Result as an export source: one ref, or one per platform with `refs.platforms`. */
/** The refs of a client's Return, as thunks (materialized only by an export that reads them). */
export function resultRefs(b: GatewayBuild, r: Result): { ref?: LazyRef; refs?: { id: string; ref: LazyRef }[] } {
  switch (r.result.case) {
    case 'ref':
      return r.result.value.id ? { ref: b.lazyRef(r.result.value.id) } : {};
    case 'refDeprecated':
      return r.result.value ? { ref: b.lazyRef(r.result.value) } : {};
    case 'refs': {
      const out: { id: string; ref: LazyRef }[] = [];
      for (const [id, ref] of Object.entries(r.result.value.refs)) out.push({ id, ref: b.lazyRef(ref.id) });
      return { refs: out };
    }
    case 'refsDeprecated': {
      const out: { id: string; ref: LazyRef }[] = [];
      for (const [id, ref] of Object.entries(r.result.value.refs)) out.push({ id, ref: b.lazyRef(ref) });
      return { refs: out };
    }
    default:
      return {};
  }
}

/**
 * A gateway solve's cache imports (and its frontend's cache options) are used only where the
 * build's own request names them too, as buildctl and buildx always do: loom imports for the
 * whole build when it starts. Any others are said to be unused rather than silently dropped.
 */
function warnUnusedImports(b: GatewayBuild, imports: readonly CacheEntry[]): void {
  const unused = newCacheEntries(b.cacheImports, imports);
  if (unused.length === 0) return;
  const names = unused.map((e) => (e.Type === 'registry' ? e.Attrs.ref : e.Type) ?? e.Type).join(', ');
  b.job.progress.warn({
    vertex: '',
    level: 1,
    short: `cache imports named only in a gateway solve are not used by loom (${names}); name them in the build request (--import-cache, --cache-from)`,
    detail: [],
  });
}

/** Source policies are refused rather than ignored: their deny rules would silently not apply. */
export function refuseSourcePolicies(policies: readonly { rules: readonly unknown[] }[]): void {
  if (policies.some((p) => p.rules.length > 0)) throw new UnimplementedError('source policies are not supported by loom yet');
}
