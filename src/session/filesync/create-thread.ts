import { Worker } from 'node:worker_threads';

/**
 * The worker's code: opens each path of a batch with the given flags and mode, answering with a
 * descriptor per path, or the error's code and message. Plain CommonJS, evaluated as is.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { openSync } = require('node:fs');
parentPort.on('message', ({ id, paths, flags, mode }) => {
  const results = paths.map((p) => {
    try {
      return openSync(p, flags, mode);
    } catch (err) {
      return { code: err.code ?? 'EIO', message: err.message ?? String(err) };
    }
  });
  parentPort.postMessage({ id, results });
});
`;

type Result = number | { code: string; message: string };

interface Waiting {
  resolve: (r: (number | Error)[]) => void;
  reject: (err: Error) => void;
}

/**
 * Creating opens of the filesync receiver, a batch at a time on a thread of their own. Creating a
 * file is mostly kernel time (tens of microseconds, up to a millisecond on ext4 right after many
 * deletes); on the libuv thread pool each one was a hand-off whose wake-up could take the event
 * loop's core from it until the create was done (~200 us of the event loop per file over a cold
 * context transfer of 2,000 files). One message per batch makes that a hand-off per batch. The
 * descriptors are the process's: the event loop writes and closes them.
 */
export class CreateThread {
  #worker: Worker | undefined;
  #next = 1;
  readonly #waiting = new Map<number, Waiting>();

  /** One descriptor or error per path, in order. Rejects only if the thread itself fails. */
  open(paths: readonly string[], flags: number, mode: number): Promise<(number | Error)[]> {
    const w = this.#thread();
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      if (this.#waiting.size === 1) w.ref();
      w.postMessage({ id, paths, flags, mode });
    });
  }

  #thread(): Worker {
    if (this.#worker) return this.#worker;
    // The descriptors belong to the event loop once answered: not tracked as the thread's (which
    // would close them if it exited, and warns when a number it handed out and the event loop
    // closed comes back).
    const w = new Worker(WORKER_SOURCE, { eval: true, stdout: false, stderr: false, trackUnmanagedFds: false });
    w.unref();
    w.on('message', ({ id, results }: { id: number; results: Result[] }) => {
      const p = this.#waiting.get(id);
      if (!p) return;
      this.#waiting.delete(id);
      if (this.#waiting.size === 0) w.unref();
      p.resolve(results.map((r) => (typeof r === 'number' ? r : fsError(r))));
    });
    const fail = (err: Error): void => {
      if (this.#worker === w) this.#worker = undefined;
      const all = [...this.#waiting.values()];
      this.#waiting.clear();
      for (const p of all) p.reject(new Error(`file creating thread failed: ${err.message}`, { cause: err }));
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`exited with code ${code}`)));
    this.#worker = w;
    return w;
  }
}

/** The thread's answer for a failed open as the error fs would have thrown (code and message naming the path). */
function fsError(r: { code: string; message: string }): Error {
  const e = new Error(r.message) as NodeJS.ErrnoException;
  e.code = r.code;
  return e;
}

/** The daemon's one creating thread, started at its first use. */
export const createThread = new CreateThread();
