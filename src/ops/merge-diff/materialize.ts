import { throwIfAborted } from '../../util/errors.js';
import type { Snapshotter } from '../../snapshot/snapshotter.js';
import { applyChangeList, applyChanges } from '../../snapshot/layer/apply-changes.js';
import { changes } from '../../snapshot/layer/changes.js';
import { applyToUpper, LowerTree } from '../../snapshot/overlay/apply-upper.js';
import type { DiffPair } from './chain.js';

/**
 * Builds the tree of a chain as the new committed snapshot `key`: an empty tree, then each pair's
 * changes applied in order (deletions included), as upstream's diffApply does for merge and diff
 * refs. When the snapshotter knows a pair's changes itself (overlay: upper prepared from lower),
 * they are used instead of walking both trees.
 *
 * With `linkFiles`, unchanged-by-later-pairs files are hard-linked from the pairs' uppers instead of
 * copied: fast and small, and safe because committed snapshots are never written (see
 * Snapshotter). On failure the half-built snapshot is removed.
 */
export async function materializeChain(opts: {
  snapshotter: Snapshotter;
  key: string;
  chain: readonly DiffPair[];
  linkFiles?: boolean;
  /** On overlay, keep the chain's leading run of parent-child snapshots as the new snapshot's parent (a merge). */
  onBase?: boolean;
  signal?: AbortSignal;
}): Promise<{ parent: string | null }> {
  const { snapshotter: sn, key } = opts;
  if (opts.onBase && sn.prepareLayer && sn.upperDir) {
    const done = await materializeOnBase(sn as LayerWriter, key, opts.chain, opts.signal);
    if (done) return done;
  }
  const target = await sn.prepare(key, null, { signal: opts.signal });
  try {
    for (const pair of opts.chain) {
      throwIfAborted(opts.signal);
      const upperDir = await sn.dir(pair.upper);
      const info = await sn.stat(pair.upper);
      const known = info.parent === pair.lower ? await sn.changes(pair.upper) : null;
      if (known) {
        await applyChangeList(known, upperDir, target, { signal: opts.signal, linkFiles: opts.linkFiles });
      } else {
        const lowerDir = pair.lower === null ? null : await sn.dir(pair.lower);
        await applyChanges(lowerDir, upperDir, target, { signal: opts.signal, linkFiles: opts.linkFiles });
      }
    }
    await sn.commit(key);
  } catch (err) {
    await sn.remove(key).catch(() => undefined);
    throw err;
  }
  return { parent: null };
}

type LayerWriter = Snapshotter & Required<Pick<Snapshotter, 'prepareLayer' | 'upperDir'>>;

/**
 * Upstream's merge on overlay: the longest leading run of pairs where each upper is a snapshot on
 * the previous one (an image's layers and the steps run on it) is the new snapshot's parent, used
 * as it is; only the pairs after it are applied, into the new snapshot's own layer, as hard links
 * to their layers' files. Undefined when there is no such run or the snapshotter cannot do it.
 */
async function materializeOnBase(sn: LayerWriter, key: string, chain: readonly DiffPair[], signal: AbortSignal | undefined): Promise<{ parent: string } | undefined> {
  let base: string | null = null;
  let rest = 0;
  for (const pair of chain) {
    if (pair.lower !== base || (await sn.stat(pair.upper)).parent !== pair.lower) break;
    base = pair.upper;
    rest++;
  }
  if (base === null) return undefined;
  const upper = await sn.prepareLayer(key, base, { signal });
  if (upper === null) return undefined;
  try {
    const lowers = new LowerTree(await sn.dir(base));
    for (const pair of chain.slice(rest)) {
      throwIfAborted(signal);
      const info = await sn.stat(pair.upper);
      const known = info.parent === pair.lower ? await sn.changes(pair.upper) : null;
      if (known) {
        await applyToUpper(known, await sn.upperDir(pair.upper), upper, lowers, { signal });
      } else {
        const lowerDir = pair.lower === null ? null : await sn.dir(pair.lower);
        const upperDir = await sn.dir(pair.upper);
        await applyToUpper(await changes(lowerDir, upperDir, { signal }), upperDir, upper, lowers, { signal });
      }
    }
    await sn.commit(key);
  } catch (err) {
    await sn.remove(key).catch(() => undefined);
    throw err;
  }
  return { parent: base };
}
