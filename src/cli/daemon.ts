import { fromPbPlatform, toPbPlatform } from '../util/pb-platform.js';
import { BuildManager } from '../control/build.js';
import { BuildRecords } from '../control/build-records.js';
import { inspectHandlers } from '../control/inspect.js';
import type { ControlBackend } from '../control/controller.js';
import { ControlServer } from '../control/server.js';
import { workerRecord } from '../control/controller.js';
import { GatewayForwarder, gatewayHandlers, type GatewayDeps } from '../control/gateway.js';
import { diskSpaceBytes, resolveGCPolicy, type DiskSpace, type GCPolicyConfig } from './config.js';
import { diskUsage, prune, type CacheView } from '../cache/prune.js';
import { GarbageCollector, policyPruneOptions } from '../cache/gc.js';
import { LinkedUsage } from '../cache/linked-usage.js';
import type { PruneOptions, UsageInfo } from '../control/types.js';
import { statfsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { statfs } from 'node:fs/promises';
import { SessionManager } from '../session/manager.js';
import { log as rootLog } from '../util/log.js';
import type { DaemonSettings } from './buildkitd.js';
import { RootLock } from './root-lock.js';
import { versionInfo } from './version.js';
import { daemonMetrics, type DaemonMetrics } from '../util/metrics.js';
import { createServer } from 'node:http';
import { InvalidArgumentError } from '../util/errors.js';
import { createWorker, type Worker } from '../worker/worker.js';
import { formatPlatform, parsePlatform } from '../util/platform.js';

export interface RunningDaemon {
  addresses: string[];
  worker: Worker;
  stop(): Promise<void>;
}

/**
 * Wires the daemon: lock the root, open the worker (stores, snapshotter, ops, exporters), serve
 * the control API. `stop()` drains: running builds are cancelled, listeners closed, sockets removed.
 */
export async function startDaemon(s: DaemonSettings): Promise<RunningDaemon> {
  const log = rootLog.child({ sub: 'daemon' });
  const lock = RootLock.acquire(s.root);
  let worker: Worker | undefined;
  let server: ControlServer | undefined;
  let debug: { address: string; close(): void } | undefined;
  let gc: GarbageCollector | undefined;
  try {
    const sessions = new SessionManager();
    const metrics = daemonMetrics();
    worker = await createWorker({
      observe: { step: (o) => (o === 'cached' ? metrics.stepsCached() : metrics.stepsRun()) },
      root: s.root,
      platforms: s.platforms.map((p) => parsePlatform(p)),
      snapshotter: s.snapshotter,
      registry: s.registry,
      sessions,
      labels: s.labels,
      network: s.network,
    });
    // Sizes given as a share of the disk are of the file system holding the state directory.
    const total = diskTotal(s.root);
    const gcPolicy = s.gcPolicy?.length ? s.gcPolicy.map((p) => resolveGCPolicy(p, total)) : defaultGCPolicy({ keepStorage: s.gcKeepStorage, ...s.gcSpace }, total);
    const w = worker;
    const cache: CacheView = { refs: w.refs, extra: w.extraRecords, linked: new LinkedUsage({ snapshotter: w.refs.snapshotter }) };
    // Start times of the builds running now. A record a build created or looked up since it began
    // may be about to be held by it: prune (client or GC) leaves those until the build ends.
    const buildStarts = new Map<symbol, number>();
    const protect = (u: UsageInfo): boolean => {
      if (buildStarts.size === 0) return false;
      const oldest = Math.min(...buildStarts.values());
      return Math.max(u.createdAt.getTime(), u.lastUsedAt?.getTime() ?? 0) >= oldest;
    };
    // One code path for the client's Prune and the GC: records, then the local mirrors of removed
    // local sources (they hold the same files through hard links).
    const pruneCache = async (opts: PruneOptions, sweepAlways = true): Promise<UsageInfo[]> => {
      // min-free-space is about the file system the state lives on.
      if (opts.minFreeSpace) {
        const st = await statfs(s.root);
        opts = { ...opts, freeBytes: Number(st.bavail) * Number(st.bsize) };
      }
      const removed = await prune(cache, opts, { idle: builds.runningCount === 0, protect, sweepAlways });
      const everything =
        opts.all && opts.keepBytes === 0 && !opts.maxUsedSpace && !opts.minFreeSpace && opts.keepDurationMs === 0 && opts.filters.every((f) => f.trim() === '');
      if (everything || removed.some((u) => u.recordType === 'source.local')) await w.pruneLocalMirrors();
      return removed;
    };
    const gcRuns = metrics.registry.counter('loom_gc_runs_total', 'Runs of the GC policies (at start and after builds).');
    gc = new GarbageCollector({
      policies: s.gc ? gcPolicy.map(policyPruneOptions) : [],
      prune: (policy) => pruneCache(policy, false),
      onRun: (r) => {
        gcRuns();
        if (r.removed.length === 0) return;
        metrics.pruneRuns();
        metrics.pruneBytes(r.bytes);
      },
    });
    const collector = gc;
    const version = versionInfo();
    const forwarder = new GatewayForwarder();
    const gatewayDeps: GatewayDeps = {
      solver: w.solver,
      platforms: w.platforms,
      workers: () => backend.workers().map((x) => workerRecord(x, version)),
      resolveImageConfig: async (job, ref, platform, mode, signal) => {
        const img = await w.registries.forJob(job).resolve(ref, {
          platform: platform ? fromPbPlatform(platform) : w.platforms[0],
          signal: signal ? AbortSignal.any([job.signal, signal]) : job.signal,
        });
        void mode;
        // As upstream: the digest of what the reference names (the index for a multi-platform image).
        // The build info lists the reference as the frontend asked for it (upstream's provenance).
        job.steps?.resolvedImage?.(ref, img.rootDescriptor.digest, platform ? fromPbPlatform(platform) : undefined);
        return { digest: img.rootDescriptor.digest, config: img.configBytes };
      },
    };
    const records = new BuildRecords({ kv: w.metadata, sizeOf: (id) => w.metadata.getRef(id)?.size ?? 0, logsDir: join(s.root, 'history') });
    const builds = new BuildManager({
      solver: worker.solver,
      sessions,
      exporters: worker.exporters,
      allowedEntitlements: s.entitlements,
      forwarder,
      gateway: gatewayDeps,
      platforms: w.platforms,
      records,
      remoteCache: { refs: w.refs, layers: w.layers, content: w.content, metadata: w.metadata, registries: w.registries, defaultPlatform: w.platforms[0]! },
      onBuildEnd: (failed) => {
        metrics.builds();
        if (failed) metrics.buildsFailed();
        collector.trigger();
      },
    });
    const backend: ControlBackend = {
      version,
      sessions,
      workers: () => [
        {
          id: w.id,
          labels: w.labels,
          platforms: w.platforms.map(toPbPlatform),
          gcPolicy: s.gc ? gcPolicy : [],
        },
      ],
      progress: (ref) => builds.progress(ref),
      solve: async (req, signal) => {
        const token = Symbol('build');
        buildStarts.set(token, Date.now());
        try {
          return await builds.solve(req, signal);
        } finally {
          buildStarts.delete(token);
        }
      },
      history: records,
      diskUsage: (filters) => diskUsage(cache, filters),
      prune: async (opts, onRecord) => {
        const removed = await pruneCache(opts);
        metrics.pruneRuns();
        metrics.pruneBytes(removed.reduce((n, u) => n + u.size, 0));
        for (const u of removed) onRecord(u);
      },
    };
    server = new ControlServer({ backend, gateway: gatewayHandlers(forwarder, gatewayDeps), inspect: inspectHandlers(records) });
    const addresses: string[] = [];
    for (const a of s.addrs) addresses.push(await server.listen(a, { tls: s.tls, gid: s.gid }));
    metrics.registry.gauge('loom_cache_bytes', 'Bytes held by cache records (du total).', async () => (await diskUsage(cache, [])).reduce((n, u) => n + u.size, 0));
    metrics.registry.gauge('loom_cache_records', 'Cache records (du entries).', async () => (await diskUsage(cache, [])).length);
    metrics.registry.gauge('loom_builds_running', 'Builds running now.', () => builds.runningCount);
    debug = s.debugAddr ? await startDebugServer(s.debugAddr, metrics) : undefined;
    log.info({ addresses, root: s.root, platforms: w.platforms.map(formatPlatform), version: version.version, debugAddr: debug?.address }, 'running server');
    // As upstream: one run shortly after start (a cache left over its budget comes back under).
    collector.trigger();
    const srv = server;
    return {
      addresses,
      worker: w,
      async stop() {
        debug?.close();
        builds.cancelAll();
        await srv.close(5000);
        // No GC run may touch the stores once they are closed.
        await collector.close();
        await w.close();
        lock.release();
        log.info('stopped');
      },
    };
  } catch (err) {
    debug?.close();
    server?.forceClose();
    await gc?.close();
    await worker?.close();
    lock.release();
    throw err;
  }
}

/** The default GC policies' limits: buildkitd.toml's worker-level keys and --oci-worker-gc-keepstorage. */
export interface GCDefaults {
  keepStorage?: DiskSpace;
  reservedSpace?: DiskSpace;
  maxUsedSpace?: DiskSpace;
  minFreeSpace?: DiskSpace;
}

/**
 * Upstream's default GC policies for a file system of `total` bytes (0: unknown).
 *
 * With any of the v0.17+ worker keys (reservedSpace, maxUsedSpace, minFreeSpace), upstream v0.17's
 * defaults: local sources, cache mounts and git checkouts over 512 MB unused for 48 h, then
 * everything unused for 60 days, then unshared records, then all, each within those limits.
 *
 * Otherwise upstream v0.11's, whose cap is gckeepstorage, or a tenth of the disk rounded up to whole
 * GB (2 GB when the size is unknown), as its DetectDefaultGCCap. Their first policy is kept
 * verbatim: its filter ANDs three type terms, so it matches no record (ListWorkers shows it the
 * same way).
 */
export function defaultGCPolicy(d: GCDefaults, total: number): GCPolicyConfig[] {
  const reclaimable = 'type==source.local,type==exec.cachemount,type==source.git.checkout';
  if (d.reservedSpace || d.maxUsedSpace || d.minFreeSpace) {
    const limits = { keepBytes: diskSpaceBytes(d.reservedSpace, total), maxUsedSpace: diskSpaceBytes(d.maxUsedSpace, total), minFreeSpace: diskSpaceBytes(d.minFreeSpace, total) };
    return [
      { filters: [reclaimable], keepDuration: 48 * 3600, keepBytes: 0, maxUsedSpace: 512e6, minFreeSpace: 0, all: false },
      { filters: [], keepDuration: 60 * 24 * 3600, ...limits, all: false },
      { filters: [], keepDuration: 0, ...limits, all: false },
      { filters: [], keepDuration: 0, ...limits, all: true },
    ];
  }
  const keep = diskSpaceBytes(d.keepStorage, total);
  // A tenth of the disk, whole GB rounded up (2 GB when unknown): DetectDefaultGCCap, the same sum as a "10%" DiskSpace.
  const cap = keep > 0 ? keep : diskSpaceBytes({ percent: 10 }, total);
  return [
    { filters: [reclaimable], keepDuration: 48 * 3600, keepBytes: 512e6, all: false },
    { filters: [], keepDuration: 60 * 24 * 3600, keepBytes: cap, all: false },
    { filters: [], keepDuration: 0, keepBytes: cap, all: false },
    { filters: [], keepDuration: 0, keepBytes: cap, all: true },
  ];
}

/** The size of the file system holding `root` (or its nearest existing parent); 0 when unknown. */
export function diskTotal(root: string | undefined): number {
  let dir = root;
  while (dir) {
    try {
      const st = statfsSync(dir);
      return st.bsize * st.blocks;
    } catch {
      const parent = dirname(dir);
      if (parent === dir) break;
      dir = parent;
    }
  }
  return 0;
}

/**
 * `--debugaddr host:port`: an HTTP server with Prometheus text at /metrics. Bind it to loopback
 * unless you mean to expose it.
 */
async function startDebugServer(addr: string, metrics: DaemonMetrics): Promise<{ address: string; close(): void }> {
  const m = /^(?:tcp:\/\/)?(\[[^\]]+\]|[^:]*):(\d+)$/.exec(addr);
  if (!m) throw new InvalidArgumentError(`invalid --debugaddr ${JSON.stringify(addr)}: expected host:port`);
  const host = m[1]!.replace(/^\[|\]$/g, '') || '127.0.0.1';
  const server = createServer((req, res) => {
    if (req.url === '/metrics' || req.url?.startsWith('/metrics?')) {
      metrics.registry.render().then(
        (text) => {
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
          res.end(text);
        },
        (err: Error) => {
          res.writeHead(500);
          res.end(err.message);
        },
      );
      return;
    }
    res.writeHead(404);
    res.end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(m[2]), host, () => resolve());
  });
  const a = server.address() as { address: string; port: number };
  return { address: `${a.address}:${a.port}`, close: () => server.close() };
}
