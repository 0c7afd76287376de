import { spawn } from 'node:child_process';
import { chmodSync, constants as fsConstants, copyFileSync, lchownSync, linkSync, lstatSync, mkdirSync, readdirSync, readlinkSync, symlinkSync, type BigIntStats } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  CancelledError,
  InvalidArgumentError,
  LoomError,
  NotFoundError,
  throwIfAborted,
} from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import { lstatTree } from '../../cache/time-slice.js';
import { copyXattrs, setTimes, type TimesWrite } from '../layer/sys-ops.js';
import type { Change } from '../layer/change.js';
import { KEY_RE, type SnapshotInfo, type Snapshotter, type SnapshotUsage } from '../snapshotter.js';

const log = rootLog.child({ sub: 'snapshot' });

/**
 * Snapshots as full copies: `<root>/snapshots/<key>/fs` holds the tree, `info.json` beside it the
 * metadata. `prepare` copies the parent with `cp -a --reflink=auto` (GNU coreutils): one process
 * that keeps modes, owners, nanosecond times, symlinks, hard links, xattrs and device nodes, and
 * shares blocks on filesystems that can (btrfs, xfs). Measured here on a 300 MB, 5,700-entry tree
 * (ext4): 3.5-4.3 s against 6-10 s for Node's fs.cp, which moreover keeps neither owners, xattrs
 * nor device nodes.
 *
 * Crash safety: a key is claimed by creating its directory, the tree is built in `fs.tmp` and
 * renamed, and `info.json` is written last (atomically); a directory without `info.json` is debris
 * from a crash, removed by `cleanup()` and invisible to everything else.
 */
export class NativeSnapshotter implements Snapshotter {
  readonly name = 'native';
  readonly #dir: string;

  constructor(opts: { root: string }) {
    this.#dir = path.join(path.resolve(opts.root), 'snapshots');
  }

  #keyDir(key: string): string {
    if (!KEY_RE.test(key)) throw new InvalidArgumentError(`invalid snapshot key ${JSON.stringify(key)}`);
    return path.join(this.#dir, key);
  }

