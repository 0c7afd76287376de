import { chmod, lstat, mkdir, mkdtemp, rm, rmdir, symlink as fsSymlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type {
  FileActionCopy,
  FileActionMkDir,
  FileActionMkFile,
  FileActionRm,
  FileActionSymlink,
} from '../../gen/buildkit/ops_pb.js';
import { InvalidArgumentError, isAbortError, LoomError } from '../../util/errors.js';
import { resolveInRoot, resolveParentInRoot } from '../../util/fs-safe.js';
import { applyLayerTar } from '../../snapshot/layer/apply-layer-tar.js';
import { readTar } from '../../snapshot/layer/tar-reader.js';
import { copyPath, sourcePath, type CopyInfo } from './copy.js';
import { fileCompression, openDecompressed, type Compression } from './decompress.js';
import { applyChown, applyUtime, chownerFor, fsError, fsErrorText, mkdirAll, timestampNs, type User } from './fs-util.js';
import { PatternMatcher } from '../../util/patterns.js';
import { resolveWildcards } from './wildcard.js';

/**
 * The five file actions on directories already resolved for them: `root` is the writable tree the
 * action changes, `src` (copy) the tree it reads. Semantics are BuildKit's file backend (v0.11,
 * plus the later rm fix: without allowNotFound a missing path is an error). Errors read as
 * upstream's, with paths shown inside the trees: `lstat /src/x: no such file or directory`.
 */

export async function mkdirAction(root: string, a: FileActionMkDir, user: User | null): Promise<void> {
  try {
    const p = await resolveInRoot(root, path.posix.join('/', a.path));
    const ch = chownerFor(user);
    const tm = timestampNs(a.timestamp);
    const mode = a.mode & 0o777;
    if (a.makeParents) {
      await mkdirAll(root, p, mode, ch, tm);
      return;
    }
    try {
      await mkdir(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw err;
    }
    await chmod(p, mode);
    await applyChown(p, null, ch);
    await applyUtime(p, tm);
  } catch (err) {
    throw fsError(err, [root]);
  }
}

export async function mkfileAction(root: string, a: FileActionMkFile, user: User | null): Promise<void> {
  try {
    const p = await resolveInRoot(root, path.posix.join('/', a.path));
    let existed = true;
    try {
      await lstat(p);
    } catch {
      existed = false;
    }
    // As os.WriteFile: the mode applies only to a file this creates.
    await writeFile(p, a.data, { mode: a.mode & 0o777 });
    if (!existed) await chmod(p, a.mode & 0o777);
    await applyChown(p, null, chownerFor(user));
    await applyUtime(p, timestampNs(a.timestamp));
  } catch (err) {
    throw fsError(err, [root]);
  }
}

export async function rmAction(root: string, a: FileActionRm): Promise<void> {
  try {
    if (a.allowWildcard) {
      for (const m of await resolveWildcards(root, cleanPath(a.path), false)) await rmPath(root, m, a.allowNotFound);
      return;
    }
    await rmPath(root, a.path, a.allowNotFound);
  } catch (err) {
    throw fsError(err, [root]);
  }
}

async function rmPath(root: string, src: string, allowNotFound: boolean): Promise<void> {
  const clean = path.posix.join('/', src);
  if (clean === '/') throw new InvalidArgumentError('rmPath: invalid empty path');
  const p = await resolveParentInRoot(root, clean);
  // lstat, not upstream's stat: a symlink is judged by itself, never through the host's root.
  if (!allowNotFound) await lstat(p);
  await rm(p, { recursive: true, force: true });
}

export async function symlinkAction(root: string, a: FileActionSymlink, user: User | null): Promise<void> {
  try {
    const p = await resolveInRoot(root, path.posix.join('/', a.newpath));
    await fsSymlink(a.oldpath, p);
    await applyChown(p, null, chownerFor(user));
    await applyUtime(p, timestampNs(a.timestamp));
  } catch (err) {
    throw fsError(err, [root]);
  }
}

/** Upstream's cleanPath: absolute and clean, but a trailing `/` or `/.` is kept (it means "into"). */
export function cleanPath(s: string): string {
  let s2 = path.posix.join('/', s);
  if (s2.length > 1 && s2.endsWith('/')) s2 = s2.slice(0, -1);
  if (s.endsWith('/.')) {
    if (s2 !== '/') s2 += '/';
    s2 += '.';
  } else if (s.endsWith('/') && s2 !== '/') {
    s2 += '/';
  }
  return s2;
}

export async function copyAction(src: string, dest: string, a: FileActionCopy, user: User | null, signal?: AbortSignal): Promise<void> {
  try {
    const srcPath = cleanPath(a.src);
    const destPath = cleanPath(a.dest);
    if (!a.createDestPath) {
      const p = await resolveInRoot(dest, path.posix.join('/', a.dest));
      try {
        await lstat(path.dirname(p));
      } catch (err) {
        throw fsError(err, [dest], `failed to stat ${a.dest}`);
      }
    }
    const ci: CopyInfo = {
      chown: chownerFor(user),
      utime: timestampNs(a.timestamp),
      mode: a.mode === -1 ? null : a.mode,
      copyDirContents: a.dirCopyContents,
      followLinks: a.followSymlink,
      include: a.includePatterns.length > 0 ? new PatternMatcher(a.includePatterns) : null,
      exclude: a.excludePatterns.length > 0 ? new PatternMatcher(a.excludePatterns) : null,
      keepOwners: user === null,
      signal,
    };
    if (!a.allowWildcard) {
      if (a.attemptUnpackDockerCompatibility && (await unpack(src, srcPath, dest, destPath, ci))) return;
      await copyPath(src, srcPath, dest, destPath, ci);
      return;
    }
    const matches = await resolveWildcards(src, srcPath, a.followSymlink);
    if (matches.length === 0) {
      if (a.allowEmptyWildcard) return;
      throw new InvalidArgumentError(`${srcPath} not found`);
    }
    for (const m of matches) {
      if (a.attemptUnpackDockerCompatibility && (await unpack(src, m, dest, destPath, ci))) continue;
      await copyPath(src, m, dest, destPath, ci);
    }
  } catch (err) {
    if (err instanceof UnpackError) throw err;
    // Unprefixed, as upstream's copy reports (`cannot copy to non-directory: /dst`).
    throw fsError(err, [src, dest]);
  }
}

/** An archive ADD could not extract, in upstream's words (Docker's chrootarchive reports it so). */
class UnpackError extends LoomError {}

/**
 * ADD's archive extraction: a source that is a regular file and reads as a tar, plain or
 * compressed (gzip, bzip2, xz, zstd: see decompress.ts), is unpacked into dest instead of copied.
 */
async function unpack(srcRoot: string, src: string, destRoot: string, dest: string, ci: CopyInfo): Promise<boolean> {
  const p = await sourcePath(srcRoot, src, true);
  const kind = await archiveKind(p);
  if (kind === null) return false;
  const d = await resolveInRoot(destRoot, dest);
  await mkdirAll(destRoot, d, 0o755, ci.chown, ci.utime);
  // Upstream unpacks inside a chroot to the destination, entered by pivot_root onto a temporary
  // directory it makes and removes in the destination: the destination's mtime becomes the time
  // of the extraction even when the archive adds nothing at its top (an archive's own `./` entry
  // still sets it, afterwards). The same mkdir and rmdir here give the same times.
  await rmdir(await mkdtemp(path.join(d, '.pivot_root')));
  const input = openDecompressed(p, kind);
  try {
    // An archive is not a layer: `.wh.` names in it are files like any other.
    await applyLayerTar(input.stream, d, { signal: ci.signal, whiteouts: false });
    await input.done();
  } catch (err) {
    if (isAbortError(err)) throw err;
    // Paths as the extraction sees them: below the directory it unpacks into.
    throw new UnpackError('UNKNOWN', `Error processing tar file(exit status 1): ${fsErrorText(err, [d, srcRoot]).message}`, { cause: err });
  } finally {
    input.close();
  }
  return true;
}

/** The compression of a regular file that reads as a tar (its first header parses), else null. */
async function archiveKind(p: string): Promise<Compression | null> {
  let st;
  try {
    st = await lstat(p);
  } catch {
    return null;
  }
  if (!st.isFile()) return null;
  const kind = await fileCompression(p);
  const input = openDecompressed(p, kind);
  try {
    const it = readTar(input.stream);
    const first = await it.next();
    await it.return(undefined);
    return first.done ? null : kind;
  } catch {
    return null;
  } finally {
    input.close();
  }
}
