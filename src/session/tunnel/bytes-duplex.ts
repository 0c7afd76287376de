import { Duplex } from 'node:stream';

/**
 * A moby.buildkit.v1.BytesMessage, the object protobuf-es' create() makes, without loading
 * control.proto's descriptors for it (see client/control-codec.ts).
 */
function bytesMessage(data: Uint8Array): { $typeName: 'moby.buildkit.v1.BytesMessage'; data: Uint8Array } {
  return { $typeName: 'moby.buildkit.v1.BytesMessage', data };
}

/** Largest BytesMessage the tunnel writes when it gathers HTTP/2 frames. */
const MAX_MESSAGE = 256 * 1024;

/** Received messages below this size are gathered before they reach HTTP/2 (see bytesDuplex). */
const SMALL_MESSAGE = 16 * 1024;

/**
 * An object stream of BytesMessage, as grpc-js hands out for Control.Session: a
 * ServerDuplexStream on the daemon, a ClientDuplexStream on the client. Both are object-mode
 * Duplexes; the client one can also be cancelled.
 */
export interface BytesMessageStream extends Duplex {
  cancel?(): void;
}

/**
 * A byte Duplex over a BytesMessage stream: what HTTP/2 runs on in the session tunnel.
 * Backpressure on reads: the gRPC stream is paused while our readable buffer is full; writes are
 * bounded by the inner HTTP/2 flow control instead (see write below). Ending our writable half-closes the gRPC stream
 * (CloseSend on the client, OK status on the server); destroying us cancels it.
 */
export function bytesDuplex(stream: BytesMessageStream): Duplex {
  let sourceEnded = false;
  const d: Duplex = new Duplex({
    allowHalfOpen: true,
    read() {
      if (stream.isPaused()) stream.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      if (stream.destroyed || stream.writableEnded) {
        cb(new Error('session stream is closed'));
        return;
      }
      // Copied: the caller (HTTP/2) may reuse its buffer once we call back, and grpc-js serializes
      // a buffered message only when it gets to it.
      // Called back at once, not on 'drain': Node's HTTP/2 session stops reading its socket while
      // a write to it is in progress, so waiting here for the peer to consume could leave both
      // ends writing and neither reading. What may queue here is bounded by the inner HTTP/2 flow
      // control windows (see h2-options.ts), which the peer only grants as it consumes.
      stream.write(bytesMessage(Buffer.from(chunk)));
      cb();
    },
    // HTTP/2 writes each frame header and payload as separate corked chunks: gathered into
    // messages of up to MAX_MESSAGE (well under gRPC's 4 MiB default limit on the peer).
    writev(chunks: { chunk: Buffer }[], cb) {
      if (stream.destroyed || stream.writableEnded) {
        cb(new Error('session stream is closed'));
        return;
      }
      let batch: Buffer[] = [];
      let size = 0;
      const flush = (): void => {
        if (size === 0) return;
        stream.write(bytesMessage(Buffer.concat(batch, size)));
        batch = [];
        size = 0;
      };
      for (const { chunk } of chunks) {
        if (size > 0 && size + chunk.length > MAX_MESSAGE) flush();
        batch.push(chunk);
        size += chunk.length;
      }
      flush();
      cb();
    },
    final(cb) {
      if (!stream.destroyed && !stream.writableEnded) stream.end();
      cb();
    },
    destroy(err, cb) {
      if (!sourceEnded || !stream.writableEnded) {
        if (typeof stream.cancel === 'function') stream.cancel();
        else if (!stream.destroyed) stream.destroy();
      }
      cb(err);
    },
  });

  // Small messages arriving in one turn of the event loop reach HTTP/2 as one chunk: the peer
  // writes a message per frame (a filesync listing is thousands of ~50-byte messages), and each
  // chunk pushed costs a pass through the socket wrapper and the HTTP/2 parser. Large messages
  // go through as they are, without a copy.
  let small: Buffer[] = [];
  let smallBytes = 0;
  let flushQueued = false;
  const flushSmall = (): void => {
    flushQueued = false;
    if (smallBytes === 0 || d.destroyed) return;
    const chunk = small.length === 1 ? small[0]! : Buffer.concat(small, smallBytes);
    small = [];
    smallBytes = 0;
    if (!d.push(chunk)) stream.pause();
  };
  stream.on('data', (m: { data?: Uint8Array }) => {
    const data = m?.data;
    if (!data || data.byteLength === 0) return;
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length >= SMALL_MESSAGE) {
      flushSmall();
      if (!d.push(buf)) stream.pause();
      return;
    }
    small.push(buf);
    smallBytes += buf.length;
    if (smallBytes >= SMALL_MESSAGE) flushSmall();
    else if (!flushQueued) {
      flushQueued = true;
      setImmediate(flushSmall);
    }
  });
  stream.on('end', () => {
    flushSmall();
    sourceEnded = true;
    d.push(null);
  });
  stream.on('error', (err: Error) => {
    // A cancelled or failed gRPC call ends the tunnel; the error itself is for the logs of whoever owns it.
    if (!d.destroyed) d.destroy(err);
  });
  stream.on('close', () => {
    if (!sourceEnded && !d.destroyed) d.destroy();
  });
  return d;
}
