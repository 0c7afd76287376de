import { execFile } from 'node:child_process';
import { chmodSync, closeSync, lchownSync, lstatSync, lutimesSync, mkdirSync, open as openCb, readdirSync, writeSync, type BigIntStats } from 'node:fs';
import { link, lstat, mkdir, readlink, realpath, rename, rm, symlink } from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { clone } from '@bufbuild/protobuf';
import { TimeSlice } from '../../cache/time-slice.js';
import { StatSchema, type Stat } from '../../gen/fsutil/stat_pb.js';
import { Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import { CancelledError, errorMessage, LoomError } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { FileSyncError, protocolError } from './errors.js';
import { GoMode, goModeFromPosix, isDirMode, isSymlinkMode, posixPermFromGo } from './mode.js';
import { bestEffort, errPacket, finPacket, packetSize, packetTypeName, reqPacket, SerialSender, type PacketStream } from './packets.js';
import { HardlinkValidator, OrderValidator } from './validate.js';
import { createThread } from './create-thread.js';
import { systemXattrs, type XattrIO } from './xattr.js';

const run = promisify(execFile);
const logger = () => log.child({ sub: 'filesync' });

export type ChangeKind = 'add' | 'modify' | 'delete';

export interface ReceiveDirOptions {
  /** Directory the tree is written into (created if missing). */
  dest: string;
  signal?: AbortSignal;
  /** Cumulative encoded bytes received; `done` on the last call. */
  onProgress?: (bytes: number, done: boolean) => void;
  /**
   * false (default, the daemon's local source): `dest` ends up equal to the sent tree: entries the
   * sender does not list are removed and entries already identical (type, mode, owner, size,
   * mtime, link target) are not transferred again. true (the client's local export): every entry
   * is written, nothing else in `dest` is touched.
   */
  merge?: boolean;
  /** Set owners from the stats (default: when running as root). */
  chown?: boolean;
  /** May rewrite a stat (owner mapping) or return false to leave the entry out. */
  mapStat?: (path: string, stat: Stat) => boolean;
  /**
   * How an entry already in `dest` is judged up to date: `metadata` (default) by mode, owner,
   * size and mtime; `none` never, so every file is sent again (upstream's DiffNone, which the
   * Dockerfile frontend asks for the Dockerfile itself).
   */
  differ?: 'metadata' | 'none';
  /** Where xattrs are written; default: the system's tools when installed; false: never. */
  xattrs?: XattrIO | false;
  /** Called once per entry fully written (a file: all of its data), or removed. */
  onChange?: (change: { kind: ChangeKind; path: string; stat?: Stat }) => void;
  /**
   * Called for each regular file whose data was written here, once it is complete and stamped
   * (after its onChange), with the hex sha256 of its bytes: hashed as they arrive, so a digest
   * of the received tree need not read them back.
   */
  onFileDigest?: (absPath: string, sha256Hex: string) => void;
  /**
   * What `dest` held after the previous transfer into it (from that transfer's onTree), used
   * instead of looking at every entry again when `dest` is still that directory. Only for a
   * directory nothing else writes (the daemon's mirrors of clients' directories).
   */
  known?: KnownTree;
  /** Given, after a successful non-merging transfer without mapStat, what `dest` now holds. */
  onTree?: (tree: KnownTree) => void;
}

/**
 * The lstat of every entry below a receiver's `dest` after a transfer, and which directory that
 * was (its inode and change time: removing and recreating it, as a prune does, gives another).
 */
export interface KnownTree {
  rootIno: bigint;
  rootCtimeNs: bigint;
  entries: Map<string, BigIntStats>;
}

export interface ReceiveSummary {
  /** Entries listed by the sender. */
  entries: number;
  /** Regular files whose contents were transferred. */
  files: number;
  /** Content bytes written. */
  bytes: number;
  /** Entries already up to date in `dest`. */
  unchanged: number;
  /** Entries removed from `dest` (not merging). */
  deleted: number;
}

/** Files being finished at once, at most (one waits only for its create, or for its xattrs). */
const MAX_FINISHING = 32;

/**
 * New files created ahead of their data, at most: files are created in the order their data was
 * asked for, from their STAT on, in batches on a thread of their own (see CreateThread), so the
 * creating open (the costly part of writing a small file: up to a millisecond of kernel time on
 * some file systems) overlaps the transfer instead of holding up the packet loop when DATA comes.
 * Each holds a descriptor until its data is written.
 */
const MAX_PRECREATED = 256;

/** Files per batch sent to the creating thread, at most. */
const CREATE_BATCH = 32;

/**
 * Batches sent and not answered yet, at most: the thread works through one at a time (creates in
 * one directory take its lock in turn, so more threads would only contend); a second one queued
 * keeps it busy while the answer to the first travels back.
 */
const MAX_CREATING = 2;

interface PendingFile {
  rel: string;
  abs: string;
  stat: Stat;
  /** The open descriptor while its data is written. */
  fd?: number;
  /** The file's creating open, started at its STAT (see MAX_PRECREATED); its descriptor becomes `fd`. */
  creating?: Promise<number>;
  /** Counted in MAX_PRECREATED until its descriptor is closed. */
  precreated?: boolean;
  /** The bytes so far, with onFileDigest. */
  hash?: Hash;
  bytes: number;
  kind: ChangeKind;
  /** The file exists on disk, or its creation is under way (`creating`). */
  created: boolean;
}

const CREATE_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;

/** An open on the thread pool, as a plain descriptor (written and closed synchronously, see handleData). */
function openFd(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => openCb(path, flags, 0o600, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** The descriptor of a file created ahead (see MAX_PRECREATED), moved to `fd`; a failed create throws here. */
async function takeCreated(f: PendingFile): Promise<void> {
  const p = f.creating;
  if (!p) return;
  f.creating = undefined;
  f.fd = await p;
}

function closeFd(f: PendingFile): void {
  if (f.fd === undefined) return;
  const fd = f.fd;
  f.fd = undefined;
  closeSync(fd);
}

/**
 * The fsutil receiver: reads the sender's listing, writes each entry under `dest` in order, asks
 * (REQ) for the contents of regular files, writes their DATA, and when everything is on disk
 * sends FIN, then returns on the sender's FIN. Paths are checked before anything is written: no
 * absolute or unclean path, nothing outside `dest`, no entry whose parent was not listed as a
 * directory first (so nothing is ever written through a symlink), hard links only to files
 * already received.
 *
 * On failure an ERR packet tells the sender why, the stream is closed with the error and a
 * FileSyncError naming the path is thrown; `dest` is then partly written.
 */
export async function receiveDir(stream: PacketStream, opts: ReceiveDirOptions): Promise<ReceiveSummary> {
  const out = new SerialSender({ stream });
  const summary: ReceiveSummary = { entries: 0, files: 0, bytes: 0, unchanged: 0, deleted: 0 };
  const merge = opts.merge ?? false;
  const doChown = opts.chown ?? process.getuid?.() === 0;
  const xattrs = opts.xattrs === false ? undefined : (opts.xattrs ?? (await systemXattrs()));
  let warnedXattrs = false;

  await mkdir(opts.dest, { recursive: true, mode: 0o700 });
  const root = await realpath(opts.dest);
  // What `dest` holds before the transfer, looked at all at once (in parallel) instead of one
  // lstat per listed entry in turn: a resend of an unchanged tree is mostly these lookups. Each
  // path is listed once and changes only when its own entry is handled, so the answer stays right
  // for every entry that still asks; entries below a replaced directory are never listed.
  // A resend into a directory kept since the last transfer (see `known`) skips even that walk.
  const existing = merge ? undefined : (knownEntries(root, opts.known) ?? (await statTree(root)));
  // What `dest` will hold, for onTree: entries found unchanged keep their stat; those written are
  // looked at once everything is stamped.
  const tracking = !merge && !opts.mapStat && opts.onTree !== undefined;
  const kept = new Map<string, BigIntStats>();
  const written = new Set<string>();

  const order = new OrderValidator();
  const hardlinks = new HardlinkValidator();
  const pending = new Map<number, PendingFile>();
  const pendingByRel = new Map<string, PendingFile>();
  // Directories written or checked in this transfer: the only places entries may be created in.
  const finishing = new Set<Promise<void>>();
  let finishError: Error | undefined;
  const dirs = new Map<string, Stat | undefined>([['', undefined]]);
  // Every path listed (kept or left out by mapStat): what a non-merging receive keeps.
  const listed = new Set<string>();
  let index = 0;
  let listingDone = false;
  let finSent = false;
  let progress = 0;
  let current: string | undefined;

  const onAbort = (): void => stream.close(new CancelledError('context canceled', { cause: opts.signal?.reason }));
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  // Directories get their mode and times at the end (see maybeFinish): a read-only directory
  // would stop its own entries from being written by a non-root receiver.
  // Owners, modes and times are set with synchronous calls: each is a short change to an inode
  // already in memory, and a promise per call (a thread-pool round trip) made stamping 2,000 small
  // files several times slower. Only creating opens go to the thread pool (see MAX_PRECREATED):
  // a create can cost up to a millisecond of kernel time (ext4 without a journal right after
  // many deletes), which would stall the daemon's event loop.
  const applyMeta = async (abs: string, rel: string, stat: Stat, kind: 'file' | 'dir' | 'symlink'): Promise<void> => {
    if (doChown) lchownSync(abs, stat.uid, stat.gid);
    if (kind === 'file') chmodSync(abs, posixPermFromGo(stat.mode));
    const names = Object.keys(stat.xattrs);
    if (names.length > 0) {
      if (!xattrs) {
        if (!warnedXattrs) logger().warn({ path: rel }, 'extended attributes received but no xattr tools installed: dropped');
        warnedXattrs = true;
      } else {
        for (const n of names) {
          // Upstream ignores xattrs it cannot set (file system support, security.* without privilege).
          await xattrs.set(abs, n, stat.xattrs[n]!).catch((err: unknown) => logger().debug({ path: rel, xattr: n, err: errorMessage(err) }, 'cannot set xattr'));
        }
      }
    }
    if (kind !== 'dir') setTimes(abs, stat.modTime);
  };

  // Files created ahead of their data (see MAX_PRECREATED): those counted, and those waiting for
  // a place, in the order their data was asked for (the order the sender sends it in).
  let precreated = 0;
  let creating = 0;
  const toCreate: PendingFile[] = [];
  let toCreateHead = 0;
  let receiving = true;
  const pumpCreates = (): void => {
    // Nothing new after the transfer failed: its cleanup closes what was created.
    if (!receiving) return;
    while (creating < MAX_CREATING && precreated < MAX_PRECREATED && toCreateHead < toCreate.length) {
      // A batch waits for room for a whole one, unless nothing is being created or this is the rest.
      if (creating > 0 && MAX_PRECREATED - precreated < CREATE_BATCH && toCreate.length - toCreateHead >= CREATE_BATCH) break;
      const batch: PendingFile[] = [];
      while (batch.length < CREATE_BATCH && precreated < MAX_PRECREATED && toCreateHead < toCreate.length) {
        const f = toCreate[toCreateHead++]!;
        // Created meanwhile by its own DATA (or its end) while it waited here.
        if (f.created) continue;
        precreated++;
        f.precreated = true;
        f.created = true;
        batch.push(f);
      }
      if (batch.length === 0) continue;
      creating++;
      const opened = createThread.open(
        batch.map((f) => f.abs),
        CREATE_FLAGS,
        0o600,
      );
      batch.forEach((f, i) => {
        // Failures are reported where the descriptor is awaited (DATA, the file's end, or a failed
        // transfer's cleanup).
        f.creating = opened.then((r) => {
          const x = r[i]!;
          if (typeof x === 'number') return x;
          throw x;
        });
        f.creating.catch(() => undefined);
      });
      opened
        .catch(() => undefined)
        .finally(() => {
          creating--;
          pumpCreates();
        });
    }
    if (toCreateHead === toCreate.length) {
      toCreate.length = 0;
      toCreateHead = 0;
    }
  };
  const finishFile = async (f: PendingFile): Promise<void> => {
    await takeCreated(f);
    if (!f.created) {
      // Marked before the await: the create queue must not start this file meanwhile.
      f.created = true;
      f.fd = await openFd(f.abs, CREATE_FLAGS);
    }
    closeFd(f);
    if (f.precreated) {
      f.precreated = false;
      precreated--;
      pumpCreates();
    }
    // Owner and mode go on after the data: writing would drop setuid bits, a read-only mode would
    // stop the writes.
    await applyMeta(f.abs, f.rel, f.stat, 'file');
    summary.files++;
    opts.onChange?.({ kind: f.kind, path: f.rel, stat: f.stat });
    if (opts.onFileDigest) opts.onFileDigest(f.abs, (f.hash ?? createHash('sha256')).digest('hex'));
  };

  // REQ packets go out in batches: one write for the requests of every STAT handled in this turn
  // of the event loop, instead of a write (a message through the session's tunnel) per file.
  let reqs: Packet[] = [];
  let reqError: Error | undefined;
  const flushRequests = (): Promise<void> => {
    const batch = reqs;
    reqs = [];
    if (batch.length === 0) return Promise.resolve();
    return out.sendMany(batch).catch((err: unknown) => {
      reqError ??= err as Error;
    });
  };
  const requestData = (id: number): void => {
    if (reqs.length === 0) setImmediate(() => void flushRequests());
    reqs.push(reqPacket(id));
  };

  const handleStat = async (raw: Stat, id: number): Promise<void> => {
    const rel = raw.path;
    current = rel;
    const isDir = isDirMode(raw.mode);
    const isSymlink = isSymlinkMode(raw.mode);
    order.check(rel, isDir);
    hardlinks.check(rel, { isDir, isSymlink, linkname: raw.linkname });
    if ((raw.mode & (GoMode.socket | GoMode.irregular)) !== 0) {
      throw protocolError(`unsupported file type for ${JSON.stringify(rel)} (mode ${raw.mode >>> 0})`, rel);
    }
    listed.add(rel);
    summary.entries++;

    // Copied only for a mapStat that may rewrite it: the packet is ours otherwise.
    const stat = opts.mapStat ? clone(StatSchema, raw) : raw;
    if (opts.mapStat && !opts.mapStat(rel, stat)) return;

    const slash = rel.lastIndexOf('/');
    const parent = slash >= 0 ? rel.slice(0, slash) : '';
    if (!dirs.has(parent)) {
      throw protocolError(`cannot write ${JSON.stringify(rel)}: its parent directory was not written in this transfer`, rel);
    }
    const abs = under(root, rel);
    let old: BigIntStats | undefined;
    if (existing) {
      old = existing.get(rel);
      existing.delete(rel);
    } else {
      try {
        old = await lstat(abs, { bigint: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    const hardlink = !isDir && !isSymlink && stat.linkname !== '';

    if (old && !merge && !hardlink && !(opts.differ === 'none' && !isDir) && (await sameEntry(old, abs, stat, doChown))) {
      // A directory gets its times again at the end (maybeFinish): looked at then.
      if (tracking) {
        if (isDir) written.add(rel);
        else kept.set(rel, old);
      }
      summary.unchanged++;
      if (isDir) dirs.set(rel, stat);
      return;
    }
    if (tracking) written.add(rel);
    if (old && old.isDirectory() && isDir) {
      await applyMeta(abs, rel, stat, 'dir');
      dirs.set(rel, stat);
      opts.onChange?.({ kind: 'modify', path: rel, stat });
      return;
    }

    // Something else is in the way: build the new entry beside it and rename it over. An existing
    // file is never written in place (only directories are changed where they are): the local
    // source hard-links the mirror's files into committed snapshots and relies on this.
    const target = old ? join(root, parent, `.tmp.loom-${randomBytes(6).toString('hex')}`) : abs;
    const kind: ChangeKind = old ? 'modify' : 'add';
    const mode = stat.mode >>> 0;
    let regular = false;
    if (isDir) {
      // Synchronous: awaited, it would queue on the thread pool behind the files being created
      // ahead (see MAX_PRECREATED), and every entry below waits for it.
      mkdirSync(target, { mode: 0o700 });
    } else if (mode & (GoMode.device | GoMode.namedPipe)) {
      const type = mode & GoMode.device ? (mode & GoMode.charDevice ? 'c' : 'b') : 'p';
      const args = type === 'p' ? [target, 'p'] : [target, type, String(stat.devmajor), String(stat.devminor)];
      await run('mknod', ['--', ...args]).catch((err: unknown) => {
        throw new FileSyncError('PERMISSION_DENIED', `failed to create device ${rel}: ${errorMessage(err).trim()}`, { path: rel, cause: err });
      });
    } else if (isSymlink) {
      await symlink(stat.linkname, target);
    } else if (hardlink) {
      // The link's target may be a file still waiting for its data: it must exist to be linked.
      const t = pendingByRel.get(stat.linkname);
      if (t?.creating) {
        await t.creating;
      } else if (t && !t.created) {
        t.created = true;
        closeSync(await openFd(t.abs, CREATE_FLAGS));
      }
      await link(join(root, stat.linkname), target);
    } else {
      regular = true;
      // A new file is created by its first DATA (or when it ends empty); one replacing an existing
      // entry is created now, beside it, and renamed over it below.
      if (old) closeSync(await openFd(target, CREATE_FLAGS));
    }
    if (!regular) await applyMeta(target, rel, stat, isDir ? 'dir' : isSymlink ? 'symlink' : 'file');
    if (old) {
      if (old.isDirectory() !== isDir) await rm(abs, { recursive: true, force: true });
      await rename(target, abs);
      // A hard link renamed over a link to the same file is a no-op that leaves the temporary
      // name behind (rename(2)): the entry was already right, the extra name goes.
      if (hardlink) await rm(target, { force: true });
    }
    if (isDir) dirs.set(rel, stat);
    if (regular) {
      const f: PendingFile = { rel, abs, stat, bytes: 0, kind, created: !!old };
      if (!old) {
        toCreate.push(f);
        pumpCreates();
      }
      pending.set(id, f);
      pendingByRel.set(rel, f);
      requestData(id);
    } else {
      opts.onChange?.({ kind, path: rel, stat });
    }
  };

  const handleData = async (p: Packet): Promise<void> => {
    const f = pending.get(p.ID);
    if (!f) throw protocolError(`invalid file request ${p.ID}: DATA for a file that was not requested or is complete`);
    current = f.rel;
    if (p.data.length === 0) {
      // Closing and stamping the file (owner, mode, times) runs beside the next files' transfer;
      // everything finishes before FIN. A bounded number run at once.
      const job: Promise<void> = finishFile(f).finally(() => {
        finishing.delete(job);
        pending.delete(p.ID);
        pendingByRel.delete(f.rel);
      });
      job.catch((err: unknown) => (finishError ??= err as Error));
      finishing.add(job);
      if (finishing.size >= MAX_FINISHING) await Promise.race(finishing).catch(() => undefined);
      if (finishError) throw finishError;
      return;
    }
    await takeCreated(f);
    if (f.fd === undefined) {
      const flags = fsc.O_WRONLY | fsc.O_NOFOLLOW | (f.created ? 0 : fsc.O_CREAT | fsc.O_EXCL);
      // Marked before the await: the create queue must not start this file meanwhile.
      f.created = true;
      f.fd = await openFd(f.abs, flags);
    }
    // A synchronous write: the data goes to the page cache in microseconds, less than a
    // thread-pool round trip, and the packet loop would wait for that round trip anyway.
    for (let off = 0; off < p.data.length; ) off += writeSync(f.fd, p.data, off, p.data.length - off, f.bytes + off);
    if (opts.onFileDigest) (f.hash ??= createHash('sha256')).update(p.data);
    f.bytes += p.data.length;
    summary.bytes += p.data.length;
  };

  // Once the listing is complete and every file is written: tidy up, then tell the sender.
  const maybeFinish = async (): Promise<void> => {
    if (!listingDone || finSent) return;
    if (pending.size > finishing.size) return;
    await Promise.all(finishing);
    if (finishError) throw finishError;
    if (!listingDone || pending.size > 0 || finSent) return;
    current = undefined;
    // What statTree saw and no STAT claimed is what the sender no longer has.
    if (existing) summary.deleted += await removeLeftovers(root, existing, listed, dirs, opts.onChange);
    // Directory modes and times last: creating entries inside changed the times.
    for (const [rel, stat] of dirs) {
      if (rel === '' || !stat) continue;
      chmodSync(join(root, rel), posixPermFromGo(stat.mode));
      setTimes(join(root, rel), stat.modTime);
    }
    if (tracking) opts.onTree!(treeAfter(root, kept, written));
    finSent = true;
    await out.send(finPacket());
  };

  try {
    for await (const p of stream.recv()) {
      if (opts.signal?.aborted) throw new CancelledError();
      progress += packetSize(p);
      opts.onProgress?.(progress, false);
      switch (p.type) {
        case Packet_PacketType.PACKET_STAT:
          if (listingDone) throw protocolError('STAT after the end of the listing', p.stat?.path);
          if (!p.stat) {
            listingDone = true;
            await maybeFinish();
          } else {
            await handleStat(p.stat, index++);
          }
          break;
        case Packet_PacketType.PACKET_DATA:
          if (reqError) throw reqError;
          await handleData(p);
          await maybeFinish();
          break;
        case Packet_PacketType.PACKET_FIN:
          if (!finSent) throw protocolError('sender finished before the transfer was complete', current);
          stream.end();
          opts.onProgress?.(progress, true);
          return summary;
        case Packet_PacketType.PACKET_ERR:
          throw new FileSyncError('INTERNAL', `error from sender: ${new TextDecoder().decode(p.data)}`, { path: current });
        default:
          throw protocolError(`unexpected ${packetTypeName(p.type)} packet from the sender`, current);
      }
    }
    if (opts.signal?.aborted) throw new CancelledError();
    throw new FileSyncError('UNAVAILABLE', `sender ended the stream before the transfer finished${current ? ` (at ${JSON.stringify(current)})` : ''}`, { path: current });
  } catch (err) {
    receiving = false;
    const e = describe(err, current, pending);
    for (const f of pending.values()) {
      await takeCreated(f).catch(() => undefined);
      try {
        closeFd(f);
      } catch {
        /* the transfer failed already */
      }
    }
    if (!(e instanceof CancelledError) && !e.message.startsWith('error from sender:')) {
      // Requests already decided go out before the error, in the order upstream's receiver sends
      // them (one at a time, as it reads the listing), not lost to the batch's pending turn.
      await flushRequests();
      await bestEffort(out.send(errPacket(e.message)));
    }
    stream.close(e);
    throw e;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** The error to report: loom's own as they are, system errors with the path they hit. */
function describe(err: unknown, current: string | undefined, pending: Map<number, PendingFile>): Error {
  const inFlight = [...pending.values()].map((f) => f.rel);
  if (err instanceof CancelledError) {
    const what = inFlight.length > 0 ? ` while receiving ${inFlight.map((p) => JSON.stringify(p)).join(', ')}` : '';
    return new CancelledError(`transfer canceled${what}`, { cause: err });
  }
  if (err instanceof LoomError) return err;
  if (err instanceof Error && (err.name === 'AbortError' || (err as NodeJS.ErrnoException).code === 'ABORT_ERR')) {
    return new CancelledError(`transfer canceled${inFlight.length ? ` while receiving ${inFlight.join(', ')}` : ''}`, { cause: err });
  }
  const where = current ?? inFlight[0];
  return new FileSyncError('INTERNAL', `failed to write ${where !== undefined ? JSON.stringify(where) : 'transfer'}: ${errorMessage(err)}`, {
    path: where,
    cause: err,
  });
}

/**
 * Whether the existing entry already is what the stat describes, by upstream's metadata rules
 * (DiffMetadata). Times compare to the microsecond: that is all Node can set.
 */
async function sameEntry(old: BigIntStats, abs: string, stat: Stat, checkOwner: boolean): Promise<boolean> {
  const oldMode = (goModeFromPosix(Number(old.mode)) & ~GoMode.socket) >>> 0;
  if (oldMode !== stat.mode >>> 0) return false;
  if (checkOwner && (Number(old.uid) !== stat.uid || Number(old.gid) !== stat.gid)) return false;
  if (old.isDirectory()) return true;
  if (old.size !== stat.size) return false;
  if (old.mtimeNs / 1000n !== stat.modTime / 1000n) return false;
  if (old.isSymbolicLink()) return (await readlink(abs)) === stat.linkname;
  if (old.isBlockDevice() || old.isCharacterDevice()) {
    const major = (old.rdev >> 8n) & 0xfffn;
    const minor = (old.rdev & 0xffn) | ((old.rdev >> 12n) & 0xfff00n);
    return major === stat.devmajor && minor === stat.devminor;
  }
  return stat.linkname === '';
}

/**
 * Removes the entries statTree found that the sender did not list (`leftovers`: what is left of
 * its map once every listed entry took its own out); returns how many. Only entries whose parent
 * is a directory of this transfer (`dirs`) are removed themselves: the others went with an
 * unlisted ancestor, or with a directory the listing replaced by something else.
 */
async function removeLeftovers(
  root: string,
  leftovers: Map<string, BigIntStats>,
  listed: Set<string>,
  dirs: Map<string, Stat | undefined>,
  onChange: ReceiveDirOptions['onChange'],
): Promise<number> {
  let n = 0;
  for (const rel of [...leftovers.keys()].sort()) {
    if (listed.has(rel)) continue;
    const slash = rel.lastIndexOf('/');
    if (!dirs.has(slash >= 0 ? rel.slice(0, slash) : '')) continue;
    await rm(under(root, rel), { recursive: true, force: true });
    onChange?.({ kind: 'delete', path: rel });
    n++;
  }
  return n;
}

/** `root/rel` for a path already checked clean and relative (path.join's normalizing is not needed). */
function under(root: string, rel: string): string {
  return root.endsWith('/') ? root + rel : `${root}/${rel}`;
}

/**
 * lstat of every entry below `root`, by path relative to it; symlinks are not followed, entries
 * that vanish during the walk are left out. Synchronous calls in time slices (see TimeSlice): for
 * a resend of an unchanged tree this walk is most of the receiver's own work.
 */
async function statTree(root: string): Promise<Map<string, BigIntStats>> {
  const out = new Map<string, BigIntStats>();
  const slice = new TimeSlice();
  const dirs = [''];
  for (let rel = dirs.pop(); rel !== undefined; rel = dirs.pop()) {
    let names: string[];
    try {
      names = readdirSync(rel === '' ? root : under(root, rel));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') continue;
      throw err;
    }
    for (const name of names) {
      if (slice.due()) await slice.pause();
      const p = rel === '' ? name : `${rel}/${name}`;
      const st = lstatSync(under(root, p), { bigint: true, throwIfNoEntry: false });
      if (!st) continue;
      out.set(p, st);
      if (st.isDirectory()) dirs.push(p);
    }
  }
  return out;
}

/** `known`'s entries when `root` is still the directory it describes. */
function knownEntries(root: string, known: KnownTree | undefined): Map<string, BigIntStats> | undefined {
  if (!known) return undefined;
  const st = lstatSync(root, { bigint: true, throwIfNoEntry: false });
  return st && st.ino === known.rootIno && st.ctimeNs === known.rootCtimeNs ? known.entries : undefined;
}

/** What `root` holds now: the unchanged entries' stats, and a fresh lstat of each one written. */
function treeAfter(root: string, kept: Map<string, BigIntStats>, written: Set<string>): KnownTree {
  for (const rel of written) {
    const st = lstatSync(under(root, rel), { bigint: true, throwIfNoEntry: false });
    if (st) kept.set(rel, st);
  }
  const r = lstatSync(root, { bigint: true });
  return { rootIno: r.ino, rootCtimeNs: r.ctimeNs, entries: kept };
}

/**
 * Sets atime and mtime (upstream sets both to the sent mtime), not following symlinks. Node takes
 * seconds as a double and keeps microseconds; aiming at the middle of the microsecond makes the
 * result exact to the microsecond despite rounding.
 */
function setTimes(abs: string, modTimeNs: bigint): void {
  let sec = modTimeNs / 1_000_000_000n;
  let rem = modTimeNs % 1_000_000_000n;
  if (rem < 0n) {
    sec -= 1n;
    rem += 1_000_000_000n;
  }
  const t = Number(sec) + (Number(rem / 1000n) + 0.5) / 1e6;
  lutimesSync(abs, t, t);
}
