/**
 * GC policy logic: which records one prune pass removes (upstream's rules and deletion order), how
 * a policy list is applied in order and throttled, and local-source sizes that share inodes.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GarbageCollector, policyPruneOptions } from '../../../src/cache/gc.js';
import { LinkedUsage } from '../../../src/cache/linked-usage.js';
import { deleteOrder, prune, selectPrune, type CacheView, type PruneRecord } from '../../../src/cache/prune.js';
import type { RefManager } from '../../../src/cache/ref-manager.js';
import type { UsageEntry } from '../../../src/cache/ref-manager.js';
import type { PruneOptions, UsageInfo } from '../../../src/control/types.js';
import { NativeSnapshotter, linkTree } from '../../../src/snapshot/native/native-snapshotter.js';
import { defaultGCPolicy, diskTotal } from '../../../src/cli/daemon.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const MIN = 60_000;

function rec(id: string, o: Partial<UsageInfo> & { snapshot?: string; needs?: string[]; usedMinAgo?: number } = {}): PruneRecord & { id: string } {
  const { snapshot, needs, usedMinAgo, ...info } = o;
  return {
    id,
    snapshot: snapshot ?? `snap-${id}`,
    needs: needs ?? [],
    info: {
      id,
      mutable: false,
      inUse: false,
      size: 100,
      parents: [],
      createdAt: new Date(T0 - 1000 * MIN),
      lastUsedAt: new Date(T0 - (usedMinAgo ?? 10) * MIN),
      usageCount: 1,
      description: `record ${id}`,
      recordType: 'regular',
      shared: false,
      ...info,
    },
  };
}

const opts = (o: Partial<PruneOptions> = {}): PruneOptions => ({ filters: [], all: false, keepBytes: 0, keepDurationMs: 0, ...o });
const ids = (rs: { id: string }[]) => rs.map((r) => r.id);
const select = (rs: (PruneRecord & { id: string })[], o: Partial<PruneOptions>, protect?: (u: UsageInfo) => boolean) => ids(selectPrune(rs, opts(o), { now: T0, protect }));

describe('selectPrune (one policy)', () => {
  it('removes nothing while the unshared total is below keepBytes, counting records in use', () => {
    const rs = [rec('a', { size: 400 }), rec('b', { size: 400, inUse: true }), rec('s', { size: 5000, shared: true })];
    expect(select(rs, { keepBytes: 801 })).toEqual([]);
    // At 800 (the total) it is not below: one more goes, and in-use b never does.
    expect(select(rs, { keepBytes: 800 })).toEqual(['a']);
  });

  it('counts bytes two records share (one snapshot) as freed only when the last of them goes', () => {
    // c is charged for snapshot S; d holds it too (shown 0B). Removing c alone frees nothing.
    const rs = [rec('c', { size: 1000, snapshot: 'S', usedMinAgo: 30 }), rec('d', { size: 0, snapshot: 'S', usedMinAgo: 20 }), rec('x', { usedMinAgo: 10 })];
    expect(select(rs, { keepBytes: 500 })).toEqual(['c', 'd']);
    expect(select(rs, { keepBytes: 1101 })).toEqual([]);
  });

  it('with keepBytes removes least recently used records one at a time until below it', () => {
    const rs = [rec('new', { usedMinAgo: 1 }), rec('old', { usedMinAgo: 30 }), rec('mid', { usedMinAgo: 10 }), rec('older', { usedMinAgo: 20 })];
    expect(select(rs, { keepBytes: 250 })).toEqual(['old', 'older']);
    expect(select(rs, { keepBytes: 101 })).toEqual(['old', 'older', 'mid']);
  });

  it('keeps what upstream v0.17+ computes from max-used-space, min-free-space and reserved-space (keepBytes)', () => {
    const rs = [rec('new', { usedMinAgo: 1 }), rec('old', { usedMinAgo: 30 }), rec('mid', { usedMinAgo: 10 }), rec('older', { usedMinAgo: 20 })];
    // 400 bytes held: at most 250 used -> the two least recently used go.
    expect(select(rs, { maxUsedSpace: 250 })).toEqual(['old', 'older']);
    // 150 free, 300 wanted free: 150 must go (total 400 -> keep 250).
    expect(select(rs, { minFreeSpace: 300, freeBytes: 150 })).toEqual(['old', 'older']);
    // Enough free already: nothing goes (not everything, as a prune without limits would).
    expect(select(rs, { minFreeSpace: 300, freeBytes: 1000 })).toEqual([]);
    // The tighter of the two, but never below the reserved space.
    expect(select(rs, { maxUsedSpace: 350, minFreeSpace: 300, freeBytes: 150 })).toEqual(['old', 'older']);
    expect(select(rs, { maxUsedSpace: 50, keepBytes: 301 })).toEqual(['old']);
  });

  it('without keepBytes removes every candidate', () => {
    const rs = [rec('a'), rec('b'), rec('c', { inUse: true })];
    expect(select(rs, {}).sort()).toEqual(['a', 'b']);
  });

  it('never removes a record another remaining record stands on; it goes once that one has gone', () => {
    // child stands on parent's snapshot (its layer chain); parent was used long ago.
    const parent = rec('parent', { usedMinAgo: 100, size: 300 });
    const child = rec('child', { usedMinAgo: 5, needs: ['snap-parent'] });
    const other = rec('other', { usedMinAgo: 50 });
    // child goes first although it is the most recent: the parent is not free before it.
    expect(select([parent, child, other], { keepBytes: 400 })).toEqual(['other', 'child']);
    expect(select([parent, child, other], { keepBytes: 100 })).toEqual(['other', 'child', 'parent']);
    // Without keepBytes the whole chain goes in one pass.
    expect(select([parent, child, other], {}).sort()).toEqual(['child', 'other', 'parent']);
    // A child in use keeps its parent.
    expect(select([parent, { ...child, info: { ...child.info, inUse: true } }], {})).toEqual([]);
    // A child the filter spares keeps its parent too.
    expect(select([parent, child], { filters: ['id==parent'] })).toEqual([]);
  });

  it('spares internal, frontend and shared records unless all is set', () => {
    const rs = [rec('i', { recordType: 'internal' }), rec('f', { recordType: 'frontend' }), rec('s', { shared: true }), rec('r')];
    expect(select(rs, {})).toEqual(['r']);
    expect(select(rs, { all: true }).sort()).toEqual(['f', 'i', 'r', 's']);
  });

  it('spares records used within keepDuration', () => {
    const rs = [rec('recent', { usedMinAgo: 5 }), rec('stale', { usedMinAgo: 120 })];
    expect(select(rs, { keepDurationMs: 60 * MIN })).toEqual(['stale']);
  });

  it('removes only records the filters match; commas AND, several filters OR', () => {
    const rs = [rec('l', { recordType: 'source.local' }), rec('c', { recordType: 'exec.cachemount' }), rec('r')];
    expect(select(rs, { filters: ['type==source.local'] })).toEqual(['l']);
    expect(select(rs, { filters: ['type==source.local', 'type==exec.cachemount'] }).sort()).toEqual(['c', 'l']);
    // Upstream v0.11's default first policy: three type terms ANDed match nothing.
    expect(select(rs, { filters: ['type==source.local,type==exec.cachemount,type==source.git.checkout'] })).toEqual([]);
    expect(() => select(rs, { filters: ['type~=('] })).toThrow(/bad regexp/);
  });

  it('never removes protected records (taken by a running build)', () => {
    const rs = [rec('a', { usedMinAgo: 30 }), rec('b', { usedMinAgo: 20 })];
    expect(select(rs, {}, (u) => u.id === 'a')).toEqual(['b']);
    expect(select(rs, { keepBytes: 1 }, () => true)).toEqual([]);
  });
});

describe('deleteOrder (upstream sortDeleteRecords)', () => {
  it('ranks by last use and by usage count together, never-used first', () => {
    const r = (id: string, usedMinAgo: number | null, usageCount: number) => {
      const x = rec(id, { usageCount });
      if (usedMinAgo === null) x.info.lastUsedAt = undefined;
      else x.info.lastUsedAt = new Date(T0 - usedMinAgo * MIN);
      return x;
    };
    // Old but used often loses to a little newer but used once.
    const order = ids(deleteOrder([r('old-often', 30, 9), r('mid-once', 20, 1), r('new-once', 1, 1), r('never', null, 0)]));
    expect(order).toEqual(['never', 'mid-once', 'old-often', 'new-once']);
  });
});

describe('GarbageCollector', () => {
  const removedInfo = (id: string, size: number): UsageInfo => rec(id, { size }).info;

  it('applies the policies in order, once per run, and reports what they freed', async () => {
    const calls: number[] = [];
    const runs: { bytes: number; n: number }[] = [];
    const policies = [policyPruneOptions({ all: false, keepBytes: 10, keepDuration: 3600, filters: ['type==source.local'] }), opts({ keepBytes: 20 }), opts({ all: true, keepBytes: 20 })];
    expect(policies[0]).toEqual({ all: false, keepBytes: 10, keepDurationMs: 3_600_000, filters: ['type==source.local'] });
    const gc = new GarbageCollector({
      policies,
      delayMs: 5,
      prune: async (p) => {
        calls.push(policies.indexOf(p));
        return p === policies[1] ? [removedInfo('x', 7), removedInfo('y', 5)] : [];
      },
      onRun: (r) => runs.push({ bytes: r.bytes, n: r.removed.length }),
    });
    gc.trigger();
    await new Promise((r) => setTimeout(r, 20));
    await gc.idle();
    expect(calls).toEqual([0, 1, 2]);
    expect(runs).toEqual([{ bytes: 12, n: 2 }]);
    await gc.close();
  });

  it('coalesces a burst of triggers, runs one at a time, and pauses after a run that removed records', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const starts: number[] = [];
    let removeNext = false;
    const gc = new GarbageCollector({
      policies: [opts({ keepBytes: 1 })],
      delayMs: 10,
      idleIntervalMs: 30,
      intervalMs: 400,
      prune: async () => {
        starts.push(Date.now());
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise((r) => setTimeout(r, 50));
        inFlight--;
        return removeNext ? [removedInfo('z', 1)] : [];
      },
    });
    for (let i = 0; i < 20; i++) gc.trigger();
    await new Promise((r) => setTimeout(r, 20));
    // Triggers during the run make exactly one more.
    for (let i = 0; i < 5; i++) gc.trigger();
    await new Promise((r) => setTimeout(r, 200));
    await gc.idle();
    expect(starts.length).toBe(2);
    expect(maxInFlight).toBe(1);
    // The second started after the idle pause (30 ms after the first ended, which took 50 ms).
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(75);
    // A run that removed something holds the next one back for intervalMs.
    removeNext = true;
    gc.trigger();
    await new Promise((r) => setTimeout(r, 100));
    await gc.idle();
    expect(starts.length).toBe(3);
    const endOfThird = Date.now();
    gc.trigger();
    await new Promise((r) => setTimeout(r, 150));
    expect(starts.length).toBe(3);
    await gc.idle();
    expect(starts.length).toBe(4);
    expect(starts[3]! - endOfThird).toBeGreaterThanOrEqual(250);
    await gc.close();
  });

  it('stops a run at a failing policy and runs again on the next trigger', async () => {
    const calls: number[] = [];
    let fail = true;
    const policies = [opts({ keepBytes: 1 }), opts({ keepBytes: 2 })];
    const errors: (number | undefined)[] = [];
    const gc = new GarbageCollector({
      policies,
      delayMs: 1,
      intervalMs: 1,
      prune: async (p) => {
        calls.push(policies.indexOf(p));
        if (fail && p === policies[0]) throw new Error('disk on fire');
        return [];
      },
      onRun: (r) => errors.push(r.error?.policy),
    });
    gc.trigger();
    await new Promise((r) => setTimeout(r, 10));
    await gc.idle();
    fail = false;
    gc.trigger();
    await new Promise((r) => setTimeout(r, 10));
    await gc.idle();
    expect(calls).toEqual([0, 0, 1]);
    expect(errors).toEqual([0, undefined]);
    await gc.close();
  });

  it('never runs without policies (gc = false) or after close', async () => {
    let called = 0;
    const off = new GarbageCollector({ policies: [], delayMs: 1, prune: async () => (called++, []) });
    off.trigger();
    const on = new GarbageCollector({ policies: [opts()], delayMs: 1, prune: async () => (called++, []) });
    await on.close();
    on.trigger();
    await new Promise((r) => setTimeout(r, 20));
    expect(off.enabled).toBe(false);
    expect(called).toBe(0);
  });
});

describe('defaultGCPolicy', () => {
  it('is upstream v0.11 default policy, with the cap from keep-storage or a tenth of the disk rounded up to GB', () => {
    const p = defaultGCPolicy({ keepStorage: { bytes: 3e9 } }, 0);
    expect(p.map((x) => [x.filters, x.keepDuration, x.keepBytes, x.all])).toEqual([
      [['type==source.local,type==exec.cachemount,type==source.git.checkout'], 48 * 3600, 512e6, false],
      [[], 60 * 24 * 3600, 3e9, false],
      [[], 0, 3e9, false],
      [[], 0, 3e9, true],
    ]);
    const cap = defaultGCPolicy({}, diskTotal(tmpdir()))[2]!.keepBytes;
    expect(cap % 1e9).toBe(0);
    expect(cap).toBeGreaterThanOrEqual(1e9);
    // A tenth of 100 GiB is 10 GiB: 11 GB, rounded up as upstream's DetectDefaultGCCap.
    expect(defaultGCPolicy({}, 100 * 2 ** 30)[1]!.keepBytes).toBe(11e9);
    expect(defaultGCPolicy({}, 0)[1]!.keepBytes).toBe(2e9);
  });
});

describe('LinkedUsage', () => {
  let dir = '';
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('counts files shared by local-source snapshots of one mirror once, for the newest record', async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-linked-'));
    const mirror = join(dir, 'mirror');
    mkdirSync(mirror);
    writeFileSync(join(mirror, 'big'), Buffer.alloc(256 * 1024, 7));
    writeFileSync(join(mirror, 'small'), 'v1');
    const snap = new NativeSnapshotter({ root: join(dir, 'snap') });
    const make = async (key: string) => {
      const d = await snap.prepare(key, null);
      await linkTree(mirror, d);
      await snap.commit(key);
      return (await snap.usage(key)).size;
    };
    const size1 = await make('s1');
    // The client changes one file: the receiver replaces it with a new inode.
    rmSync(join(mirror, 'small'));
    writeFileSync(join(mirror, 'small'), 'v2');
    const size2 = await make('s2');
    expect(size1).toBeGreaterThan(256 * 1024);
    const entry = (id: string, snapshot: string, size: number, t: number, recordType = 'source.local'): UsageEntry => ({
      inUse: false,
      shared: false,
      record: { id, snapshot, chain: [], description: '', recordType, createdAt: t, lastUsedAt: t, usageCount: 1, size, parents: [] },
    });
    const entries = [entry('old', 's1', size1, T0), entry('new', 's2', size2, T0 + MIN), entry('reg', 's1', 999, T0, 'regular')];
    const sizes = await new LinkedUsage({ snapshotter: snap }).sizes(entries);
    expect(sizes.get('new')).toBe(size2);
    // The old one keeps what only it has: its version of `small` and its directory.
    expect(sizes.get('old')).toBeLessThan(64 * 1024);
    expect(sizes.get('old')).toBeGreaterThan(0);
    expect(sizes.has('reg')).toBe(false);
    // Together they count the disk's bytes once: the shared big file is in only one of them.
    expect(sizes.get('old')! + sizes.get('new')!).toBeLessThan(size1 + size2 - 200 * 1024);
    // One record alone keeps its stored size.
    expect((await new LinkedUsage({ snapshotter: snap }).sizes([entries[0]!])).size).toBe(0);
  });
});

describe('GC pass sizes', () => {
  const entry = (id: string, size: number): UsageEntry => ({
    inUse: false,
    shared: false,
    record: { id, snapshot: `s-${id}`, chain: [], description: '', recordType: 'source.local', createdAt: T0, lastUsedAt: T0, usageCount: 1, size, parents: [] },
  });
  /** The ref index and the shared-inode sizing, standing in for the real ones: what prune asks of them. */
  function view(entries: UsageEntry[], linkedSizes: Map<string, number>) {
    const calls = { sizes: 0, removed: [] as string[] };
    const refs = {
      usage: () => entries,
      sizesSettled: async () => undefined,
      prune: async (select: (c: UsageEntry[]) => UsageEntry[]) => {
        const victims = select(entries);
        calls.removed.push(...victims.map((v) => v.record.id));
        return victims;
      },
    } as unknown as RefManager;
    const linked = {
      sizes: async () => {
        calls.sizes++;
        return linkedSizes;
      },
    } as unknown as LinkedUsage;
    return { v: { refs, linked } satisfies CacheView, calls };
  }

  it('a GC pass that stored sizes keep under its limit does not walk the local sources', async () => {
    const { v, calls } = view([entry('a', 400), entry('b', 400)], new Map());
    expect(await prune(v, opts({ keepBytes: 1000 }), { sweepAlways: false })).toEqual([]);
    expect(calls.sizes).toBe(0);
  });

  it('over the limit by stored sizes, the shared-inode sizes decide', async () => {
    // Stored: 1200 > 1000. Counted once, the shared files leave 700: nothing to remove.
    const under = view([entry('a', 600), entry('b', 600)], new Map([['a', 100], ['b', 600]]));
    expect(await prune(under.v, opts({ keepBytes: 1000 }), { sweepAlways: false })).toEqual([]);
    expect(under.calls.sizes).toBe(1);
    // Still over with them: the least recently used goes, reported with its corrected size.
    const over = view([entry('a', 600), entry('b', 600)], new Map([['a', 500], ['b', 600]]));
    const removed = await prune(over.v, opts({ keepBytes: 1000 }), { sweepAlways: false });
    expect(removed).toHaveLength(1);
    expect(over.calls.sizes).toBe(1);
    expect(removed[0]!.size).toBe(removed[0]!.id === 'a' ? 500 : 600);
  });
});
