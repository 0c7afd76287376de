import { throwIfAborted } from '../../util/errors.js';
import type { Snapshotter } from '../../snapshot/snapshotter.js';
import { applyChangeList, applyChanges } from '../../snapshot/layer/apply-changes.js';
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
  signal?: AbortSignal;
}): Promise<void> {
  const { snapshotter: sn, key } = opts;
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
}
