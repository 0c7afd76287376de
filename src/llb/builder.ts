import { create, toBinary } from '@bufbuild/protobuf';
import {
  DefinitionSchema,
  FileActionCopySchema,
  FileActionMkDirSchema,
  FileActionMkFileSchema,
  FileActionRmSchema,
  FileActionSchema,
  FileOpSchema,
  InputSchema,
  MergeInputSchema,
  MergeOpSchema,
  DiffOpSchema,
  LowerDiffInputSchema,
  UpperDiffInputSchema,
  OpMetadataSchema,
  OpSchema,
  PlatformSchema,
  SourceOpSchema,
  ChownOptSchema,
  UserOptSchema,
  type ChownOpt,
  type Definition,
  type FileAction,
  type Input,
  type Op,
  type OpMetadata,
  type Platform,
} from '../gen/buildkit/ops_pb.js';
import { sha256, type Digest } from '../util/digest.js';

/**
 * A small LLB builder, the TypeScript counterpart of BuildKit's client/llb: states are immutable,
 * each op is serialized once and named by the sha256 of its bytes, and `marshal` lists ops
 * inputs-first with the terminal last. Map fields are written in sorted key order so the same
 * graph always gives the same digests.
 */
export class OpNode {
  readonly op: Op;
  readonly deps: OpNode[];
  readonly metadata: OpMetadata | undefined;
  #bytes: Uint8Array | undefined;

  constructor(op: Op, deps: OpNode[], metadata?: OpMetadata) {
    this.op = op;
    this.deps = deps;
    this.metadata = metadata;
  }

  get bytes(): Uint8Array {
    this.#bytes ??= toBinary(OpSchema, this.op);
    return this.#bytes;
  }

  get digest(): Digest {
    return sha256(this.bytes);
  }
}

export interface Output {
  node: OpNode;
  index: number;
}

export interface SourceOptions {
  platform?: Platform | string;
  attrs?: Record<string, string>;
  customName?: string;
  ignoreCache?: boolean;
}

export type Owner = { user?: number | string; group?: number | string };

export class State {
  /** null is scratch. */
  readonly output: Output | null;
  readonly platform: Platform | undefined;

  constructor(output: Output | null, platform?: Platform) {
    this.output = output;
    this.platform = platform;
  }

  file(actions: FileActionsBuilder, opts: { customName?: string } = {}): State {
    return actions.build(this, opts);
  }
}

export function scratch(): State {
  return new State(null);
}

export function platformOf(p: Platform | string | undefined): Platform | undefined {
  if (p === undefined || typeof p !== 'string') return p;
  const [os, arch, variant] = p.split('/');
  return create(PlatformSchema, { OS: os, Architecture: arch, Variant: variant ?? '' });
}

