import type { MessageStream } from '../../src/session/types.js';

/**
 * Two connected in-memory ends of one bidirectional stream, behaving as the MessageStream
 * contract says: `end()` ends the peer's reading, `close(err)` fails both directions, sends wait
 * while the peer has `highWater` messages unread (so back pressure is exercised).
 */
export function streamPair<A, B>(opts?: { highWater?: number; metadata?: Record<string, string[]> }): {
  a: MessageStream<A, B>;
  b: MessageStream<B, A>;
} {
  const hw = opts?.highWater ?? 16;
  const ab = new Channel<A>(hw);
  const ba = new Channel<B>(hw);
  const md = opts?.metadata ?? {};
  const end = <S, R>(out: Channel<S>, inp: Channel<R>): MessageStream<S, R> => ({
    send: (m) => out.push(m),
    end: () => out.finish(),
    close: (err) => {
      const e = err ?? new Error('stream closed');
      out.fail(e);
      inp.fail(e);
    },
    recv: () => inp,
    metadata: md,
  });
  return { a: end(ab, ba), b: end(ba, ab) };
}

class Channel<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #done = false;
  #err: Error | undefined;
  #readers: (() => void)[] = [];
  #writers: (() => void)[] = [];
  readonly #hw: number;

  constructor(hw: number) {
    this.#hw = hw;
  }

  async push(m: T): Promise<void> {
    if (this.#err) throw this.#err;
    if (this.#done) throw new Error('send after end');
    this.#items.push(m);
    this.#wakeReaders();
    while (this.#items.length > this.#hw && !this.#err) {
      await new Promise<void>((r) => this.#writers.push(r));
    }
    if (this.#err) throw this.#err;
  }

  finish(): void {
    this.#done = true;
    this.#wakeReaders();
  }

  fail(err: Error): void {
    if (this.#err) return;
    this.#err = err;
    this.#wakeReaders();
    this.#wakeWriters();
  }

  #wakeReaders(): void {
    for (const r of this.#readers.splice(0)) r();
  }

  #wakeWriters(): void {
    for (const w of this.#writers.splice(0)) w();
  }

  // As in gRPC, messages sent before a failure are still delivered, then the failure.
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const m = this.#items.shift();
      if (m !== undefined) {
        this.#wakeWriters();
        yield m;
        continue;
      }
      if (this.#err) throw this.#err;
      if (this.#done) return;
      await new Promise<void>((r) => this.#readers.push(r));
    }
  }
}
