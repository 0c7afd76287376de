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

export function diskUsage(refs: RefManager, filters: readonly string[]): UsageInfo[] {
  const match = parseFilters(filters);
  return refs
    .usage()
    .map(usageInfo)
    .filter((u) => match(usageFields(u)));
}

/**
 * One prune pass with upstream's rules: records in use are never touched; without `all`, internal,
 * frontend and shared records stay; `keepDurationMs` spares records used more recently than that;
 * `keepBytes` deletes least recently used records only until the total is at most that.
 */
/** `idle`: no build is running, so GC may take even blobs written a moment ago. */
export async function prune(refs: RefManager, opts: PruneOptions, idle = false): Promise<UsageInfo[]> {
  const match = parseFilters(opts.filters);
  const removed = await refs.prune((entries) => {
    const infos = entries.map((e) => ({ e, u: usageInfo(e) }));
    let total = 0;
    if (opts.keepBytes > 0) {
      for (const { e, u } of infos) if (!e.shared) total += u.size;
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
      const chosen: typeof candidates = [];
      for (const c of candidates) {
        if (total <= opts.keepBytes) break;
        chosen.push(c);
        total -= c.u.size;
      }
      candidates = chosen;
    }
    return candidates.map((c) => c.e);
  }, { minBlobAgeMs: idle ? 0 : 60_000 });
  return removed.map(usageInfo);
}
