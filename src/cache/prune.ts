import type { UsageInfo, PruneOptions } from '../control/types.js';
import type { RefManager, UsageEntry } from './ref-manager.js';
import { parseFilters, type FieldGetter } from './filters.js';
import type { LinkedUsage } from './linked-usage.js';

/** `size` overrides the stored size (see LinkedUsage); a duplicate counts none (see UsageEntry). */
export function usageInfo(e: UsageEntry, size?: number): UsageInfo {
  const r = e.record;
  return {
    id: r.id,
    // As upstream's, whose local directories are mutable records, kept and synced again by the
    // next transfer of the same directory (du marks them with *).
    mutable: r.recordType === 'source.local',
    inUse: e.inUse,
    size: e.duplicate ? 0 : (size ?? r.size),
    parents: r.parents,
    createdAt: new Date(r.createdAt),
    lastUsedAt: r.lastUsedAt ? new Date(r.lastUsedAt) : undefined,
    usageCount: r.usageCount,
    description: r.description,
    recordType: r.recordType,
    shared: e.shared,
  };
}

/** The fields du and prune filters can name, as upstream's cache manager exposes them. */
export function usageFields(u: UsageInfo): FieldGetter {
  return (field) => {
    switch (field) {
      case 'id':
        return { value: u.id, present: u.id !== '' };
      case 'parents':
        return { value: u.parents.join(';'), present: u.parents.length > 0 };
      case 'description':
        return { value: u.description, present: u.description !== '' };
      case 'inuse':
        return { value: '', present: u.inUse };
      case 'mutable':
        return { value: '', present: u.mutable };
      case 'immutable':
        return { value: '', present: !u.mutable };
      case 'type':
        return { value: u.recordType, present: u.recordType !== '' };
      case 'shared':
        return { value: '', present: u.shared };
      case 'private':
        return { value: '', present: !u.shared };
      default:
        return { value: '', present: false };
    }
  };
}

/**
 * Records kept outside the ref index (cache mounts' directories): listed by du, removed by prune
 * with the same rules. `remove` answers false when the record is in use by then.
 */
export interface ExtraRecord {
  info: UsageInfo;
  remove(): Promise<boolean>;
}

export interface ExtraRecords {
  list(): Promise<ExtraRecord[]>;
}

/** What du and prune look at: the ref index, records kept beside it, and shared-inode sizing. */
export interface CacheView {
  refs: RefManager;
  extra?: ExtraRecords;
  linked?: LinkedUsage;
}

export async function diskUsage(view: CacheView, filters: readonly string[]): Promise<UsageInfo[]> {
  const match = parseFilters(filters);
  await view.refs.sizesSettled();
  const entries = view.refs.usage();
  const sizes = view.linked ? await view.linked.sizes(entries) : undefined;
  const all = [...entries.map((e) => usageInfo(e, sizes?.get(e.record.id))), ...(view.extra ? (await view.extra.list()).map((x) => x.info) : [])];
  return all.filter((u) => match(usageFields(u)));
}

/**
 * A record as prune weighs it. `snapshot` is its own snapshot; `needs` the other snapshots it
 * stands on (its layer chain, its parents'): a record another remaining record stands on frees
 * nothing, so it only becomes a candidate once those are gone (upstream: a child holds a
 * reference to its parent).
 */
export interface PruneRecord {
  info: UsageInfo;
  snapshot?: string;
  needs: readonly string[];
}

export interface SelectContext {
  /** Milliseconds since the epoch (keepDuration's reference). */
  now: number;
  /** Records that must stay although nobody holds them (a running build may take them). */
  protect?: (u: UsageInfo) => boolean;
}

/**
 * Which records one prune pass removes, with upstream's rules (cache/manager.go prune):
 * - records in use, protected, or stood on by a remaining record are never chosen;
 * - without `all`, internal, frontend and shared records stay;
 * - `keepDurationMs` spares records used more recently than that;
 * - `filters` must match;
 * - without `keepBytes`, every candidate goes (repeating as parents become free);
 * - with `keepBytes`, nothing goes while the unshared total is below it; otherwise one record at a
 *   time, the least recently and least often used first, until the total is below it.
 * Throws InvalidArgumentError naming a malformed filter.
 */
