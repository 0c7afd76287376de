import type { UsageInfo, PruneOptions } from '../control/types.js';
import type { RefManager, UsageEntry } from './ref-manager.js';
import { parseFilters, type FieldGetter } from './filters.js';

export function usageInfo(e: UsageEntry): UsageInfo {
  const r = e.record;
  return {
    id: r.id,
    mutable: false,
    inUse: e.inUse,
    size: r.size,
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

export async function diskUsage(refs: RefManager, filters: readonly string[], extra?: ExtraRecords): Promise<UsageInfo[]> {
  const match = parseFilters(filters);
  const all = [...refs.usage().map(usageInfo), ...(extra ? (await extra.list()).map((x) => x.info) : [])];
  return all.filter((u) => match(usageFields(u)));
}

/**
 * One prune pass with upstream's rules: records in use are never touched; without `all`, internal,
 * frontend and shared records stay; `keepDurationMs` spares records used more recently than that;
 * `keepBytes` deletes least recently used records only until the total is at most that.
 */
export async function prune(refs: RefManager, opts: PruneOptions, idle = false, extra?: ExtraRecords): Promise<UsageInfo[]> {
  const match = parseFilters(opts.filters);
  const extras = extra ? (await extra.list()).filter((x) => !x.info.inUse) : [];
  type Candidate = { u: UsageInfo; entry?: UsageEntry; extra?: ExtraRecord };
  let chosenExtras: ExtraRecord[] = [];
  const removed = await refs.prune((entries) => {
    const infos: Candidate[] = [...entries.map((e) => ({ entry: e, u: usageInfo(e) })), ...extras.map((x) => ({ extra: x, u: x.info }))];
    let total = 0;
    if (opts.keepBytes > 0) {
      for (const { u } of infos) if (!u.shared) total += u.size;
      if (total <= opts.keepBytes) return [];
    }
    const cutoff = Date.now() - opts.keepDurationMs;
    let candidates = infos.filter(({ u }) => {
      if (!opts.all && (u.recordType === 'internal' || u.recordType === 'frontend' || u.shared)) return false;
      if (opts.keepDurationMs > 0 && (u.lastUsedAt?.getTime() ?? u.createdAt.getTime()) > cutoff) return false;
      return match(usageFields(u));
    });
    if (opts.keepBytes > 0) {
      candidates.sort((a, b) => (a.u.lastUsedAt?.getTime() ?? 0) - (b.u.lastUsedAt?.getTime() ?? 0));
      const chosen: Candidate[] = [];
      for (const c of candidates) {
        if (total <= opts.keepBytes) break;
        chosen.push(c);
        total -= c.u.size;
      }
      candidates = chosen;
    }
    chosenExtras = candidates.flatMap((c) => (c.extra ? [c.extra] : []));
    return candidates.flatMap((c) => (c.entry ? [c.entry] : []));
  }, { minBlobAgeMs: idle ? 0 : 60_000 });
  const out = removed.map(usageInfo);
  for (const x of chosenExtras) if (await x.remove()) out.push(x.info);
  return out;
}