  async #readInfo(key: string): Promise<SnapshotInfo> {
    const file = path.join(this.#keyDir(key), 'info.json');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`snapshot ${key} not found`);
      throw err;
    }
    return JSON.parse(text) as SnapshotInfo;
  }

  async #writeInfo(info: SnapshotInfo): Promise<void> {
    const dir = this.#keyDir(info.key);
    const tmp = path.join(dir, 'info.json.tmp');
    await writeFile(tmp, JSON.stringify(info));
    await rename(tmp, path.join(dir, 'info.json'));
  }

  async prepare(key: string, parent?: string | null, opts: { signal?: AbortSignal } = {}): Promise<string> {
    const dir = this.#keyDir(key);
    let parentFs: string | null = null;
    if (parent) {
      const pinfo = await this.#readInfo(parent);
      if (pinfo.kind !== 'committed') {
        throw new LoomError('FAILED_PRECONDITION', `snapshot ${parent} is not committed: cannot prepare ${key} from it`);
      }
      parentFs = path.join(this.#keyDir(parent), 'fs');
    }
    await mkdir(this.#dir, { recursive: true });
    try {
      await mkdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new LoomError('ALREADY_EXISTS', `snapshot ${key} already exists`);
      }
      throw err;
    }
    try {
      const tmp = path.join(dir, 'fs.tmp');
      if (parentFs) {
        await copyTree(parentFs, tmp, opts.signal);
      } else {
        await mkdir(tmp);
        await chmod(tmp, 0o755);
      }
      await rename(tmp, path.join(dir, 'fs'));
      await this.#writeInfo({ key, parent: parent ?? null, kind: 'active', createdAt: Date.now(), committedAt: null });
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return path.join(dir, 'fs');
  }

  async commit(key: string): Promise<void> {
    const info = await this.#readInfo(key);
    if (info.kind === 'committed') throw new LoomError('FAILED_PRECONDITION', `snapshot ${key} is already committed`);
    await this.#writeInfo({ ...info, kind: 'committed', committedAt: Date.now() });
  }

  async dir(key: string): Promise<string> {
    await this.#readInfo(key);
    return path.join(this.#keyDir(key), 'fs');
  }

  stat(key: string): Promise<SnapshotInfo> {
    return this.#readInfo(key);
  }

  async remove(key: string): Promise<void> {
    await this.#readInfo(key);
    const children = (await this.list()).filter((s) => s.parent === key).map((s) => s.key);
    if (children.length > 0) {
      throw new LoomError('FAILED_PRECONDITION', `snapshot ${key} is the parent of ${children.join(', ')}`);
    }
    const dir = this.#keyDir(key);
    // Drop the metadata first: a half-removed tree is then debris, never a snapshot.
    await rm(path.join(dir, 'info.json'));
    await rm(dir, { recursive: true, force: true });
  }

  async usage(key: string): Promise<SnapshotUsage> {
    const fsDir = await this.dir(key);
    return treeUsage(fsDir);
  }

  async list(): Promise<SnapshotInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: SnapshotInfo[] = [];
    for (const n of names) {
      if (!KEY_RE.test(n)) continue;
      try {
        out.push(await this.#readInfo(n));
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err;
      }
    }
    return out;
  }

  async changes(_key: string): Promise<Change[] | null> {
    // Full copies know nothing of their parent: callers diff the two trees.
    return null;
  }

  /** Removes debris of prepares or removes that a crash interrupted. Call at start only. */
  async cleanup(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return;
    }
    for (const n of names) {
      const dir = path.join(this.#dir, n);
      try {
        await lstat(path.join(dir, 'info.json'));
      } catch {
        log.info({ dir }, 'removing incomplete snapshot');
        await rm(dir, { recursive: true, force: true });
      }
    }
  }
}

/** Copies the tree at `src` to the new path `dst` with everything kept (see the class comment). */
export async function copyTree(src: string, dst: string, signal?: AbortSignal): Promise<void> {
  await runCp(['-a', '--reflink=auto', '--no-target-directory', src, dst], src, signal);
}

/**
 * Like copyTree, but files, symlinks and device nodes in `dst` are hard links to the inodes in
 * `src` (directories are new, with `src`'s metadata). Cheap where creating files is not (a
 * thousand small files cost seconds on some disks, links a few milliseconds). Only safe when
 * neither tree ever writes an inode in place again (content, mode, owner, times, xattrs): both see
 * every such change. Fails (EXDEV) when the trees are on different filesystems.
 */
export async function linkTree(src: string, dst: string, signal?: AbortSignal): Promise<void> {
  const small = smallTree(src, SMALL_TREE);
  if (small) await linkSmallTree(src, dst, small);
  else await runCp(['-a', '--link', '--no-target-directory', src, dst], src, signal);
}

/**
 * Trees up to this many entries are linked in the daemon itself: starting `cp` blocks the event
 * loop while the daemon's large address space is forked (~10 ms here, more than linking a few
 * hundred files takes), and a build links a tree per local source, most of them one file (the
 * Dockerfile, .dockerignore).
 */
const SMALL_TREE = 256;

/** The relative paths of every entry below `root`, parents before children, with whether each is a directory; undefined past `max` entries. */
function smallTree(root: string, max: number): { rel: string; dir: boolean }[] | undefined {
  const out: { rel: string; dir: boolean }[] = [];
  const walk = (rel: string): boolean => {
    for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
      if (out.length === max) return false;
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push({ rel: r, dir: e.isDirectory() });
      if (e.isDirectory() && !walk(r)) return false;
    }
    return true;
  };
  return walk('') ? out : undefined;
}

/**
 * linkTree in the daemon: directories made with the source's owner, mode, xattrs and times (the
 * root's onto `dst`, as `cp -a --no-target-directory`), everything else hard-linked (symlinks
 * themselves, not followed). A link across filesystems throws EXDEV, as cp fails.
 */
async function linkSmallTree(src: string, dst: string, entries: readonly { rel: string; dir: boolean }[]): Promise<void> {
  mkdirSync(dst, { recursive: true });
  const dirs: Made[] = [{ from: src, to: dst, st: lstatSync(src, { bigint: true }) }];
  for (const e of entries) {
    const from = path.join(src, e.rel);
    const to = path.join(dst, e.rel);
    if (e.dir) {
      mkdirSync(to);
      dirs.push({ from, to, st: lstatSync(from, { bigint: true }) });
    } else linkSync(from, to);
  }
  await takeMetadata(dirs);
}

/** An entry made at `to` from the entry at `from`, whose lstat is `st`. */
type Made = { from: string; to: string; st: BigIntStats };

/**
 * Gives each made entry its source's owner, mode, xattrs and ns times, as `cp -a` does (symlinks:
 * owner and times).
 */
async function takeMetadata(made: readonly Made[]): Promise<void> {
  for (const m of made) {
    // Owner first: chown clears setuid bits.
    lchownSync(m.to, Number(m.st.uid), Number(m.st.gid));
    if (!m.st.isSymbolicLink()) chmodSync(m.to, Number(m.st.mode) & 0o7777);
  }
  await copyXattrs(made.filter((m) => !m.st.isSymbolicLink()).map((m) => ({ src: m.from, dst: m.to })));
  await setTimes(made.map((m): TimesWrite => ({ path: m.to, atimeNs: m.st.atimeNs, mtimeNs: m.st.mtimeNs })));
}

/** Content bytes up to which a small tree may be copied (smallCopy) rather than linked. */
const SMALL_COPY_BYTES = 4n << 20n;

/** A tree smallCopy may copy: its entries (as smallTree) with their lstat. */
export interface SmallCopy {
  entries: { rel: string; dir: boolean; st: BigIntStats }[];
}

/**
 * The tree at `root` when it is small enough to copy in the daemon: at most 256 entries and 4 MiB
 * of file content, nothing but directories, regular files and symlinks. Else undefined.
 */
export function smallCopy(root: string): SmallCopy | undefined {
  const tree = smallTree(root, SMALL_TREE);
  if (!tree) return undefined;
  let bytes = 0n;
  const entries: SmallCopy['entries'] = [];
  for (const e of tree) {
    const st = lstatSync(path.join(root, e.rel), { bigint: true });
    if (st.isFile()) bytes += st.size;
    else if (!st.isDirectory() && !st.isSymbolicLink()) return undefined;
    if (bytes > SMALL_COPY_BYTES) return undefined;
    entries.push({ ...e, st });
  }
  return { entries };
}

/**
 * Copies a tree smallCopy accepted to the new path `dst`, in the daemon, as `cp -a` would: files
 * are new inodes (files linked to each other in `src` stay linked to each other), with owner,
 * mode, xattrs and ns times; the root's metadata goes onto `dst`.
 */
export async function copySmall(src: string, dst: string, tree: SmallCopy): Promise<void> {
  mkdirSync(dst, { recursive: true });
  const all: Made[] = [{ from: src, to: dst, st: lstatSync(src, { bigint: true }) }];
  const firstOf = new Map<bigint, string>();
  for (const e of tree.entries) {
    const from = path.join(src, e.rel);
    const to = path.join(dst, e.rel);
    if (e.st.isDirectory()) mkdirSync(to);
    else if (e.st.isSymbolicLink()) symlinkSync(readlinkSync(from), to);
    else {
      const first = e.st.nlink > 1n ? firstOf.get(e.st.ino) : undefined;
      if (first) {
        linkSync(first, to);
        continue;
      }
      if (e.st.nlink > 1n) firstOf.set(e.st.ino, to);
      copyFileSync(from, to, fsConstants.COPYFILE_FICLONE);
    }
    all.push({ from, to, st: e.st });
  }
  await takeMetadata(all);
}

async function runCp(args: string[], src: string, signal?: AbortSignal): Promise<void> {
  throwIfAborted(signal);
  await new Promise<void>((resolve, reject) => {
    const child = spawn('cp', args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      signal,
    });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      if (signal?.aborted) reject(new CancelledError('context canceled', { cause: signal.reason }));
      else reject(new LoomError('INTERNAL', `failed to start cp: ${e.message}`, { cause: e }));
    });
    child.on('close', (code) => {
      if (code === 0) resolve();
      else if (!signal?.aborted) {
        reject(new LoomError('INTERNAL', `failed to copy snapshot ${src}: ${Buffer.concat(err).toString().trim()}`));
      }
    });
  });
}

