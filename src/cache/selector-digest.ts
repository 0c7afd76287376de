import { createHash } from 'node:crypto';
import { lstat, readlink } from 'node:fs/promises';
import { lstatSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, LoomError, NotFoundError } from '../util/errors.js';
import { containsWildcards, resolveWildcards } from '../ops/file/wildcard.js';
import { LRUCache } from 'lru-cache';
import { resolveInRootSync, resolveParentInRoot } from '../util/fs-safe.js';
import { patternMatcherFor } from '../util/patterns.js';
import { copyFilter, type MatchInfo } from '../ops/file/copy.js';
import { patternSets, type CopyPatterns, type PathPatterns } from '../solver/types.js';
import { fileDigest, treeDigest } from './content-hash.js';

/**
 * Answers already given, by tree, its root directory's identity, and selection. Trees handed to
 * selectorDigest are committed snapshots (a Ref's dir), which nobody writes again, so the answer
 * for one stays right as long as the tree exists; a fully cached rebuild asks again for the same
 * snapshot of its local context and gets it without a walk (upstream likewise keeps content
 * checksums per cache record). The root's device, inode and ctime are part of the key, so a
 * directory removed and made again at the same path is not mistaken for the old one.
 */
const memo = new LRUCache<string, Promise<string>>({ max: 4096 });

/**
 * A digest of exactly the paths a step reads from a tree (its copy sources): each path's type,
 * permission bits, owner and content (a directory's whole subtree); a missing path is an error
 * (NotFoundError naming it, as upstream's). Paths are
 * resolved inside the tree, following symlinks within it as the copy will. Changing anything
 * else in the tree leaves the digest as it is, which is what keeps such a step cached.
 *
 * With `wildcards`, a path holding glob characters is a copy's wildcard source: the digest covers
 * the pattern and each path it matches (resolved as the copy resolves them), so a change beside
 * the matches leaves it as it is, as upstream's wildcard checksum.
 *
 * A path in `patterns` (a copy source with include/exclude patterns, or a wildcard source's every
 * match) is a directory filtered as the copy filters it: the digest covers what the patterns keep
 * and the directories above it, as upstream's checksum with patterns, so an excluded file may
 * change freely. A path read with several sets of patterns is digested by each. As upstream's,
 * such a path that is not there is no error (the copy fails as it runs), but a required path
 * (COPY --parents) that nothing kept is. Unlike upstream's, a single file with patterns is keyed
 * by its content (upstream's checksum leaves it out, and keeps a step cached that copies a
 * changed file).
 *
 * With `lazyScan` (a tree another step made, not a local directory), a missing path fails as
 * upstream's checksum of a tree it reads lazily (see scans).
 *
 * `root` must be a committed snapshot's tree (never written again): answers are remembered (see
 * memo above).
 */
export async function selectorDigest(
  root: string,
  paths: readonly string[],
  followSymlinks: boolean,
  wildcards = false,
  patterns?: Readonly<Record<string, PathPatterns>>,
  lazyScan = false,
): Promise<string> {
  const rst = lstatSync(root, { bigint: true, throwIfNoEntry: false });
  if (!rst) return compute(root, paths, followSymlinks, wildcards, patterns, lazyScan);
  const key = JSON.stringify([root, `${rst.dev}:${rst.ino}:${rst.ctimeNs}`, followSymlinks, wildcards, [...paths].sort(), patterns ?? null, lazyScan]);
  let p = memo.get(key);
  if (!p) {
    p = compute(root, paths, followSymlinks, wildcards, patterns, lazyScan);
    memo.set(key, p);
    // A failure (a cancelled walk) is not remembered.
    p.catch(() => memo.delete(key));
  }
  return p;
}

/**
 * The directories of each tree whose whole content upstream's checksum has read (scanned), by
 * the tree's identity (as memo's keys). Upstream reads a tree lazily: a path with nothing known
 * above it has its parent directory walked first, and a parent that is not there fails the key in
 * the walk's words (`failed to walk <dir>: lstat <dir>: no such file or directory`); a path under
 * a directory already read that is not there is simply not found.
 */
const scans = new LRUCache<string, Set<string>>({ max: 4096 });

function scannedOf(root: string): Set<string> {
  const st = lstatSync(root, { bigint: true, throwIfNoEntry: false });
  const id = st ? `${root}|${st.dev}:${st.ino}:${st.ctimeNs}` : root;
  let set = scans.get(id);
  if (!set) {
    set = new Set();
    scans.set(id, set);
  }
  return set;
}

/**
 * A local directory's tree is known whole from its transfer (upstream's transfer fills the tree's
 * checksum records), unless the transfer brought nothing (no path a step names matched): upstream
 * has no record then, and reads that empty tree as lazily as another step's, so a path under a
 * directory that is not there fails in the walk's words there too.
 */
function readsLazily(root: string): boolean {
  try {
    return readdirSync(root).length === 0;
  } catch {
    return false;
  }
}

