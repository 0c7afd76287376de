import type { Change } from './layer/change.js';

/**
 * Snapshots: the directory trees that ops read and write, and that layers are computed from.
 *
 * The model is containerd's: a snapshot is either *active* (writable, made by `prepare` from an
 * optional committed parent) or *committed* (immutable, made by `commit` of an active one). The
 * tree of a snapshot starts as an exact copy of its parent's tree (modes, owners, times, symlinks,
 * hard links within the tree, xattrs, device nodes) or empty without a parent.
 *
 * Contracts:
 * - Keys are chosen by the caller and are unique among all snapshots of one snapshotter; they match
 *   KEY_RE (safe as one path component).
 * - Only active snapshots may be written, and only by their one owner. Nobody writes a committed
 *   snapshot's tree: other snapshots may share its inodes (hard links, reflinks, overlay lowers).
 * - A snapshot cannot be removed while another snapshot names it as parent (an overlay child reads
 *   its parent's layers); remove children first. Callers that track layer chains (refs) keep every
 *   snapshot their chains mention alive.
 * - `dir()` gives a host path valid until the snapshot is removed. An implementation that must
 *   mount (overlay) mounts lazily there; the path stays valid for the snapshot's lifetime.
 *
 * Implementations: native/ (full copies; works on any filesystem). An overlay implementation
 * (lowers + upper) fits the same interface: `changes()` then answers from the upper directory.
 */
export interface Snapshotter {
  /** A short name for logs and cache records (`native`, `overlayfs`). */
  readonly name: string;

  /**
   * Creates the active snapshot `key` as a writable copy of committed `parent` (or empty), and
   * returns its directory. Fails with ALREADY_EXISTS if the key is taken, NOT_FOUND if the parent
   * does not exist, FAILED_PRECONDITION if the parent is not committed.
   */
  prepare(key: string, parent?: string | null, opts?: { signal?: AbortSignal }): Promise<string>;

  /** Makes active `key` immutable. FAILED_PRECONDITION if it is already committed. */
  commit(key: string): Promise<void>;

  /** The directory holding the snapshot's tree. NOT_FOUND for an unknown key. */
  dir(key: string): Promise<string>;

  /** Metadata of one snapshot; NOT_FOUND for an unknown key. */
  stat(key: string): Promise<SnapshotInfo>;

  /**
   * Removes the snapshot and its tree. NOT_FOUND for an unknown key, FAILED_PRECONDITION while
   * another snapshot has it as parent.
   */
  remove(key: string): Promise<void>;

  /** Disk usage of the snapshot's own tree: bytes in blocks and distinct inodes. */
  usage(key: string): Promise<SnapshotUsage>;

  /** Every snapshot, in no particular order. */
  list(): Promise<SnapshotInfo[]>;

  /**
   * The changes of `key` against its parent when the implementation knows them without walking
   * both trees (an overlay upper dir), else null: the caller then runs layer.changes(parentDir,
   * dir). The list is in layer order (see layer/change.ts).
   */
  changes(key: string): Promise<Change[] | null>;

  /**
   * Overlay only: an active snapshot on committed `parent` whose own layer the caller writes
   * directly in overlay's on-disk form (see overlay/apply-upper.ts); returns that directory, or
   * null where this is not possible. Nothing may call dir() on it before commit().
   */
  prepareLayer?(key: string, parent: string, opts?: { signal?: AbortSignal }): Promise<string | null>;

  /** Overlay only: the snapshot's own layer directory (what changes() reads). */
  upperDir?(key: string): Promise<string>;
}

export type SnapshotKind = 'active' | 'committed';

export interface SnapshotInfo {
  key: string;
  /** The committed snapshot this one was prepared from, or null for an empty start. */
  parent: string | null;
  kind: SnapshotKind;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** Set at commit, null while active. */
  committedAt: number | null;
}

export interface SnapshotUsage {
  /** Bytes allocated (st_blocks * 512), each inode counted once. */
  size: number;
  /** Distinct inodes, directories included. */
  inodes: number;
}

/** Snapshot keys: one path component, no dot-files, bounded length. */
export const KEY_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$/;
