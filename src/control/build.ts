import type { SolveRequest } from '../gen/buildkit/control_pb.js';
import type { Exporter, ExporterInstance, ExportSource } from '../exporter/types.js';
import { loadDefinition } from '../llb/definition.js';
import type { SessionManager } from '../session/manager.js';
import type { Solver } from '../solver/solver.js';
import type { JobContext } from '../solver/types.js';
import { CancelledError, InvalidArgumentError, LoomError, PermissionDeniedError, UnimplementedError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import { inVertex, ProgressBus } from '../util/progress.js';

const log = () => rootLog.child({ sub: 'build' });

/** Entitlements BuildKit defines; anything else a client asks for is refused by name. */
export const KNOWN_ENTITLEMENTS = new Set(['network.host', 'security.insecure']);

export interface BuildManagerOptions {
  solver: Solver;
  sessions: SessionManager;
  exporters: Map<string, Exporter>;
  /** Entitlements the daemon allows (--allow-insecure-entitlement, insecure-entitlements). */
  allowedEntitlements: ReadonlySet<string>;
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
    try {
      return await this.#solve(ref, req, ac.signal, bus);
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.#running.delete(ref);
      bus.close();
      // Keep the finished stream a moment for a Status call that arrives late.
      setTimeout(() => {
        if (this.#progress.get(ref) === bus) this.#progress.delete(ref);
      }, 30_000).unref();
    }
  }

  async #solve(ref: string, req: SolveRequest, signal: AbortSignal, bus: ProgressBus): Promise<Record<string, string>> {
    const entitlements = this.#entitlements(req.Entitlements);
    const exporters = this.#exporters(req);
    if (req.Cache?.Exports.length || req.Cache?.ExportRefDeprecated) {
      const types = req.Cache.Exports.map((e) => e.Type).join(', ') || 'registry';
      throw new UnimplementedError(`cache export (${types}) is not supported by loom yet`);
    }
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
    };
    if (req.Cache?.Imports.length) {
      for (const imp of req.Cache.Imports) {
        bus.warn({ vertex: '', level: 1, short: `cache import (${imp.Type}) is not supported by loom yet; building without it`, detail: [] });
      }
    }
    if (req.Frontend) {
      throw new InvalidArgumentError(`invalid frontend: ${req.Frontend}`);
    }
    if (!req.Definition || req.Definition.def.length === 0) {
      if (exporters.length > 0) throw new InvalidArgumentError('nothing to export: the request has no definition and no frontend');
      return {};
    }
    const def = loadDefinition(req.Definition);
    const noCache = 'no-cache' in req.FrontendAttrs;
    const solved = await this.#o.solver.solve(job, def, { noCache });
    try {
      const src: ExportSource = { ref: solved.ref, metadata: {} };
      const resp: Record<string, string> = {};
      for (const ex of exporters) {
        const out = await inVertex(bus, { name: ex.vertexName, id: `${sessionId}-export` }, (vertex) => ex.export({ job, vertex }, src));
        Object.assign(resp, out);
      }
      log().debug({ ref, cached: solved.stats.cached, run: solved.stats.run }, 'build finished');
      return resp;
    } finally {
      solved.release();
    }
  }

  #entitlements(requested: string[]): Set<string> {
    const out = new Set<string>();
    for (const e of requested) {
      if (!KNOWN_ENTITLEMENTS.has(e)) throw new InvalidArgumentError(`unknown entitlement ${e}`);
      if (!this.#o.allowedEntitlements.has(e)) {
        throw new PermissionDeniedError(`granting entitlement ${e} is not allowed by build daemon configuration`);
      }
      out.add(e);
    }
    return out;
  }

  #exporters(req: SolveRequest): ExporterInstance[] {
    const list = req.Exporters.length > 0 ? req.Exporters.map((e) => ({ type: e.Type, attrs: e.Attrs })) : req.Exporter ? [{ type: req.Exporter, attrs: req.ExporterAttrs }] : [];
    return list.map((e) => {
      const ex = this.#o.exporters.get(e.type);
      if (!ex) throw new InvalidArgumentError(`exporter ${JSON.stringify(e.type)} could not be found`);
      return ex.resolve(e.attrs);
    });
  }

  /** Cancels every running build (SIGTERM drain). */
  cancelAll(reason = 'daemon is shutting down'): void {
    for (const ac of this.#running.values()) ac.abort(new CancelledError(reason));
  }
}