function sorted(rec: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(rec).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function meta(opts: { customName?: string; ignoreCache?: boolean; caps?: string[] }): OpMetadata {
  return create(OpMetadataSchema, {
    ignoreCache: opts.ignoreCache ?? false,
    description: opts.customName ? { 'llb.customname': opts.customName } : {},
    caps: Object.fromEntries((opts.caps ?? []).sort().map((c) => [c, true])),
  });
}

export function source(identifier: string, opts: SourceOptions = {}, caps: string[] = []): State {
  const platform = platformOf(opts.platform);
  const op = create(OpSchema, {
    op: { case: 'source', value: create(SourceOpSchema, { identifier, attrs: sorted(opts.attrs ?? {}) }) },
    platform,
  });
  return new State({ node: new OpNode(op, [], meta({ ...opts, caps })), index: 0 }, platform);
}

export function image(ref: string, opts: SourceOptions = {}): State {
  return source(`docker-image://${ref}`, opts, ['source.image']);
}

export function local(
  name: string,
  opts: SourceOptions & { include?: string[]; exclude?: string[]; followPaths?: string[]; sharedKeyHint?: string } = {},
): State {
  const attrs: Record<string, string> = { ...(opts.attrs ?? {}) };
  if (opts.include) attrs['local.includepattern'] = JSON.stringify(opts.include);
  if (opts.exclude) attrs['local.excludepatterns'] = JSON.stringify(opts.exclude);
  if (opts.followPaths) attrs['local.followpaths'] = JSON.stringify(opts.followPaths);
  if (opts.sharedKeyHint) attrs['local.sharedkeyhint'] = opts.sharedKeyHint;
  return source(`local://${name}`, { ...opts, attrs }, ['source.local']);
}

export function merge(states: State[], opts: { customName?: string } = {}): State {
  const deps: OpNode[] = [];
  const inputs: Input[] = [];
  const mergeInputs = [];
  for (const s of states) {
    if (!s.output) continue; // scratch contributes nothing to a merge
    mergeInputs.push(create(MergeInputSchema, { input: BigInt(inputs.length) }));
    inputs.push(create(InputSchema, { digest: s.output.node.digest, index: BigInt(s.output.index) }));
    deps.push(s.output.node);
  }
  const op = create(OpSchema, { inputs, op: { case: 'merge', value: create(MergeOpSchema, { inputs: mergeInputs }) } });
  return new State({ node: new OpNode(op, deps, meta({ ...opts, caps: ['mergeop'] })), index: 0 }, states[0]?.platform);
}

export function diff(lower: State, upper: State, opts: { customName?: string } = {}): State {
  const deps: OpNode[] = [];
  const inputs: Input[] = [];
  const idx = (s: State): bigint => {
    if (!s.output) return -1n;
    inputs.push(create(InputSchema, { digest: s.output.node.digest, index: BigInt(s.output.index) }));
    deps.push(s.output.node);
    return BigInt(inputs.length - 1);
  };
  const l = idx(lower);
  const u = idx(upper);
  const op = create(OpSchema, {
    inputs,
    op: { case: 'diff', value: create(DiffOpSchema, { lower: create(LowerDiffInputSchema, { input: l }), upper: create(UpperDiffInputSchema, { input: u }) }) },
  });
  return new State({ node: new OpNode(op, deps, meta({ ...opts, caps: ['diffop'] })), index: 0 }, upper.platform);
}

function chown(o: Owner | undefined): ChownOpt | undefined {
  if (!o) return undefined;
  const one = (v: number | string | undefined) =>
    v === undefined
      ? undefined
      : typeof v === 'number'
        ? create(UserOptSchema, { user: { case: 'byID', value: v } })
        : create(UserOptSchema, { user: { case: 'byName', value: { $typeName: 'pb.NamedUserOpt', name: v, input: -1n } } });
  return create(ChownOptSchema, { user: one(o.user), group: one(o.group) });
}

type PendingAction = { action: FileAction['action']; secondary?: State };

/** A chain of file actions applied in order to one state, as llb.Mkdir(...).Mkfile(...). */
export class FileActionsBuilder {
  readonly #actions: PendingAction[] = [];

  mkdir(path: string, mode: number, opts: { makeParents?: boolean; owner?: Owner; timestamp?: number } = {}): this {
    this.#actions.push({
      action: { case: 'mkdir', value: create(FileActionMkDirSchema, { path, mode, makeParents: opts.makeParents ?? false, owner: chown(opts.owner), timestamp: BigInt(opts.timestamp ?? -1) }) },
    });
    return this;
  }

  mkfile(path: string, mode: number, data: Uint8Array | string, opts: { owner?: Owner; timestamp?: number } = {}): this {
    this.#actions.push({
      action: {
        case: 'mkfile',
        value: create(FileActionMkFileSchema, { path, mode, data: typeof data === 'string' ? Buffer.from(data) : data, owner: chown(opts.owner), timestamp: BigInt(opts.timestamp ?? -1) }),
      },
    });
    return this;
  }

  rm(path: string, opts: { allowNotFound?: boolean; allowWildcard?: boolean } = {}): this {
    this.#actions.push({ action: { case: 'rm', value: create(FileActionRmSchema, { path, allowNotFound: opts.allowNotFound ?? false, allowWildcard: opts.allowWildcard ?? false }) } });
    return this;
  }

  copy(
    from: State,
    src: string,
    dest: string,
    opts: {
      owner?: Owner;
      mode?: number;
      followSymlink?: boolean;
      copyDirContentsOnly?: boolean;
      createDestPath?: boolean;
      allowWildcard?: boolean;
      allowEmptyWildcard?: boolean;
      include?: string[];
      exclude?: string[];
    } = {},
  ): this {
    this.#actions.push({
      secondary: from,
      action: {
        case: 'copy',
        value: create(FileActionCopySchema, {
          src,
          dest,
          owner: chown(opts.owner),
          mode: opts.mode ?? -1,
          followSymlink: opts.followSymlink ?? false,
          dirCopyContents: opts.copyDirContentsOnly ?? false,
          createDestPath: opts.createDestPath ?? false,
          allowWildcard: opts.allowWildcard ?? false,
          allowEmptyWildcard: opts.allowEmptyWildcard ?? false,
          timestamp: -1n,
          includePatterns: opts.include ?? [],
          excludePatterns: opts.exclude ?? [],
        }),
      },
    });
    return this;
  }

  build(base: State, opts: { customName?: string }): State {
    const inputs: { digest: string; index: bigint }[] = [];
    const deps: OpNode[] = [];
    const inputIndex = (s: State): bigint => {
      if (!s.output) return -1n;
      const d = s.output.node.digest;
      const i = inputs.findIndex((x) => x.digest === d && x.index === BigInt(s.output!.index));
      if (i >= 0) return BigInt(i);
      inputs.push({ digest: d, index: BigInt(s.output.index) });
      deps.push(s.output.node);
      return BigInt(inputs.length - 1);
    };
    // Each action works on the previous action's output: index (inputs + k) names action k's output.
    const baseIdx = inputIndex(base);
    const secondaries = this.#actions.map((a) => (a.secondary ? inputIndex(a.secondary) : -1n));
    const n = BigInt(inputs.length);
    const actions = this.#actions.map((a, k) =>
      create(FileActionSchema, {
        input: k === 0 ? baseIdx : n + BigInt(k - 1),
        secondaryInput: secondaries[k]!,
        output: k === this.#actions.length - 1 ? 0n : -1n,
        action: a.action,
      }),
    );
    const op = create(OpSchema, {
      inputs: inputs.map((i) => create(InputSchema, i)),
      op: { case: 'file', value: create(FileOpSchema, { actions }) },
      platform: base.platform,
    });
    return new State({ node: new OpNode(op, deps, meta({ ...opts, caps: ['file.base'] })), index: 0 }, base.platform);
  }
}

