import { constants, type BigIntStats } from 'node:fs';
import { chmod, copyFile, lchown, link, lstat, mkdir, readlink, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { LoomError, throwIfAborted } from '../../util/errors.js';
import { joinInRoot, resolveInRoot } from '../../util/fs-safe.js';
import type { Change } from './change.js';
import { changes } from './changes.js';
import { copyXattrs, mknod, setTimes, type TimesWrite } from './sys-ops.js';

/**
 * Applies the changes between two trees onto a third without a tar in between: how merges and
 * diffs are materialized (BuildKit's diffApply for non-overlay snapshotters).
 *
 * Semantics, as upstream:
 * - a delete removes the path (and everything below) from the target, if there;
 * - an add or modify replaces what the target has at that path unless both are directories, in
 *   which case only the directory's metadata is taken from upper;
 * - the parent directories of every change take upper's metadata too (created when missing), so a
 *   merged tree's directories look like the layer's that touched them last;
 * - files linked to each other in upper stay linked in the target;
 * - owners, modes, xattrs and times (nanoseconds) are copied; directory times are set last.
 *
 * With `linkFiles`, non-directories are hard-linked from upper instead of copied (upstream's
 * cross-snapshot links): cheap, but the target then shares inodes with upper, so neither may be
 * modified in place afterwards. Only for committed, immutable uppers.
 */
export interface ApplyChangesOptions {
  signal?: AbortSignal;
  linkFiles?: boolean;
}

export async function applyChanges(
  lowerDir: string | null,
  upperDir: string,
  targetDir: string,
  opts: ApplyChangesOptions = {},
): Promise<void> {
  const list = await changes(lowerDir, upperDir, { signal: opts.signal });
  await applyChangeList(list, upperDir, targetDir, opts);
}

/** As applyChanges, for a change list already computed against `upperDir` (layer order). */
export async function applyChangeList(
  list: readonly Change[],
  upperDir: string,
  targetDir: string,
  opts: ApplyChangesOptions = {},
): Promise<void> {
  const target = path.resolve(targetDir);
  const visited = new Set<string>();
  const inodes = new Map<string, string>();
  const xattrPairs: { src: string; dst: string }[] = [];
  const fileTimes: TimesWrite[] = [];
  const dirTimes = new Map<string, TimesWrite>();

  // Resolved parent directories, by path: most changes share their parent with the previous one.
  // A change that deletes a path or puts a non-directory there drops what was resolved through it
  // (it may be a symlink now). Applying anything below a directory caches that directory (its
  // parents are applied first), so when nothing is cached for a path nothing below it is either.
  const parents = new Map<string, string>();
  const resolveDst = async (p: string): Promise<string> => {
    const dir = path.posix.dirname(p);
    let host = parents.get(dir);
    if (host === undefined) {
      host = await resolveInRoot(target, dir);
      parents.set(dir, host);
    }
    return path.join(host, path.posix.basename(p));
  };
  const forget = (p: string): void => {
    if (!parents.has(p)) return;
    for (const k of parents.keys()) if (k === p || k.startsWith(p + '/')) parents.delete(k);
  };

  const apply = async (c: Change, linkSub?: string): Promise<void> => {
    const dst = await resolveDst(c.path);
    if (dst === target) return;
    let dstStat = await lstatOrNull(dst);
    if (!c.stat?.isDirectory() || (dstStat && !dstStat.isDirectory())) forget(c.path);
    if (c.kind === 'delete') {
      await rm(dst, { recursive: true, force: true });
      dirTimes.delete(dst);
      return;
    }
    const st = c.stat!;
    const src = joinInRoot(upperDir, c.path);
    if (dstStat && !(st.isDirectory() && dstStat.isDirectory())) {
      await rm(dst, { recursive: true, force: true });
      dirTimes.delete(dst);
      dstStat = null;
    }
    if (!st.isDirectory() && !st.isFIFO() && !st.isSocket()) {
      const from = linkSub !== undefined ? await resolveDst(linkSub) : opts.linkFiles ? src : null;
      if (from !== null) {
        try {
          await link(from, dst);
          return;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code !== 'EXDEV' && code !== 'EMLINK') throw wrap(err, c.path);
        }
      }
    }
    try {
      if (st.isFile()) await copyFile(src, dst, constants.COPYFILE_FICLONE);
      else if (st.isDirectory()) {
        if (!dstStat) await mkdir(dst, { mode: 0o700 });
      } else if (st.isSymbolicLink()) await symlink(await readlink(src), dst);
      else await mknod(dst, Number(st.mode), Number(st.rdev));
      await lchown(dst, Number(st.uid), Number(st.gid));
      if (!st.isSymbolicLink()) await chmod(dst, Number(st.mode) & 0o7777);
    } catch (err) {
      throw wrap(err, c.path);
    }
    xattrPairs.push({ src, dst });
    const t = { path: dst, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs };
    if (st.isDirectory()) dirTimes.set(dst, t);
    else fileTimes.push(t);
  };

  const checkParent = async (p: string): Promise<void> => {
    const parent = path.posix.dirname(p);
    if (parent === '/' || visited.has(parent)) return;
    visited.add(parent);
    await checkParent(parent);
    const st = await lstat(joinInRoot(upperDir, parent), { bigint: true });
    await apply({ kind: 'modify', path: parent, stat: st });
  };

  for (const c of list) {
    throwIfAborted(opts.signal);
    if (c.kind === 'unmodified') continue;
    await checkParent(c.path);
    let linkSub: string | undefined;
    if (c.stat && !c.stat.isDirectory() && c.stat.nlink > 1n) {
      const key = `${c.stat.dev}:${c.stat.ino}`;
      linkSub = inodes.get(key);
      if (linkSub === undefined) inodes.set(key, c.path);
    }
    await apply(c, linkSub);
  }

  // Metadata that later steps would disturb goes last: xattrs (opaque markers of overlay uppers
  // are not content), then file times, then directory times.
  await copyXattrs(xattrPairs, { skip: (k) => k === 'trusted.overlay.opaque' || k === 'user.overlay.opaque' });
  await setTimes(fileTimes);
  await setTimes([...dirTimes.values()]);
}

async function lstatOrNull(p: string): Promise<BigIntStats | null> {
  try {
    return await lstat(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function wrap(err: unknown, p: string): LoomError {
  return new LoomError('INTERNAL', `failed to apply ${p}: ${(err as Error).message}`, { cause: err });
}
