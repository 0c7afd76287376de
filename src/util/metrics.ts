/**
 * The daemon's counters and gauges, served in Prometheus' text format at `--debugaddr` /metrics.
 * Deliberately tiny: a handful of named values, no labels beyond what each line carries.
 */
type Kind = 'counter' | 'gauge';

interface Metric {
  name: string;
  help: string;
  kind: Kind;
  value: () => number | Promise<number>;
}

export class Metrics {
  readonly #metrics: Metric[] = [];
  readonly #counters = new Map<string, number>();

  counter(name: string, help: string): (by?: number) => void {
    this.#counters.set(name, 0);
    this.#metrics.push({ name, help, kind: 'counter', value: () => this.#counters.get(name) ?? 0 });
    return (by = 1) => this.#counters.set(name, (this.#counters.get(name) ?? 0) + by);
  }

  gauge(name: string, help: string, value: () => number | Promise<number>): void {
    this.#metrics.push({ name, help, kind: 'gauge', value });
  }

  async render(): Promise<string> {
    const lines: string[] = [];
    for (const m of this.#metrics) {
      let v: number;
      try {
        v = await m.value();
      } catch {
        continue;
      }
      lines.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.kind}`, `${m.name} ${Number.isFinite(v) ? v : 0}`);
    }
    return lines.join('\n') + '\n';
  }
}

/** The metrics the daemon keeps (names prefixed loom_). */
export function daemonMetrics() {
  const m = new Metrics();
  return {
    registry: m,
    builds: m.counter('loom_builds_total', 'Builds finished (successful or not).'),
    buildsFailed: m.counter('loom_builds_failed_total', 'Builds that ended in an error.'),
    stepsCached: m.counter('loom_steps_cached_total', 'Steps whose result came from the cache.'),
    stepsRun: m.counter('loom_steps_run_total', 'Steps that ran.'),
    pruneRuns: m.counter('loom_prune_runs_total', 'Prune operations (client prune and GC).'),
    pruneBytes: m.counter('loom_prune_freed_bytes_total', 'Bytes freed by prune.'),
  };
}

export type DaemonMetrics = ReturnType<typeof daemonMetrics>;