/** Upstream's needsScan: no path at or above `p` is both there and inside a directory read already. */
function needsScan(root: string, scanned: ReadonlySet<string>, p: string): boolean {
  const inside = (q: string) => scanned.has('/') || [...scanned].some((d) => q === d || q.startsWith(`${d}/`));
  for (let q = p; ; q = path.posix.dirname(q)) {
    if (inside(q) && lstatSync(path.join(root, q), { throwIfNoEntry: false })) return false;
    if (q === '/') return true;
  }
}

/** Reads `p`'s parent directory as upstream's scan does, failing in its words when it is not there. */
function scan(root: string, scanned: Set<string>, p: string): void {
  const dir = path.posix.dirname(p);
  const host = resolveInRootSync(root, dir);
  try {
    lstatSync(host);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOTDIR' ? 'not a directory' : e.code === 'ENOENT' ? 'no such file or directory' : e.message;
    throw new NotFoundError(`failed to walk ${host}: lstat ${host}: ${why}`);
  }
  scanned.add(path.posix.join('/', path.relative(root, host)));
}

/**
 * Where selected path `p` is on the host and its lstat. A path that is not there is upstream's
 * content-hash error, named as upstream names it: the path asked for, or, when its last component
 * is a symlink followed (`followSymlinks`), the symlink's target (joined to the link's directory
 * as written, `..` cleaned away); a symlink among the parents does not change the name.
 */
async function resolveSelected(root: string, p: string, followSymlinks: boolean, scans?: { known: ReadonlySet<string>; add: Set<string> }) {
  let cur = path.posix.join('/', p);
  if (scans && needsScan(root, scans.known, cur)) scan(root, scans.add, cur);
  for (let hops = 0; ; hops++) {
    const notFound = () => new NotFoundError(`${JSON.stringify(cur)}: not found`);
    let host: string;
    try {
      host = await resolveParentInRoot(root, cur);
    } catch {
      throw notFound();
    }
    const st = await lstat(host).catch(() => undefined);
    if (!st) throw notFound();
    if (!followSymlinks || !st.isSymbolicLink()) return { host, st };
    if (hops >= MAX_SYMLINKS) throw new InvalidArgumentError(`too many symlinks: ${JSON.stringify(path.posix.join('/', p))}`);
    const link = await readlink(host);
    cur = path.posix.isAbsolute(link) ? path.posix.normalize(link) : path.posix.join(path.posix.dirname(cur), link);
  }
}

/** Symlinks followed for one selected path before giving up (upstream's limit). */
const MAX_SYMLINKS = 255;

/**
 * Fails as selectorDigest does when a selected path is missing, without digesting anything: for
 * inputs whose key does not hold their content (a stage's result), so that a step reading a path
 * that is not there fails with upstream's message rather than its copy's.
 */
export async function selectorsExist(
  root: string,
  paths: readonly string[],
  followSymlinks: boolean,
  lazyScan = false,
  patterns?: Readonly<Record<string, PathPatterns>>,
): Promise<void> {
  // (What is read of an empty local tree is not kept: each transfer is a tree of its own upstream.)
  const empty = !lazyScan && readsLazily(root);
  lazyScan ||= empty;
  // A path with patterns is read as upstream's checksum with patterns reads it (see filtered),
  // which reads the whole tree first: a later step's missing path is then simply not found.
  const withPatterns = [...paths].sort().filter((p) => patterns?.[p]);
  if (lazyScan && !empty && withPatterns.length) scannedOf(root).add('/');
  for (const p of withPatterns) for (const f of patternSets(patterns![p]!)) await filtered(root, p, f, followSymlinks);
  paths = paths.filter((p) => !patterns?.[p]);
  if (!lazyScan) {
    for (const p of [...paths].sort()) await resolveSelected(root, p, followSymlinks);
    return;
  }
  // Upstream reads a step's paths side by side: each as the tree was read before the step (the
  // first path's read does not spare the next one its own), the first failure in the step's order.
  const add = empty ? new Set<string>() : scannedOf(root);
  const known = new Set(add);
  let failed: { err: unknown } | undefined;
  for (const p of paths) await resolveSelected(root, p, followSymlinks, { known, add }).catch((err: unknown) => (failed ??= { err }));
  if (failed) throw failed.err;
}

