import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readdirSync, readFileSync, readlinkSync, type BigIntStats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { throwIfAborted } from '../util/errors.js';
import type { Digest } from '../util/digest.js';
import { TimeSlice } from './time-slice.js';

/**
 * An LRU of at most `entries` entries that allocates as it fills: lru-cache preallocates its
 * arrays for `max` (40 ms for 200,000 here, paid per mirror by a fresh daemon's first build),
 * but not for a size bound.
 */
function lruOf<V extends {}>(entries: number): LRUCache<string, V> {
  return new LRUCache<string, V>({ maxSize: entries, sizeCalculation: () => 1 });
}

/**
 * Digests of file contents remembered by path, each valid while the file still has the same inode,
 * size and modification time (nanoseconds). Meant for a tree whose writer never changes a file in
 * place (the local-source mirror: the receiver puts every changed file in a new inode and renames
 * it over), so a second digest of the tree only reads the files that changed; the writer also calls
 * `forget` for each path it touches. The ctime is left out on purpose: hard-linking a file into a
 * snapshot changes it without changing the content.
 */
export class FileDigestCache {
  readonly #entries: LRUCache<string, { ino: bigint; size: bigint; mtimeNs: bigint; digest: string }>;
  /** Every directory above a path ever set: only these need forget's walk over all entries. */
  readonly #dirs = new Set<string>();

  constructor(opts: { maxEntries?: number } = {}) {
    this.#entries = lruOf(opts.maxEntries ?? 200_000);
  }

  get(path: string, st: BigIntStats): string | undefined {
    const e = this.#entries.get(path);
    if (!e || e.ino !== st.ino || e.size !== st.size || e.mtimeNs !== st.mtimeNs) return undefined;
    return e.digest;
  }

  set(path: string, st: BigIntStats, digest: string): void {
    this.#entries.set(path, { ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, digest });
    for (let d = dirname(path); !this.#dirs.has(d); d = dirname(d)) {
      this.#dirs.add(d);
      if (d === dirname(d)) break;
    }
  }

