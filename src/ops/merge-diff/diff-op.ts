import type { DiffOp } from '../../gen/buildkit/ops_pb.js';
import { InvalidArgumentError } from '../../util/errors.js';
import type { Snapshotter } from '../../snapshot/snapshotter.js';
import { planDiff, type DiffPair, type LayerRef } from './chain.js';
import { materializeChain } from './materialize.js';

/**
 * DiffOp: what turns `lower` into `upper` (see planDiff). Returns null for an empty result, upper
 * itself when lower is empty (the caller shares that ref), else a new committed snapshot
 * materialized from the diff's chain. `created` lists every snapshot this made besides the
 * result (an empty tree standing for a missing upper): the caller owns them with the result.
 */
export async function runDiff(opts: {
  lower: LayerRef | null;
  upper: LayerRef | null;
  snapshotter: Snapshotter;
  newKey: () => string;
  linkFiles?: boolean;
  signal?: AbortSignal;
}): Promise<{ ref: LayerRef | null; created: string[] }> {
  const plan = planDiff(opts.lower, opts.upper);
  if (plan.kind === 'empty') return { ref: null, created: [] };
  if (plan.kind === 'upper') return { ref: plan.ref, created: [] };
  const created: string[] = [];
  const chain: DiffPair[] = [];
  for (const p of plan.chain) {
    let upper = p.upper;
    if (upper === null) {
      upper = opts.newKey();
      await opts.snapshotter.prepare(upper, null);
      await opts.snapshotter.commit(upper);
      created.push(upper);
    }
    chain.push({ lower: p.lower, upper });
  }
  const key = opts.newKey();
  try {
    await materializeChain({ snapshotter: opts.snapshotter, key, chain, linkFiles: opts.linkFiles, signal: opts.signal });
  } catch (err) {
    for (const k of created) await opts.snapshotter.remove(k).catch(() => undefined);
    throw err;
  }
  return { ref: { snapshot: key, chain }, created };
}

/**
 * The op inputs a DiffOp names: lower, then upper; -1 (or a missing field) is an empty side, as
 * upstream reads them.
 */
export function diffInputs<T>(op: DiffOp, inputs: readonly T[]): { lower: T | null; upper: T | null } {
  const pick = (v: bigint | undefined, what: string): T | null => {
    if (v === undefined || v === -1n) return null;
    const idx = Number(v);
    if (idx < 0 || idx >= inputs.length) {
      throw new InvalidArgumentError(`invalid ${what} input index ${v} of diff op, ${inputs.length} provided`);
    }
    return inputs[idx]!;
  };
  return { lower: pick(op.lower?.input, 'lower'), upper: pick(op.upper?.input, 'upper') };
}
