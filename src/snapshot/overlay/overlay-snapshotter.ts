import { chmodSync, mkdirSync, renameSync, rmdirSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError, LoomError, NotFoundError, throwIfAborted } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import type { Change } from '../layer/change.js';
import { treeUsage } from '../native/native-snapshotter.js';
import { KEY_RE, type SnapshotInfo, type Snapshotter, type SnapshotUsage } from '../snapshotter.js';
import { MAX_OVERLAY_LOWERS, Mounter, readMountInfo, type OverlayMountSpec } from './mounter.js';
import { probeOverlay, type OverlayFeatures } from './probe.js';
import { upperChanges } from './upper-changes.js';

const log = rootLog.child({ sub: 'snapshot' });

/**
 * Snapshots as overlayfs layers, containerd's layout: `<root>/overlayfs/snapshots/<id>/` holds
 * `fs` (the snapshot's own layer: the upper while active, a lower of its children once committed),
 * `work` (overlay's work dir) and `info.json` (key, parent, kind). Ids are short (base 36 of a
 * counter) and the mount helper runs in `snapshots/`, so a lowerdir entry is `12/fs`: a chain of
 * ~450 layers fits the kernel's one-page option limit, and overlay allows 500 anyway. (The other
 * way out, flattening long chains into a copy, is not needed below that and is not done.)
 *
 * What `dir()` answers:
 * - no parent: `fs` itself, no mount (a single layer is its own tree);
 * - active with a parent: `merged`, an overlay of the parent's chain with `fs` as upper, mounted by
 *   prepare() and unmounted by commit() (a layer stays mounted as an upper only while it is
 *   written: mounting it as a lower elsewhere meanwhile is what the kernel warns about);
 * - committed with a parent: `view`, a read-only overlay of `fs` and the parent's chain, mounted
 *   at the first dir() and kept until remove().
 * So a path got while active stops being valid at commit (call dir() again); every other path
 * stays valid until the snapshot is removed.
 *
 * Crash safety: a snapshot exists once its `info.json` is written (atomically, last); a directory
 * without one is debris. `cleanup()` at start unmounts everything under the root that a dead
 * daemon left mounted and removes debris. One instance per root at a time: the index of snapshots
 * and the set of mounts are kept in memory.
 */
export interface OverlaySnapshotterOptions {
  /** The state directory; snapshots go under `<root>/overlayfs`. */
  root: string;
  /** From probeOverlay(); probed at first use when absent. */
  features?: OverlayFeatures;
  /** Where the mount helper is built if it must be (shim-binary.ts); default `root`, the worker's state, where its executor builds the same binary. */
  helperRoot?: string;
}

interface Record extends SnapshotInfo {
  id: string;
}

export class OverlaySnapshotter implements Snapshotter {
  readonly name = 'overlayfs';
  readonly #base: string;
  readonly #snapDir: string;
  readonly #mounter: Mounter;
  readonly #helperRoot: string;
  #features: OverlayFeatures | undefined;
  #ready: Promise<void> | null = null;
  readonly #index = new Map<string, Record>();
  /** Keys being prepared: taken, but not yet visible. */
  readonly #claimed = new Set<string>();
  /** Mount points mounted now, and mounts under way. */
  readonly #mounted = new Set<string>();
  readonly #mounting = new Map<string, Promise<void>>();
  #nextId = 0;

  constructor(opts: OverlaySnapshotterOptions) {
    this.#base = path.join(path.resolve(opts.root), 'overlayfs');
    this.#snapDir = path.join(this.#base, 'snapshots');
    this.#helperRoot = path.resolve(opts.helperRoot ?? opts.root);
    this.#mounter = new Mounter({ cwd: this.#snapDir, stateRoot: this.#helperRoot });
    this.#features = opts.features;
  }