  /**
   * Drops `path` and everything below it. Only a path that was ever a directory above an entry
   * costs a walk over the entries: a transfer forgets every file it writes.
   */
  forget(path: string): void {
    const p = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
    this.#entries.delete(p);
    if (!this.#dirs.has(p)) return;
    const prefix = `${p}/`;
    for (const k of this.#entries.keys()) if (k.startsWith(prefix)) this.#entries.delete(k);
    for (const d of this.#dirs) if (d === p || d.startsWith(prefix)) this.#dirs.delete(d);
  }

  clear(): void {
    this.#entries.clear();
    this.#dirs.clear();
  }

  get size(): number {
    return this.#entries.size;
  }
}

/**
 * Content digests by inode state, for every tree (git's index trick): an entry is keyed by device,
 * inode, size, mtime and ctime, and the kernel sets the ctime to the current time on any change
 * to a file (write, chmod, chown, utimes, link), which no caller can set back. An entry is only
 * kept when the ctime was at least RACY_MS old when reading began: a change within the same tick
 * of the (coarse) kernel clock could otherwise leave the ctime as it was. A file changed while it
 * is read gets a new ctime, so its entry is never found again. This is what makes a rebuild that
 * digests the same committed snapshot again (cache keys by content of a step's sources) cheap.
 */
const byInode = lruOf<string>(200_000);
const RACY_MS = 1000;
/** Files up to this size are read in one call (a stream costs more than the reading). */
const SMALL_FILE = 1n << 20n;
const counts = { reads: 0, hits: 0 };

/** Files read for a digest and digests found by inode so far, process-wide (tests, debugging). */
export function contentDigestCounts(): { reads: number; hits: number } {
  return { ...counts };
}

function inodeKey(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The digest of a file known by its inode state (see byInode), if any. */
function digestByInode(st: BigIntStats): string | undefined {
  const known = byInode.get(inodeKey(st));
  if (known) counts.hits++;
  return known;
}

/** The hex sha256 of a regular file's bytes; `st` is its stat taken before. */
async function contentDigest(path: string, st: BigIntStats): Promise<string> {
  const known = digestByInode(st);
  if (known) return known;
  const started = readStarts();
  const digest = st.size <= SMALL_FILE ? createHash('sha256').update(await readFile(path)).digest('hex') : await readDigest(path);
  return remember(st, started, digest);
}

/** Counts a file read for a digest; returns when it began (see remember). */
function readStarts(): number {
  counts.reads++;
  return Date.now();
}

/** Keeps a digest read from a file with stat `st` by inode, unless its ctime was too recent when reading began (see byInode). */
function remember(st: BigIntStats, started: number, digest: string): string {
  if (Number(st.ctimeNs / 1_000_000n) < started - RACY_MS) byInode.set(inodeKey(st), digest);
  return digest;
}

/**
 * Files up to this size are read in the walk itself, synchronously: a small file costs four system
 * calls, and their round trips through libuv's thread pool cost more than the calls (2,000 small
 * files: ~0.2 s by the pool, ~0.05 s in line). The walk yields in time slices, as for its stats.
 */
const INLINE_FILE = 64n << 10n;

/** contentDigest for a small file, read in line (see INLINE_FILE). */
function contentDigestSync(path: string, st: BigIntStats): string {
  const started = readStarts();
  return remember(st, started, createHash('sha256').update(readFileSync(path)).digest('hex'));
}

/** Files of one directory read at once for their digests (when not known already). */
const READS = 16;

/**
 * A digest of a tree's content: for each entry in sorted path order its path, type, permission
 * bits, owner, link target and (for files) a digest of the bytes. Modification times are left out
 * on purpose: touching a file without changing it must not change the digest (as upstream's
 * contenthash), so a rebuild after `touch` stays cached. Files whose inode is unchanged since an
 * earlier digest are not read again (see byInode); with `cache`, not even when only their ctime
 * changed (see FileDigestCache).
 */
export async function treeDigest(root: string, opts: { signal?: AbortSignal; cache?: FileDigestCache } = {}): Promise<Digest> {
  return (await treeDigests(root, opts)).content;
}

/**
 * The lstat of every entry of a tree by its path relative to the tree (what a filesync receiver
 * knows of the directory it just wrote, see KnownTree), with each directory's entries by name.
 */
export class KnownStats {
  readonly #stats: ReadonlyMap<string, BigIntStats>;
  readonly #children = new Map<string, string[]>();

  /** `stats` is copied: the caller may change its map afterwards. */
  constructor(stats: ReadonlyMap<string, BigIntStats>) {
    this.#stats = new Map(stats);
    for (const rel of this.#stats.keys()) {
      const slash = rel.lastIndexOf('/');
      const parent = slash < 0 ? '' : rel.slice(0, slash);
      let names = this.#children.get(parent);
      if (!names) this.#children.set(parent, (names = []));
      names.push(slash < 0 ? rel : rel.slice(slash + 1));
    }
  }

  /** The names in directory `rel` ('' for the root), or undefined for one the tree does not have. */
  names(rel: string): string[] | undefined {
    return this.#children.get(rel) ?? (rel === '' || this.#stats.get(rel)?.isDirectory() ? [] : undefined);
  }

  stat(rel: string): BigIntStats | undefined {
    return this.#stats.get(rel);
  }

  entries(): IterableIterator<[string, BigIntStats]> {
    return this.#stats.entries();
  }
}

/**
 * treeDigest's `content`, and from the same walk `withTimes`: the content and every entry's
 * modification time, which tells two trees of one content apart when their times differ (a
 * snapshot of one is not the other's, though a step keyed by the content is cached for both).
 */
export async function treeDigests(
  root: string,
  opts: { signal?: AbortSignal; cache?: FileDigestCache; known?: KnownStats } = {},
): Promise<{ content: Digest; withTimes: Digest }> {
  const h = createHash('sha256');
  const times = createHash('sha256');
  // Metadata by synchronous calls in time slices (see TimeSlice): a rebuild digests trees whose
  // files are nearly all known, so the walk itself is the cost. Unknown files are read in parallel.
  // With `known` stats (the tree a receiver just wrote, or a tree linked from it), no call at all.
  const slice = new TimeSlice();
  const linked = linkedLookup(root);
  const known = opts.known ? { stats: opts.known, prefix: '' } : linked?.known;
  const knownDigest = (full: string, st: BigIntStats): string | undefined => {
    let d = opts.cache?.get(full, st) ?? linked?.lookup(full, st);
    if (d === undefined) {
      d = digestByInode(st);
      if (d !== undefined) opts.cache?.set(full, st, d);
    }
    return d;
  };
  const walk = async (rel: string): Promise<void> => {
    throwIfAborted(opts.signal);
    const listed = known?.stats.names(knownRel(known.prefix, rel));
    const names = (listed ? [...listed] : readdirSync(join(root, rel))).sort();
    const paths = names.map((name) => (rel ? `${rel}/${name}` : name));
    const stats: BigIntStats[] = [];
    const bodies: string[] = [];
    const unknown: number[] = [];
    for (const [i, p] of paths.entries()) {
      if (slice.due()) {
        await slice.pause();
        throwIfAborted(opts.signal);
      }
      const full = join(root, p);
      const st = (listed && known?.stats.stat(knownRel(known.prefix, p))) || lstatSync(full, { bigint: true });
      stats.push(st);
      let body = '';
      if (st.isFile()) {
        body = knownDigest(full, st) ?? '';
        if (!body && st.size <= INLINE_FILE) {
          body = contentDigestSync(full, st);
          opts.cache?.set(full, st, body);
        } else if (!body) unknown.push(i);
      } else if (st.isSymbolicLink()) body = readlinkSync(full);
      else if (st.isCharacterDevice() || st.isBlockDevice()) body = st.rdev.toString();
      bodies.push(body);
    }
    for (let k = 0; k < unknown.length; k += READS) {
      throwIfAborted(opts.signal);
      await Promise.all(
        unknown.slice(k, k + READS).map(async (i) => {
          const full = join(root, paths[i]!);
          bodies[i] = await contentDigest(full, stats[i]!);
          opts.cache?.set(full, stats[i]!, bodies[i]!);
        }),
      );
    }
    // Hashed in the same order as a depth-first walk: each directory's subtree right after its line.
    for (const [i, p] of paths.entries()) {
      const st = stats[i]!;
      const line = `${JSON.stringify(p)} ${(Number(st.mode) >>> 0).toString(8)} ${st.uid}:${st.gid} ${bodies[i]}`;
      h.update(`${line}\n`);
      times.update(`${line} ${st.mtimeNs}\n`);
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return { content: `sha256:${h.digest('hex')}`, withTimes: `sha256:${times.digest('hex')}` };
}

/** `rel` below the directory `prefix` of known stats ('' for their root). */
function knownRel(prefix: string, rel: string): string {
  return prefix && rel ? `${prefix}/${rel}` : prefix || rel;
}

/** Trees whose files are hard links to a mirror's (see linkDigests): root -> the mirror, its digests and its stats when linked. */
const linkedTrees = new LRUCache<string, { mirror: string; cache: FileDigestCache; known?: KnownStats }>({ max: 64 });

/**
 * Says that the tree at `root` was just made of hard links to the files of `mirror` (the same
 * relative paths), whose digests `cache` holds: a digest of a path under `root` then finds a
 * file's digest under the mirror's path, valid while the inode, size and mtime are the ones
 * recorded (see FileDigestCache), so neither tree is read again. Linking changed only the files'
 * ctime. Only for trees nobody writes in place (a local source's snapshot and its mirror, whose
 * writer keeps `cache` right); a file the mirror replaced since has another inode and is read.
 */
export function linkDigests(root: string, mirror: string, cache: FileDigestCache, known?: KnownStats): void {
  linkedTrees.set(root, { mirror, cache, known });
}

/**
 * The digest lookup linkDigests registered for a path, if it lies in such a tree, and the stats
 * the mirror's entries had when it was linked (the tree's own: links share the inode, and its
 * directories were made with the mirror's metadata), from `path` down.
 */
function linkedLookup(path: string): { lookup: (full: string, st: BigIntStats) => string | undefined; known?: { stats: KnownStats; prefix: string } } | undefined {
  for (const [root, l] of linkedTrees.entries()) {
    if (path === root || path.startsWith(`${root}/`)) {
      const rel = path.slice(root.length + 1);
      return {
        lookup: (full, st) => l.cache.get(l.mirror + full.slice(root.length), st),
        known: l.known && { stats: l.known, prefix: rel },
      };
    }
  }
  return undefined;
}

/** The hex sha256 of a file's bytes (symlinks followed). */
export async function fileDigest(path: string): Promise<string> {
  const st = await stat(path, { bigint: true });
  return linkedLookup(path)?.lookup(path, st) ?? contentDigest(path, st);
}

function readDigest(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path, { highWaterMark: 1 << 20 })
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
