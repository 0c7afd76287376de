import type { RefManager } from '../cache/ref-manager.js';
import { newId } from '../cache/ref-manager.js';
import type { DiffOp, MergeOp } from '../gen/buildkit/ops_pb.js';
import type { OpContext, OpImpl, Ref } from '../solver/types.js';
import { diffInputs, runDiff } from './merge-diff/diff-op.js';
import { mergeInputs, runMerge } from './merge-diff/merge-op.js';
import type { LayerRef } from './merge-diff/chain.js';

function layerRef(r: Ref | null): LayerRef | null {
  return r && r.chain.length > 0 ? { snapshot: r.snapshot, chain: r.chain } : null;
}

/** Tracks snapshots an op creates so GC leaves them until they belong to a ref. */
function keyFactory(refs: RefManager) {
  const releases: (() => void)[] = [];
  return {
    newKey: () => {
      const k = newId();
      releases.push(refs.protect([k]));
      return k;
    },
    release: () => releases.forEach((r) => r()),
  };
}

/** MergeOp: the inputs' layer chains stacked; BuildKit's semantics (later inputs win, deletions apply). */
export class MergeOpImpl implements OpImpl {
  constructor(
    private readonly deps: { refs: RefManager },
    private readonly op: MergeOp,
  ) {}

  async cacheKey(): Promise<string> {
    return '';
  }

  async run(ctx: OpContext, inputs: readonly Ref[]): Promise<Ref[]> {
    const ordered = mergeInputs(this.op, inputs);
    const keys = keyFactory(this.deps.refs);
    try {
      const res = await runMerge({ inputs: ordered.map(layerRef), snapshotter: this.deps.refs.snapshotter, newKey: keys.newKey, signal: ctx.signal });
      if (!res) return [await emptyRef(this.deps.refs, ctx)];
      const same = ordered.find((r) => r.snapshot === res.snapshot);
      if (same) return [same];
      // On overlay its snapshot stands on the chain's base (`res.parent`).
      return [await this.deps.refs.createRef({ snapshot: res.snapshot, parent: null, parentSnapshot: res.parent, chain: [...res.chain], description: ctx.vertex.name })];
    } finally {
      keys.release();
    }
  }
}

/** DiffOp: what turns lower into upper, as a chain of layers. */
export class DiffOpImpl implements OpImpl {
  constructor(
    private readonly deps: { refs: RefManager },
    private readonly op: DiffOp,
  ) {}

  async cacheKey(): Promise<string> {
    return '';
  }

  async run(ctx: OpContext, inputs: readonly Ref[]): Promise<Ref[]> {
    const { lower, upper } = diffInputs(this.op, inputs);
    const keys = keyFactory(this.deps.refs);
    try {
      const res = await runDiff({ lower: layerRef(lower), upper: layerRef(upper), snapshotter: this.deps.refs.snapshotter, newKey: keys.newKey, signal: ctx.signal });
      if (!res.ref) return [await emptyRef(this.deps.refs, ctx)];
      if (upper && res.ref.snapshot === upper.snapshot) return [upper];
      return [await this.deps.refs.createRef({ snapshot: res.ref.snapshot, parent: null, chain: [...res.ref.chain], description: ctx.vertex.name })];
    } finally {
      keys.release();
    }
  }
}

/** An empty tree as a ref: an empty committed snapshot with no layers. */
export async function emptyRef(refs: RefManager, ctx: OpContext): Promise<Ref> {
  const w = await refs.prepare(null, { signal: ctx.signal });
  return w.commit({ description: ctx.vertex.name, chain: [] });
}
