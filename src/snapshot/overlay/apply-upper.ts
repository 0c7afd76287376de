import { constants, copyFileSync, linkSync, lstatSync, mkdirSync, readlinkSync, rmSync, symlinkSync, lchownSync, chmodSync, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { TimeSlice } from '../../cache/time-slice.js';
import { LoomError, throwIfAborted } from '../../util/errors.js';
import { joinInRoot } from '../../util/fs-safe.js';
import type { Change } from '../layer/change.js';
import { copyXattrs, mknod, setTimes, setXattrs, type TimesWrite, type XattrWrite } from '../layer/sys-ops.js';

const OPAQUE = 'trusted.overlay.opaque';
const S_IFCHR = 0o020000;

/**
 * Applies layers' changes to an overlay snapshot's own layer directory `upper`, written directly
 * in overlay's on-disk form while nothing mounts it, so that the snapshot's tree (its parent's
 * tree under `upper`) becomes what applying the changes to the parent's tree gives. This is how a
 * merge is made on overlay, as upstream's merge snapshotter makes it: the inputs' common base is
 * the snapshot's parent and stays a lower, only the other layers are applied.
 *
 * The rules are those of layer/apply-changes.ts, with the lower tree left alone:
 * - a delete removes what `upper` has at the path and leaves a whiteout (a 0/0 character device)
 *   hiding whatever the lowers have there (a whiteout over nothing hides nothing);
 * - a non-directory replaces what `upper` has at the path, and hides a lower's entry;
 * - a directory over a directory (in `upper`, or only in a lower) takes the layer's metadata and
 *   keeps the content; a directory where `upper` has a non-directory or a whiteout is new, and
 *   opaque (trusted.overlay.opaque=y) so nothing a lower has there shows through;
 * - the parent directories of every change take the layer's metadata, created as above;
 * - non-directories are hard links to the layer's inodes (`srcDir` must then be the layer's own
 *   directory on the same filesystem; elsewhere, or past the link limit, they are copied). Layers
 *   are committed and never written again, and the links keep files linked in a layer linked.
 *
 * `srcDir` is where the changes' entries are read (the layer's own directory, or its tree).
 * Directory times are set last, after everything below them changed.
 */
export async function applyToUpper(
  list: readonly Change[],
  srcDir: string,
  upper: string,
  lowers: LowerTree,
  opts: { signal?: AbortSignal } = {},
): Promise<void> {
  const slice = new TimeSlice();
  const visited = new Set<string>();
  const opaque: XattrWrite[] = [];
  const created: { src: string; dst: string }[] = [];
  const fileTimes: TimesWrite[] = [];
  const dirTimes = new Map<string, TimesWrite>();

  const clear = (dst: string): void => {
    rmSync(dst, { recursive: true, force: true });
    dirTimes.delete(dst);
  };

  /** Makes `p` a directory of `upper` with the layer's metadata `st`; opaque when it replaces a non-directory or a whiteout. */
  const dirAt = (p: string, st: BigIntStats): void => {
    const dst = joinInRoot(upper, p);
    const here = lstatOrNull(dst);
    if (here && !here.isDirectory()) {
      clear(dst);
      opaque.push({ path: dst, name: OPAQUE, value: Buffer.from('y') });
      lowers.hide(p);
    }
    if (!here || !here.isDirectory()) mkdirSync(dst, { mode: 0o700 });
    lchownSync(dst, Number(st.uid), Number(st.gid));
    chmodSync(dst, Number(st.mode) & 0o7777);
    created.push({ src: joinInRoot(srcDir, p), dst });
    dirTimes.set(dst, { path: dst, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
  };

  const parents = (p: string): void => {
    const parent = path.posix.dirname(p);
    if (parent === '/' || visited.has(parent)) return;
    visited.add(parent);
    parents(parent);
    dirAt(parent, lstatSync(joinInRoot(srcDir, parent), { bigint: true }));
  };

  for (const c of list) {
    if (slice.due()) {
      throwIfAborted(opts.signal);
      await slice.pause();
    }
    if (c.kind === 'unmodified' || c.path === '/') continue;
    try {
      parents(c.path);
      const dst = joinInRoot(upper, c.path);
      if (c.kind === 'delete') {
        clear(dst);
        // Only over a lower entry the new layer's directories let show: in a directory of the
        // upper alone, the kernel lists a whiteout as an entry it then cannot find.
        if (lowers.shows(c.path)) await mknod(dst, S_IFCHR, 0);
        continue;
      }
      const st = c.stat!;
      if (st.isDirectory()) {
        dirAt(c.path, st);
        continue;
      }
      clear(dst);
      const src = joinInRoot(srcDir, c.path);
      try {
        linkSync(src, dst);
        continue;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EXDEV' && code !== 'EMLINK') throw err;
      }
      if (st.isFile()) copyFileSync(src, dst, constants.COPYFILE_FICLONE);
      else if (st.isSymbolicLink()) symlinkSync(readlinkSync(src), dst);
      else await mknod(dst, Number(st.mode), Number(st.rdev));
      lchownSync(dst, Number(st.uid), Number(st.gid));
      if (!st.isSymbolicLink()) chmodSync(dst, Number(st.mode) & 0o7777);
      created.push({ src, dst });
      fileTimes.push({ path: dst, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
    } catch (err) {
      if (err instanceof LoomError) throw err;
      throw new LoomError('INTERNAL', `failed to apply ${c.path} of a merged layer: ${(err as Error).message}`, { cause: err });
    }
  }

  // Metadata that later steps would disturb goes last: xattrs of what was created or copied (not
  // the layers' own overlay markers), opaque markers, then file times, then directory times.
  await copyXattrs(created, { skip: (k) => k.startsWith('trusted.overlay.') || k.startsWith('user.overlay.') });
  (await setXattrs(opaque)).forEach((e, i) => {
    if (e) throw new LoomError('INTERNAL', `failed to mark ${opaque[i]!.path} opaque: ${e}`);
  });
  await setTimes(fileTimes);
  await setTimes([...dirTimes.values()]);
}

/**
 * What the lowers (the new snapshot's parent tree, `root`: its mounted view) have, as seen through
 * the upper being written: an entry shows unless a directory above it in the upper was made
 * opaque (or replaced what the lowers have there). Lookups go through real directories only.
 */
export class LowerTree {
  readonly #root: string;
  readonly #hidden = new Set<string>();
  readonly #dirs = new Map<string, boolean>();

  constructor(root: string) {
    this.#root = root;
  }

  /** The upper's directory `p` hides what the lowers have at and below `p`. */
  hide(p: string): void {
    this.#hidden.add(p);
  }

  /** Whether the lowers have an entry at `p` that the upper's directories let show. */
  shows(p: string): boolean {
    const parent = path.posix.dirname(p);
    if (!this.#isDir(parent)) return false;
    return lstatOrNull(joinInRoot(this.#root, p)) !== null;
  }

  #isDir(p: string): boolean {
    for (let a = p; a !== '/'; a = path.posix.dirname(a)) if (this.#hidden.has(a)) return false;
    return this.#lowerDir(p);
  }

  /** The lowers have a real directory at `p`, reached through real directories (they never change). */
  #lowerDir(p: string): boolean {
    if (p === '/') return true;
    let known = this.#dirs.get(p);
    if (known === undefined) {
      known = this.#lowerDir(path.posix.dirname(p)) && (lstatOrNull(joinInRoot(this.#root, p))?.isDirectory() ?? false);
      this.#dirs.set(p, known);
    }
    return known;
  }
}

function lstatOrNull(p: string): BigIntStats | null {
  try {
    return lstatSync(p, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}
