import type { SolveRequest } from '../gen/buildkit/control_pb.js';
import type { Exporter, ExporterInstance, ExportSource } from '../exporter/types.js';
import { listedPlatforms } from '../exporter/commit.js';
import { buildInfoAttrs, buildInfoSources, buildInfoValue, type PlatformScope } from './build-info.js';
import { fromPbPlatform } from '../util/pb-platform.js';
import { loadDefinition } from '../llb/definition.js';
import type { SessionManager } from '../session/manager.js';
import type { Solver } from '../solver/solver.js';
import type { JobContext, LazyRef, Ref } from '../solver/types.js';
import { BuildCache, frontendCacheImports, newCacheEntries, type CacheEntry, type RemoteCacheDeps } from '../cache/remote/build-cache.js';
import { BuildRecorder, type BuildRecords } from './build-records.js';
import { bytes } from '../client/progress/format.js';
import { CancelledError, codeOf, errorMessage, withStatusDetails, InvalidArgumentError, LoomError, UnimplementedError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import { inVertex, ProgressBus } from '../util/progress.js';
import { sha256 } from '../util/digest.js';
import { GatewayBuild, refuseSourcePolicies, resultRefs, type GatewayDeps, type GatewayForwarder } from './gateway.js';
import { parsePlatform, type Platform } from '../util/platform.js';
import { FRONTENDS, runFrontend } from './frontends.js';
import { toPbPlatform } from '../util/pb-platform.js';
import { GRPC_CODE_NAMES, loomCodeOfGrpc } from '../session/tunnel/grpc-status.js';
import { withFrontendEpoch } from '../exporter/epoch.js';

const log = () => rootLog.child({ sub: 'build' });

/** Entitlements BuildKit defines; anything else a client asks for is refused by name. */
export const KNOWN_ENTITLEMENTS = new Set(['network.host', 'security.insecure']);

export interface BuildManagerOptions {
  solver: Solver;
  sessions: SessionManager;
  exporters: Map<string, Exporter>;
  /** Entitlements the daemon allows (--allow-insecure-entitlement, insecure-entitlements). */
  allowedEntitlements: ReadonlySet<string>;
  forwarder: GatewayForwarder;
  gateway: GatewayDeps;
  /** The worker's platforms, native first (frontends' build platform and default target). */
  platforms: Platform[];
  /** Told when a build ends, and whether it failed (metrics). */
  onBuildEnd?: (failed: boolean) => void;
  /** Where finished builds are recorded (steps cached or run, and why). */
  records?: BuildRecords;
  /** What cache imports and exports need (absent: a request asking for them is refused). */
  remoteCache?: RemoteCacheDeps;
  /** How long a build waits for the client's session to appear. */
  sessionTimeoutMs?: number;
}

/**
 * Runs builds: checks the request, solves the definition, exports the result, and owns each
 * build's progress stream. Every build gets its own AbortSignal; `shutdown()` cancels them all.
 */
export class BuildManager {
  readonly #o: BuildManagerOptions;
  readonly #progress = new Map<string, ProgressBus>();
  readonly #running = new Map<string, AbortController>();

  constructor(opts: BuildManagerOptions) {
    this.#o = opts;
  }

  progress(ref: string): ProgressBus {
    let bus = this.#progress.get(ref);
    if (!bus && !this.#running.has(ref)) {
      // A build that completed a while ago: its progress as its record kept it, as upstream's
      // Status replays a build record's logs (`docker buildx history logs`).
      const kept = this.#o.records?.logsOf(ref);
      if (kept) {
        const replay = new ProgressBus();
        for (const ev of kept) replay.write(ev);
        replay.close();
        return replay;
      }
    }
    if (!bus) {
      bus = new ProgressBus();
      this.#progress.set(ref, bus);
      // A Status call for a build that never starts must not pin memory forever.
      const timer = setTimeout(() => {
        if (!this.#running.has(ref) && this.#progress.get(ref) === bus) {
          bus!.close();
          this.#progress.delete(ref);
        }
      }, 10 * 60_000);
      timer.unref();
    }
    return bus;
  }

  get runningCount(): number {
    return this.#running.size;
  }

  async solve(req: SolveRequest, signal: AbortSignal): Promise<Record<string, string>> {
    const ref = req.Ref || `loom-${Date.now().toString(36)}`;
    if (this.#running.has(ref)) throw new LoomError('ALREADY_EXISTS', `build ${ref} is already running`);
    const ac = new AbortController();
    const onAbort = () => ac.abort(signal.reason ?? new CancelledError());
    signal.addEventListener('abort', onAbort, { once: true });
    this.#running.set(ref, ac);
    const bus = this.progress(ref);
    const recorder = this.#o.records?.begin(ref, req.Frontend, {
      internal: req.Internal,
      frontendAttrs: { ...req.FrontendAttrs },
      exporters: requestExporters(req).map((e) => ({ type: e.type, attrs: { ...e.attrs } })),
    });
    let failed = true;
    let error: string | undefined;
    let errorCode: string | undefined;
    let resp: Record<string, string> | undefined;
    try {
      resp = await this.#solve(ref, req, ac.signal, bus, recorder);
      failed = false;
      return resp;
    } catch (err) {
      error = errorMessage(err);
      errorCode = codeOf(err);
      throw err;
    } finally {
      if (failed) {
        // As upstream's solver: when one step fails, the steps still running (another stage's)
        // are cancelled rather than left to finish for nobody, and show as CANCELED.
        if (!ac.signal.aborted) ac.abort(new CancelledError('context canceled'));
        bus.cancelOpen();
      }
      try {
        const vertices = bus.vertexCounts(new Set(recorder?.summaryVertex ? [recorder.summaryVertex] : []));
        recorder?.finish(failed ? (error ?? 'failed') : undefined, resp, errorCode, { events: bus.kept(), vertices });
      } catch (err) {
        log().warn({ ref, err: errorMessage(err) }, 'could not save the build record');
      }
      this.#o.onBuildEnd?.(failed);
      signal.removeEventListener('abort', onAbort);
      this.#running.delete(ref);
      bus.close();
      // Keep the finished stream a moment for a Status call that arrives late.
      setTimeout(() => {
        if (this.#progress.get(ref) === bus) this.#progress.delete(ref);
      }, 30_000).unref();
    }
  }

  async #solve(ref: string, req: SolveRequest, signal: AbortSignal, bus: ProgressBus, recorder: BuildRecorder | undefined): Promise<Record<string, string>> {
    // What loom cannot honour is refused rather than ignored.
    refuseSourcePolicies(req.SourcePolicy ? [req.SourcePolicy] : []);
    if (req.SourcePolicySession) throw new UnimplementedError('source policies are not supported by loom yet');
    if (req.EnableSessionExporter) throw new UnimplementedError('exporters chosen by the client through the session (EnableSessionExporter) are not supported by loom yet');
    const entitlements = this.#entitlements(req.Entitlements);
    const exporters = this.#exporters(req);
    const entries = cacheEntries(req);
    // A frontend's own cache options import too (upstream's frontend passes them to its solves).
    if (req.Frontend) entries.imports.push(...newCacheEntries(entries.imports, frontendCacheImports(req.FrontendAttrs)));
    if (!this.#o.remoteCache && (entries.imports.length || entries.exports.length)) throw new UnimplementedError('this daemon has no cache import or export');
    const cache = this.#o.remoteCache ? BuildCache.fromRequest(this.#o.remoteCache, entries, exporters.length > 0) : undefined;
    const sessionId = req.Session;
    const job: JobContext = {
      id: ref,
      signal,
      progress: bus,
      entitlements,
      session: () => {
        if (!sessionId) return Promise.reject(new InvalidArgumentError('this build needs a client session but the request named none'));
        return this.#o.sessions.get(sessionId, { signal, timeoutMs: this.#o.sessionTimeoutMs });
      },
      cache,
      steps: recorder,
      ops: new Map(),
    };
    cache?.start(job);
    if (req.Frontend) {
      if (!FRONTENDS.has(req.Frontend)) throw new InvalidArgumentError(`invalid frontend: ${req.Frontend}`);
      return this.#frontendBuild(req, job, exporters);
    }
    // `no-cache` is the frontend's (upstream's daemon does not read it): buildctl marks the steps of
    // a definition itself, and a gateway client passes it to the frontend it calls.
    if (!req.Definition || req.Definition.def.length === 0) {
      // No definition and no frontend: the client runs the build function itself and drives this
      // build through the gateway API (buildctl build, buildx build), ending with Return.
      return this.#gatewayBuild(ref, req, job, exporters, entries.imports);
    }
    const def = loadDefinition(req.Definition);
    const solved = await this.#o.solver.solve(job, def);
    try {
      const resp = await this.#export(job, exporters, { ref: () => solved.result(), metadata: {} }, sessionId, { attrs: req.FrontendAttrs });
      log().debug({ ref, cached: solved.stats.cached, run: solved.stats.run }, 'build finished');
      return resp;
    } finally {
      solved.release();
    }
  }

  async #gatewayBuild(ref: string, req: SolveRequest, job: JobContext, exporters: ExporterInstance[], cacheImports: readonly CacheEntry[]): Promise<Record<string, string>> {
    const b = new GatewayBuild({ job, inputs: req.FrontendInputs, deps: this.#o.gateway, sessionId: req.Session, cacheImports });
    const unregister = this.#o.forwarder.register(ref, b);
    try {
      const ret = await b.waitReturn();
      if (ret.error && ret.error.code !== 0) {
        // The client formats a non-Unknown status as "Code: message" before returning it: keep the
        // message once, or clients print the code twice.
        const code = loomCodeOfGrpc(ret.error.code);
        const name = GRPC_CODE_NAMES[ret.error.code];
        const msg = name && ret.error.message.startsWith(`${name}: `) ? ret.error.message.slice(name.length + 2) : ret.error.message;
        // Its details (the Dockerfile lines of the error, as errdefs.Source) go back with it.
        throw withStatusDetails(new LoomError(code, msg || `build function failed with code ${ret.error.code}`), ret.error.details.map((d) => ({ typeUrl: d.typeUrl, value: d.value })));
      }
      const result = ret.result;
      const metadata: Record<string, Uint8Array> = { ...(result?.metadata ?? {}) };
      const refs = result ? resultRefs(b, result) : {};
      const src: LazySource = { ref: refs.ref, metadata };
      if (refs.refs) src.refs = withPlatforms(refs.refs, metadata);
      const fr = b.frontendRequest;
      return await this.#export(job, exporters, src, req.Session, fr ? { frontend: fr.frontend, attrs: fr.attrs } : {});
    } finally {
      unregister();
      b.release();
    }
  }

  /** A frontend named in the request (dockerfile.v0) turns its attributes and the client's files into the result. */
  async #frontendBuild(req: SolveRequest, job: JobContext, exporters: ExporterInstance[]): Promise<Record<string, string>> {
    // The frontend marks the ops of `no-cache` stages itself: no global no-cache here.
    const b = new GatewayBuild({ job, inputs: req.FrontendInputs, deps: this.#o.gateway, sessionId: req.Session });
    try {
      const out = await runFrontend(req.Frontend, b, { attrs: req.FrontendAttrs, sessionId: req.Session, deps: this.#o.gateway, platforms: this.#o.platforms });
      const src: LazySource = { metadata: out.metadata };
      if (out.multiPlatform) src.refs = out.refs.map((r) => ({ id: r.platformId, platform: toPbPlatform(r.platform), ref: b.lazyRef(r.id) }));
      else if (out.refs[0]) src.ref = b.lazyRef(out.refs[0].id);
      return await this.#export(job, exporters, src, req.Session, { frontend: req.Frontend, attrs: req.FrontendAttrs });
    } finally {
      b.release();
    }
  }

  /**
   * Exports the build's result. Its refs are materialized only when an exporter or a cache export
   * reads them: a build that exports nothing leaves an imported cache's layers where they are.
   */
  async #export(
    job: JobContext,
    exporters: ExporterInstance[],
    lazy: LazySource,
    sessionId: string,
    origin: { frontend?: string; attrs?: Record<string, string> },
  ): Promise<Record<string, string>> {
    const resp: Record<string, string> = {};
    const cache = job.cache instanceof BuildCache ? job.cache : undefined;
    const src: ExportSource = { metadata: lazy.metadata };
    if (exporters.length > 0 || cache?.exporting) {
      if (lazy.ref) src.ref = await lazy.ref();
      if (lazy.refs) src.refs = await Promise.all(lazy.refs.map(async (r) => ({ id: r.id, platform: r.platform, ref: await r.ref() })));
    }
    if (cache?.hasInline) src.inlineCache = (ref, layers) => cache.inlineConfig(ref, layers);
    for (const [i, ex] of exporters.entries()) {
      const out = await inVertex(job.progress, { name: ex.vertexName, id: `${sessionId}-export-${i}` }, (vertex) => ex.export({ job, vertex, exporterId: i }, src));
      Object.assign(resp, out);
    }
    // Build information for each exported result, as upstream's solver adds it to the response.
    const info = (scope?: PlatformScope): string =>
      buildInfoValue({
        frontend: origin.frontend,
        attrs: origin.attrs && buildInfoAttrs(origin.attrs),
        sources: job.steps instanceof BuildRecorder ? buildInfoSources(job.steps.sources, job.steps.resolvedImages, scope) : [],
      });
    if (lazy.refs?.length) {
      const platforms = lazy.refs.map((r) => fromPbPlatform(r.platform));
      lazy.refs.forEach((r, i) => (resp[`containerimage.buildinfo/${r.id}`] = info({ platforms, current: platforms[i]! })));
    } else if (lazy.ref) resp['containerimage.buildinfo'] = info();
    if (cache) {
      const finals = [src.ref, ...(src.refs ?? []).map((r) => r.ref)].filter((r): r is Ref => r !== undefined);
      Object.assign(resp, await cache.export(job, finals));
    }
    if (job.steps instanceof BuildRecorder) {
      // The per-build cache summary, as a vertex of its own so every client shows it.
      const s = job.steps.summary();
      const name = `cache summary: ${s.stepsCached} steps cached, ${s.stepsRun} run, ${bytes(s.bytesReused)} reused`;
      // Started and completed in one event: the status pacer then shows it after a quick last
      // step whose output it still holds (clients number steps in the order they print them).
      const now = new Date();
      job.steps.summaryVertex = sha256(`${job.id}-summary`);
      job.progress.vertex({ digest: job.steps.summaryVertex, inputs: [], name, started: now, completed: now });
    }
    return resp;
  }

  #entitlements(requested: string[]): Set<string> {
    const out = new Set<string>();
    for (const e of requested) {
      if (!KNOWN_ENTITLEMENTS.has(e)) throw new InvalidArgumentError(`unknown entitlement ${e}`);
      if (!this.#o.allowedEntitlements.has(e)) {
        // A plain error upstream (gRPC Unknown): clients print it with no code.
        throw new LoomError('UNKNOWN', `granting entitlement ${e} is not allowed by build daemon configuration`);
      }
      out.add(e);
    }
    return out;
  }

  #exporters(req: SolveRequest): ExporterInstance[] {
    return requestExporters(req).map((e) => {
      const ex = this.#o.exporters.get(e.type);
      if (!ex) throw new InvalidArgumentError(`exporter ${JSON.stringify(e.type)} could not be found`);
      return ex.resolve(withFrontendEpoch(e.attrs, req.FrontendAttrs));
    });
  }

  /** Cancels every running build (SIGTERM drain). */
  cancelAll(reason = 'daemon is shutting down'): void {
    for (const ac of this.#running.values()) ac.abort(new CancelledError(reason));
  }
}

/** A build's result before export: its refs as thunks (see #export). */
interface LazySource {
  ref?: LazyRef;
  refs?: { id: string; platform: NonNullable<ExportSource['refs']>[number]['platform']; ref: LazyRef }[];
  metadata: Record<string, Uint8Array>;
}

/**
 * Pairs a multi-platform result's refs with their platforms from the `refs.platforms` metadata
 * (`{"Platforms":[{"ID":"linux/arm64","Platform":{...}}]}`), in that order; ids not listed there
 * are parsed as platform strings.
 */
function withPlatforms(refs: { id: string; ref: LazyRef }[], md: Record<string, Uint8Array>): NonNullable<LazySource['refs']> {
  const listed = listedPlatforms(md);
  const byId = new Map(refs.map((r) => [r.id, r.ref]));
  const out: NonNullable<LazySource['refs']> = [];
  for (const p of listed) {
    const ref = byId.get(p.id);
    if (!ref) throw new InvalidArgumentError(`refs.platforms names ${p.id}, which the result does not have`);
    out.push({ id: p.id, platform: toPbPlatform(p.platform), ref });
    byId.delete(p.id);
  }
  for (const [id, ref] of byId) out.push({ id, platform: toPbPlatform(parsePlatform(id)), ref });
  return out;
}

/** The request's exporters: the list (BuildKit v0.13 and later clients) or the single exporter of older ones. */
function requestExporters(req: SolveRequest): { type: string; attrs: Record<string, string> }[] {
  if (req.Exporters.length > 0) return req.Exporters.map((e) => ({ type: e.Type, attrs: e.Attrs }));
  return req.Exporter ? [{ type: req.Exporter, attrs: req.ExporterAttrs }] : [];
}

/** The request's cache imports and exports, the deprecated single-ref fields included. */
function cacheEntries(req: SolveRequest): { imports: CacheEntry[]; exports: CacheEntry[] } {
  const c = req.Cache;
  if (!c) return { imports: [], exports: [] };
  const exports: CacheEntry[] = c.Exports.map((e) => ({ Type: e.Type, Attrs: { ...e.Attrs } }));
  if (c.ExportRefDeprecated) exports.push({ Type: 'registry', Attrs: { ...c.ExportAttrsDeprecated, ref: c.ExportRefDeprecated } });
  const imports: CacheEntry[] = c.Imports.map((e) => ({ Type: e.Type, Attrs: { ...e.Attrs } }));
  for (const ref of c.ImportRefsDeprecated) imports.push({ Type: 'registry', Attrs: { ref } });
  return { imports, exports };
}
