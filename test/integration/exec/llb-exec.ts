/**
 * Exec ops for test graphs: loom's LLB builder has none yet, so tests make them here, shaped as
 * upstream's client/llb writes them (root mount input 0 at `/`, output 0).
 */
import { create, toBinary, type MessageInitShape } from '@bufbuild/protobuf';
import {
  DefinitionSchema,
  ExecOpSchema,
  MountSchema,
  OpMetadataSchema,
  OpSchema,
  type Mount,
} from '../../../src/gen/buildkit/ops_pb.js';
import { marshal, OpNode, State, platformOf } from '../../../src/llb/builder.js';

export interface ExtraMount {
  /** A state to mount (its output), or null for scratch/none. */
  state?: State | null;
  mount: MessageInitShape<typeof MountSchema>;
}

export interface ExecOptions {
  args: string[];
  env?: string[];
  cwd?: string;
  user?: string;
  hostname?: string;
  network?: number;
  security?: number;
  mounts?: ExtraMount[];
  ignoreCache?: boolean;
  platform?: string;
  removeMountStubsRecursive?: boolean;
}

/** An exec on `root`; the result is output `index` of the op (0: the root mount). */
export function exec(root: State, o: ExecOptions, index = 0): State {
  const deps: OpNode[] = [];
  const inputs: { digest: string; index: bigint }[] = [];
  const inputOf = (s: State | null | undefined): bigint => {
    if (!s?.output) return -1n;
    deps.push(s.output.node);
    inputs.push({ digest: s.output.node.digest, index: BigInt(s.output.index) });
    return BigInt(inputs.length - 1);
  };
  const mounts: Mount[] = [create(MountSchema, { input: inputOf(root), dest: '/', output: 0n })];
  for (const m of o.mounts ?? []) mounts.push(create(MountSchema, { output: -1n, ...m.mount, input: inputOf(m.state) }));
  const op = create(OpSchema, {
    inputs,
    op: {
      case: 'exec',
      value: create(ExecOpSchema, {
        meta: { args: o.args, env: o.env ?? [], cwd: o.cwd ?? '/', user: o.user ?? '', hostname: o.hostname ?? '', removeMountStubsRecursive: o.removeMountStubsRecursive ?? true },
        mounts,
        network: o.network ?? 0,
        security: o.security ?? 0,
      }),
    },
    platform: platformOf(o.platform ?? 'linux/amd64'),
  });
  const md = create(OpMetadataSchema, { ignoreCache: o.ignoreCache ?? false });
  return new State({ node: new OpNode(op, deps, md), index }, root.platform);
}

export function definitionBytes(s: State): Uint8Array {
  return toBinary(DefinitionSchema, marshal(s));
}
