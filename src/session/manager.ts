import type { SessionCaller } from './types.js';
import { CancelledError, LoomError } from '../util/errors.js';

type Waiter = { resolve: (s: SessionCaller) => void };

/**
 * Live client sessions by id. A build names its session in SolveRequest.Session; the client may
 * open the session a moment after it calls Solve, so `get` waits for it, for a bounded time.
 */
export class SessionManager {
  readonly #sessions = new Map<string, SessionCaller>();
  readonly #waiters = new Map<string, Set<Waiter>>();

  add(s: SessionCaller): void {
    if (this.#sessions.has(s.id)) throw new LoomError('ALREADY_EXISTS', `session ${s.id} already exists`);
    this.#sessions.set(s.id, s);
    for (const w of this.#waiters.get(s.id) ?? []) w.resolve(s);
    this.#waiters.delete(s.id);
    void s.closed.finally(() => {
      if (this.#sessions.get(s.id) === s) this.#sessions.delete(s.id);
    });
  }

  /** The session, waiting up to `timeoutMs` for it to come. */
  get(id: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<SessionCaller> {
    const s = this.#sessions.get(id);
    if (s) return Promise.resolve(s);
    const timeoutMs = opts.timeoutMs ?? 5000;
    return new Promise<SessionCaller>((resolve, reject) => {
      const set = this.#waiters.get(id) ?? new Set<Waiter>();
      this.#waiters.set(id, set);
      const cleanup = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        set.delete(w);
        if (set.size === 0) this.#waiters.delete(id);
      };
      const w: Waiter = {
        resolve: (sess) => {
          cleanup();
          resolve(sess);
        },
      };
      const onAbort = () => {
        cleanup();
        reject(new CancelledError(`no active session for ${id}: context canceled`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new LoomError('DEADLINE_EXCEEDED', `no active session for ${id}: context deadline exceeded`));
      }, timeoutMs);
      set.add(w);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Any live session sharing `sharedKey` other than `exclude`, for sources that outlive their build. */
  count(): number {
    return this.#sessions.size;
  }
}