export function selectPrune<T extends PruneRecord>(records: readonly T[], opts: PruneOptions, ctx: SelectContext): T[] {
  const match = parseFilters(opts.filters);
  let total = 0;
  let keepBytes = 0;
  if (opts.keepBytes > 0 || (opts.maxUsedSpace ?? 0) > 0 || (opts.minFreeSpace ?? 0) > 0) {
    for (const r of records) if (!r.info.shared) total += r.info.size;
    const keep = keepBytesFor(total, opts);
    if (keep === 'nothing') return [];
    keepBytes = keep;
    if (keepBytes > 0 && total < keepBytes) return [];
  }
  const cutoff = ctx.now - opts.keepDurationMs;
  const eligible = records.filter(({ info: u }) => {
    if (u.inUse || ctx.protect?.(u)) return false;
    if (!opts.all && (u.recordType === 'internal' || u.recordType === 'frontend' || u.shared)) return false;
    if (opts.keepDurationMs > 0 && lastUsed(u) > cutoff) return false;
    return match(usageFields(u));
  });
  if (eligible.length === 0) return [];
  // How many remaining records stand on each snapshot (other than their own).
  const standers = new Map<string, number>();
  const needsOf = (r: PruneRecord) => new Set(r.needs.filter((k) => k !== r.snapshot));
  for (const r of records) for (const k of needsOf(r)) standers.set(k, (standers.get(k) ?? 0) + 1);
  const remove = (r: T) => {
    for (const k of needsOf(r)) standers.set(k, (standers.get(k) ?? 1) - 1);
  };
  const free = (r: T) => r.snapshot === undefined || !standers.get(r.snapshot);
  // Records holding one snapshot (see UsageEntry.duplicate) free its bytes only when the last of
  // them goes, whichever of them is charged for it.
  const holders = new Map<string, number>();
  const snapshotBytes = new Map<string, number>();
  for (const r of records) {
    if (r.snapshot === undefined) continue;
    holders.set(r.snapshot, (holders.get(r.snapshot) ?? 0) + 1);
    if (!r.info.shared) snapshotBytes.set(r.snapshot, Math.max(snapshotBytes.get(r.snapshot) ?? 0, r.info.size));
  }
  const freed = (r: T): number => {
    if (r.snapshot === undefined) return r.info.shared ? 0 : r.info.size;
    const n = (holders.get(r.snapshot) ?? 1) - 1;
    holders.set(r.snapshot, n);
    return n === 0 ? (snapshotBytes.get(r.snapshot) ?? 0) : 0;
  };
  const left = new Set(eligible);
  const chosen: T[] = [];
  for (;;) {
    const candidates = [...left].filter(free);
    if (candidates.length === 0) break;
    if (keepBytes <= 0) {
      for (const c of candidates) {
        chosen.push(c);
        left.delete(c);
        remove(c);
      }
      continue;
    }
    const victim = deleteOrder(candidates)[0]!;
    chosen.push(victim);
    left.delete(victim);
    remove(victim);
    total -= freed(victim);
    if (total < keepBytes) break;
  }
  return chosen;
}

/**
 * How many bytes a prune keeps, as upstream's calculateKeepBytes: at most max-used-space, less
 * where min-free-space needs room, never below the reserved space (keepBytes); 0 = no cap (every
 * candidate goes). 'nothing' when only min-free-space is set and the disk already has that free.
 */
function keepBytesFor(total: number, opts: PruneOptions): number | 'nothing' {
  let keep = opts.maxUsedSpace ?? 0;
  const minFree = opts.minFreeSpace ?? 0;
  const excess = minFree - (opts.freeBytes ?? 0);
  if (minFree > 0 && excess > 0) keep = keep === 0 ? total - excess : Math.min(keep, total - excess);
  else if (minFree > 0 && keep === 0) {
    if (opts.keepBytes <= 0) return 'nothing';
    keep = total;
  }
  return Math.max(keep, opts.keepBytes);
}

function lastUsed(u: UsageInfo): number {
  return u.lastUsedAt?.getTime() ?? u.createdAt.getTime();
}

/**
 * Upstream's deletion order (sortDeleteRecords): each record ranks by when it was last used and by
 * how often (dense ranks, never-used first), each rank scaled to 0..1; the lowest sum goes first.
 * Ties keep the least recently used first.
 */
