import { isUtf8 } from 'node:buffer';
import { lstatSync, readdirSync, readlinkSync, type BigIntStats } from 'node:fs';
import { lstat, readdir, readlink, realpath, stat as fsStat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Stat } from '../../gen/fsutil/stat_pb.js';
import { TimeSlice } from '../../cache/time-slice.js';
import { throwIfAborted } from '../../util/errors.js';
import { cleanPath, containsWildcards, globMatch, PathFilter, type FilterState } from '../../util/patterns.js';
import { FileSyncError } from './errors.js';
import { nonUtf8NameError, STAT_TYPE_NAME } from './codec.js';
import { GoMode, goModeFromPosix, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT } from './mode.js';
import type { XattrIO } from './xattr.js';

export interface WalkOptions {
  includePatterns?: readonly string[];
  excludePatterns?: readonly string[];
  /** Paths whose symlinks (at any element) are resolved into include patterns before the walk. */
  followPaths?: readonly string[];
  signal?: AbortSignal;
  /** Read extended attributes with this; left out when undefined. */
  xattrs?: Pick<XattrIO, 'listMany'>;
}

export interface WalkEntry {
  /** As it goes on the wire: path relative to the root, Go FileMode, hard links as `linkname`. */
  stat: Stat;
  /** Where the entry is on disk now. */
  absPath: string;
}

/**
 * Compare names as Go's sort.Strings does: by UTF-8 bytes, which is code point order. UTF-16 code
 * units are in that order too except where both sides are at or above the surrogates (a surrogate
 * pair against U+E000..U+FFFF): only then are the rest of both encoded (sorting a directory
 * compares names thousands of times).
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) return Buffer.compare(Buffer.from(a.slice(i)), Buffer.from(b.slice(i)));
    return x - y;
  }
  return a.length - b.length;
}

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function isNotExist(err: unknown): boolean {
  const c = errCode(err);
  return c === 'ENOENT' || c === 'ENOTDIR';
}

interface Visited {
  rel: string;
  abs: string;
  st: BigIntStats;
  /** Number(st.mode). */
  stMode: number;
  state: FilterState;
}

/**
 * Walks `root` as fsutil's sender does: lexical order per directory, a directory before its
 * entries, symlinks not followed, the root itself not listed; include/exclude patterns and
 * followpaths as upstream; a directory left out by the patterns is still listed (just before its
 * first kept entry) when something under it is kept. Entries that vanish during the walk are
 * skipped.
 *
 * Entries reach `onBatch` in walk order, a batch per time slice (see TimeSlice) and one at the
 * end: a listing of thousands of small entries costs a promise per batch, not several per entry.
 * The walk waits for each `onBatch` (backpressure).
 */
