import { Duplex } from 'node:stream';

/**
 * Two byte Duplexes wired to each other, delivering asynchronously: what bytesDuplex gives HTTP/2
 * (writes complete at once, reads are delivered later), without a gRPC stream or a kernel socket.
 */
export function duplexPair(): [Duplex, Duplex] {
  const make = (): Duplex & { peer?: Duplex } => {
    const d: Duplex & { peer?: Duplex } = new Duplex({
      allowHalfOpen: true,
      read() {
        // Delivery is pushed by the peer's write.
      },
      write(chunk: Buffer, _e, cb) {
        setImmediate(() => {
          const peer = d.peer!;
          if (peer.destroyed) return;
          peer.push(Buffer.from(chunk));
        });
        cb();
      },
      final(cb) {
        setImmediate(() => {
          d.peer!.push(null);
          cb();
        });
      },
      destroy(err, cb) {
        setImmediate(() => {
          if (!d.peer!.destroyed) d.peer!.destroy();
        });
        cb(err);
      },
    });
    return d;
  };
  const a = make();
  const b = make();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