async function compute(
  root: string,
  paths: readonly string[],
  followSymlinks: boolean,
  wildcards: boolean,
  patterns: Readonly<Record<string, PathPatterns>> | undefined,
  lazyScan: boolean,
): Promise<string> {
  // Read as upstream reads a tree it has not read yet (see scans), the paths in the step's order.
  // (A path with patterns reads the whole tree, as upstream's checksum with patterns.)
  if (lazyScan || readsLazily(root)) {
    // Marked before anything is awaited: steps reading this tree side by side see it read.
    if (lazyScan && paths.some((p) => patterns?.[p])) scannedOf(root).add('/');
    await selectorsExist(root, paths.filter((p) => (!wildcards || !containsWildcards(p)) && !patterns?.[p]), followSymlinks, lazyScan);
  }
  const h = createHash('sha256');
  const add = async (p: string, sets?: PathPatterns): Promise<void> => {
    if (sets) {
      for (const filter of patternSets(sets)) {
        const f = await filtered(root, p, filter, followSymlinks);
        h.update(f ? `${f.head} ${JSON.stringify(filter)} ${f.digest}\n` : `${JSON.stringify(p)} missing ${JSON.stringify(filter)}\n`);
      }
      return;
    }
    const { host, st } = await resolveSelected(root, p, followSymlinks);
    const head = lineHead(p, st);
    if (st.isDirectory()) h.update(`${head} dir ${await treeDigest(host)}\n`);
    else if (st.isFile()) h.update(`${head} file ${await fileDigest(host)}\n`);
    else h.update(`${head} other ${st.size}\n`);
  };
  for (const p of [...paths].sort()) {
    const filter = patterns?.[p];
    if (!wildcards || !containsWildcards(p)) {
      await add(p, filter);
      continue;
    }
    // A pattern whose base is not there matches nothing here, as upstream's wildcard checksum
    // (v0.11): the copy then fails in its own words (lstat of the base).
    let matches: string[];
    try {
      matches = await resolveWildcards(root, p, followSymlinks);
    } catch (err) {
      if (err instanceof LoomError) throw err;
      matches = [];
    }
    h.update(`${JSON.stringify(p)} matches ${matches.length}\n`);
    for (const m of matches) await add(m, filter);
  }
  return `sha256:${h.digest('hex')}`;
}

/** The start of an entry's line in a digest: its path, permission bits and owner. */
function lineHead(p: string, st: { mode: number; uid: number; gid: number }): string {
  return `${JSON.stringify(p)} ${(st.mode >>> 0).toString(8)} ${st.uid}:${st.gid}`;
}

/**
 * What a copy of `p` with include/exclude patterns takes, as upstream's checksum with patterns
 * sees it: null when `p` is not there (or is a link to nowhere), which is no error here (the copy
 * fails as it runs, in its own words); else the path's line head and the digest of what is kept.
 * A required path (COPY --parents) that nothing kept is at or below fails as upstream's:
 * `"/a/b": not found`.
 */
async function filtered(root: string, p: string, filter: CopyPatterns, followSymlinks: boolean): Promise<{ head: string; digest: string } | null> {
  let found: Awaited<ReturnType<typeof resolveSelected>> | undefined;
  try {
    found = await resolveSelected(root, p, followSymlinks);
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  const kept: string[] = [];
  let res: { head: string; digest: string } | null = null;
  if (found) {
    const { host, st } = found;
    const head = lineHead(p, st);
    const base = path.posix.join('/', p);
    if (st.isDirectory()) res = { head: `${head} dir`, digest: await filteredDigest(host, filter, (c) => kept.push(path.posix.join(base, c))) };
    // (A file: upstream's checksum with patterns finds nothing below it, so nothing counts for a
    // required path; its content is still keyed here.)
    else res = { head: `${head} ${st.isFile() ? 'file' : 'other'}`, digest: st.isFile() ? await fileDigest(host) : String(st.size) };
  }
  for (const r of filter.required ?? []) {
    // Upstream compares the strings: `/a/bc` counts for `/a/b`.
    if (!kept.some((k) => k.startsWith(r))) throw new NotFoundError(`${JSON.stringify(r)}: not found`);
  }
  return res;
}

/**
 * The digest of what a copy of directory `dir` with include/exclude patterns takes from it,
 * filtered as the copy filters (copyFilter; every directory walked):
 * each kept entry's path, type, permission bits, owner and content, and the directories above
 * kept entries (the copy makes them). A directory holding nothing kept adds nothing.
 */
async function filteredDigest(dir: string, filter: CopyPatterns, onKept?: (comps: string) => void): Promise<string> {
  const include = patternMatcherFor('include', filter.include);
  const exclude = patternMatcherFor('exclude', filter.exclude);
  const h = createHash('sha256');
  // The directories above the entry at hand, by depth, and whether each is in the digest yet.
  const above: { line: string; added: boolean }[] = [];
  const addAbove = (): void => {
    for (const d of above) {
      if (!d.added) h.update(d.line);
      d.added = true;
    }
  };
  const walk = async (host: string, rel: string, depth: number, inc: MatchInfo, exc: MatchInfo): Promise<void> => {
    const names = readdirSync(host).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) {
      const comps = rel === '' ? n : `${rel}/${n}`;
      const full = path.join(host, n);
      const st = lstatSync(full);
      const { kept, incInfo, excInfo } = copyFilter(comps, include, exclude, inc, exc);
      const head = lineHead(comps, st);
      above.length = depth;
      if (st.isDirectory()) {
        above.push({ line: `${head} dir\n`, added: false });
        if (kept) {
          addAbove();
          onKept?.(comps);
        }
        await walk(full, comps, depth + 1, incInfo, excInfo);
        continue;
      }
      if (!kept) continue;
      addAbove();
      onKept?.(comps);
      if (st.isFile()) h.update(`${head} file ${await fileDigest(full)}\n`);
      else if (st.isSymbolicLink()) h.update(`${head} link ${await readlink(full)}\n`);
      else h.update(`${head} other ${st.rdev}\n`);
    }
  };
  await walk(dir, '', 0, null, null);
  return `sha256:${h.digest('hex')}`;
}
