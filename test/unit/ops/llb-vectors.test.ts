import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { fromBinary } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DefinitionSchema, OpSchema, type Op } from '../../../src/gen/buildkit/ops_pb.js';
import { sha256 } from '../../../src/util/digest.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';
import { SNAPSHOTTERS } from '../snapshot/snapshotters.js';
import { writeTreeTar } from '../../../src/snapshot/layer/write-tree-tar.js';
import { runFileOp } from '../../../src/ops/file/file-op.js';
import { childChain, type LayerRef } from '../../../src/ops/merge-diff/chain.js';
import { mergeInputs, runMerge } from '../../../src/ops/merge-diff/merge-op.js';
import { diffInputs, runDiff } from '../../../src/ops/merge-diff/diff-op.js';
import { busyboxRef, HAVE_VECTORS, IS_ROOT, tarListing, VECTORS } from '../snapshot/busybox-image.js';

/**
 * Runs the file, merge and diff ops of upstream's vectors (Definitions written by the real BuildKit
 * client) on loom's snapshots and compares the exported tree with what the real daemon exported.
 * The image source is stood in for by unpacking the vectors' busybox layers. Needs root (chown).
 */
const skip = !IS_ROOT || !HAVE_VECTORS;
if (skip) console.warn(`skipping llb vector tests: ${!IS_ROOT ? 'not root (chown needed)' : `no vectors at ${VECTORS}`}`);

describe.skipIf(skip).each(SNAPSHOTTERS)('upstream LLB vectors: file, merge and diff ops on $name snapshots', (impl) => {
  let root: string;
  let sn: Snapshotter;
  let image: LayerRef;
  let n = 0;
  const newKey = () => `k${++n}`;

  beforeAll(async () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'loom-vectors-'));
    sn = impl.make(root);
    image = await busyboxRef(sn, 'busybox');
  });
  afterAll(async () => {
    await impl.close(sn);
    rmSync(root, { recursive: true, force: true });
  });

  /** A tiny evaluator of the graph: the lead's solver replaces it. */
  async function solve(name: string): Promise<LayerRef | null> {
    const def = fromBinary(DefinitionSchema, readFileSync(path.join(VECTORS, 'llb', `${name}.llb`)));
    const ops = new Map<string, Op>();
    let last = '';
    for (const bytes of def.def) {
      const d = sha256(bytes);
      ops.set(d, fromBinary(OpSchema, bytes));
      last = d;
    }
    const memo = new Map<string, Promise<(LayerRef | null)[]>>();
    const evalOp = (digest: string): Promise<(LayerRef | null)[]> => {
      let p = memo.get(digest);
      if (!p) {
        p = run(digest);
        memo.set(digest, p);
      }
      return p;
    };
    const run = async (digest: string): Promise<(LayerRef | null)[]> => {
      const op = ops.get(digest)!;
      const inputs: (LayerRef | null)[] = [];
      for (const i of op.inputs) inputs.push((await evalOp(i.digest))[Number(i.index)] ?? null);
      switch (op.op.case) {
        case 'source':
          expect(op.op.value.identifier).toBe('docker-image://localhost:5000/busybox:latest');
          return [image];
        case 'file': {
          const res = await runFileOp({ op: op.op.value, inputs: inputs.map((r) => r?.snapshot ?? null), snapshotter: sn, newKey });
          return res.outputs.map((o) => ({
            snapshot: o.snapshot,
            chain: childChain(o.parentInput === null ? null : inputs[o.parentInput]!, o.snapshot),
          }));
        }
        case 'merge':
          return [await runMerge({ inputs: mergeInputs(op.op.value, inputs), snapshotter: sn, newKey })];
        case 'diff': {
          const { lower, upper } = diffInputs(op.op.value, inputs);
          return [(await runDiff({ lower, upper, snapshotter: sn, newKey })).ref];
        }
        case undefined: // the terminal op: its one input is the result
          return inputs;
        default:
          throw new Error(`op ${op.op.case} not handled by this evaluator`);
      }
    };
    return (await evalOp(last))[0] ?? null;
  }

  async function listing(ref: LayerRef): Promise<string> {
    const tarFile = path.join(root, `${ref.snapshot}.tar`);
    const out = createWriteStream(tarFile);
    await writeTreeTar(await sn.dir(ref.snapshot), out);
    out.end();
    await finished(out);
    return tarListing(tarFile);
  }

  it('file-ops: mkdir -p, mkfile with owner and mode, rm, copy with chown and mode, wildcard copy', async () => {
    const ref = await solve('file-ops');
    expect(ref).not.toBeNull();
    const expected = readFileSync(path.join(VECTORS, 'llb/expected/file-ops.tar-listing.txt'), 'utf8');
    expect(await listing(ref!)).toBe(expected);
  });

  it('merge-diff: merge of an image with two diffs', async () => {
    const ref = await solve('merge-diff');
    expect(ref).not.toBeNull();
    // The merge's layers: the image's four, then one per diff (each adding one file).
    expect(ref!.chain.length).toBe(6);
    const expected = readFileSync(path.join(VECTORS, 'llb/expected/merge-diff.tar-listing.txt'), 'utf8');
    expect(await listing(ref!)).toBe(expected);
  });
});