export async function walkDirBatches(root: string, opts: WalkOptions, onBatch: (entries: WalkEntry[]) => Promise<void>): Promise<void> {
  let realRoot: string;
  try {
    realRoot = await realpath(root);
  } catch (err) {
    throw new FileSyncError('NOT_FOUND', `resolve ${root}: ${(err as Error).message}`, { cause: err });
  }
  const rootStat = await fsStat(realRoot);
  if (!rootStat.isDirectory()) throw new FileSyncError('INVALID_ARGUMENT', `walk ${realRoot}: not a directory`);

  let includes = opts.includePatterns ? [...opts.includePatterns] : undefined;
  if (opts.followPaths) {
    const targets = await followLinks(root, opts.followPaths);
    if (targets) includes = dedupePaths([...(includes ?? []), ...targets]);
  }
  const filter = new PathFilter({ includePatterns: includes, excludePatterns: opts.excludePatterns });
  const seenInodes = new Map<bigint, string>();
  const xattrs = opts.xattrs;

  // Synchronous lookups in time slices (see TimeSlice): the walk is the whole cost of sending an
  // unchanged tree again, and one awaited lstat per entry made it several times slower. A client
  // walks once per process, mostly before V8 has optimized any of this, so the loop keeps its
  // per-entry work plain: no promise per entry (xattrs are read per batch), the file type from one
  // Number of st.mode (BigIntStats' isDirectory() and the like make BigInts on every call), paths
  // by concatenation, and the parents still to be listed as a count rather than a filtered copy.
  const slice = new TimeSlice();
  let batch: WalkEntry[] = [];
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const b = batch;
    batch = [];
    if (xattrs) {
      // One listing for the whole batch (a process, not one per entry).
      const found = await xattrs.listMany(b.map((e) => e.absPath));
      if (found.size > 0) for (const e of b) e.stat.xattrs = found.get(e.absPath) ?? {};
    }
    await onBatch(b);
  };
  const noFilter = { verdict: 'include' as const, state: {} as FilterState };
  // The directories being walked, outermost first; those from `listed` on were left out by the
  // patterns and are not listed yet (listed ones are always a prefix).
  const parents: Visited[] = [];
  let listed = 0;

  const walk = async (absDir: string, relDir: string, names: string[]): Promise<void> => {
    const parentState = parents.length > 0 ? parents[parents.length - 1]!.state : undefined;
    const absPrefix = absDir.endsWith('/') ? absDir : `${absDir}/`;
    const relPrefix = relDir === '' ? '' : `${relDir}/`;
    for (const name of names) {
      throwIfAborted(opts.signal);
      if (slice.due()) {
        // With xattrs, each batch costs a listing (a process, with the attr tools): batches then
        // hold at least XATTR_BATCH entries.
        if (!xattrs || batch.length >= XATTR_BATCH) await flush();
        await slice.pause();
      }
      const rel = relPrefix + name;
      const abs = absPrefix + name;
      let st: BigIntStats;
      try {
        st = lstatSync(abs, { bigint: true });
      } catch (err) {
        // A name whose bytes are not UTF-8 came back with U+FFFD and names no file: refused
        // rather than left out without a word.
        if (isNotExist(err) && name.includes('\uFFFD')) refuseNonUtf8(absDir, relPrefix, name);
        if (isNotExist(err)) continue;
        throw new FileSyncError('INTERNAL', `lstat ${abs}: ${(err as Error).message}`, { path: rel, cause: err });
      }
      const stMode = Number(st.mode);
      const isDir = (stMode & S_IFMT) === S_IFDIR;
      const { verdict, state } = filter.active ? filter.check(rel, isDir, parentState) : noFilter;
      if (verdict === 'prune') continue;

      let children: string[] | undefined;
      if (isDir) {
        try {
          children = readdirSync(abs).sort(compareNames);
        } catch (err) {
          if (isNotExist(err)) continue;
          if (verdict === 'exclude' && errCode(err) === 'EACCES') continue;
          throw new FileSyncError('PERMISSION_DENIED', `open ${abs}: ${(err as Error).message}`, { path: rel, cause: err });
        }
      }
      if (verdict === 'include') {
        // Parents that the patterns left out come first, now that something under them is kept.
        const start = batch.length;
        for (let i = listed; i < parents.length; i++) {
          const p = parents[i]!;
          batch.push({ stat: makeStat(p.abs, p.rel, p.st, p.stMode, seenInodes), absPath: p.abs });
        }
        try {
          batch.push({ stat: makeStat(abs, rel, st, stMode, seenInodes), absPath: abs });
        } catch (err) {
          if (!isNotExist(err)) throw err;
          batch.length = start; // the entry vanished: neither it nor its parents are listed for it
          continue;
        }
        // Listed up to here: this entry too when it is a directory, which is pushed next.
        listed = children ? parents.length + 1 : parents.length;
      }
      if (children) {
        parents.push({ rel, abs, st, stMode, state });
        try {
          await walk(abs, rel, children);
        } finally {
          parents.pop();
          if (listed > parents.length) listed = parents.length;
        }
      }
    }
  };

  await walk(realRoot, '', (await readdir(realRoot)).sort(compareNames));
  await flush();
}

/** Throws the transfer's error for `name` when the directory holds it as bytes that are not UTF-8. */
function refuseNonUtf8(absDir: string, relPrefix: string, name: string): void {
  let raw: Buffer[];
  try {
    raw = readdirSync(absDir, { encoding: 'buffer' });
  } catch {
    return;
  }
  const bad = raw.find((b) => !isUtf8(b) && b.toString('utf8') === name);
  if (bad) throw nonUtf8NameError('path', Buffer.concat([Buffer.from(relPrefix), bad]));
}

/** Entries per xattr listing (one getfattr process each). */
const XATTR_BATCH = 1000;

/** walkDirBatches one entry at a time (tests and small trees). */
export async function* walkDir(root: string, opts: WalkOptions = {}): AsyncGenerator<WalkEntry> {
  const all: WalkEntry[] = [];
  await walkDirBatches(root, opts, async (b) => {
    all.push(...b);
  });
  yield* all;
}

/** Go's major/minor for a Linux dev_t, as fsutil computes them. */
function devNumbers(rdev: bigint): { major: bigint; minor: bigint } {
  return { major: (rdev >> 8n) & 0xfffn, minor: (rdev & 0xffn) | ((rdev >> 12n) & 0xfff00n) };
}

