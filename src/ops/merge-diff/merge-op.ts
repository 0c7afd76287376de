import type { MergeOp } from '../../gen/buildkit/ops_pb.js';
import { InvalidArgumentError } from '../../util/errors.js';
import type { Snapshotter } from '../../snapshot/snapshotter.js';
import { mergeChains, type LayerRef } from './chain.js';
import { materializeChain } from './materialize.js';

/**
 * MergeOp: the inputs stacked in order. No non-empty input gives no ref (null); a single one is
 * returned as it is (same snapshot, same chain: the caller shares the ref); otherwise a new
 * committed snapshot `newKey()` is materialized from the merged chain: on overlay, on top of the
 * chain's leading base (`parent`), as upstream's merge snapshotter does.
 */
export async function runMerge(opts: {
  inputs: readonly (LayerRef | null)[];
  snapshotter: Snapshotter;
  newKey: () => string;
  linkFiles?: boolean;
  signal?: AbortSignal;
}): Promise<(LayerRef & { parent?: string | null }) | null> {
  const refs = opts.inputs.filter((r): r is LayerRef => r !== null);
  if (refs.length === 0) return null;
  if (refs.length === 1) return refs[0]!;
  const chain = mergeChains(refs);
  const key = opts.newKey();
  const { parent } = await materializeChain({ snapshotter: opts.snapshotter, key, chain, linkFiles: opts.linkFiles, onBase: true, signal: opts.signal });
  return { snapshot: key, chain, parent };
}

/** The op inputs a MergeOp names, in merge order (validated against the number of inputs). */
export function mergeInputs<T>(op: MergeOp, inputs: readonly T[]): T[] {
  if (op.inputs.length === 0) throw new InvalidArgumentError('merge op has no inputs');
  return op.inputs.map((m, i) => {
    const idx = Number(m.input);
    if (idx < 0 || idx >= inputs.length) {
      throw new InvalidArgumentError(`invalid input index ${m.input} of merge input ${i}, ${inputs.length} provided`);
    }
    return inputs[idx]!;
  });
}
