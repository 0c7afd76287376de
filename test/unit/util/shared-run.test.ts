import { describe, expect, it } from 'vitest';
import { sharedRun, type SharedRun } from '../../../src/util/shared-run.js';

/** Work that resolves with `value` when released, or rejects when `signal` aborts. */
function work(signal: AbortSignal, value: string) {
  let release!: () => void;
  const p = new Promise<string>((ok, fail) => {
    release = () => ok(value);
    signal.addEventListener('abort', () => fail(signal.reason), { once: true });
  });
  return { p, release: () => release() };
}

describe('sharedRun', () => {
  it('runs the work once for concurrent callers', async () => {
    const runs = new Map<string, SharedRun<string>>();
    let started = 0;
    let joined = 0;
    const a = new AbortController();
    const w = work(a.signal, 'done');
    const start = () => (started++, w.p);
    const first = sharedRun(runs, 'k', a.signal, start);
    const second = sharedRun(runs, 'k', new AbortController().signal, start, () => joined++);
    w.release();
    expect(await Promise.all([first, second])).toEqual(['done', 'done']);
    expect([started, joined, runs.size]).toEqual([1, 1, 0]);
  });

  it('starts the work again for a waiting caller when the one running it stops, and fails the one that stopped', async () => {
    const runs = new Map<string, SharedRun<string>>();
    const owner = new AbortController();
    const waiter = new AbortController();
    const attempts: { release(): void }[] = [];
    const start = (signal: AbortSignal) => () => {
      const w = work(signal, `run ${attempts.length + 1}`);
      attempts.push(w);
      return w.p;
    };
    const first = sharedRun(runs, 'k', owner.signal, start(owner.signal));
    const second = sharedRun(runs, 'k', waiter.signal, start(waiter.signal));
    owner.abort(new Error('context canceled'));
    await expect(first).rejects.toThrow('context canceled');
    await new Promise((r) => setImmediate(r));
    expect(attempts).toHaveLength(2);
    attempts[1]!.release();
    expect(await second).toBe('run 2');
  });

  it('gives every caller a failure of the work itself', async () => {
    const runs = new Map<string, SharedRun<string>>();
    let started = 0;
    const start = async () => {
      started++;
      await new Promise((r) => setImmediate(r));
      throw new Error('broken');
    };
    const calls = [sharedRun(runs, 'k', undefined, start), sharedRun(runs, 'k', new AbortController().signal, start)];
    for (const c of calls) await expect(c).rejects.toThrow('broken');
    expect(started).toBe(1);
  });
});
