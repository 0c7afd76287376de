/**
 * Work that concurrent callers (builds) share: one computes, the others wait on it. The work runs
 * under the signal of the caller that started it; when that caller stops (its build cancelled, or
 * failed elsewhere) while a waiting caller goes on, the waiting one starts the work again itself
 * rather than failing with the other's cancellation.
 */
export interface SharedRun<T> {
  run: Promise<T>;
  /** The signal of the caller whose work this is. */
  signal?: AbortSignal;
}

/**
 * The result of the work under `key` in `runs`, started with `start()` when nobody runs it.
 * `onJoin` is told when this caller waits on another's work.
 */
export async function sharedRun<T>(
  runs: Map<string, SharedRun<T>>,
  key: string,
  signal: AbortSignal | undefined,
  start: () => Promise<T>,
  onJoin?: () => void,
): Promise<T> {
  for (;;) {
    let shared = runs.get(key);
    if (!shared) {
      const run: Promise<T> = start().finally(() => {
        if (runs.get(key)?.run === run) runs.delete(key);
      });
      shared = { run, signal };
      runs.set(key, shared);
    } else {
      onJoin?.();
    }
    try {
      return await shared.run;
    } catch (err) {
      if (shared.signal !== signal && shared.signal?.aborted && !signal?.aborted) continue;
      throw err;
    }
  }
}
