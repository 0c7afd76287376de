import { create } from '@bufbuild/protobuf';
import { open } from 'node:fs/promises';
import { StatSchema } from '../../gen/fsutil/stat_pb.js';
import { Packet_PacketType, type Packet } from '../../gen/fsutil/wire_pb.js';
import { CancelledError, errorMessage, isAbortError, LoomError } from '../../util/errors.js';
import { log } from '../../util/log.js';
import { FileSyncError, protocolError } from './errors.js';
import { fileCanRequestData, GoMode } from './mode.js';
import { bestEffort, dataPacket, errPacket, finPacket, packetSize, packetTypeName, SerialSender, statPacket, type PacketStream } from './packets.js';
import { walkDirBatches, type WalkOptions } from './walker.js';
import type { XattrIO } from './xattr.js';

const logger = () => log.child({ sub: 'filesync' });

/** Read size of file contents; each read becomes one DATA packet (as upstream's 32 KiB copy buffer). */
export const DATA_CHUNK_SIZE = 32 * 1024;
/** Files read and sent at once, as upstream's sender. */
const SEND_WORKERS = 4;

export interface SendDirOptions {
  root: string;
  includePatterns?: readonly string[];
  excludePatterns?: readonly string[];
  followPaths?: readonly string[];
  signal?: AbortSignal;
  /** Cumulative encoded bytes sent; `done` on the last call. */
  onProgress?: (bytes: number, done: boolean) => void;
  /** Read and send extended attributes with this (off by default: one process per entry). */
  xattrs?: XattrIO;
  /**
   * List the tree under one directory of this name (mode 0755, owned by root, `modTime` in
   * nanoseconds, 0 by default) instead of at the top: upstream's SubDirFS, which the local
   * exporter uses to put each platform of a multi-platform result in its own directory.
   */
  subdir?: { name: string; modTime?: bigint };
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
  const files = new Map<number, { rel: string; abs: string }>();
  const queue: { id: number; rel: string; abs: string }[] = [];
  const summary: SendSummary = { entries: 0, files: 0, bytes: 0 };
  let progress = 0;
  const count = (p: Packet): void => {
    progress += packetSize(p);
    opts.onProgress?.(progress, false);
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
        if (sub) stat.path = `${sub.name}/${stat.path}`;
        if (fileCanRequestData(stat.mode)) files.set(id, { rel: stat.path, abs: absPath });
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
      // Upstream sends an empty file when it cannot open one it listed (vanished, unreadable).
      logger().warn({ path: rel, err: errorMessage(err) }, 'cannot open listed file, sending it empty');
    }
    if (fh) {
      try {
        for (;;) {
          if (inner.signal.aborted) throw inner.signal.reason;
          const buf = Buffer.allocUnsafe(DATA_CHUNK_SIZE);
          const { bytesRead } = await fh.read(buf, 0, buf.length, null);
          if (bytesRead === 0) break;
          const p = dataPacket(id, buf.subarray(0, bytesRead));
          await out.send(p);
          count(p);
          summary.bytes += bytesRead;
        }
      } catch (err) {
        if (err instanceof LoomError || isAbortError(err)) throw err;
        throw new FileSyncError('INTERNAL', `failed to send ${rel}: ${errorMessage(err)}`, { path: rel, cause: err });
      } finally {
        await fh.close();
      }
    }
    summary.files++;
    await out.send(dataPacket(id));
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
            queue.push({ id: p.ID, ...f });
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
    const tasks = [guard(walkTask()), guard(recvTask())];
    for (let i = 0; i < SEND_WORKERS; i++) tasks.push(guard(worker()));
    await Promise.all(tasks);
    if (failure) {
      await failure.closed;
      throw failure.err;
    }
    stream.end();
    opts.onProgress?.(progress, true);
    return summary;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

function toError(err: unknown): Error {
  if (err instanceof Error) return err;
  return new FileSyncError('INTERNAL', String(err));
}