/**
 * treeUsage's size for a tree `dir` that linkTree just made from a tree whose entries (paths
 * relative to it) have `stats`: the files are those inodes, counted once each; only the
 * directories, new inodes, are looked at.
 */
export function linkedTreeUsage(dir: string, stats: Iterable<[string, BigIntStats]>): number {
  const u = new UsageCount();
  u.add(lstatSync(dir, { bigint: true }));
  for (const [rel, st] of stats) u.add(st.isDirectory() ? lstatSync(path.join(dir, rel), { bigint: true }) : st);
  return u.size;
}

/** Blocks of distinct inodes, the way du counts them. */
class UsageCount {
  readonly #seen = new Set<string>();
  size = 0;

  add(st: BigIntStats): void {
    const key = `${st.dev}:${st.ino}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.size += Number(st.blocks) * 512;
  }

  get inodes(): number {
    return this.#seen.size;
  }
}

/**
 * Blocks and distinct inodes of a tree, the way du counts them. Runs at every commit: synchronous
 * lookups in time slices (see lstatTree), several times faster than a promise per entry.
 */
export async function treeUsage(dir: string): Promise<SnapshotUsage> {
  const u = new UsageCount();
  // Entries removed meanwhile (a tree being cleaned up) are not counted.
  await lstatTree(dir, (st) => u.add(st));
  return { size: u.size, inodes: u.inodes };
}
