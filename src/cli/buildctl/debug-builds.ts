import type { BuildRecord } from '../../gen/loom/inspect_pb.js';
import { bytes } from '../../client/progress/format.js';
import { InvalidArgumentError } from '../../util/errors.js';
import { parseFlags, type FlagSpec } from './args.js';
import { resolveClient, type CommandContext } from './common.js';
import { TabWriter } from '../../util/tabwriter.js';

const FLAGS: FlagSpec[] = [
  { names: ['format'], kind: 'string', default: '' },
  { names: ['limit', 'n'], kind: 'string', default: '20' },
];

/**
 * `buildctl debug builds [-n N]`: recent builds, newest first, with how many steps came from the
 * cache. `buildctl debug build REF`: each step of one build, and for every step that ran, why it
 * missed the cache. loom's own commands (its Inspect service); `--format json` for scripts.
 */
export async function debugBuilds(ctx: CommandContext, args: string[], one: boolean): Promise<void> {
  const { values, rest: positional } = parseFlags(args, FLAGS);
  const format = String(values.format ?? '');
  if (format && format !== 'json') throw new InvalidArgumentError(`--format ${format}: only json is supported`);
  const ref = positional[0];
  if (one && !ref) throw new InvalidArgumentError('usage: buildctl debug build REF (see buildctl debug builds for refs)');
  const limit = Number(values.limit);
  if (!Number.isInteger(limit) || limit <= 0) throw new InvalidArgumentError(`invalid --limit ${String(values.limit)}`);
  const client = await resolveClient(ctx.global);
  try {
    const res = await client.builds(one ? { ref } : { limit }, ctx.signal);
    if (format === 'json') {
      ctx.stdout.write(JSON.stringify(res.builds.map(toJson)) + '\n');
      return;
    }
    const tw = new TabWriter((s) => ctx.stdout.write(s));
    if (!one) {
      tw.write('REF\tSTARTED\tDURATION\tCACHED\tRUN\tREUSED\tSTATUS\n');
      for (const b of res.builds) {
        const started = new Date(Number(b.startedAt)).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
        tw.write(`${b.ref}\t${started}\t${secs(b)}\t${b.stepsCached}\t${b.stepsRun}\t${bytes(b.bytesReused)}\t${b.error ? 'failed' : 'ok'}\n`);
      }
      tw.flush();
      return;
    }
    const b = res.builds[0]!;
    tw.write(`Ref:\t${b.ref}\n`);
    if (b.frontend) tw.write(`Frontend:\t${b.frontend}\n`);
    tw.write(`Started:\t${new Date(Number(b.startedAt)).toISOString()}\n`);
    tw.write(`Duration:\t${secs(b)}\n`);
    tw.write(`Status:\t${b.error ? `failed: ${b.error}` : 'ok'}\n`);
    tw.write(`Steps:\t${b.stepsCached} cached, ${b.stepsRun} run, ${bytes(b.bytesReused)} reused from the cache\n`);
    tw.flush();
    ctx.stdout.write('\n');
    const steps = new TabWriter((s) => ctx.stdout.write(s));
    steps.write('STEP\tRESULT\tTIME\tWHY IT RAN\n');
    for (const s of b.steps) {
      steps.write(`${s.name}\t${s.cached ? 'cached' : 'run'}\t${s.cached ? '' : `${(Number(s.durationMs) / 1000).toFixed(1)}s`}\t${s.reason}\n`);
    }
    steps.flush();
  } finally {
    client.close();
  }
}

function secs(b: BuildRecord): string {
  return `${((Number(b.completedAt) - Number(b.startedAt)) / 1000).toFixed(1)}s`;
}

function toJson(b: BuildRecord) {
  return {
    ref: b.ref,
    frontend: b.frontend,
    startedAt: new Date(Number(b.startedAt)).toISOString(),
    completedAt: new Date(Number(b.completedAt)).toISOString(),
    error: b.error,
    stepsCached: b.stepsCached,
    stepsRun: b.stepsRun,
    bytesReused: Number(b.bytesReused),
    steps: b.steps.map((s) => ({ digest: s.digest, name: s.name, cached: s.cached, reason: s.reason, durationMs: Number(s.durationMs), bytes: Number(s.bytes) })),
  };
}
