import { constants, type Stats } from 'node:fs';
import { chmod, copyFile, link, lstat, mkdir, readdir, readlink, rm, stat, symlink } from 'node:fs/promises';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { CancelledError, LoomError, throwIfAborted } from '../../util/errors.js';
import { resolveInRoot, resolveParentInRoot } from '../../util/fs-safe.js';
import { copyXattrs, mknod, setTimes, type TimesWrite } from '../../snapshot/layer/sys-ops.js';
import { applyChown, mkdirAll, type Chowner } from './fs-util.js';
import type { MatchInfo as PatternMatchInfo, PatternMatcher } from '../../util/patterns.js';

/** A directory's pattern state handed to its children; null at the top of the copy. */
export type MatchInfo = PatternMatchInfo | null;

/**
 * Whether a copy with include/exclude patterns keeps the entry at `comps` (its path below the
 * copy's source), given its directory's states; and the states its own entries take. The copy's
 * cache key (cache/selector-digest.ts) filters with this too, so it covers exactly what is copied.
 */
export function copyFilter(
  comps: string,
  include: PatternMatcher | null,
  exclude: PatternMatcher | null,
  incParent: MatchInfo,
  excParent: MatchInfo,
): { kept: boolean; incInfo: MatchInfo; excInfo: MatchInfo } {
  let kept = true;
  let incInfo: MatchInfo = null;
  let excInfo: MatchInfo = null;
  if (include) {
    const r = include.matchesUsingParentResults(comps, incParent ?? undefined);
    kept = r.matched;
    incInfo = r.info;
  }
  if (exclude) {
    const r = exclude.matchesUsingParentResults(comps, excParent ?? undefined);
    if (r.matched) kept = false;
    excInfo = r.info;
  }
  return { kept, incInfo, excInfo };
}

/**
 * One copy from a source tree into a destination tree with the semantics of fsutil's copy.Copy,
 * which BuildKit's FileOp uses:
 * - `dst` ending in `/` (or naming an existing directory) receives the source under its own name;
 *   a source directory is copied *as* dst when dst does not exist, or into it when it does, unless
 *   copyDirContents asks for its content only;
 * - missing parents of the destination are created 0755 (owned per the chowner, stamped with the
 *   utime) — the "root of a copy is 0755" that images show;
 * - every copied entry keeps type, content, mode (permission bits replaced by `mode` when set),
 *   times (or the utime), xattrs, and owner (or the chowner's); hard links among copied files stay
 *   links; a directory that already existed at the top keeps its metadata but not its mtime;
 * - include/exclude patterns filter by path relative to the source; directories are walked even
 *   when not included, and created only when something below them is.
 * Source and destination paths are resolved inside their roots (symlinks followed within them).
 */
export interface CopyInfo {
  chown: Chowner;
  /** Nanoseconds for both times of every copied entry, or null to keep the source's. */
  utime: bigint | null;
  /** Permission bits to set instead of the source's, or null. */
  mode: number | null;
  copyDirContents: boolean;
  followLinks: boolean;
  include: PatternMatcher | null;
  exclude: PatternMatcher | null;
  /**
   * The chowner keeps every source owner (no user given). With no utime, mode or patterns either,
   * a directory copied to a fresh place is copied by `cp -a` in one process (see fastCopyDir).
   */
  keepOwners?: boolean;
  signal?: AbortSignal;
}

/** `rootPath` of fsutil: the source path resolved, following the last component only if asked. */
export async function sourcePath(root: string, p: string, followLinks: boolean): Promise<string> {
  const clean = path.posix.join('/', p);
  if (clean === '/') return root;
  return followLinks ? resolveInRoot(root, clean) : resolveParentInRoot(root, clean);
}

export async function copyPath(srcRoot: string, src: string, dstRoot: string, dst: string, ci: CopyInfo): Promise<void> {
  // The destination's parent (or dst itself when it ends in `/` or `/.`) must exist.
  const slash = dst.lastIndexOf('/');
  const last = dst.slice(slash + 1);
  const ensure = last !== '' && last !== '.' ? dst.slice(0, slash + 1) : dst;
  if (ensure !== '') {
    await mkdirAll(dstRoot, await resolveInRoot(dstRoot, ensure), 0o755, ci.chown, ci.utime);
  }
  const dstHost = await resolveInRoot(dstRoot, path.posix.normalize(dst));
  const c = new Copier(ci);
  const srcHost = await sourcePath(srcRoot, src, ci.followLinks);
  const target = await c.prepareTargetDir(dstRoot, srcHost, src, dstHost);
  if (await fastCopyDir(srcHost, target, ci)) return;
  await c.copy(srcHost, '', target, false, null, null);
  await c.flush();
}

