import type { FlagSpec } from './args.js';
import { parseFlags } from './args.js';
import { resolveClient, type CommandContext } from './common.js';
import { bytesShort } from '../../client/progress/format.js';
import { formatGoDuration } from './args.js';
import { formatPlatform } from './go-format.js';
import { TabWriter } from '../../util/tabwriter.js';
import { InvalidArgumentError } from '../../util/errors.js';

export const WORKERS_FLAGS: FlagSpec[] = [
  { names: ['filter', 'f'], kind: 'slice' },
  { names: ['verbose', 'v'], kind: 'bool' },
  { names: ['format'], kind: 'string', default: '' },
];

/** `buildctl debug workers [-v] [--filter f]`: upstream's table or verbose blocks. */
export async function debugWorkers(ctx: CommandContext, args: string[]): Promise<void> {
  const { values } = parseFlags(args, WORKERS_FLAGS);
  const client = await resolveClient(ctx.global);
  try {
    const res = await client.listWorkers(values.filter as string[], ctx.signal);
    if (values.format) {
      if (values.format !== 'json' && values.format !== '{{json .}}') {
        throw new InvalidArgumentError(`--format ${String(values.format)}: only json ("{{json .}}") is supported`);
      }
      const list = res.record.map((w) => ({
        id: w.ID,
        labels: w.Labels,
        platforms: w.platforms.map((p) => ({ architecture: p.Architecture, os: p.OS, ...(p.Variant ? { variant: p.Variant } : {}) })),
        gcPolicy: w.GCPolicy.map((g) => ({ all: g.all, filter: g.filters, keepDuration: Number(g.keepDuration), keepBytes: Number(g.reservedSpace) })),
        buildkitVersion: { package: w.BuildkitVersion?.package ?? '', version: w.BuildkitVersion?.version ?? '', revision: w.BuildkitVersion?.revision ?? '' },
      }));
      ctx.stdout.write(JSON.stringify(list) + '\n');
      return;
    }
    const tw = new TabWriter((s) => ctx.stdout.write(s));
    if (values.verbose) {
      for (const w of res.record) {
        tw.write(`ID:\t${w.ID}\n`);
        tw.write(`Platforms:\t${w.platforms.map(formatPlatform).join(',')}\n`);
        const v = w.BuildkitVersion;
        tw.write(`BuildKit:\t${v?.package ?? ''} ${v?.version ?? ''} ${v?.revision ?? ''}\n`);
        tw.write('Labels:\n');
        for (const k of Object.keys(w.Labels).sort()) tw.write(`\t${k}:\t${w.Labels[k]}\n`);
        w.GCPolicy.forEach((rule, i) => {
          tw.write(`GC Policy rule#${i}:\n`);
          tw.write(`\tAll:\t${rule.all}\n`);
          if (rule.filters.length > 0) tw.write(`\tFilters:\t${rule.filters.join(' ')}\n`);
          if (rule.keepDuration > 0n) tw.write(`\tKeep Duration:\t${formatGoDuration(Number(rule.keepDuration))}\n`);
          if (rule.reservedSpace > 0n) tw.write(`\tKeep Bytes:\t${bytesShort(rule.reservedSpace)}\n`);
        });
        tw.write('\n');
      }
    } else {
      tw.write('ID\tPLATFORMS\n');
      for (const w of res.record) tw.write(`${w.ID}\t${w.platforms.map(formatPlatform).join(',')}\n`);
    }
    tw.flush();
  } finally {
    client.close();
  }
}
