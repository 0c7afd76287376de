import { CacheKeyError, errorMessage, LoomError } from '../util/errors.js';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { readdir, rm } from 'node:fs/promises';
import { KeyedMutex } from '../util/keyed-mutex.js';
import { execSupport } from '../ops/exec-op.js';
import type { ExtraRecords } from '../cache/prune.js';
import type { CacheMounts } from '../ops/executor/mounts/cache-mounts.js';
import { MetadataStore } from '../cache/metadata.js';
import { LayerStore } from '../cache/layers.js';
import { RefManager } from '../cache/ref-manager.js';
import type { RegistryHostConfig } from '../cli/config.js';
import { ContentStore } from '../content/store.js';
import type { Exporter } from '../exporter/types.js';
import { createSnapshotter } from '../snapshot/create.js';
import { treeUsage } from '../snapshot/native/native-snapshotter.js';
import { cleanupStale } from '../ops/executor/runc/stale.js';
import { openNetworkProviders, type NetworkProviders } from '../ops/executor/network.js';
import { probeOverlay } from '../snapshot/overlay/probe.js';
import type { Snapshotter } from '../snapshot/snapshotter.js';
import type { SessionManager } from '../session/manager.js';
import { Solver, type SolveObserver } from '../solver/solver.js';
import type { Ref } from '../solver/types.js';
import { selectorDigest, selectorsExist } from '../cache/selector-digest.js';
import { log as rootLog } from '../util/log.js';
import { formatPlatform, type Platform } from '../util/platform.js';
import { createExporters } from './exporters.js';
import { createOpResolver } from './ops.js';
import { detectPlatforms, platformList, type EmulatorInfo } from './platforms.js';
import { toPbPlatform } from '../util/pb-platform.js';
import { RegistryAccess } from '../ops/source/registry-access.js';

export interface WorkerOptions {
  root: string;
  /** Overrides the detected platforms when not empty (--oci-worker-platform). */
  platforms: Platform[];
  snapshotter: string;
  registry: Record<string, RegistryHostConfig>;
  sessions: SessionManager;
  labels: Record<string, string>;
  network: string;
  /** Told of each step's outcome (metrics). */
  observe?: SolveObserver;
}

/** Everything one worker owns; `close()` releases it (the daemon calls it once, at stop). */
export interface Worker {
  id: string;
  labels: Record<string, string>;
  platforms: Platform[];
  emulators: EmulatorInfo[];
  metadata: MetadataStore;
  content: ContentStore;
  refs: RefManager;
  layers: LayerStore;
  solver: Solver;
  exporters: Map<string, Exporter>;
  registries: RegistryAccess;
  /** Records kept outside the ref index (cache mounts), for du and prune. */
  extraRecords: ExtraRecords;
  /** Removes the mirrors of clients' local directories (prune of source.local records). */
  pruneLocalMirrors(): Promise<void>;
  close(): Promise<void>;
}