export function deleteOrder<T extends { info: UsageInfo }>(records: readonly T[]): T[] {
  const rank = (values: number[]): Map<number, number> => {
    const distinct = [...new Set(values)].sort((a, b) => a - b);
    return new Map(distinct.map((v, i) => [v, i]));
  };
  const times = records.map((r) => r.info.lastUsedAt?.getTime() ?? -1);
  // Never used (no time) ranks 0, as a count of 0 does: the first distinct value after those is 1.
  const timeRank = rank(times);
  const timeBase = times.includes(-1) ? 0 : 1;
  const counts = records.map((r) => r.info.usageCount);
  const countRank = rank(counts);
  const countBase = counts.includes(0) ? 0 : 1;
  const maxTime = Math.max(...[...timeRank.values()].map((v) => v + timeBase));
  const maxCount = Math.max(...[...countRank.values()].map((v) => v + countBase));
  const scaled = (v: number, max: number) => (max > 0 ? v / max : 0);
  const score = records.map((r, i) => scaled(timeRank.get(times[i]!)! + timeBase, maxTime) + scaled(countRank.get(counts[i]!)! + countBase, maxCount));
  return records
    .map((r, i) => ({ r, s: score[i]!, t: times[i]! }))
    .sort((a, b) => a.s - b.s || a.t - b.t)
    .map((x) => x.r);
}

export interface PruneContext {
  /** No build is running: blobs written a moment ago may go too. */
  idle?: boolean;
  /** Records that must stay although nobody holds them yet (see SelectContext). */
  protect?: (u: UsageInfo) => boolean;
  /**
   * Sweep unreferenced snapshots and blobs even when no record is chosen (default true: the
   * client's prune). The GC passes false: its frequent passes that remove nothing stay a read of
   * the index.
   */
  sweepAlways?: boolean;
}

/**
 * One prune pass (the client's Prune, or one GC policy): chooses with selectPrune, deletes the
 * chosen records, then every snapshot and blob no remaining record needs. Returns what was removed.
 */
export async function prune(view: CacheView, opts: PruneOptions, ctx: PruneContext = {}): Promise<UsageInfo[]> {
  // A malformed filter fails before anything is listed or removed.
  parseFilters(opts.filters);
  await view.refs.sizesSettled();
  const extras = view.extra ? await view.extra.list() : [];
  let sizes: Map<string, number> | undefined;
  type Candidate = PruneRecord & { entry?: UsageEntry; extra?: ExtraRecord };
  let chosenExtras: ExtraRecord[] = [];
  const choose = (): Candidate[] => {
    // Every record counts toward the total and may stand on others, in use or not; the ref
    // manager drops any chosen record that is in use by now.
    const entries = view.refs.usage();
    const snapshotOf = new Map(entries.map((e) => [e.record.id, e.record.snapshot] as const));
    const records: Candidate[] = [
      ...entries.map((e) => ({
        entry: e,
        info: usageInfo(e, sizes?.get(e.record.id)),
        snapshot: e.record.snapshot,
        needs: [...e.record.chain.flatMap((l) => (l.lower ? [l.lower, l.upper] : [l.upper])), ...e.record.parents.flatMap((p) => snapshotOf.get(p) ?? [])],
      })),
      ...extras.map((x) => ({ extra: x, info: x.info, needs: [] })),
    ];
    return selectPrune(records, opts, { now: Date.now(), protect: ctx.protect });
  };
  // Stored sizes are never below the shared-inode ones (LinkedUsage only takes away): when they
  // choose nothing, neither would the exact sizes, and a GC pass after a build ends here without
  // walking the local sources' trees.
  if (ctx.sweepAlways === false && choose().length === 0) return [];
  if (view.linked) {
    sizes = await view.linked.sizes(view.refs.usage());
    if (ctx.sweepAlways === false && choose().length === 0) return [];
  }
  const removed = await view.refs.prune(
    () => {
      const chosen = choose();
      chosenExtras = chosen.flatMap((c) => (c.extra ? [c.extra] : []));
      return chosen.flatMap((c) => (c.entry ? [c.entry] : []));
    },
    { minBlobAgeMs: ctx.idle ? 0 : 60_000 },
  );
  const out = removed.map((e) => usageInfo(e, sizes?.get(e.record.id)));
  for (const x of chosenExtras) if (await x.remove()) out.push(x.info);
  return out;
}
