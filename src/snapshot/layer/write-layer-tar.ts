import type { BigIntStats } from 'node:fs';
import { readlink, stat as statFollow } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { throwIfAborted } from '../../util/errors.js';
import { joinInRoot } from '../../util/fs-safe.js';
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX, type Change } from './change.js';
import { getXattr } from './sys-ops.js';
import { TarWriter, type TarHeader } from './tar-writer.js';

/**
 * Writes the OCI layer tar of `changes` (made against `upperDir`, in layer order) to `out`, as
 * containerd's ChangeWriter does for BuildKit:
 * - deletes become empty regular files `dir/.wh.name` (mode 0, root, stamped `whiteoutTime`);
 *   an opaque directory is followed by `dir/.wh..wh..opq`;
 * - every entry is preceded by its parent directories when they were not written yet (taken from
 *   upper), so an extractor never has to invent a parent;
 * - a file with several links is written once, the others as tar hard links to it, even when only
 *   some of the names changed;
 * - names are relative, directories end in `/`, owners numeric only, mtimes in whole seconds,
 *   sockets left out, security.capability kept as a pax xattr record (the only xattr upstream
 *   layers carry).
 * The output is not ended: the caller owns `out` (it usually pipes through a compressor).
 */
export interface WriteLayerOptions {
  signal?: AbortSignal;
  /** The time stamped on whiteout entries; upstream uses the time of writing. */
  whiteoutTime?: Date;
}

export async function writeLayerTar(
  changes: readonly Change[],
  upperDir: string,
  out: Writable,
  opts: WriteLayerOptions = {},
): Promise<void> {
  const w = new TarWriter({ out });
  const whiteoutSecs = Math.floor((opts.whiteoutTime ?? new Date()).getTime() / 1000);

  // One batched read of capabilities for every regular file written.
  const capPaths = changes.filter((c) => c.kind !== 'delete' && c.stat?.isFile()).map((c) => c.path);
  const caps = new Map<string, Buffer>();
  const capValues = await getXattr(
    capPaths.map((p) => joinInRoot(upperDir, p)),
    'security.capability',
  );
  capValues.forEach((v, i) => {
    if (v && v.length > 0) caps.set(capPaths[i]!, v);
  });

  const addedDirs = new Set<string>();
  const inodeSrc = new Map<string, string>();
  const inodeRefs = new Map<string, string[]>();

  const includeParents = async (name: string, isDir: boolean): Promise<void> => {
    const trimmed = name.replace(/\/+$/, '');
    const parent = path.posix.dirname(trimmed);
    if (trimmed !== '' && parent !== '.' && !addedDirs.has(parent)) {
      addedDirs.add(parent);
      // Followed stat, as upstream: a parent is a directory by construction.
      const st = await statFollow(joinInRoot(upperDir, parent), { bigint: true });
      await handle({ kind: 'modify', path: '/' + parent, stat: st });
    }
    if (isDir) addedDirs.add(trimmed);
  };

  const handle = async (c: Change): Promise<void> => {
    throwIfAborted(opts.signal);
    const rel = c.path.replace(/^\/+/, '');
    if (c.kind === 'delete') {
      const dir = path.posix.dirname(rel);
      const name = (dir === '.' ? '' : dir + '/') + WHITEOUT_PREFIX + path.posix.basename(rel);
      await includeParents(name, false);
      await w.add({ name, type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtime: whiteoutSecs });
      return;
    }
    const st = c.stat!;
    if (st.isSocket()) return;
    const source = joinInRoot(upperDir, rel);
    const hdr = headerFor(rel, st);
    if (st.isSymbolicLink()) hdr.linkname = await readlink(source);
    const cap = caps.get(c.path);
    if (cap) hdr.xattrs = new Map([['security.capability', cap]]);

    let extraLinks: string[] = [];
    if (!st.isDirectory() && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const src = inodeSrc.get(key);
      if (src !== undefined) {
        hdr.type = 'link';
        hdr.linkname = src;
        hdr.size = 0;
      } else {
        if (c.kind === 'unmodified') {
          // Not changed itself, but a changed name linking to it may follow: remember it.
          inodeRefs.set(key, [...(inodeRefs.get(key) ?? []), hdr.name]);
          return;
        }
        inodeSrc.set(key, hdr.name);
        extraLinks = inodeRefs.get(key) ?? [];
        inodeRefs.delete(key);
      }
    } else if (c.kind === 'unmodified') {
      return;
    }

    await includeParents(hdr.name, hdr.type === 'dir');
    if (hdr.type === 'file' && (hdr.size ?? 0) > 0) await w.addFile(hdr, source, opts.signal);
    else await w.add(hdr);
    if (c.opaque && hdr.type === 'dir') {
      await w.add({ name: hdr.name + WHITEOUT_OPAQUE, type: 'file', mode: 0, uid: 0, gid: 0, size: 0, mtime: whiteoutSecs });
    }
    for (const extra of extraLinks) {
      await includeParents(extra, false);
      await w.add({ ...hdr, name: extra, type: 'link', linkname: hdr.name, size: 0, xattrs: undefined });
    }
  };

  for (const c of changes) await handle(c);
  await w.finish();
}

/** The tar header of a tree entry at relative path `rel`, from its lstat. */
export function headerFor(rel: string, st: BigIntStats): TarHeader {
  const mode = Number(st.mode);
  const h: TarHeader = {
    name: rel,
    type: 'file',
    mode: mode & 0o7777,
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: 0,
    mtime: Number(st.mtimeNs / 1_000_000_000n),
  };
  if (st.isDirectory()) {
    h.type = 'dir';
    if (!h.name.endsWith('/')) h.name += '/';
  } else if (st.isFile()) {
    h.size = Number(st.size);
  } else if (st.isSymbolicLink()) {
    h.type = 'symlink';
  } else if (st.isCharacterDevice() || st.isBlockDevice()) {
    h.type = st.isCharacterDevice() ? 'char' : 'block';
    const rdev = st.rdev;
    h.devmajor = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
    h.devminor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  } else if (st.isFIFO()) {
    h.type = 'fifo';
  }
  return h;
}
