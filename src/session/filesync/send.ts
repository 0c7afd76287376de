import { create } from '@bufbuild/protobuf';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { TimeSlice } from '../../cache/time-slice.js';
import { StatSchema } from '../../gen/fsutil/stat_pb.js';
import { Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import { CancelledError, errorMessage, isAbortError, LoomError } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { subdirLinkname } from '../../util/subdir-fs.js';
import { FileSyncError, protocolError } from './errors.js';
import { fileCanRequestData, GoMode, isSymlinkMode } from './mode.js';
import { bestEffort, dataPacket, errPacket, finPacket, packetSize, packetTypeName, SerialSender, statPacket, type PacketStream } from './packets.js';
import { walkDirBatches, type WalkOptions } from './walker.js';
import type { XattrIO } from './xattr.js';

const logger = () => log.child({ sub: 'filesync' });

/** Read size of file contents; each read becomes one DATA packet (as upstream's 32 KiB copy buffer). */
export const DATA_CHUNK_SIZE = 32 * 1024;
/** Files read and sent at once, as upstream's sender. */
const SEND_WORKERS = 4;
/**
 * Files listed at or below this size are read with synchronous calls, many per turn of the event
 * loop, and their packets go out together (see smallTask in sendDir): a context of thousands of
 * small files cost four thread-pool round trips and a 32 KiB buffer per file the other way.
 */
const SMALL_FILE = 64 * 1024;
/** Read size for larger files (sent as DATA_CHUNK_SIZE packets). */
const READ_SIZE = 512 * 1024;
/** Packet bytes the small-file reader gathers before it sends them. */
const SMALL_BATCH_BYTES = 1024 * 1024;

export interface SendDirOptions {
  root: string;
  includePatterns?: readonly string[];
  excludePatterns?: readonly string[];
  followPaths?: readonly string[];
  signal?: AbortSignal;
  /** Cumulative encoded bytes sent; `done` on the last call. */
  onProgress?: (bytes: number, done: boolean) => void;
  /** Read and send extended attributes with this (one listing per batch of entries); none when undefined. */
  xattrs?: Pick<XattrIO, 'listMany'>;
  /**
   * List the tree under one directory of this name (mode 0755, owned by root, `modTime` in
   * nanoseconds, 0 by default) instead of at the top: upstream's SubDirFS, which the local
   * exporter uses to put each platform of a multi-platform result in its own directory.
   */
  subdir?: { name: string; modTime?: bigint };
  /** Every entry's modification time (nanoseconds) instead of its own: upstream's exporters under SOURCE_DATE_EPOCH. */
  modTime?: bigint;
}

export interface SendSummary {
  /** Entries listed. */
  entries: number;
  /** Files whose contents the receiver asked for. */
  files: number;
  /** Content bytes sent. */
  bytes: number;
}

/**
 * The fsutil sender: lists `root` as STAT packets (an empty STAT ends the list), answers each REQ
 * with the file's DATA packets and an empty DATA, and on the receiver's FIN answers FIN and ends
 * its side. Runs on the client for `--local` dirs (FileSync.DiffCopy) and on the daemon for the
 * local exporter (FileSend.DiffCopy carrying packets).
 *
 * On failure an ERR packet tells the peer why (unless the failure came from the peer), the stream
 * is closed with the error, and the error is thrown. The stream's owner still owns it afterwards.
 */
export async function sendDir(stream: PacketStream, opts: SendDirOptions): Promise<SendSummary> {
  const out = new SerialSender({ stream });
  interface Listed {
    rel: string;
    abs: string;
    size: number;
  }
  const files = new Map<number, Listed>();
  // Requested files: small ones for smallTask, the rest for the workers.
  const queue: (Listed & { id: number })[] = [];
  const smallQueue: (Listed & { id: number })[] = [];
  const summary: SendSummary = { entries: 0, files: 0, bytes: 0 };
  let progress = 0;
  const onProgress = opts.onProgress;
  // As upstream's sender counts: each entry's STAT and each DATA packet that carries bytes (a
  // file's closing empty DATA, and the listing's closing empty STAT, are not counted).
  const count = (p: Packet): void => {
    if (!onProgress || (p.type === Packet_PacketType.PACKET_DATA && p.data.length === 0)) return;
    progress += packetSize(p);
    onProgress(progress, false);
  };

  // Ends every task once one fails; `wake` lets idle workers see new requests or the end.
  const inner = new AbortController();
  const onAbort = (): void => inner.abort(new CancelledError('context canceled', { cause: opts.signal?.reason }));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  // Idle workers park here; wake() releases them all and empties the list (each waits once).
  let parked: (() => void)[] = [];
  const wake = (): void => {
    const list = parked;
    parked = [];
    for (const r of list) r();
  };
  let noMoreRequests = false;
  let fromPeer = false;

  const walkTask = async (): Promise<void> => {
    const walkOpts: WalkOptions = {
      includePatterns: opts.includePatterns,
      excludePatterns: opts.excludePatterns,
      followPaths: opts.followPaths,
      signal: inner.signal,
      xattrs: opts.xattrs,
    };
    let id = 0;
    const sub = opts.subdir;
    if (sub) {
      const p = statPacket(create(StatSchema, { path: sub.name, mode: (GoMode.dir | 0o755) >>> 0, modTime: sub.modTime ?? 0n }));
      count(p);
      summary.entries++;
      id++;
      await out.send(p);
    }
    await walkDirBatches(opts.root, walkOpts, async (entries) => {
      const packets: Packet[] = [];
      for (const { stat, absPath } of entries) {
        if (opts.modTime !== undefined) stat.modTime = opts.modTime;
        if (sub) {
          stat.path = `${sub.name}/${stat.path}`;
          if (stat.linkname !== '') stat.linkname = subdirLinkname(sub.name, stat.linkname, isSymlinkMode(stat.mode));
        }
        if (fileCanRequestData(stat.mode)) files.set(id, { rel: stat.path, abs: absPath, size: Number(stat.size) });
        id++;
        const p = statPacket(stat);
        count(p);
        summary.entries++;
        packets.push(p);
      }
      await out.sendMany(packets);
    });
    await out.send(statPacket());
  };

  const sendFile = async (id: number, rel: string, abs: string): Promise<void> => {
    let fh;
    try {
      fh = await open(abs, 'r');
    } catch (err) {
      cannotOpen(rel, err);
    }
    if (fh) {
      try {
        for (;;) {
          if (inner.signal.aborted) throw inner.signal.reason;
          // Read in large pieces and sent as the DATA_CHUNK_SIZE packets upstream's 32 KiB copy
          // buffer makes: one thread-pool round trip per READ_SIZE, not per packet.
          const buf = Buffer.allocUnsafe(READ_SIZE);
          const { bytesRead } = await fh.read(buf, 0, buf.length, null);
          if (bytesRead === 0) break;
          const packets: Packet[] = [];
          for (let off = 0; off < bytesRead; off += DATA_CHUNK_SIZE) packets.push(dataPacket(id, buf.subarray(off, Math.min(off + DATA_CHUNK_SIZE, bytesRead))));
          await out.sendMany(packets);
          for (const p of packets) count(p);
          summary.bytes += bytesRead;
        }
      } catch (err) {
        throw readFailed(rel, err);
      } finally {
        await fh.close();
      }
    }
    summary.files++;
    await out.send(dataPacket(id));
  };

  // Small files, read whole with synchronous calls in time slices (see TimeSlice): the contents
  // of a source tree are almost always in the kernel's cache, and each file's packets join the
  // others of its slice in one write. A file that has grown past its listed size is still read to
  // its end, as upstream copies until EOF; the gathered packets go out every SMALL_BATCH_BYTES.
  const scratch = Buffer.allocUnsafe(DATA_CHUNK_SIZE);
  const smallTask = async (): Promise<void> => {
    const slice = new TimeSlice();
    let packets: Packet[] = [];
    let gathered = 0;
    const flush = async (): Promise<void> => {
      const ps = packets;
      packets = [];
      gathered = 0;
      if (ps.length > 0) await out.sendMany(ps);
      for (const p of ps) count(p);
      slice.restart();
    };
    for (;;) {
      const f = smallQueue.shift();
      if (!f) {
        await flush();
        if (smallQueue.length > 0) continue;
        if (noMoreRequests || inner.signal.aborted) return;
        await new Promise<void>((resolve) => parked.push(resolve));
        continue;
      }
      if (inner.signal.aborted) throw inner.signal.reason;
      let fd: number | undefined;
      try {
        // Non-blocking, and only a regular file is read here: one replaced by a FIFO since the
        // listing would block the event loop in open or read. The workers send anything else,
        // as upstream would (blocking a pool thread, not the loop).
        fd = openSync(f.abs, constants.O_RDONLY | constants.O_NONBLOCK);
      } catch (err) {
        cannotOpen(f.rel, err);
      }
      if (fd !== undefined && !fstatSync(fd).isFile()) {
        closeSync(fd);
        queue.push(f);
        wake();
        continue;
      }
      if (fd !== undefined) {
        try {
          for (;;) {
            const n = readSync(fd, scratch, 0, DATA_CHUNK_SIZE, null);
            if (n === 0) break;
            packets.push(dataPacket(f.id, Buffer.from(scratch.subarray(0, n))));
            summary.bytes += n;
            gathered += n;
            if (gathered >= SMALL_BATCH_BYTES) await flush();
          }
        } catch (err) {
          throw readFailed(f.rel, err);
        } finally {
          closeSync(fd);
        }
      }
      summary.files++;
      packets.push(dataPacket(f.id));
      if (slice.due()) {
        await flush();
        await slice.pause();
      }
    }
  };

  const worker = async (): Promise<void> => {
    for (;;) {
      const next = queue.shift();
      if (next) {
        await sendFile(next.id, next.rel, next.abs);
        continue;
      }
      if (noMoreRequests || inner.signal.aborted) return;
      await new Promise<void>((resolve) => parked.push(resolve));
    }
  };

  const recvTask = async (): Promise<void> => {
    try {
      for await (const p of stream.recv()) {
        if (inner.signal.aborted) throw inner.signal.reason;
        switch (p.type) {
          case Packet_PacketType.PACKET_REQ: {
            const f = files.get(p.ID);
            if (!f) throw protocolError(`invalid file id ${p.ID}: no file with that id can be requested (unknown, not a regular file, or asked for twice)`);
            files.delete(p.ID);
            (f.size <= SMALL_FILE ? smallQueue : queue).push({ id: p.ID, ...f });
            wake();
            break;
          }
          case Packet_PacketType.PACKET_FIN:
            await out.send(finPacket());
            return;
          case Packet_PacketType.PACKET_ERR:
            fromPeer = true;
            throw new FileSyncError('INTERNAL', `error from receiver: ${new TextDecoder().decode(p.data)}`);
          default:
            throw protocolError(`unexpected ${packetTypeName(p.type)} packet from the receiver`);
        }
      }
      fromPeer = true;
      throw new FileSyncError('UNAVAILABLE', 'receiver ended the stream before the transfer finished');
    } finally {
      noMoreRequests = true;
      wake();
    }
  };

  // The first failure tells the peer (unless it came from the peer) and closes the stream, which
  // unblocks every task waiting on it.
  let failure: { err: Error; closed: Promise<void> } | undefined;
  const fail = (err: unknown): void => {
    if (failure) return;
    const e = toError(err);
    const closed = (async () => {
      if (!fromPeer && !(e instanceof CancelledError)) await bestEffort(out.send(errPacket(e.message)));
      stream.close(e);
    })();
    failure = { err: e, closed };
    if (!inner.signal.aborted) inner.abort(e);
    wake();
  };
  inner.signal.addEventListener('abort', () => fail(inner.signal.reason), { once: true });
  if (inner.signal.aborted) fail(inner.signal.reason);

  const guard = (t: Promise<void>): Promise<void> =>
    t.catch((err: unknown) => {
      fail(err);
    });
  try {
    const tasks = [guard(walkTask()), guard(recvTask()), guard(smallTask())];
    for (let i = 0; i < SEND_WORKERS; i++) tasks.push(guard(worker()));
    await Promise.all(tasks);
    if (failure) {
      await failure.closed;
      throw failure.err;
    }
    stream.end();
    onProgress?.(progress, true);
    return summary;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/** Upstream sends an empty file when it cannot open one it listed (vanished, unreadable). */
function cannotOpen(rel: string, err: unknown): void {
  logger().warn({ path: rel, err: errorMessage(err) }, 'cannot open listed file, sending it empty');
}

/** A read of a listed file failed: the transfer fails naming the file (cancellations pass through). */
function readFailed(rel: string, err: unknown): unknown {
  if (err instanceof LoomError || isAbortError(err)) return err;
  return new FileSyncError('INTERNAL', `failed to send ${rel}: ${errorMessage(err)}`, { path: rel, cause: err });
}

function toError(err: unknown): Error {
  if (err instanceof Error) return err;
  return new FileSyncError('INTERNAL', String(err));
}