/**
 * The common copy, a directory to a place where nothing of it exists yet, with nothing to change on
 * the way (owners, modes, times kept; no patterns), done by `cp -a --reflink=auto` (GNU coreutils)
 * in one process instead of a handful of calls per entry: about twice as fast on a tree of small
 * files. What it does there is what the Copier does: every entry new, with its type, content,
 * mode (setuid bits too), owner, nanosecond times and xattrs (unsettable xattrs skipped), hard
 * links among the copied files kept, devices and FIFOs recreated, symlinks not followed. A target
 * that exists as an empty directory keeps its mode and owner and gets the source's times, as the
 * Copier treats the top of a copy. Sockets (which the Copier turns into empty files) and any other
 * case go the per-entry way. Returns false when it did not copy.
 */
export async function fastCopyDir(srcHost: string, target: string, ci: CopyInfo): Promise<boolean> {
  if (!ci.keepOwners || ci.utime !== null || ci.mode !== null || ci.include || ci.exclude) return false;
  const src = await lstat(srcHost, { bigint: true });
  if (!src.isDirectory()) return false;
  let existing: Stats | null = null;
  try {
    existing = await lstat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (existing && (!existing.isDirectory() || (await readdir(target)).length > 0)) return false;
  const names = await listWithoutSockets(srcHost, ci.signal);
  if (names === null) return false;
  throwIfAborted(ci.signal);
  if (!existing) {
    await runCp(['-a', '--reflink=auto', '--no-target-directory', '--', srcHost, target], srcHost, ci.signal);
    return true;
  }
  for (let i = 0; i < names.length; i += CP_ARGS) {
    const batch = names.slice(i, i + CP_ARGS).map((n) => path.join(srcHost, n));
    await runCp(['-a', '--reflink=auto', '--target-directory', target, '--', ...batch], srcHost, ci.signal);
  }
  await setTimes([{ path: target, atimeNs: src.atimeNs, mtimeNs: src.mtimeNs }]);
  return true;
}

/** Source paths given to one cp process at most (the argument list is bounded). */
const CP_ARGS = 500;

/** The names in `dir`, or null when a socket is anywhere below it (by directory entry types). */
async function listWithoutSockets(dir: string, signal?: AbortSignal): Promise<string[] | null> {
  const top = await readdir(dir, { withFileTypes: true });
  const pending = top.filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
  if (top.some((e) => e.isSocket())) return null;
  while (pending.length > 0) {
    throwIfAborted(signal);
    const batch = pending.splice(0, 32);
    const lists = await Promise.all(batch.map((d) => readdir(d, { withFileTypes: true })));
    for (const [i, list] of lists.entries()) {
      for (const e of list) {
        if (e.isSocket()) return null;
        if (e.isDirectory()) pending.push(path.join(batch[i]!, e.name));
      }
    }
  }
  return top.map((e) => e.name);
}

function runCp(args: string[], src: string, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn('cp', args, { stdio: ['ignore', 'ignore', 'pipe'], signal });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      if (signal?.aborted) reject(new CancelledError('context canceled', { cause: signal.reason }));
      else reject(new LoomError('INTERNAL', `failed to start cp to copy ${src}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code) => {
      if (code === 0) resolve();
      else if (!signal?.aborted) reject(new LoomError('INTERNAL', `failed to copy ${src}: ${Buffer.concat(err).toString().trim()}`));
    });
  });
}

interface ParentDir {
  src: string;
  dst: string;
  copied: boolean;
}

class Copier {
  readonly #ci: CopyInfo;
  readonly #inodes = new Map<string, string>();
  readonly #parents: ParentDir[] = [];
  readonly #times: TimesWrite[] = [];
  readonly #xattrs: { src: string; dst: string }[] = [];

  constructor(ci: CopyInfo) {
    this.#ci = ci;
  }

  async prepareTargetDir(dstRoot: string, srcHost: string, src: string, destPath: string): Promise<string> {
    const fiSrc = await lstat(srcHost);
    let fiDest: Stats | null = null;
    try {
      fiDest = await stat(destPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    let dest = destPath;
    if ((!this.#ci.copyDirContents && fiSrc.isDirectory() && fiDest) || (!fiSrc.isDirectory() && fiDest?.isDirectory())) {
      dest = path.join(destPath, path.posix.basename(path.posix.join('/', src)));
    }
    let target = path.dirname(dest);
    if (this.#ci.copyDirContents && fiSrc.isDirectory() && !fiDest) target = dest;
    await mkdirAll(dstRoot, target, 0o755, this.#ci.chown, this.#ci.utime);
    return dest;
  }

  async copy(src: string, comps: string, target: string, overwrite: boolean, incParent: MatchInfo, excParent: MatchInfo): Promise<void> {
    throwIfAborted(this.#ci.signal);
    const fi = await lstat(src, { bigint: true });
    let targetFi = null;
    try {
      targetFi = await lstat(target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    // The source itself is always copied; patterns filter what is below it.
    const { kept: include, incInfo, excInfo } = comps === '' ? { kept: true, incInfo: null, excInfo: null } : copyFilter(comps, this.#ci.include, this.#ci.exclude, incParent, excParent);
    if (include) await this.#createParentDirs(overwrite);
    if (!fi.isDirectory()) {
      if (!include) return;
      await ensureEmptyFileTarget(target);
    }

    let copyInfo = include;
    let restoreTime = false;
    if (fi.isDirectory()) {
      const created = await this.#copyDirectory(src, comps, target, fi.mode, overwrite, include, incInfo, excInfo);
      if (!overwrite) {
        copyInfo = created;
        restoreTime = !created;
      }
    } else if (fi.isFile()) {
      let linked = false;
      if (fi.nlink > 1n) {
        const key = `${fi.dev}:${fi.ino}`;
        const first = this.#inodes.get(key);
        if (first !== undefined) {
          await link(first, target);
          linked = true;
        } else {
          this.#inodes.set(key, target);
        }
      }
      if (!linked) await copyFile(src, target, constants.COPYFILE_FICLONE);
    } else if (fi.isSymbolicLink()) {
      await symlink(await readlink(src), target);
    } else {
      // Devices and FIFOs are recreated; a socket becomes an empty stub file, as upstream.
      let mode = Number(fi.mode);
      if ((mode & 0o170000) === 0o140000) mode &= ~0o170000;
      await mknod(target, mode, fi.isCharacterDevice() || fi.isBlockDevice() ? Number(fi.rdev) : 0);
    }

    if (copyInfo) {
      await this.#copyFileInfo(fi.mode, Number(fi.uid), Number(fi.gid), fi.isSymbolicLink(), target);
      this.#xattrs.push({ src, dst: target });
      this.#times.push(this.#timesFor(target, fi.atimeNs, fi.mtimeNs));
    } else if (restoreTime && targetFi) {
      this.#times.push(this.#timesFor(target, fi.atimeNs, fi.mtimeNs));
    }
  }

  #timesFor(p: string, atimeNs: bigint, mtimeNs: bigint): TimesWrite {
    const u = this.#ci.utime;
    return u === null ? { path: p, atimeNs, mtimeNs } : { path: p, atimeNs: u, mtimeNs: u };
  }

  async #copyFileInfo(mode: bigint, uid: number, gid: number, isLink: boolean, target: string): Promise<void> {
    await applyChown(target, { uid, gid }, this.#ci.chown);
    let m = Number(mode) & 0o7777;
    if (this.#ci.mode !== null) m = (m & ~0o777) | (this.#ci.mode & 0o777);
    if (!isLink) await chmod(target, m);
  }

  async #createParentDirs(overwrite: boolean): Promise<void> {
    for (const pd of this.#parents) {
      if (pd.copied) continue;
      const fi = await stat(pd.src, { bigint: true });
      if (!fi.isDirectory()) throw new LoomError('INVALID_ARGUMENT', `${pd.src} is not a directory`);
      const created = await copyDirectoryOnly(pd.dst, fi.mode, overwrite);
      if (created) {
        await this.#copyFileInfo(fi.mode, Number(fi.uid), Number(fi.gid), false, pd.dst);
        this.#xattrs.push({ src: pd.src, dst: pd.dst });
        // Its times are set now, as upstream's are, before what made it needed is copied into
        // it: such a directory keeps the source's atime and gets the copy's time as mtime.
        await setTimes([this.#timesFor(pd.dst, fi.atimeNs, fi.mtimeNs)]);
      }
      pd.copied = true;
    }
  }

  async #copyDirectory(
    src: string,
    comps: string,
    dst: string,
    mode: bigint,
    overwrite: boolean,
    include: boolean,
    incInfo: MatchInfo,
    excInfo: MatchInfo,
  ): Promise<boolean> {
    let created = false;
    const pd: ParentDir = { src, dst, copied: false };
    if (include) {
      created = await copyDirectoryOnly(dst, mode, overwrite);
      pd.copied = true;
    }
    this.#parents.push(pd);
    try {
      const names = (await readdir(src)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      for (const n of names) {
        await this.copy(path.join(src, n), comps === '' ? n : comps + '/' + n, path.join(dst, n), true, incInfo, excInfo);
      }
    } finally {
      this.#parents.pop();
    }
    return created;
  }

  /** Times and xattrs go last: copying children would move a directory's mtime again. */
  async flush(): Promise<void> {
    await copyXattrs(this.#xattrs);
    await setTimes(this.#times);
  }
}

async function copyDirectoryOnly(dst: string, mode: bigint, overwrite: boolean): Promise<boolean> {
  let st: Stats;
  try {
    st = await lstat(dst);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(dst);
    await chmod(dst, Number(mode) & 0o7777);
    return true;
  }
  if (!st.isDirectory()) throw new LoomError('INVALID_ARGUMENT', `cannot copy to non-directory: ${dst}`);
  if (overwrite) await chmod(dst, Number(mode) & 0o7777);
  return false;
}

async function ensureEmptyFileTarget(dst: string): Promise<void> {
  let st: Stats;
  try {
    st = await lstat(dst);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (st.isDirectory()) throw new LoomError('INVALID_ARGUMENT', `cannot replace to directory ${dst} with file`);
  await rm(dst);
}
