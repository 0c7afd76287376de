/**
 * Layer chains: how refs describe their content as a stack of diffs, and the algebra MergeOp and
 * DiffOp do on them (BuildKit's cache refs: layerChain, Merge, Diff).
 *
 * A chain is an ordered list of pairs; pair i's changes are "what turns `lower` into `upper`",
 * and applying every pair's changes in order onto an empty tree gives the ref's tree. A ref made by
 * an op on parent P committing snapshot S has chain P.chain + [{lower: P.snapshot, upper: S}];
 * an image ref has one pair per layer.
 */

export interface DiffPair {
  /** Committed snapshot the changes are taken against, or null for an empty tree. */
  lower: string | null;
  /** Committed snapshot holding the result of the changes. */
  upper: string;
}

export type LayerChain = readonly DiffPair[];

/** What the merge/diff algebra needs of a ref: its materialized tree and its chain. */
export interface LayerRef {
  snapshot: string;
  chain: LayerChain;
}

/** The chain of a ref made by an op on `parent` (null: from scratch) that committed `snapshot`. */
export function childChain(parent: LayerRef | null, snapshot: string): DiffPair[] {
  return [...(parent?.chain ?? []), { lower: parent?.snapshot ?? null, upper: snapshot }];
}

/**
 * MergeOp: the inputs' chains one after another, so later inputs win and deletions recorded in an
 * input's layers (e.g. of a diff) apply to what earlier inputs brought. Null inputs are skipped.
 */
export function mergeChains(inputs: readonly (LayerRef | null)[]): DiffPair[] {
  return inputs.flatMap((r) => (r ? [...r.chain] : []));
}

export type DiffPlan =
  /** The result is empty (no ref): both sides empty, or the same ref. */
  | { kind: 'empty' }
  /** The result is `upper` itself (lower is empty). */
  | { kind: 'upper'; ref: LayerRef }
  /** Materialize this chain. `upper: null` in a pair stands for an empty tree (delete all). */
  | { kind: 'chain'; chain: { lower: string | null; upper: string | null }[] };

/**
 * DiffOp: when upper's chain extends lower's, the diff is the extra pairs (keeping each layer's own
 * deletions); otherwise one pair comparing the two trees.
 */
export function planDiff(lower: LayerRef | null, upper: LayerRef | null): DiffPlan {
  if (lower === null) return upper === null ? { kind: 'empty' } : { kind: 'upper', ref: upper };
  if (upper === null) return { kind: 'chain', chain: [{ lower: lower.snapshot, upper: null }] };
  if (lower.snapshot === upper.snapshot) return { kind: 'empty' };
  const l = lower.chain;
  const u = upper.chain;
  const extends_ = u.length >= l.length && l.every((p, i) => p.lower === u[i]!.lower && p.upper === u[i]!.upper);
  if (extends_) {
    const rest = u.slice(l.length);
    return rest.length === 0 ? { kind: 'empty' } : { kind: 'chain', chain: rest.map((p) => ({ ...p })) };
  }
  return { kind: 'chain', chain: [{ lower: lower.snapshot, upper: upper.snapshot }] };
}
