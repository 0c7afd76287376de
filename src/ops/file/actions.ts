import { chmod, lstat, mkdir, mkdtemp, open, rm, rmdir, symlink as fsSymlink, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { constants as zlibConstants, createInflateRaw, inflateRawSync } from 'node:zlib';
import { createReadStream } from 'node:fs';
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
import { DecoderError, fileCompression, openDecompressed, type Compression } from './decompress.js';
import { applyChown, applyUtime, chownerFor, fsError, fsErrorText, mkdirAll, timestampNs, type User } from './fs-util.js';
import { patternMatcherFor } from '../../util/patterns.js';
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
      include: patternMatcherFor('include', a.includePatterns),
      exclude: patternMatcherFor('exclude', a.excludePatterns),
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
    try {
      // An archive is not a layer: `.wh.` names in it are files like any other. Upstream
      // decompresses the whole file into its extraction, which reads it to the end.
      await applyLayerTar(input.stream, d, { signal: ci.signal, whiteouts: false, drain: true });
    } catch (err) {
      if (isZlibError(err)) {
        // Bytes after the last gzip member that do not start another fail the copy into
        // upstream's extraction, which went well, in Go's gzip reader's words; a member that
        // breaks off leaves the extraction a tar that ends early. (Node's gunzip drops the output
        // of the input it failed on, so which it was is read from the file.)
        const after = kind === 'gzip' ? await gzipTrailerError(p) : undefined;
        throw new UnpackError('UNKNOWN', after ? `Error processing tar file(${after}): ` : 'Error processing tar file(exit status 1): unexpected EOF', { cause: err });
      }
      throw err;
    }
    await input.done();
  } catch (err) {
    if (isAbortError(err) || err instanceof UnpackError) throw err;
    // A decoder that failed after the archive's end blocks, on what follows them: upstream
    // reports it as the error of copying the decompressed file into its extraction.
    if (err instanceof DecoderError) throw new UnpackError('UNKNOWN', `Error processing tar file(${decoderErrorText(err)}): `, { cause: err });
    // Paths as the extraction sees them: below the directory it unpacks into.
    throw new UnpackError('UNKNOWN', `Error processing tar file(exit status 1): ${fsErrorText(err, [d, srcRoot]).message}`, { cause: err });
  } finally {
    input.close();
  }
  return true;
}

function isZlibError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && code.startsWith('Z_');
}

/**
 * A decoder's failure in upstream's words: its bzip2 and zstd decoders are Go's (stray bytes after
 * the last stream: a bad magic value, or fewer bytes than one), its xz is the `xz` program, whose
 * exit and message it quotes.
 */
function decoderErrorText(err: DecoderError): string {
  if (err.compression === 'bzip2' && err.exitCode === 0) return 'bzip2 data invalid: bad magic value in continuation file';
  if (err.compression === 'zstd' && /unknown header/.test(err.stderr)) return 'unexpected EOF';
  if (err.compression === 'zstd' && /unsupported format/.test(err.stderr)) return 'invalid input: magic number mismatch';
  return `exit status ${err.exitCode}: ${err.stderr}`;
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
  if (kind === 'gzip') return (await gzipStartsWithTar(p)) ? kind : null;
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

/**
 * Whether a gzip file's first member starts with a tar header, read as Go's gzip reader reads it:
 * lazily, so what follows the first member (stray bytes, a broken second member) is not looked
 * at yet. (Node's gunzip checks the bytes after a member as soon as they are in its input.)
 */
async function gzipStartsWithTar(p: string): Promise<boolean> {
  const fh = await open(p, 'r');
  let head: Buffer;
  try {
    head = Buffer.alloc(256 * 1024);
    head = head.subarray(0, (await fh.read(head, 0, head.length, 0)).bytesRead);
  } finally {
    await fh.close();
  }
  const at = gzipHeaderLength(head);
  if (at === undefined || at >= head.length) return false;
  let out: Buffer;
  try {
    // A raw inflate stops at the end of the member's deflate data; a prefix of it gives what it holds.
    out = inflateRawSync(head.subarray(at), { finishFlush: zlibConstants.Z_SYNC_FLUSH, maxOutputLength: 64 * 1024 });
  } catch (err) {
    // More output than asked for is a prefix too.
    if ((err as NodeJS.ErrnoException).code !== 'ERR_BUFFER_TOO_LARGE') return false;
    out = inflateRawSync(head.subarray(at, at + 4096), { finishFlush: zlibConstants.Z_SYNC_FLUSH });
  }
  const it = readTar(Readable.from([out]));
  try {
    return !(await it.next()).done;
  } catch {
    return false;
  } finally {
    await it.return(undefined);
  }
}

/**
 * The length of the gzip member header `head` starts with (ID1 ID2 CM FLG MTIME(4) XFL OS, then
 * the optional fields FLG names), where its deflate data begins; undefined when the header does
 * not end within `head`.
 */
function gzipHeaderLength(head: Buffer): number | undefined {
  if (head.length < 10) return undefined;
  const flg = head[3]!;
  let at = 10;
  if (flg & 4) {
    if (head.length < at + 2) return undefined;
    at += 2 + head.readUInt16LE(at);
  }
  for (const bit of [8, 16]) {
    if (!(flg & bit)) continue;
    const z = head.indexOf(0, at);
    if (z === -1) return undefined;
    at = z + 1;
  }
  if (flg & 2) at += 2;
  return at <= head.length ? at : undefined;
}

/**
 * What Go's gzip reader says of a file whose members are whole but are followed by bytes that do
 * not start another one ("unexpected EOF" for fewer than ten, "gzip: invalid header" otherwise);
 * undefined when a member itself is broken or nothing follows.
 */
async function gzipTrailerError(p: string): Promise<string | undefined> {
  const fh = await open(p, 'r');
  try {
    const size = (await fh.stat()).size;
    let at = 0;
    for (;;) {
      const head = Buffer.alloc(64 * 1024);
      const n = (await fh.read(head, 0, head.length, at)).bytesRead;
      if (n < 10) return at === 0 ? undefined : 'unexpected EOF';
      if (head[0] !== 0x1f || head[1] !== 0x8b || head[2] !== 8) return at === 0 ? undefined : 'gzip: invalid header';
      const h = gzipHeaderLength(head.subarray(0, n));
      if (h === undefined) return undefined;
      // The member's deflate data, inflated and dropped: its end tells where the next one starts.
      const consumed = await new Promise<number | undefined>((ok) => {
        const inf = createInflateRaw();
        const file = createReadStream(p, { start: at + h });
        inf.on('data', () => {});
        inf.once('end', () => {
          file.destroy();
          ok(inf.bytesWritten);
        });
        inf.once('error', () => {
          file.destroy();
          ok(undefined);
        });
        file.once('error', () => ok(undefined));
        file.pipe(inf);
      });
      if (consumed === undefined) return undefined;
      at += h + consumed + 8; // and its CRC-32 and size
      if (at >= size) return undefined;
    }
  } finally {
    await fh.close();
  }
}
