import type { PruneOptions, UsageInfo } from '../control/types.js';
import { errorMessage } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';

const log = () => rootLog.child({ sub: 'gc' });

/** What one GC run did. */
export interface GCRunResult {
  removed: UsageInfo[];
  /** Sum of the removed records' sizes. */
  bytes: number;
  /** The policy that failed, if one did: later policies did not run. */
  error?: { policy: number; message: string };
}

export interface GarbageCollectorOptions {
  /** Applied in order, each as one prune pass; empty: the collector never runs. */
  policies: readonly PruneOptions[];
  /**
   * One prune pass: the same code path as the client's Prune (it must spare records a running
   * build holds or may take, and remove what lives beside removed records, such as local mirrors).
   */
  prune(policy: PruneOptions): Promise<UsageInfo[]>;
  /** Told after every run (metrics). */
  onRun?(result: GCRunResult): void;
  /** Wait between a trigger and the run it asks for: triggers within it make one run. Default 1 s. */
  delayMs?: number;
  /**
   * Least time between the end of a run that removed something (or failed) and the start of the
   * next. Default 60 s, upstream's.
   */
  intervalMs?: number;
  /** The same after a run that found every policy satisfied (it only read the index). Default 5 s. */
  idleIntervalMs?: number;
}

/**
 * Applies the worker's GC policies by itself, as upstream's daemon does: `trigger()` at start and
 * whenever a build ends. At most one run is in flight; triggers that arrive during a run or during
 * the pause after it make exactly one more run, once the pause is over. Runs never overlap with
 * each other, but do with builds: `prune` is responsible for sparing what those use.
 *
 * Upstream pauses a minute after every run. Here a run that removed nothing pauses only
 * `idleIntervalMs`: it cost one read of the index, and a daemon started with a cache over its
 * budget should not wait a minute for its first build to bring it back under.
 *
 * Owner: the daemon; `close()` before the stores the prune touches are closed.
 */
export class GarbageCollector {
  readonly #o: GarbageCollectorOptions;
  #pending = false;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #notBefore = 0;
  #closed = false;
  #runs = 0;

  constructor(opts: GarbageCollectorOptions) {
    this.#o = opts;
  }

  get enabled(): boolean {
    return this.#o.policies.length > 0;
  }

  /** Runs started so far. */
  get runs(): number {
    return this.#runs;
  }

  /** Asks for a run soon; cheap, never throws, never waits. */
  trigger(): void {
    if (this.#closed || !this.enabled) return;
    this.#pending = true;
    this.#schedule(this.#o.delayMs ?? 1000);
  }

  /** Resolves when no run is in flight and none is scheduled (tests; shutdown). */
  async idle(): Promise<void> {
    while (this.#running || this.#timer) {
      if (this.#running) await this.#running;
      else await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops scheduling and waits for a run in flight to end. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  #schedule(delayMs: number): void {
    // A run in flight reschedules itself when it ends; a scheduled one already covers this.
    if (this.#running || this.#timer || this.#closed) return;
    const wait = Math.max(delayMs, this.#notBefore - Date.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#start();
    }, wait);
    // The daemon's listeners keep the process alive; a pending GC alone must not.
    this.#timer.unref();
  }

  #start(): void {
    if (!this.#pending || this.#closed) return;
    this.#pending = false;
    this.#runs++;
    this.#running = this.#runOnce()
      .then(
        (r) => {
          const pause = r.removed.length > 0 || r.error ? (this.#o.intervalMs ?? 60_000) : (this.#o.idleIntervalMs ?? 5000);
          this.#notBefore = Date.now() + pause;
          this.#o.onRun?.(r);
        },
        (err: unknown) => {
          this.#notBefore = Date.now() + (this.#o.intervalMs ?? 60_000);
          log().error({ err: errorMessage(err) }, 'gc run failed');
        },
      )
      .catch((err: unknown) => log().warn({ err: errorMessage(err) }, 'gc result observer failed'))
      .finally(() => {
        this.#running = undefined;
        if (this.#pending) this.#schedule(0);
      });
  }

  async #runOnce(): Promise<GCRunResult> {
    const started = Date.now();
    const removed: UsageInfo[] = [];
    let error: GCRunResult['error'];
    for (const [i, policy] of this.#o.policies.entries()) {
      try {
        removed.push(...(await this.#o.prune(policy)));
      } catch (err) {
        // As upstream: a failing policy ends the run; the next trigger tries again.
        error = { policy: i, message: errorMessage(err) };
        log().error({ policy: i, filters: policy.filters, err: error.message }, 'gc policy failed');
        break;
      }
    }
    const bytes = removed.reduce((n, u) => n + u.size, 0);
    if (removed.length > 0) {
      log().info({ records: removed.length, bytes, ms: Date.now() - started, ids: removed.map((u) => u.id) }, 'gc removed cache records');
    } else {
      log().debug({ ms: Date.now() - started }, 'gc: every policy satisfied');
    }
    return { removed, bytes, error };
  }
}

/** A policy of buildkitd.toml (`keepDuration` in seconds) as one prune pass. */
export function policyPruneOptions(p: { all: boolean; keepBytes: number; maxUsedSpace?: number; minFreeSpace?: number; keepDuration: number; filters: readonly string[] }): PruneOptions {
  return {
    all: p.all,
    keepBytes: p.keepBytes,
    ...(p.maxUsedSpace ? { maxUsedSpace: p.maxUsedSpace } : {}),
    ...(p.minFreeSpace ? { minFreeSpace: p.minFreeSpace } : {}),
    keepDurationMs: p.keepDuration * 1000,
    filters: [...p.filters],
  };
}