export function mkdir(path: string, mode: number, opts?: Parameters<FileActionsBuilder['mkdir']>[2]): FileActionsBuilder {
  return new FileActionsBuilder().mkdir(path, mode, opts);
}

export function mkfile(path: string, mode: number, data: Uint8Array | string, opts?: Parameters<FileActionsBuilder['mkfile']>[3]): FileActionsBuilder {
  return new FileActionsBuilder().mkfile(path, mode, data, opts);
}

export function rm(path: string, opts?: Parameters<FileActionsBuilder['rm']>[1]): FileActionsBuilder {
  return new FileActionsBuilder().rm(path, opts);
}

export function copy(from: State, src: string, dest: string, opts?: Parameters<FileActionsBuilder['copy']>[3]): FileActionsBuilder {
  return new FileActionsBuilder().copy(from, src, dest, opts);
}

/** The Definition of `state`: every op once, inputs before the ops that use them, the terminal last. */
export function marshal(state: State): Definition {
  const order: OpNode[] = [];
  const seen = new Set<string>();
  const visit = (n: OpNode) => {
    if (seen.has(n.digest)) return;
    seen.add(n.digest);
    for (const d of n.deps) visit(d);
    order.push(n);
  };
  if (state.output) visit(state.output.node);
  const def = create(DefinitionSchema, {});
  for (const n of order) {
    def.def.push(n.bytes);
    if (n.metadata) def.metadata[n.digest] = n.metadata;
  }
  const terminal = create(OpSchema, {
    inputs: state.output ? [create(InputSchema, { digest: state.output.node.digest, index: BigInt(state.output.index) })] : [],
  });
  def.def.push(toBinary(OpSchema, terminal));
  return def;
}