/** The wire stat of one entry, as fsutil's mkstat: hard links refer to the first path seen. Xattrs are the caller's. */
function makeStat(abs: string, rel: string, st: BigIntStats, stMode: number, seen: Map<bigint, string>): Stat {
  // A plain object of the message's shape: create() per entry was a measurable part of a listing.
  const stat: Stat = {
    $typeName: STAT_TYPE_NAME,
    path: rel,
    mode: goModeFromPosix(stMode),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: 0n,
    modTime: st.mtimeNs,
    linkname: '',
    devmajor: 0n,
    devminor: 0n,
    xattrs: {},
  };
  const type = stMode & S_IFMT;
  if (type !== S_IFDIR) {
    // Upstream tests these bits one by one, so symlinks and sockets carry their (zero) rdev too.
    if ((stMode & S_IFBLK) !== 0 || (stMode & S_IFCHR) !== 0) {
      const d = devNumbers(st.rdev);
      stat.devmajor = d.major;
      stat.devminor = d.minor;
    }
    const first = st.nlink > 1n ? seen.get(st.ino) : undefined;
    if (first !== undefined) stat.linkname = first;
    else seen.set(st.ino, rel);
    stat.size = st.size;
    if (type === S_IFLNK) {
      stat.linkname = readlinkSync(abs);
      if (stat.linkname.includes('\uFFFD')) {
        const raw = readlinkSync(abs, { encoding: 'buffer' });
        if (!isUtf8(raw)) throw nonUtf8NameError('link target', raw, rel);
      }
    }
  }
  // Sockets go as plain files: upstream drops the bit because tar headers cannot carry it.
  stat.mode = (stat.mode & ~GoMode.socket) >>> 0;
  return stat;
}

/**
 * fsutil's FollowLinks: each path is resolved element by element inside `root`; every symlink met
 * adds itself and its target (relative to root; absolute targets are taken as relative to root)
 * to the result. A wildcard in an element matches siblings. Returns sorted, deduplicated paths,
 * or undefined when one of them is the root itself (then nothing is filtered).
 */
export async function followLinks(root: string, paths: readonly string[]): Promise<string[] | undefined> {
  const resolved = new Set<string>();

  const readSymlink = async (p: string, allowWildcard: boolean): Promise<string[] | undefined> => {
    const real = join(root, p);
    const slash = p.lastIndexOf('/');
    const base = slash >= 0 ? p.slice(slash + 1) : p;
    if (allowWildcard && containsWildcards(base)) {
      const dir = slash >= 0 ? p.slice(0, slash) : '.';
      let names: string[];
      try {
        names = await readdir(join(root, dir));
      } catch (err) {
        if (errCode(err) === 'ENOENT') return undefined;
        throw new FileSyncError('INTERNAL', `readdir: ${(err as Error).message}`, { path: dir, cause: err });
      }
      const out: string[] = [];
      for (const n of names) {
        if (globMatch(base, n)) out.push(...((await readSymlink(cleanPath(`${dir}/${n}`), false)) ?? []));
      }
      return out.length > 0 ? out : undefined;
    }
    let st;
    try {
      st = await lstat(real);
    } catch (err) {
      if (errCode(err) === 'ENOENT') return undefined;
      throw new FileSyncError('INTERNAL', `lstat ${real}: ${(err as Error).message}`, { path: p, cause: err });
    }
    if (!st.isSymbolicLink()) return undefined;
    const link = cleanPath(await readlink(real));
    if (link.startsWith('/')) return [link];
    const dir = slash >= 0 ? p.slice(0, slash) : '.';
    return [cleanPath(`/${dir}/${link}`)];
  };

  const append = async (input: string): Promise<void> => {
    let p = cleanPath(`./${input}`);
    let current = '.';
    for (;;) {
      const slash = p.indexOf('/');
      const head = slash >= 0 ? p.slice(0, slash) : p;
      current = cleanPath(`${current}/${head}`);
      const targets = await readSymlink(current, true);
      p = slash >= 0 ? p.slice(slash + 1) : '';
      if ((p === '' || targets !== undefined) && resolved.has(current)) return;
      if (targets !== undefined) {
        resolved.add(current);
        for (const t of targets) await append(cleanPath(`${t}/${p}`));
        return;
      }
      if (p === '') {
        resolved.add(current);
        return;
      }
    }
  };

  for (const p of paths) await append(p);
  return dedupePaths([...resolved].sort(compareGoStrings));
}

function compareGoStrings(a: string, b: string): number {
  return compareNames(a, b);
}

/** fsutil's dedupePaths: drops paths under an earlier kept one; undefined if `.` is present. */
export function dedupePaths(input: readonly string[]): string[] | undefined {
  const out: string[] = [];
  let last = '';
  for (const s of input) {
    if (s === '.') return undefined;
    if (s.startsWith(last + '/')) continue;
    out.push(s);
    last = s;
  }
  return out;
}
