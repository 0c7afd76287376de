import { randomBytes } from 'node:crypto';
import { PassThrough, Writable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import type { BytesMessage } from '../../../../src/gen/session/filesync_pb.js';
import { receiveBytes, sendBytes } from '../../../../src/session/filesync/bytes.js';
import { streamPair } from '../../../helpers/stream-pair.js';

async function* chunks(parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield p;
}

describe('FileSend byte streaming', () => {
  test('bytes arrive in order and complete; small writes gathered, big ones split', async () => {
    const parts = [randomBytes(512), randomBytes(100), randomBytes(3 * 1024 * 1024), randomBytes(7)];
    const { a, b } = streamPair<BytesMessage, BytesMessage>({ highWater: 2 });
    const sizes: number[] = [];
    const tap = {
      ...b,
      recv: async function* () {
        for await (const m of b.recv()) {
          sizes.push(m.data.length);
          yield m;
        }
      },
    };
    const got: Buffer[] = [];
    // A slow sink: back pressure must hold the sender, not lose data.
    const sink = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, cb) {
        got.push(chunk);
        setImmediate(cb);
      },
    });
    const [sent, received] = await Promise.all([sendBytes(a, chunks(parts)), receiveBytes(tap, sink)]);
    const all = Buffer.concat(parts);
    expect(sent).toBe(all.length);
    expect(received).toBe(all.length);
    expect(Buffer.compare(Buffer.concat(got), all)).toBe(0);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(1024 * 1024);
    expect(sizes[0]).toBeGreaterThan(512);
    expect(sink.writableFinished).toBe(true);
  });

  test('a failing sink closes the stream and fails both sides', async () => {
    const { a, b } = streamPair<BytesMessage, BytesMessage>();
    const sink = new Writable({
      write(_c, _e, cb) {
        cb(new Error('disk full'));
      },
    });
    sink.on('error', () => undefined);
    const [s, r] = await Promise.allSettled([sendBytes(a, chunks([randomBytes(200_000)])), receiveBytes(b, sink)]);
    expect(r.status).toBe('rejected');
    expect(String((r as PromiseRejectedResult).reason)).toMatch(/disk full/);
    expect(s.status).toBe('rejected');
  });

  test('end: false leaves the sink open', async () => {
    const { a, b } = streamPair<BytesMessage, BytesMessage>();
    const sink = new PassThrough();
    await Promise.all([sendBytes(a, chunks([Buffer.from('hi')])), receiveBytes(b, sink, { end: false })]);
    expect(sink.writableEnded).toBe(false);
    expect(sink.read()?.toString()).toBe('hi');
  });
});
