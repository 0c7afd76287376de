import type { Writable } from 'node:stream';
import { create } from '@bufbuild/protobuf';
import { BytesMessageSchema, type BytesMessage } from '../../gen/session/filesync_pb.js';
import { CancelledError, errorMessage, LoomError, throwIfAborted } from '../../util/errors.js';
import type { MessageStream } from '../types.js';
import { FileSyncError } from './errors.js';

export type BytesStream = MessageStream<BytesMessage, BytesMessage>;

/** Small writes (tar headers) are gathered up to this size before going out as one message. */
const GATHER_SIZE = 64 * 1024;
/** No message is larger than this: gRPC peers refuse messages over 4 MiB by default. */
const MAX_MESSAGE = 1024 * 1024;

/**
 * The daemon's side of FileSend.DiffCopy for tar, oci and docker exports: the bytes of `source` in
 * BytesMessages, then the end of our side, then a wait for the client to end its side (the client
 * ends once everything is written, so a returned promise means the file is complete). Errors close
 * the stream and are thrown.
 */
export async function sendBytes(stream: BytesStream, source: AsyncIterable<Uint8Array>, opts?: { signal?: AbortSignal }): Promise<number> {
  let total = 0;
  let buf: Uint8Array[] = [];
  let buffered = 0;
  const flush = async (): Promise<void> => {
    if (buffered === 0) return;
    const data = buf.length === 1 ? buf[0]! : Buffer.concat(buf, buffered);
    buf = [];
    buffered = 0;
    await stream.send(create(BytesMessageSchema, { data }));
  };
  try {
    for await (const chunk of source) {
      throwIfAborted(opts?.signal);
      for (let off = 0; off < chunk.length; off += MAX_MESSAGE) {
        const part = chunk.subarray(off, Math.min(chunk.length, off + MAX_MESSAGE));
        if (buffered + part.length > MAX_MESSAGE) await flush();
        buf.push(part);
        buffered += part.length;
        total += part.length;
        if (buffered >= GATHER_SIZE) await flush();
      }
    }
    await flush();
    stream.end();
    // The client sends nothing; its end of the stream says the target is written.
    for await (const _ of stream.recv()) {
      throwIfAborted(opts?.signal);
    }
    return total;
  } catch (err) {
    const e = err instanceof LoomError ? err : new FileSyncError('UNAVAILABLE', `failed to send export to the client: ${errorMessage(err)}`, { cause: err });
    stream.close(e);
    throw e;
  }
}

/**
 * The client's side of FileSend.DiffCopy for tar, oci and docker exports: every message's bytes
 * into `sink` (respecting its back pressure) until the daemon ends its side; then `sink` is ended
 * (unless `end: false`) and our side of the stream is ended.
 */
export async function receiveBytes(stream: BytesStream, sink: Writable, opts?: { signal?: AbortSignal; end?: boolean }): Promise<number> {
  let total = 0;
  try {
    for await (const msg of stream.recv()) {
      throwIfAborted(opts?.signal);
      if (msg.data.length === 0) continue;
      total += msg.data.length;
      if (!sink.write(msg.data)) await drained(sink);
    }
    throwIfAborted(opts?.signal);
    if (opts?.end !== false) await ended(sink);
    stream.end();
    return total;
  } catch (err) {
    const e =
      err instanceof LoomError ? err : new FileSyncError(err instanceof CancelledError ? 'CANCELLED' : 'INTERNAL', `failed to receive export: ${errorMessage(err)}`, { cause: err });
    stream.close(e);
    throw e;
  }
}

function drained(w: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      w.off('drain', onDrain);
      w.off('error', onError);
      w.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onError = (err: Error): void => done(err);
    const onClose = (): void => done(new Error('output closed before the export was written'));
    w.on('drain', onDrain);
    w.on('error', onError);
    w.on('close', onClose);
  });
}

function ended(w: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.end(() => {
      w.off('error', reject);
      resolve();
    });
  });
}