  /** Loads the index from disk and learns what is mounted already. */
  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await mkdir(this.#snapDir, { recursive: true });
      if (!this.#features) {
        const probe = await probeOverlay({ dir: this.#base, helperRoot: this.#helperRoot });
        if (!probe.ok) throw new LoomError('FAILED_PRECONDITION', `overlayfs does not work on ${this.#base}: ${probe.reason}`);
        this.#features = probe.features;
      }
      for (const id of await readdir(this.#snapDir)) {
        const n = parseInt(id, 36);
        if (Number.isFinite(n) && n >= this.#nextId) this.#nextId = n + 1;
        const rec = await this.#readRecord(id);
        if (!rec) continue;
        const other = this.#index.get(rec.key);
        if (other) {
          log.warn({ key: rec.key, ids: [other.id, id] }, 'two snapshots claim one key; keeping the first');
          continue;
        }
        this.#index.set(rec.key, rec);
      }
      for (const m of await readMountInfo()) {
        if (m.mountPoint.startsWith(this.#snapDir + '/')) this.#mounted.add(m.mountPoint);
      }
    })();
    return this.#ready;
  }

  async #readRecord(id: string): Promise<Record | null> {
    try {
      const rec = JSON.parse(await readFile(path.join(this.#snapDir, id, 'info.json'), 'utf8')) as Record;
      return { ...rec, id };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw new LoomError('INTERNAL', `unreadable snapshot metadata in ${path.join(this.#snapDir, id)}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Synchronous, as the other metadata calls of prepare and commit (see prepare). */
  #writeRecord(rec: Record): void {
    const dir = path.join(this.#snapDir, rec.id);
    const tmp = path.join(dir, 'info.json.tmp');
    writeFileSync(tmp, JSON.stringify(rec));
    renameSync(tmp, path.join(dir, 'info.json'));
  }

  async #get(key: string): Promise<Record> {
    if (!KEY_RE.test(key)) throw new InvalidArgumentError(`invalid snapshot key ${JSON.stringify(key)}`);
    await this.#init();
    const rec = this.#index.get(key);
    if (!rec) throw new NotFoundError(`snapshot ${key} not found`);
    return rec;
  }

  /** Ids of the layers of `rec`'s tree, most recent first. */
  #chain(rec: Record): string[] {
    const ids: string[] = [];
    for (let r: Record | null = rec; r; ) {
      ids.push(r.id);
      if (!r.parent) break;
      const p = this.#index.get(r.parent);
      if (!p) throw new LoomError('INTERNAL', `snapshot ${r.key} names parent ${r.parent}, which does not exist`);
      r = p;
    }
    return ids;
  }

  #path(id: string, ...parts: string[]): string {
    return path.join(this.#snapDir, id, ...parts);
  }

  async prepare(key: string, parent?: string | null, opts: { signal?: AbortSignal } = {}): Promise<string> {
    return this.#prepare(key, parent ?? null, true, opts.signal);
  }

  /**
   * An active snapshot on `parent` whose own layer is written directly, in overlay's on-disk form
   * (whiteouts, opaque directories), not through a mount: returns that layer's directory, or null
   * when the upper alone cannot be trusted here (no readable trusted.* xattrs). A merge builds its
   * snapshot this way, as upstream's on overlay: the inputs' common base stays a lower, the rest
   * is linked in. Nothing may mount it before commit().
   */
  async prepareLayer(key: string, parent: string, opts: { signal?: AbortSignal } = {}): Promise<string | null> {
    await this.#init();
    if (!this.#features!.upperDiff) return null;
    await this.#prepare(key, parent, false, opts.signal);
    return this.upperDir(key);
  }

  async #prepare(key: string, parent: string | null, mount: boolean, signal: AbortSignal | undefined): Promise<string> {
    if (!KEY_RE.test(key)) throw new InvalidArgumentError(`invalid snapshot key ${JSON.stringify(key)}`);
    await this.#init();
    let lowers: string[] = [];
    if (parent) {
      const prec = await this.#get(parent);
      if (prec.kind !== 'committed') {
        throw new LoomError('FAILED_PRECONDITION', `snapshot ${parent} is not committed: cannot prepare ${key} from it`);
      }
      lowers = this.#chain(prec);
      if (lowers.length > MAX_OVERLAY_LOWERS - 1) {
        throw new LoomError('FAILED_PRECONDITION', `cannot prepare ${key} from ${parent}: its ${lowers.length} layers exceed overlayfs's limit of ${MAX_OVERLAY_LOWERS - 1}`);
      }
    }
    if (this.#index.has(key) || this.#claimed.has(key)) throw new LoomError('ALREADY_EXISTS', `snapshot ${key} already exists`);
    throwIfAborted(signal);
    this.#claimed.add(key);
    let id = '';
    try {
      // A step's snapshot is made before it runs: a few directory and file calls made
      // synchronously (each awaited through the thread pool cost more than the call itself).
      for (;;) {
        id = (this.#nextId++).toString(36);
        try {
          mkdirSync(this.#path(id));
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
      }
      mkdirSync(this.#path(id, 'fs'));
      chmodSync(this.#path(id, 'fs'), 0o755);
      mkdirSync(this.#path(id, 'work'));
      let dir = this.#path(id, 'fs');
      if (lowers.length > 0 && mount) {
        dir = this.#path(id, 'merged');
        mkdirSync(dir);
        await this.#mount({ target: dir, lower: lowers.map((l) => `${l}/fs`), upper: `${id}/fs`, work: `${id}/work` });
      }
      const rec: Record = { key, parent: parent ?? null, kind: 'active', createdAt: Date.now(), committedAt: null, id };
      this.#writeRecord(rec);
      this.#index.set(key, rec);
      return dir;
    } catch (err) {
      if (id) await this.#destroy(id).catch(() => undefined);
      throw err;
    } finally {
      this.#claimed.delete(key);
    }
  }

  async commit(key: string): Promise<void> {
    const rec = await this.#get(key);
    if (rec.kind === 'committed') throw new LoomError('FAILED_PRECONDITION', `snapshot ${key} is already committed`);
    // The writer is done: the layer stops being an upper before anyone mounts it as a lower.
    await this.#unmount(this.#path(rec.id, 'merged'));
    try {
      rmdirSync(this.#path(rec.id, 'merged'));
    } catch {
      /* no merged directory: a snapshot without parent */
    }
    const done: Record = { ...rec, kind: 'committed', committedAt: Date.now() };
    this.#writeRecord(done);
    this.#index.set(key, done);
  }

  async dir(key: string): Promise<string> {
    const rec = await this.#get(key);
    if (!rec.parent) return this.#path(rec.id, 'fs');
    const chain = this.#chain(rec);
    if (rec.kind === 'active') {
      const target = this.#path(rec.id, 'merged');
      await mkdir(target, { recursive: true });
      await this.#mount({ target, lower: chain.slice(1).map((l) => `${l}/fs`), upper: `${rec.id}/fs`, work: `${rec.id}/work` });
      return target;
    }
    const target = this.#path(rec.id, 'view');
    await mkdir(target, { recursive: true });
    await this.#mount({ target, lower: chain.map((l) => `${l}/fs`) });
    return target;
  }

  /** The snapshot's own layer: what changes() lists lives there, and what usage() counts. */
  async upperDir(key: string): Promise<string> {
    const rec = await this.#get(key);
    return this.#path(rec.id, 'fs');
  }

  async stat(key: string): Promise<SnapshotInfo> {
    return info(await this.#get(key));
  }

  async remove(key: string): Promise<void> {
    const rec = await this.#get(key);
    const children = [...this.#index.values()].filter((s) => s.parent === key).map((s) => s.key);
    if (children.length > 0) {
      throw new LoomError('FAILED_PRECONDITION', `snapshot ${key} is the parent of ${children.join(', ')}`);
    }
    await this.#unmount(this.#path(rec.id, 'merged'));
    await this.#unmount(this.#path(rec.id, 'view'));
    // Metadata first: a half-removed tree is then debris, never a snapshot.
    await rm(this.#path(rec.id, 'info.json'));
    this.#index.delete(key);
    await this.#destroy(rec.id);
  }

  async usage(key: string): Promise<SnapshotUsage> {
    // A snapshot costs its own layer; the parents' layers are counted by the parents.
    return treeUsage(await this.upperDir(key));
  }

  async list(): Promise<SnapshotInfo[]> {
    await this.#init();
    return [...this.#index.values()].map(info);
  }

  async changes(key: string): Promise<Change[] | null> {
    const rec = await this.#get(key);
    if (!this.#features!.upperDiff) return null;
    const baseDir = rec.parent ? await this.dir(rec.parent) : null;
    return upperChanges({ upperDir: this.#path(rec.id, 'fs'), baseDir });
  }

  /**
   * At start only: unmounts what a dead daemon left mounted under the root (deepest first; a busy
   * mount is detached), removes directories without metadata, and the probe's leftovers. Active
   * snapshots stay (the cache's GC decides about them); their views are mounted again on demand.
   */
  async cleanup(): Promise<void> {
    await this.#init();
    const mounts = (await readMountInfo())
      .filter((m) => m.mountPoint.startsWith(this.#base + '/'))
      .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
    for (const m of mounts) {
      log.info({ mountPoint: m.mountPoint }, 'unmounting a mount left by an earlier run');
      await this.#unmount(m.mountPoint, true);
    }
    this.#mounted.clear();
    const live = new Map([...this.#index.values()].map((r) => [r.id, r] as const));
    for (const id of await readdir(this.#snapDir)) {
      const rec = live.get(id);
      if (rec) {
        if (rec.kind === 'committed') await rmdir(this.#path(id, 'merged')).catch(() => undefined);
        continue;
      }
      log.info({ dir: this.#path(id) }, 'removing incomplete snapshot');
      await this.#destroy(id);
    }
    for (const n of await readdir(this.#base)) {
      if (n.startsWith('probe-')) await rm(path.join(this.#base, n), { recursive: true, force: true });
    }
  }

  /**
   * Unmounts every view this instance mounted and ends the mount helper: for a daemon's stop and
   * for tests. Snapshots stay; a new instance mounts again on demand.
   */
  async close(): Promise<void> {
    const all = [...this.#mounting.values()];
    await Promise.allSettled(all);
    for (const m of [...this.#mounted].sort((a, b) => b.length - a.length)) await this.#unmount(m, true).catch(() => undefined);
    this.#mounter.close();
  }

  /** Mounts `spec.target` once; concurrent callers share the mount. */
  async #mount(spec: Omit<OverlayMountSpec, 'options'>): Promise<void> {
    if (this.#mounted.has(spec.target)) return;
    let p = this.#mounting.get(spec.target);
    if (!p) {
      p = this.#mounter
        .mountOverlay({ ...spec, options: this.#features!.options })
        .then(() => {
          this.#mounted.add(spec.target);
        })
        .finally(() => this.#mounting.delete(spec.target));
      this.#mounting.set(spec.target, p);
    }
    await p;
  }

  /** Unmounts if mounted; a busy mount is detached (with a warning) rather than left behind. */
  async #unmount(target: string, force = false): Promise<void> {
    if (!force && !this.#mounted.has(target)) {
      const inflight = this.#mounting.get(target);
      if (!inflight) return;
      await inflight.catch(() => undefined);
      if (!this.#mounted.has(target)) return;
    }
    try {
      await this.#mounter.unmount(target);
    } catch (err) {
      log.warn({ target, err: (err as Error).message }, 'unmount failed; detaching the mount instead');
      await this.#mounter.unmount(target, { detach: true });
    }
    this.#mounted.delete(target);
  }

  /**
   * Deletes a snapshot directory. Whatever is still mounted below it goes first (detached if
   * busy): a recursive delete must never walk into a mount.
   */
  async #destroy(id: string): Promise<void> {
    const dir = this.#path(id);
    const mounts = (await readMountInfo())
      .map((m) => m.mountPoint)
      .filter((m) => m.startsWith(dir + '/'))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) await this.#unmount(m, true);
    await rm(dir, { recursive: true, force: true });
  }
}

function info(rec: Record): SnapshotInfo {
  return { key: rec.key, parent: rec.parent, kind: rec.kind, createdAt: rec.createdAt, committedAt: rec.committedAt };
}
