import type { UsageRecord } from '../../gen/buildkit/control_pb.js';
import { bytes } from '../../client/progress/format.js';
import { InvalidArgumentError } from '../../util/errors.js';
import { parseFlags, type FlagSpec } from './args.js';
import { resolveClient, type CommandContext } from './common.js';
import { goTime } from './go-format.js';
import { TabWriter } from '../../util/tabwriter.js';

export const DU_FLAGS: FlagSpec[] = [
  { names: ['filter', 'f'], kind: 'slice' },
  { names: ['verbose', 'v'], kind: 'bool' },
  { names: ['format'], kind: 'string', default: '' },
];

/** `buildctl du`: one row per record (`*` marks mutable ids and shared sizes), then totals. */
export async function du(ctx: CommandContext, args: string[]): Promise<void> {
  const { values } = parseFlags(args, DU_FLAGS);
  const filter = values.filter as string[];
  const client = await resolveClient(ctx.global);
  try {
    const res = await client.diskUsage(filter, ctx.signal);
    if (values.format) {
      checkJsonFormat(String(values.format));
      ctx.stdout.write(JSON.stringify(res.record.map(usageJson)) + '\n');
      return;
    }
    const tw = new TabWriter((s) => ctx.stdout.write(s));
    if (values.verbose) printVerbose(tw, res.record);
    else printTable(tw, res.record);
    if (filter.length === 0) printSummary(tw, res.record);
  } finally {
    client.close();
  }
}

export function checkJsonFormat(f: string): void {
  if (f !== 'json' && f !== '{{json .}}') throw new InvalidArgumentError(`--format ${f}: only json ("{{json .}}") is supported`);
}

export function usageJson(r: UsageRecord): Record<string, unknown> {
  return {
    id: r.ID,
    mutable: r.Mutable,
    inUse: r.InUse,
    size: Number(r.Size),
    createdAt: r.CreatedAt ? new Date(Number(r.CreatedAt.seconds) * 1000 + r.CreatedAt.nanos / 1e6).toISOString() : undefined,
    lastUsedAt: r.LastUsedAt ? new Date(Number(r.LastUsedAt.seconds) * 1000 + r.LastUsedAt.nanos / 1e6).toISOString() : null,
    usageCount: Number(r.UsageCount),
    parents: r.Parents,
    description: r.Description,
    recordType: r.RecordType,
    shared: r.Shared,
  };
}

export function printVerbose(tw: TabWriter, list: UsageRecord[]): void {
  const kv = (k: string, v: string): void => tw.write(`${k}:\t${v}\n`);
  for (const r of list) {
    kv('ID', r.ID);
    if (r.Parents.length > 0) kv('Parents', r.Parents.join(';'));
    kv('Created at', goTime(r.CreatedAt));
    kv('Mutable', String(r.Mutable));
    kv('Reclaimable', String(!r.InUse));
    kv('Shared', String(r.Shared));
    kv('Size', bytes(r.Size));
    if (r.Description) kv('Description', r.Description);
    kv('Usage count', String(r.UsageCount));
    if (r.LastUsedAt) kv('Last used', goTime(r.LastUsedAt));
    if (r.RecordType) kv('Type', r.RecordType);
    tw.write('\n');
  }
  tw.flush();
}

export function printTableHeader(tw: TabWriter): void {
  tw.write('ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED\n');
}

export function printTableRow(tw: TabWriter, r: UsageRecord): void {
  const id = r.ID + (r.Mutable ? '*' : '');
  const size = bytes(r.Size) + (r.Shared ? '*' : '');
  tw.write(`${id.padEnd(71)}\t${String(!r.InUse).padEnd(11)}\t${size}\t\n`);
}

function printTable(tw: TabWriter, list: UsageRecord[]): void {
  printTableHeader(tw);
  for (const r of list) printTableRow(tw, r);
  tw.flush();
}

function printSummary(tw: TabWriter, list: UsageRecord[]): void {
  let total = 0n;
  let reclaimable = 0n;
  let shared = 0n;
  for (const r of list) {
    if (r.Size > 0n) {
      total += r.Size;
      if (!r.InUse) reclaimable += r.Size;
    }
    if (r.Shared) shared += r.Size;
  }
  if (shared > 0n) {
    tw.write(`Shared:\t${bytes(shared)}\n`);
    tw.write(`Private:\t${bytes(total - shared)}\n`);
  }
  tw.write(`Reclaimable:\t${bytes(reclaimable)}\n`);
  tw.write(`Total:\t${bytes(total)}\n`);
  tw.flush();
}
