import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import type { Snapshotter } from '../snapshot/snapshotter.js';
import type { ResultCache } from '../solver/solver.js';
import type { Ref, StepContentKey } from '../solver/types.js';
import { NotFoundError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import type { ContentStore } from '../content/store.js';
import type { LayerPair, MetadataStore, RefRecord } from './metadata.js';

const log = () => rootLog.child({ sub: 'cache' });

/** Upstream's record types, which `du` shows and prune filters match. */
export type RecordType = 'regular' | 'source.local' | 'source.git.checkout' | 'exec.cachemount' | 'frontend' | 'internal';

export interface UsageEntry {
  record: RefRecord;
  inUse: boolean;
  /**
   * Upstream's shared: the record backs an image in the worker's image store (never, here: loom
   * keeps no image store, as upstream's OCI worker, whose records never show shared).
   */
  shared: boolean;
  /**
   * Another record holds the same snapshot (one image's layers pulled for two platforms) and is
   * charged for it: this one frees nothing alone, so it counts no bytes (upstream lists such an
   * equal record once).
   */
  duplicate?: boolean;
}

export function newId(): string {
  // 25 lower-case base-36 characters, the shape of upstream's record ids.
  const b = randomBytes(16);
  let n = BigInt('0x' + b.toString('hex'));
  let s = '';
  while (s.length < 25) {
    s += (n % 36n).toString(36);
    n /= 36n;
  }
  return s;
}

/**
 * Refs over snapshots, indexed in SQLite. Implements the solver's ResultCache. A ref is "in use"
 * while a build holds it; prune never removes those.
 *
 * Ownership: a writable snapshot from `prepare` belongs to the caller until `commit` (which makes
 * it a ref) or `discard`. Refs are released by prune only.
 */
export class RefManager implements ResultCache {
  readonly #md: MetadataStore;
  readonly #snap: Snapshotter;
  readonly #content: ContentStore;
  readonly #holds = new Map<string, number>();

  constructor(opts: { metadata: MetadataStore; snapshotter: Snapshotter; content: ContentStore }) {
    this.#md = opts.metadata;
    this.#snap = opts.snapshotter;
    this.#content = opts.content;
  }

  get snapshotter(): Snapshotter {
    return this.#snap;
  }

  /** A writable snapshot starting as a copy of `parent` (or empty). */
  async prepare(parent: Ref | null, opts: { signal?: AbortSignal; parentSnapshot?: string | null } = {}): Promise<Writable> {
    const key = newId();
    this.#activeKeys.add(key);
    const parentKey = parent?.snapshot ?? opts.parentSnapshot ?? null;
    try {
      const dir = await this.#snap.prepare(key, parentKey, { signal: opts.signal });
      return new Writable({ manager: this, key, dir, parent, parentKey, onDone: () => this.#activeKeys.delete(key) });
    } catch (err) {
      this.#activeKeys.delete(key);
      throw err;
    }
  }

  /**
   * On a snapshotter that can (overlay), an active snapshot on committed snapshot `parent` whose
   * own layer directory the caller writes directly, unmounted (see Snapshotter.prepareLayer);
   * null elsewhere. `dir` is that layer directory.
   */
  async prepareLayer(parent: string, opts: { signal?: AbortSignal } = {}): Promise<Writable | null> {
    if (!this.#snap.prepareLayer) return null;
    const key = newId();
    this.#activeKeys.add(key);
    try {
      const dir = await this.#snap.prepareLayer(key, parent, { signal: opts.signal });
      if (dir === null) {
        this.#activeKeys.delete(key);
        return null;
      }
      return new Writable({ manager: this, key, dir, parent: null, parentKey: parent, onDone: () => this.#activeKeys.delete(key) });
    } catch (err) {
      this.#activeKeys.delete(key);
      throw err;
    }
  }

  /**
   * Snapshots being made right now (by prepare, or by an op that makes its own): GC leaves them
   * and their parents alone. Returns the release function.
   */
  protect(keys: readonly string[]): () => void {
    for (const k of keys) this.#activeKeys.add(k);
    return () => {
      for (const k of keys) this.#activeKeys.delete(k);
    };
  }

  readonly #activeKeys = new Set<string>();

  /** Turns committed snapshot `key` into a ref. `chain` defaults to parent's chain plus this diff. */
  async createRef(opts: {
    snapshot: string;
    parent: Ref | null;
    /** The snapshot's parent when it is not `parent`'s (a merge standing on its inputs' base). */
    parentSnapshot?: string | null;
    chain?: LayerPair[];
    description: string;
    recordType?: RecordType;
    /** The snapshot's usage in bytes, when the caller knows it without a walk (see usage()). */
    size?: number;
  }): Promise<Ref> {
    const chain = opts.chain ?? [...(opts.parent?.chain ?? []), { lower: opts.parent?.snapshot ?? null, upper: opts.snapshot }];
    const rec: RefRecord = {
      id: newId(),
      snapshot: opts.snapshot,
      chain,
      description: opts.description,
      recordType: opts.recordType ?? 'regular',
      createdAt: Date.now(),
      lastUsedAt: Date.now(),
      usageCount: 1,
      size: opts.size ?? 0,
      parents: opts.parent ? [opts.parent.id] : [],
    };
    this.#md.transaction(() => {
      this.#md.putSnapshot(opts.snapshot, opts.parentSnapshot ?? opts.parent?.snapshot ?? null);
      this.#md.putRef(rec);
    });
    if (opts.size !== undefined) return this.#toRef(rec);
    // The size (a walk of the snapshot's own files) is not on the step's path: it is measured
    // meanwhile, and du, prune and GC wait for it (sizesSettled).
    const sized = this.#snap
      .usage(opts.snapshot)
      .then((u) => this.#md.setRefSize(rec.id, u.size))
      .catch(() => undefined)
      .finally(() => this.#sizing.delete(rec.id));
    this.#sizing.set(rec.id, sized);
    return this.#toRef(rec);
  }

  readonly #sizing = new Map<string, Promise<void>>();

  /** Resolves once every record made so far has its size (see createRef). */
  async sizesSettled(): Promise<void> {
    while (this.#sizing.size) await Promise.all([...this.#sizing.values()]);
  }

  recordSnapshot(key: string, parent: string | null): void {
    this.#md.putSnapshot(key, parent);
  }

  async get(id: string): Promise<Ref> {
    const rec = this.#md.getRef(id);
    if (!rec) throw new NotFoundError(`cache record ${id} not found`);
    // A record taken up again (an image or a context already there) is a use: GC, which spares
    // what running builds used lately, must not pick it before the build holds it.
    this.#md.touchRef(id);
    return this.#toRef(rec);
  }

  async #toRef(rec: RefRecord): Promise<Ref> {
    return { id: rec.id, snapshot: rec.snapshot, chain: rec.chain, dir: await this.#snap.dir(rec.snapshot) };
  }

  async lookup(key: string): Promise<Ref | undefined> {
    const id = this.#md.lookupCacheKey(key);
    if (!id) return undefined;
    const rec = this.#md.getRef(id);
    if (!rec) return undefined;
    this.#md.touchRef(id);
    return this.#toRef(rec);
  }

  save(key: string, ref: Ref): void {
    this.#md.putCacheKey(key, ref.id);
  }

  readonly stepHistory = {
    get: (identity: string) => this.#md.kvGet('step-history', identity),
    put: (identity: string, value: string) => this.#md.kvPut('step-history', identity, value),
  };

  /**
   * The solver's content keys (see Solver #byContent): a content key -> the step key it stands
   * for, a shape marker -> "1", and by step key (`of`) the step's own content key and shape, for
   * cache exports.
   */
  readonly contentKeys = {
    get: (contentKey: string) => this.#md.kvGet('content-key', contentKey),
    put: (contentKey: string, key: string) => this.#md.kvPut('content-key', contentKey, key),
    of: (stepKey: string): StepContentKey | undefined => {
      const v = this.#md.kvGet('content-key', `of:${stepKey}`);
      if (!v) return undefined;
      const [content, shape] = JSON.parse(v) as [string, string];
      return { content, shape };
    },
    putOf: (stepKey: string, c: StepContentKey) => this.#md.kvPut('content-key', `of:${stepKey}`, JSON.stringify([c.content, c.shape])),
  };

  hold(refs: readonly Ref[]): () => void {
    for (const r of refs) this.#holds.set(r.id, (this.#holds.get(r.id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const r of refs) {
        const n = (this.#holds.get(r.id) ?? 1) - 1;
        if (n <= 0) this.#holds.delete(r.id);
        else this.#holds.set(r.id, n);
      }
    };
  }

  readonly #blobLeases = new Map<string, number>();

  /** Keeps blobs from GC while an operation (a pull, an export) still needs them. */
  leaseBlobs(digests: readonly string[]): () => void {
    for (const d of digests) this.#blobLeases.set(d, (this.#blobLeases.get(d) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const d of digests) {
        const n = (this.#blobLeases.get(d) ?? 1) - 1;
        if (n <= 0) this.#blobLeases.delete(d);
        else this.#blobLeases.set(d, n);
      }
    };
  }

  inUse(id: string): boolean {
    return this.#holds.has(id);
  }

  usage(): UsageEntry[] {
    const recs = this.#md.refs();
    // Of the records holding one snapshot, the most recently used is charged for it.
    const charged = new Map<string, RefRecord>();
    const recency = (r: RefRecord) => r.lastUsedAt ?? r.createdAt;
    for (const r of recs) {
      const c = charged.get(r.snapshot);
      if (!c || recency(r) > recency(c)) charged.set(r.snapshot, r);
    }
    return recs.map((record) => ({ record, inUse: this.inUse(record.id), shared: false, duplicate: charged.get(record.snapshot) !== record }));
  }

  /**
   * Deletes the records chosen by `select` (never one in use), then every snapshot and layer blob
   * no remaining record needs. Returns what was removed.
   */
  async prune(select: (entries: UsageEntry[]) => UsageEntry[], gc: { minBlobAgeMs: number } = { minBlobAgeMs: 60_000 }): Promise<UsageEntry[]> {
    await this.sizesSettled();
    const candidates = this.usage().filter((e) => !e.inUse);
    const victims = select(candidates).filter((e) => !this.inUse(e.record.id));
    this.#md.transaction(() => {
      for (const v of victims) this.#md.deleteRef(v.record.id);
    });
    await this.collectGarbage(gc);
    return victims;
  }

  /** Removes snapshots and blobs that no ref reaches. Pointers go first, then the data. */
  async collectGarbage(opts: { minBlobAgeMs: number } = { minBlobAgeMs: 60_000 }): Promise<{ snapshots: number; blobs: number }> {
    const all = await this.#snap.list();
    // The snapshotter knows every snapshot's parent, including intermediates the index never saw.
    const parentOf = new Map(all.map((s) => [s.key, s.parent] as const));
    const live = new Set<string>();
    const markChain = (key: string | null) => {
      for (let k = key; k && !live.has(k); k = parentOf.get(k) ?? null) live.add(k);
    };
    for (const r of this.#md.refs()) {
      markChain(r.snapshot);
      for (const p of r.chain) {
        markChain(p.lower);
        markChain(p.upper);
      }
    }
    for (const k of this.#activeKeys) markChain(k);
    const dead = all.filter((s) => !live.has(s.key));
    // Children before parents: a snapshot cannot go while another names it as parent.
    const depth = (k: string): number => {
      let d = 0;
      for (let p = parentOf.get(k); p; p = parentOf.get(p)) d++;
      return d;
    };
    dead.sort((a, b) => depth(b.key) - depth(a.key));
    const liveBlobs = new Set<string>();
    for (const l of this.#md.layerBlobs()) {
      const isLive = live.has(l.upper) && (l.lower === null || live.has(l.lower));
      if (isLive) liveBlobs.add(l.digest);
    }
    for (const s of dead) this.#md.deleteSnapshot(s.key);
    let removed = 0;
    for (const s of dead) {
      try {
        await this.#snap.remove(s.key);
        removed++;
      } catch (err) {
        log().warn({ snapshot: s.key, err: (err as Error).message }, 'failed to remove snapshot');
      }
    }
    // Every blob no live layer needs goes, except those a running operation holds (leases):
    // manifests and configs are written fresh by each pull or export.
    // A blob committed a moment ago may not be recorded yet: young blobs wait for the next pass.
    let blobs = 0;
    const young = Date.now() - opts.minBlobAgeMs;
    for (const b of await this.#content.list()) {
      if (liveBlobs.has(b.digest) || this.#blobLeases.has(b.digest)) continue;
      const mtime = await stat(this.#content.path(b.digest)).then((st) => st.mtimeMs, () => 0);
      if (mtime > young) continue;
      if (await this.#content.delete(b.digest)) blobs++;
    }
    return { snapshots: removed, blobs };
  }
}

/** A snapshot being written; becomes a ref on commit, or is removed on discard. */
export class Writable {
  readonly key: string;
  readonly dir: string;
  readonly parent: Ref | null;
  readonly #m: RefManager;
  #done = false;

  readonly #onDone: () => void;
  readonly #parentKey: string | null;

  constructor(opts: { manager: RefManager; key: string; dir: string; parent: Ref | null; parentKey?: string | null; onDone: () => void }) {
    this.#onDone = opts.onDone;
    this.#parentKey = opts.parentKey ?? null;
    this.#m = opts.manager;
    this.key = opts.key;
    this.dir = opts.dir;
    this.parent = opts.parent;
  }

  async commit(opts: { description: string; recordType?: RecordType; chain?: LayerPair[]; size?: number }): Promise<Ref> {
    this.#done = true;
    try {
      await this.#m.snapshotter.commit(this.key);
      return await this.#m.createRef({ snapshot: this.key, parent: this.parent, ...opts });
    } finally {
      this.#onDone();
    }
  }

  /** Commits the snapshot without making a ref (a layer of a chain another ref will name). */
  async commitSnapshot(): Promise<string> {
    this.#done = true;
    try {
      await this.#m.snapshotter.commit(this.key);
      this.#m.recordSnapshot(this.key, this.parent?.snapshot ?? this.#parentKey);
      return this.key;
    } finally {
      this.#onDone();
    }
  }

  async discard(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#m.snapshotter.remove(this.key).catch(() => {});
    this.#onDone();
  }
}
