import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Snapshotter } from '../../../../src/snapshot/snapshotter.js';
import { SNAPSHOTTERS } from '../../snapshot/snapshotters.js';
import { childChain, mergeChains, planDiff, type LayerRef } from '../../../../src/ops/merge-diff/chain.js';
import { runMerge } from '../../../../src/ops/merge-diff/merge-op.js';
import { runDiff } from '../../../../src/ops/merge-diff/diff-op.js';

const ref = (snapshot: string, chain: [string | null, string][]): LayerRef => ({
  snapshot,
  chain: chain.map(([lower, upper]) => ({ lower, upper })),
});

describe('layer chain algebra', () => {
  const img = ref('L1', [
    [null, 'L0'],
    ['L0', 'L1'],
  ]);
  const run1 = { snapshot: 'S', chain: childChain(img, 'S') };
  const run2 = { snapshot: 'T', chain: childChain(run1, 'T') };

  it('an op on P appends {P, S}; merge concatenates', () => {
    expect(run1.chain).toEqual([...img.chain, { lower: 'L1', upper: 'S' }]);
    expect(childChain(null, 'X')).toEqual([{ lower: null, upper: 'X' }]);
    expect(mergeChains([img, null, run1]).length).toBe(5);
  });

  it('diff of an ancestor is the extra layers; otherwise one pair; empty and identity cases', () => {
    expect(planDiff(img, run2)).toEqual({
      kind: 'chain',
      chain: [
        { lower: 'L1', upper: 'S' },
        { lower: 'S', upper: 'T' },
      ],
    });
    const unrelated = ref('U', [[null, 'U']]);
    expect(planDiff(unrelated, run1)).toEqual({ kind: 'chain', chain: [{ lower: 'U', upper: 'S' }] });
    expect(planDiff(run1, run1)).toEqual({ kind: 'empty' });
    expect(planDiff(null, null)).toEqual({ kind: 'empty' });
    expect(planDiff(null, run1)).toEqual({ kind: 'upper', ref: run1 });
    expect(planDiff(run1, null)).toEqual({ kind: 'chain', chain: [{ lower: 'S', upper: null }] });
  });
});

describe.each(SNAPSHOTTERS)('merge and diff on $name snapshots', (impl) => {
  let tmp: string;
  let sn: Snapshotter;
  let n = 0;
  const newKey = () => `k${++n}`;
  beforeEach(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-merge-'));
    sn = impl.make(tmp);
  });
  afterEach(async () => {
    await impl.close(sn);
    rmSync(tmp, { recursive: true, force: true });
  });

  /** A ref made by an op on `parent` that runs `change` on its copy. */
  async function step(parent: LayerRef | null, change: (dir: string) => void | Promise<void>): Promise<LayerRef> {
    const key = newKey();
    const dir = await sn.prepare(key, parent?.snapshot ?? null);
    await change(dir);
    await sn.commit(key);
    return { snapshot: key, chain: childChain(parent, key) };
  }
  const w = (dir: string, p: string, data: string) => {
    mkdirSync(path.dirname(path.join(dir, p)), { recursive: true });
    writeFileSync(path.join(dir, p), data);
  };
  const tree = async (r: LayerRef | null) => {
    if (!r) return [];
    const { execFileSync } = await import('node:child_process');
    return execFileSync('find', ['.', '-mindepth', '1'], { cwd: await sn.dir(r.snapshot), encoding: 'utf8' }).trim().split('\n').filter(Boolean).sort();
  };

  it('a diff that deletes a file deletes it from what earlier merge inputs brought', async () => {
    const base = await step(null, (d) => {
      w(d, 'etc/conf', 'base');
      w(d, 'etc/other', 'o');
    });
    const removed = await step(base, (d) => rm(path.join(d, 'etc/conf')));
    const added = await step(base, (d) => w(d, 'new', 'n'));
    const delDiff = (await runDiff({ lower: base, upper: removed, snapshotter: sn, newKey })).ref!;
    const addDiff = (await runDiff({ lower: base, upper: added, snapshotter: sn, newKey })).ref!;
    // The diff alone holds only its change; /etc comes along as the change's parent.
    expect(await tree(delDiff)).toEqual(['./etc']);
    expect(await tree(addDiff)).toEqual(['./new']);

    const other = await step(null, (d) => w(d, 'etc/conf', 'other image'));
    const merged = (await runMerge({ inputs: [other, addDiff, delDiff], snapshotter: sn, newKey }))!;
    expect(await tree(merged)).toEqual(['./etc', './new']);
    expect(merged.chain.length).toBe(3);

    // Order matters: a later input re-adds what an earlier diff deleted.
    const merged2 = (await runMerge({ inputs: [delDiff, other], snapshotter: sn, newKey }))!;
    expect(readFileSync(path.join(await sn.dir(merged2.snapshot), 'etc/conf'), 'utf8')).toBe('other image');
  });

  it('merge of one input is that input; of none is nothing; diff against scratch is upper', async () => {
    const a = await step(null, (d) => w(d, 'a', 'a'));
    expect(await runMerge({ inputs: [null, a], snapshotter: sn, newKey })).toBe(a);
    expect(await runMerge({ inputs: [null], snapshotter: sn, newKey })).toBeNull();
    expect((await runDiff({ lower: null, upper: a, snapshotter: sn, newKey })).ref).toBe(a);
    expect((await runDiff({ lower: a, upper: a, snapshotter: sn, newKey })).ref).toBeNull();
  });

  it('a diff of unrelated trees compares them; a diff to nothing deletes everything when merged', async () => {
    const x = await step(null, (d) => {
      w(d, 'same', 's');
      w(d, 'only-x', 'x');
    });
    const y = await step(null, (d) => {
      w(d, 'same', 's');
      w(d, 'only-y', 'y');
    });
    const d = (await runDiff({ lower: x, upper: y, snapshotter: sn, newKey })).ref!;
    expect(d.chain).toEqual([{ lower: x.snapshot, upper: y.snapshot }]);
    const onX = (await runMerge({ inputs: [x, d], snapshotter: sn, newKey }))!;
    expect(await tree(onX)).toEqual(['./only-y', './same']);

    const { ref: wipe, created } = await runDiff({ lower: x, upper: null, snapshotter: sn, newKey });
    expect(created.length).toBe(1);
    const wiped = (await runMerge({ inputs: [x, wipe], snapshotter: sn, newKey }))!;
    expect(await tree(wiped)).toEqual([]);
    expect(existsSync(await sn.dir(wiped.snapshot))).toBe(true);
  });
});
