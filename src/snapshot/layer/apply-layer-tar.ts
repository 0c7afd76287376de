import { chmodSync, createWriteStream, lchownSync, linkSync, lstatSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { lstat, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgumentError, throwIfAborted } from '../../util/errors.js';
import { resolveInRoot } from '../../util/fs-safe.js';
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from './change.js';
import { copyXattrs, mknod, setTimes, setXattrs, type TimesWrite, type XattrWrite } from './sys-ops.js';
import { readTar, type TarEntry } from './tar-reader.js';

/**
 * Unpacks an (uncompressed) OCI layer tar onto `dir`, as containerd's naive applier does for
 * BuildKit:
 * - `.wh.name` removes `name` from the tree below; `.wh..wh..opq` empties its directory of
 *   everything this layer did not itself bring; neither is written;
 * - an entry replaces what is at its path unless both are directories (then the directory's
 *   metadata is updated and its content kept);
 * - missing parents are created 0755 root-owned;
 * - hard links point at the entry named by the link target inside `dir`;
 * - owners, modes (setuid bits included), xattrs and times are set as the tar says; directory
 *   times last, so later entries do not move them.
 *
 * Containment: names are resolved inside `dir` with symlinks followed as if `dir` were `/`, so no
 * entry (nor hard-link target) reaches outside `dir`, whatever symlinks earlier entries made. A
 * leading `/` is read as relative, and `..` never climbs above `dir` (as containerd resolves them).
 *
 * Returns the sum of the entries' content sizes.
 */
export interface ApplyLayerOptions {
  signal?: AbortSignal;
  /**
   * Read `.wh.` entries as whiteouts (default true, as for layers). False writes them as the plain
   * files they are, as Docker's Untar does for ADD's archive extraction.
   */
  whiteouts?: boolean;
  /** Read the input to its end after the archive's end blocks (see readTar). */
  drain?: boolean;
  /**
   * `dir` is an overlay snapshot's own (unmounted) layer directory on a parent: the layer is
   * written in overlay's on-disk form, as containerd's applier writes a layer into the upper dir
   * on BuildKit's overlay snapshotter. A `.wh.name` becomes a 0/0 character device, `.wh..wh..opq`
   * the trusted.overlay.opaque xattr; names resolve inside the layer directory alone; a missing
   * parent takes the owner, mode and (but trusted.*) xattrs of the directory the parent's tree has
   * there. Unlike an apply through a mount, no directory is copied up, so none gains overlay's
   * origin xattrs (nor the xattr block they take, which `du` and `ls -s` show).
   * `lowerTree` gives the parent's tree, mounted (called only when a parent is missing).
   */
  overlay?: { lowerTree(): Promise<string> };
}

export async function applyLayerTar(input: Readable, dir: string, opts: ApplyLayerOptions = {}): Promise<number> {
  const root = path.resolve(dir);
  const unpacked = new Set<string>();
  const dirTimes: TimesWrite[] = [];
  const fileTimes: TimesWrite[] = [];
  const xattrs: XattrWrite[] = [];
  const opaques: XattrWrite[] = [];
  let total = 0;

  for await (const e of readTar(input, { drain: opts.drain })) {
    throwIfAborted(opts.signal);
    total += e.size;
    const name = cleanName(e.name);
    if (name === null) continue; // the root itself
    const slash = name.lastIndexOf('/');
    const parentRel = slash === -1 ? '' : name.slice(0, slash);
    const base = name.slice(slash + 1);
    const parent = await resolveInRoot(root, '/' + parentRel);
    const target = path.join(parent, base);
    if (target === root) continue;
    if (parent !== root && opts.whiteouts === false && !lstatOrNull(parent)) {
      // ADD's extraction (Docker's Untar) makes missing parents only where nothing stands on the
      // path: a symlink on it to nothing fails the open (or the mkdir) instead.
      const dangling = await danglingLink(root, parentRel);
      if (dangling === 'last') throw new InvalidArgumentError(`open /${name}: no such file or directory`);
      if (dangling) throw new InvalidArgumentError(`mkdir /${dangling}: file exists`);
    }
    if (parent !== root) {
      const made: string[] = [];
      mkparent(root, parent, target, made);
      if (opts.overlay && made.length) await takeLowerDirs(root, made, opts.overlay);
    }

    if (base === WHITEOUT_OPAQUE && opts.whiteouts !== false) {
      if (opts.overlay) opaques.push({ path: parent, name: 'trusted.overlay.opaque', value: Buffer.from('y') });
      else await clearOpaque(parent, unpacked);
      continue;
    }
    if (base.startsWith(WHITEOUT_PREFIX) && opts.whiteouts !== false) {
      const hidden = path.join(parent, base.slice(WHITEOUT_PREFIX.length));
      await rm(hidden, { recursive: true, force: true });
      if (opts.overlay) {
        await mknod(hidden, S_IFCHR, 0);
        lchownSync(hidden, e.uid, e.gid);
      }
      continue;
    }

    const existing = lstatOrNull(target);
    if (existing && !(existing.isDirectory() && e.type === 'dir')) await rm(target, { recursive: true, force: true });
    await createEntry(root, target, e);
    unpacked.add(target);

    // Ownership first: chown clears setuid bits and file capabilities.
    lchownSync(target, e.uid, e.gid);
    for (const [k, v] of e.xattrs) xattrs.push({ path: target, name: k, value: v });
    if (e.type !== 'symlink') chmodSync(target, e.mode & 0o7777);
    const ns = BigInt(Math.round(e.mtime * 1e6)) * 1000n;
    (e.type === 'dir' ? dirTimes : fileTimes).push({ path: target, atimeNs: ns, mtimeNs: ns });
  }

  (await setXattrs(opaques)).forEach((err, i) => {
    if (err) throw new InvalidArgumentError(`failed to mark ${rel(root, opaques[i]!.path)} opaque: ${err}`);
  });
  const errs = await setXattrs(xattrs);
  errs.forEach((err, i) => {
    // Upstream ignores only "not supported"; anything else fails the apply.
    if (err && !/not supported/i.test(err)) {
      throw new InvalidArgumentError(`failed to set xattr ${xattrs[i]!.name} on ${rel(root, xattrs[i]!.path)}: ${err}`);
    }
  });
  await setTimes(fileTimes);
  await setTimes(dirTimes);
  return total;
}

function rel(root: string, p: string): string {
  return '/' + path.relative(root, p);
}

/**
 * The entry's path relative to the root, or null for the root itself. A name that climbs above the
 * root is held at it (`../x` and `d/../../x` are `x`), as containerd's applier resolves names
 * inside the root (and BuildKit's ADD shows).
 */
export function cleanName(raw: string): string | null {
  const n = path.posix.normalize('/' + raw).replace(/\/+$/, '');
  if (n === '' || n === '/') return null;
  return n.slice(1);
}

/**
 * Where the parent path `rel` (as written, below `root`) passes a symlink whose target, inside the
 * root, does not exist: 'last' for its last component, else that component's path; null if none
 * (a missing component first means the rest is simply to be made).
 */
async function danglingLink(root: string, rel: string): Promise<string | null> {
  const comps = rel.split('/');
  let dir = root; // the components so far, resolved
  for (let i = 0; i < comps.length; i++) {
    const st = lstatOrNull(path.join(dir, comps[i]!));
    if (!st) return null;
    if (!st.isSymbolicLink() && !st.isDirectory()) return null;
    const upTo = comps.slice(0, i + 1).join('/');
    dir = await resolveInRoot(root, '/' + upTo);
    if (st.isSymbolicLink() && !lstatOrNull(dir)) return i === comps.length - 1 ? 'last' : upTo;
  }
  return null;
}

/**
 * The entry at `p`, or null. This and the other metadata calls of an entry (mkdir, symlink, link,
 * chown, chmod) are synchronous: each takes microseconds, while a promise per call waited for a
 * turn of the event loop, which a context transfer beside the unpacking makes long (a busybox
 * layer's ~400 entries took 260 ms to unpack during one, mostly waiting).
 */
function lstatOrNull(p: string) {
  return lstatSync(p, { throwIfNoEntry: false }) ?? null;
}

/**
 * Creates missing parents of `entry` 0755, adding each it makes to `made` (outermost first);
 * refuses a parent that exists as a non-directory, in the words of the open(2) of the entry that
 * upstream's unpacking fails with.
 */
function mkparent(root: string, p: string, entry: string, made: string[]): void {
  const st = lstatOrNull(p);
  if (st) {
    if (st.isDirectory()) return;
    throw new InvalidArgumentError(`open ${rel(root, entry)}: not a directory`);
  }
  const up = path.dirname(p);
  if (up.length > root.length) mkparent(root, up, entry, made);
  try {
    mkdirSync(p);
    chmodSync(p, 0o755);
    made.push(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

const S_IFCHR = 0o020000;

/**
 * For a layer written into an overlay upper: the parents mkparent just made (`dirs`) take the
 * owner, mode and xattrs (but overlay's trusted.* ones) of the directory at that path in the parent
 * snapshot's tree, where it has one (else they stay 0755 root-owned), as containerd's applier
 * makes them.
 */
async function takeLowerDirs(root: string, dirs: readonly string[], overlay: { lowerTree(): Promise<string> }): Promise<void> {
  const tree = await overlay.lowerTree();
  const pairs: { src: string; dst: string }[] = [];
  for (const p of dirs) {
    const lower = await resolveInRoot(tree, rel(root, p));
    const lst = lstatOrNull(lower);
    if (!lst?.isDirectory()) continue;
    lchownSync(p, lst.uid, lst.gid);
    chmodSync(p, lst.mode & 0o7777);
    pairs.push({ src: lower, dst: p });
  }
  await copyXattrs(pairs, { skip: (n) => n.startsWith('trusted.') });
}

async function clearOpaque(dir: string, unpacked: Set<string>): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const n of names) {
    const p = path.join(dir, n);
    if (!unpacked.has(p)) {
      await rm(p, { recursive: true, force: true });
      continue;
    }
    const st = await lstat(p);
    if (st.isDirectory()) await clearOpaque(p, unpacked);
  }
}

/** Regular files up to this size are written with one synchronous call. */
const SMALL_FILE = 256 * 1024;

async function createEntry(root: string, target: string, e: TarEntry): Promise<void> {
  switch (e.type) {
    case 'dir': {
      const st = lstatOrNull(target);
      if (!st?.isDirectory()) mkdirSync(target, { mode: 0o700 });
      return;
    }
    case 'file':
      if (e.size <= SMALL_FILE) {
        // Gathered and written in one call: a stream is several thread-pool round trips per file.
        const chunks: Buffer[] = [];
        for await (const c of e.stream()) chunks.push(c as Buffer);
        writeFileSync(target, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), { flag: 'w', mode: 0o600 });
      } else {
        await pipeline(e.stream(), createWriteStream(target, { flags: 'w', mode: 0o600 }));
      }
      return;
    case 'symlink':
      symlinkSync(e.linkname, target);
      return;
    case 'link': {
      const ln = cleanName(e.linkname);
      if (ln === null) throw new InvalidArgumentError(`invalid hard link ${JSON.stringify(e.name)} to the root`);
      const slash = ln.lastIndexOf('/');
      const lp = await resolveInRoot(root, '/' + (slash === -1 ? '' : ln.slice(0, slash)));
      const src = path.join(lp, ln.slice(slash + 1));
      try {
        linkSync(src, target);
      } catch (err) {
        throw new InvalidArgumentError(
          `failed to hard link ${JSON.stringify(e.name)} to ${JSON.stringify(e.linkname)}: ${(err as Error).message}`,
          { cause: err },
        );
      }
      return;
    }
    case 'char':
    case 'block':
    case 'fifo': {
      const type = e.type === 'char' ? 0o020000 : e.type === 'block' ? 0o060000 : 0o010000;
      const rdev = e.type === 'fifo' ? 0 : makedev(e.devmajor, e.devminor);
      await mknod(target, type | (e.mode & 0o777), rdev);
      return;
    }
  }
}

export function makedev(major: number, minor: number): number {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  const dev = ((ma & 0xfffn) << 8n) | ((ma & ~0xfffn) << 32n) | (mi & 0xffn) | ((mi & ~0xffn) << 12n);
  return Number(dev);
}