export async function createWorker(o: WorkerOptions): Promise<Worker> {
  const log = rootLog.child({ sub: 'worker' });
  mkdirSync(o.root, { recursive: true });
  const id = workerId(o.root);
  // Each snapshotter keeps its own state (index, blobs, snapshots) in `runc-<name>`, as upstream's
  // OCI worker does: switching snapshotters never mixes their snapshots.
  let wanted = o.snapshotter === 'overlay' ? 'overlayfs' : o.snapshotter;
  if (wanted === 'auto') {
    // The mount helper is the runc shim's binary, built (if it must be) where the overlayfs worker's
    // executor builds it.
    const probe = await probeOverlay({ dir: join(o.root, '.probe'), helperRoot: join(o.root, 'runc-overlayfs') });
    wanted = probe.ok ? 'overlayfs' : 'native';
    if (!probe.ok) log.info({ reason: probe.reason }, 'overlayfs is not usable here; using the native snapshotter');
  }
  const snapshotter = await createSnapshotter({ root: join(o.root, `runc-${wanted}`), name: wanted });
  const state = join(o.root, `runc-${snapshotter.name}`);
  const metadata = new MetadataStore({ root: state });
  const content = new ContentStore({ root: state });
  const refs = new RefManager({ metadata, snapshotter, content });
  const layers = new LayerStore({ metadata, content, snapshotter });
  const detected = detectPlatforms();
  const platforms = o.platforms.length ? o.platforms : platformList(detected.native, detected.emulated);
  const registries = new RegistryAccess({ store: content, hosts: o.registry });
  const localMirrors = new KeyedMutex();
  // The sandbox network (bridge, or host where it cannot be set up); removes this daemon's
  // network namespaces a crashed run left.
  const networkProviders = await openNetworkProviders({ workerNet: o.network, stateRoot: state });
  const deps: WorkerDeps = { localMirrors, root: state, metadata, content, refs, layers, snapshotter, registries, sessions: o.sessions, emulators: detected.emulated, native: detected.native, network: o.network, networkProviders };
  // Upstream's words for a copy source that is not there: its content checksum is part of the key
  // (the ref named as upstream names a worker's ref, <worker id>::<ref id>).
  const keyError = (ref: Ref, err: unknown): never => {
    throw new CacheKeyError(err instanceof LoomError && err.code === 'CANCELLED' ? 'CANCELLED' : 'UNKNOWN', `failed to calculate checksum of ref ${id}::${ref.id}: ${errorMessage(err)}`, { cause: err });
  };
  const solver = new Solver({
    resolve: createOpResolver(deps),
    cache: refs,
    defaultPlatform: toPbPlatform(platforms[0] ?? detected.native),
    observe: o.observe,
    selectorDigest: (ref, paths, follow, wildcards, patterns, lazyScan) => selectorDigest(ref.dir, paths, follow, wildcards, patterns, lazyScan).catch((err: unknown) => keyError(ref, err)),
    selectorCheck: (ref, paths, follow, lazyScan, patterns) => selectorsExist(ref.dir, paths, follow, lazyScan, patterns).catch((err: unknown) => keyError(ref, err)),
  });
  const exporters = createExporters(deps);
  // Whatever a crashed daemon left half-done (containers, their mounts, active snapshots,
  // unreferenced data) goes now.
  const stale = await cleanupStale({ stateRoot: state });
  if (stale.containers.length) log.info({ containers: stale.containers }, 'removed containers left by an earlier run');
  const gc = await refs.collectGarbage();
  if (gc.snapshots || gc.blobs) log.info(gc, 'removed data left by an earlier run');
  const labels = {
    'org.mobyproject.buildkit.worker.executor': 'oci',
    'org.mobyproject.buildkit.worker.hostname': hostname(),
    // `bridge` when steps get loom's bridge network (upstream says `cni` for its CNI bridge), else `host`.
    'org.mobyproject.buildkit.worker.network': networkProviders.sandboxKind,
    'org.mobyproject.buildkit.worker.oci.process-mode': 'sandbox',
    'org.mobyproject.buildkit.worker.selinux.enabled': 'false',
    'org.mobyproject.buildkit.worker.snapshotter': snapshotter.name,
    ...o.labels,
  };
  log.debug({ id, platforms: platforms.map(formatPlatform) }, 'worker ready');
  return {
    id,
    labels,
    platforms,
    emulators: detected.emulated,
    metadata,
    content,
    refs,
    layers,
    solver,
    exporters,
    registries,
    extraRecords: cacheMountRecords(execSupport(deps).cacheMounts),
    async pruneLocalMirrors() {
      const dir = join(state, 'local-mirrors');
      const names = await readdir(dir).catch(() => [] as string[]);
      for (const n of names) {
        await localMirrors.run(join(dir, n), async () => {
          metadata.kvDelete('local-mirror', join(dir, n));
          await rm(join(dir, n), { recursive: true, force: true });
        });
      }
    },
    async close() {
      // Snapshotters that mount (overlayfs) unmount their views and end their helpers here.
      await (snapshotter as Snapshotter & { close?: () => Promise<void> }).close?.();
      await networkProviders.close();
      await registries.close();
      metadata.close();
    },
  };
}

export type WorkerDeps = {
  root: string;
  metadata: MetadataStore;
  content: ContentStore;
  refs: RefManager;
  layers: LayerStore;
  snapshotter: import('../snapshot/snapshotter.js').Snapshotter;
  registries: RegistryAccess;
  sessions: SessionManager;
  /** Serializes transfers into each local-source mirror directory (and their removal). */
  localMirrors: KeyedMutex;
  emulators: EmulatorInfo[];
  native: Platform;
  /** --oci-worker-net: the default network of sandboxed exec steps. */
  network?: string;
  /** The providers opened for `network` at start. */
  networkProviders?: NetworkProviders;
};

/** The worker's id, made once and kept in the root (upstream's `workerid` file). */
function workerId(root: string): string {
  const f = join(root, 'workerid');
  if (existsSync(f)) {
    const id = readFileSync(f, 'utf8').trim();
    if (id) return id;
  }
  const id = randomBytes(13).toString('hex').slice(0, 25);
  writeFileSync(f, id);
  return id;
}

/** Cache mounts' directories as `exec.cachemount` records (mutable, as upstream lists them). */
function cacheMountRecords(cm: CacheMounts): ExtraRecords {
  return {
    async list() {
      const recs = await cm.list();
      return Promise.all(
        recs.map(async (r) => ({
          info: {
            id: r.id,
            mutable: true,
            inUse: r.inUse,
            size: (await treeUsage(r.dir).catch(() => ({ size: 0 }))).size,
            parents: [],
            createdAt: new Date(r.createdAt),
            lastUsedAt: new Date(r.lastUsedAt),
            usageCount: 0,
            description: `cached mount with id ${r.key.split(':')[0]}`,
            recordType: 'exec.cachemount',
            shared: false,
          },
          remove: () => cm.remove(r),
        })),
      );
    },
  };
}
