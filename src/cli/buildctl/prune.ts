import { bytes } from '../../client/progress/format.js';
import { parseFlags, type FlagSpec } from './args.js';
import { resolveClient, type CommandContext } from './common.js';
import { checkJsonFormat, printTableHeader, printTableRow, printVerbose, usageJson } from './du.js';
import { TabWriter } from '../../util/tabwriter.js';

export const PRUNE_FLAGS: FlagSpec[] = [
  { names: ['keep-duration'], kind: 'duration', default: 0 },
  { names: ['keep-storage'], kind: 'float', default: 0 },
  { names: ['filter', 'f'], kind: 'slice' },
  { names: ['all'], kind: 'bool' },
  { names: ['verbose', 'v'], kind: 'bool' },
  { names: ['format'], kind: 'string', default: '' },
];

/**
 * `buildctl prune`: prints each removed record as it arrives (the table flushed row by row, as
 * upstream), then `Total:` of what was freed.
 */
export async function prune(ctx: CommandContext, args: string[]): Promise<void> {
  const { values } = parseFlags(args, PRUNE_FLAGS);
  if (values.format) checkJsonFormat(String(values.format));
  const client = await resolveClient(ctx.global);
  const tw = new TabWriter((s) => ctx.stdout.write(s));
  let first = true;
  let total = 0n;
  try {
    await client.prune(
      {
        filter: values.filter as string[],
        all: Boolean(values.all),
        keepDuration: BigInt(Math.trunc(Number(values['keep-duration'] ?? 0))),
        reservedSpace: BigInt(Math.trunc(Number(values['keep-storage'] ?? 0) * 1e6)),
      },
      (r) => {
        total += r.Size;
        if (values.format) {
          ctx.stdout.write(JSON.stringify(usageJson(r)) + '\n');
        } else if (values.verbose) {
          printVerbose(tw, [r]);
        } else {
          if (first) {
            printTableHeader(tw);
            first = false;
          }
          printTableRow(tw, r);
          tw.flush();
        }
      },
      ctx.signal,
    );
  } finally {
    client.close();
  }
  if (!values.format) {
    const sum = new TabWriter((s) => ctx.stdout.write(s));
    sum.write(`Total:\t${bytes(total)}\n`);
    sum.flush();
  }
}
