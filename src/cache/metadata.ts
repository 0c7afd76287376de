import Database from 'better-sqlite3';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { log } from '../util/log.js';

/**
 * The daemon's metadata index: refs, their snapshots and layer chains, cache keys, layer blobs and
 * leases, in one SQLite database under --root (WAL, statements prepared once, schema versioned).
 *
 * Blobs and snapshot trees live on disk (content/, snapshot/); this index only points at them.
 * Every write that adds a pointer happens after the thing pointed at is complete on disk, and every
 * delete removes the pointer before the thing, so a crash never leaves a record naming a missing
 * blob or snapshot.
 */

export const SCHEMA_VERSION = 1;

export interface LayerPair {
  lower: string | null;
  upper: string;
}

export interface RefRecord {
  id: string;
  snapshot: string;
  chain: LayerPair[];
  description: string;
  recordType: string;
  createdAt: number;
  lastUsedAt: number | null;
  usageCount: number;
  size: number;
  /** Parent ref ids, for `du -v`. */
  parents: string[];
}

export interface LayerBlobRecord {
  lower: string | null;
  upper: string;
  compression: string;
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
  key TEXT PRIMARY KEY,
  parent TEXT,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
  id TEXT PRIMARY KEY,
  snapshot TEXT NOT NULL REFERENCES snapshots(key),
  chain TEXT NOT NULL,
  description TEXT NOT NULL,
  record_type TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  last_used_at INTEGER,
  usage_count INTEGER NOT NULL DEFAULT 0,
  size INTEGER NOT NULL DEFAULT 0,
  parents TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS cache_keys (
  key TEXT PRIMARY KEY,
  ref_id TEXT NOT NULL REFERENCES refs(id) ON DELETE CASCADE,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_keys_ref ON cache_keys(ref_id);
CREATE INDEX IF NOT EXISTS refs_snapshot ON refs(snapshot);
CREATE TABLE IF NOT EXISTS layer_blobs (
  lower TEXT NOT NULL,
  upper TEXT NOT NULL,
  compression TEXT NOT NULL,
  digest TEXT NOT NULL,
  diff_id TEXT NOT NULL,
  size INTEGER NOT NULL,
  media_type TEXT NOT NULL,
  PRIMARY KEY (lower, upper, compression)
);
CREATE INDEX IF NOT EXISTS layer_blobs_digest ON layer_blobs(digest);
CREATE TABLE IF NOT EXISTS leases (
  id TEXT PRIMARY KEY,
  created_at INTEGER NOT NULL,
  expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS lease_resources (
  lease TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  resource TEXT NOT NULL,
  PRIMARY KEY (lease, kind, resource)
);
CREATE TABLE IF NOT EXISTS kv (
  ns TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (ns, key)
);
`;

type Row = Record<string, unknown>;

export class MetadataStore {
  readonly db: Database.Database;
  readonly #stmts: ReturnType<MetadataStore['prepare']>;

  constructor(opts: { root: string }) {
    mkdirSync(opts.root, { recursive: true });
    const file = join(opts.root, 'metadata.db');
    this.db = openChecked(file);
    this.db.exec(SCHEMA);
    const v = this.db.prepare('SELECT value FROM meta WHERE key = ?').get('schema') as Row | undefined;
    if (!v) this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema', String(SCHEMA_VERSION));
    this.#stmts = this.prepare();
  }

  private prepare() {
    const db = this.db;
    return {
      putSnapshot: db.prepare('INSERT OR IGNORE INTO snapshots (key, parent, created_at) VALUES (?, ?, ?)'),
      getSnapshot: db.prepare('SELECT key, parent FROM snapshots WHERE key = ?'),
      snapshotCreated: db.prepare('SELECT created_at FROM snapshots WHERE key = ?'),
      firstRefOf: db.prepare('SELECT description, created_at FROM refs WHERE snapshot = ? ORDER BY created_at, rowid LIMIT 1'),
      delSnapshot: db.prepare('DELETE FROM snapshots WHERE key = ?'),
      allSnapshots: db.prepare('SELECT key, parent FROM snapshots'),
      putRef: db.prepare(
        `INSERT INTO refs (id, snapshot, chain, description, record_type, created_at, last_used_at, usage_count, size, parents)
         VALUES (@id, @snapshot, @chain, @description, @recordType, @createdAt, @lastUsedAt, @usageCount, @size, @parents)`,
      ),
      getRef: db.prepare('SELECT * FROM refs WHERE id = ?'),
      allRefs: db.prepare('SELECT * FROM refs'),
      delRef: db.prepare('DELETE FROM refs WHERE id = ?'),
      touchRef: db.prepare('UPDATE refs SET last_used_at = ?, usage_count = usage_count + 1 WHERE id = ?'),
      setRefSize: db.prepare('UPDATE refs SET size = ? WHERE id = ?'),
      putKey: db.prepare('INSERT OR REPLACE INTO cache_keys (key, ref_id, created_at) VALUES (?, ?, ?)'),
      getKey: db.prepare('SELECT ref_id FROM cache_keys WHERE key = ?'),
      putLayer: db.prepare(
        `INSERT OR REPLACE INTO layer_blobs (lower, upper, compression, digest, diff_id, size, media_type)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      getLayer: db.prepare('SELECT * FROM layer_blobs WHERE lower = ? AND upper = ? AND compression = ?'),
      getLayers: db.prepare('SELECT * FROM layer_blobs WHERE lower = ? AND upper = ? ORDER BY rowid'),
      allLayers: db.prepare('SELECT * FROM layer_blobs'),
      delLayersOf: db.prepare('DELETE FROM layer_blobs WHERE upper = ? OR lower = ?'),
      getKv: db.prepare('SELECT value FROM kv WHERE ns = ? AND key = ?'),
      putKv: db.prepare('INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?, ?, ?)'),
      delKv: db.prepare('DELETE FROM kv WHERE ns = ? AND key = ?'),
      allKv: db.prepare('SELECT key, value FROM kv WHERE ns = ?'),
    };
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  putSnapshot(key: string, parent: string | null): void {
    this.#stmts.putSnapshot.run(key, parent, Date.now());
  }

  hasSnapshot(key: string): boolean {
    return this.#stmts.getSnapshot.get(key) !== undefined;
  }

  /**
   * Where a snapshot came from, for the image history of the layer it ends: the first ref made
   * of it (its description and creation time, as upstream's layer refs carry them), else the
   * snapshot's own creation time.
   */
  snapshotOrigin(key: string): { description?: string; createdAt?: number } {
    const ref = this.#stmts.firstRefOf.get(key) as Row | undefined;
    if (ref) return { description: String(ref.description), createdAt: Number(ref.created_at) };
    const snap = this.#stmts.snapshotCreated.get(key) as Row | undefined;
    return snap ? { createdAt: Number(snap.created_at) } : {};
  }

  snapshots(): { key: string; parent: string | null }[] {
    return this.#stmts.allSnapshots.all() as { key: string; parent: string | null }[];
  }

  deleteSnapshot(key: string): void {
    this.#stmts.delLayersOf.run(key, key);
    this.#stmts.delSnapshot.run(key);
  }

  putRef(r: RefRecord): void {
    this.#stmts.putRef.run({
      ...r,
      chain: JSON.stringify(r.chain),
      parents: JSON.stringify(r.parents),
    });
  }

  getRef(id: string): RefRecord | undefined {
    const row = this.#stmts.getRef.get(id) as Row | undefined;
    return row ? toRef(row) : undefined;
  }

  refs(): RefRecord[] {
    return (this.#stmts.allRefs.all() as Row[]).map(toRef);
  }

  deleteRef(id: string): void {
    this.#stmts.delRef.run(id);
  }

  touchRef(id: string): void {
    this.#stmts.touchRef.run(Date.now(), id);
  }

  setRefSize(id: string, size: number): void {
    this.#stmts.setRefSize.run(size, id);
  }

  putCacheKey(key: string, refId: string): void {
    this.#stmts.putKey.run(key, refId, Date.now());
  }

  lookupCacheKey(key: string): string | undefined {
    const row = this.#stmts.getKey.get(key) as Row | undefined;
    return row ? String(row.ref_id) : undefined;
  }

  putLayerBlob(l: LayerBlobRecord): void {
    this.#stmts.putLayer.run(l.lower ?? '', l.upper, l.compression, l.digest, l.diffId, l.size, l.mediaType);
  }

  getLayerBlob(lower: string | null, upper: string, compression: string): LayerBlobRecord | undefined {
    const row = this.#stmts.getLayer.get(lower ?? '', upper, compression) as Row | undefined;
    return row ? toLayer(row) : undefined;
  }

  /** Every blob recorded for one diff pair (one per compression). */
  layerBlobsOf(lower: string | null, upper: string): LayerBlobRecord[] {
    return (this.#stmts.getLayers.all(lower ?? '', upper) as Row[]).map(toLayer);
  }

  layerBlobs(): LayerBlobRecord[] {
    return (this.#stmts.allLayers.all() as Row[]).map(toLayer);
  }

  kvGet(ns: string, key: string): string | undefined {
    const row = this.#stmts.getKv.get(ns, key) as Row | undefined;
    return row ? String(row.value) : undefined;
  }

  kvPut(ns: string, key: string, value: string): void {
    this.#stmts.putKv.run(ns, key, value);
  }

  kvDelete(ns: string, key: string): void {
    this.#stmts.delKv.run(ns, key);
  }

  kvAll(ns: string): { key: string; value: string }[] {
    return this.#stmts.allKv.all(ns) as { key: string; value: string }[];
  }

  close(): void {
    this.db.close();
  }
}

function toRef(row: Row): RefRecord {
  return {
    id: String(row.id),
    snapshot: String(row.snapshot),
    chain: JSON.parse(String(row.chain)) as LayerPair[],
    description: String(row.description),
    recordType: String(row.record_type),
    createdAt: Number(row.created_at),
    lastUsedAt: row.last_used_at == null ? null : Number(row.last_used_at),
    usageCount: Number(row.usage_count),
    size: Number(row.size),
    parents: JSON.parse(String(row.parents)) as string[],
  };
}

function toLayer(row: Row): LayerBlobRecord {
  return {
    lower: row.lower === '' ? null : String(row.lower),
    upper: String(row.upper),
    compression: String(row.compression),
    digest: String(row.digest),
    diffId: String(row.diff_id),
    size: Number(row.size),
    mediaType: String(row.media_type),
  };
}

/**
 * Opens the database, moving a corrupt or truncated file aside (with a log line) so the daemon
 * starts empty rather than not at all.
 */
function openChecked(file: string): Database.Database {
  const open = () => {
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    const check = db.pragma('quick_check', { simple: true });
    if (check !== 'ok') {
      db.close();
      throw new Error(`quick_check: ${String(check)}`);
    }
    return db;
  };
  try {
    return open();
  } catch (err) {
    if (!existsSync(file)) throw err;
    const aside = `${file}.corrupt-${Date.now()}`;
    log.error({ sub: 'cache', file, aside, err: (err as Error).message }, 'metadata database is corrupt; moved aside, starting with an empty cache');
    renameSync(file, aside);
    for (const ext of ['-wal', '-shm']) {
      if (existsSync(file + ext)) renameSync(file + ext, aside + ext);
    }
    return open();
  }
}
