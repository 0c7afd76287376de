import { fromBinary } from '@bufbuild/protobuf';
import {
  CacheSharingOpt,
  MountType,
  NetMode,
  OpSchema,
  SecurityMode,
  type Definition,
  type FileAction,
  type Op,
  type OpMetadata,
} from '../gen/buildkit/ops_pb.js';
import { sha256, type Digest } from '../util/digest.js';
import { InvalidArgumentError, type ErrorSource } from '../util/errors.js';

/** One op of a loaded graph. `inputs` are resolved edges; vertices are shared when digests repeat. */
export interface Vertex {
  readonly digest: Digest;
  readonly op: Op;
  readonly inputs: readonly Edge[];
  readonly metadata: OpMetadata | undefined;
  /** The name clients show in progress (llb.customname, else upstream's default per op kind). */
  readonly name: string;
  /** Where the frontend made it (`Dockerfile:3`), from the definition's source map. */
  readonly location?: string;
  /** The source spans it was made from (errors carry them, so clients print those lines). */
  readonly sources?: ErrorSource[];
}

export interface Edge {
  readonly vertex: Vertex;
  readonly index: number;
}

export interface LoadedDefinition {
  /** The result edge, or undefined for a definition whose result is scratch. */
  readonly result: Edge;
  readonly vertices: ReadonlyMap<Digest, Vertex>;
}

/**
 * Parses and validates a Definition as upstream's loader does: every op is named by the sha256 of
 * its bytes as sent (never re-serialized), the last op is the terminal whose first input is the
 * result, and every input must name an op of the definition. Errors name the offending op.
 */
export function loadDefinition(def: Definition): LoadedDefinition {
  if (def.def.length === 0) throw new InvalidArgumentError('invalid empty definition');
  const ops = new Map<Digest, Op>();
  let last: Digest | undefined;
  def.def.forEach((bytes, i) => {
    let op: Op;
    try {
      op = fromBinary(OpSchema, bytes);
    } catch (err) {
      throw new InvalidArgumentError(`failed to parse llb proto op #${i}: ${(err as Error).message}`, { cause: err });
    }
    const d = sha256(bytes);
    ops.set(d, op);
    last = d;
  });
  if (ops.size < 2) throw new InvalidArgumentError(`invalid LLB with ${ops.size} vertexes`);
  const lastOp = ops.get(last!)!;
  ops.delete(last!);
  if (lastOp.op.case !== undefined) {
    throw new InvalidArgumentError(`invalid LLB: last op ${last} must be a terminal with no operation, found ${lastOp.op.case}`);
  }
  if (lastOp.inputs.length === 0) throw new InvalidArgumentError('invalid LLB with no inputs on last vertex');

  const vertices = new Map<Digest, Vertex>();
  const visiting = new Set<Digest>();
  const load = (d: Digest, from: string): Vertex => {
    const done = vertices.get(d);
    if (done) return done;
    const op = ops.get(d);
    if (!op) throw new InvalidArgumentError(`invalid missing input digest ${d} (input of ${from})`);
    if (visiting.has(d)) throw new InvalidArgumentError(`invalid LLB: cycle through op ${d}`);
    visiting.add(d);
    validateOp(d, op);
    const inputs = op.inputs.map((inp, i): Edge => {
      const vertex = load(inp.digest as Digest, `op ${d} input ${i}`);
      const outputs = outputCount(vertex.op);
      const index = Number(inp.index);
      if (index < 0 || index >= outputs) {
        throw new InvalidArgumentError(
          `invalid input index ${index} of op ${d} input ${i}: op ${vertex.digest} (${vertex.name}) has ${outputs} output(s)`,
        );
      }
      return { vertex, index };
    });
    const metadata = def.metadata[d];
    const vertex: Vertex = { digest: d, op, inputs, metadata, name: vertexName(op, inputs, metadata), location: sourceLocation(def, d), sources: sourceSpans(def, d) };
    visiting.delete(d);
    vertices.set(d, vertex);
    return vertex;
  };
  const resultInput = lastOp.inputs[0]!;
  const root = load(resultInput.digest as Digest, 'the terminal op');
  const index = Number(resultInput.index);
  if (index < 0 || index >= outputCount(root.op)) {
    throw new InvalidArgumentError(`invalid result index ${index}: op ${root.digest} (${root.name}) has ${outputCount(root.op)} output(s)`);
  }
  return { result: { vertex: root, index }, vertices };
}

/** How many results an op produces; inputs referring past that are invalid. */
export function outputCount(op: Op): number {
  switch (op.op.case) {
    case 'exec':
      // Only bind and cache mounts produce outputs, as upstream: clients leave output 0 on secret
      // and ssh mounts.
      return op.op.value.mounts.filter((m) => (m.mountType === MountType.BIND || m.mountType === MountType.CACHE) && m.output >= 0n).length;
    case 'file': {
      let n = 0;
      for (const a of op.op.value.actions) if (a.output >= 0n) n = Math.max(n, Number(a.output) + 1);
      return n;
    }
    case 'passthrough':
      return op.op.value.outputs.length;
    default:
      return 1;
  }
}

function validateOp(d: Digest, op: Op): void {
  const bad = (what: string) => new InvalidArgumentError(`invalid op ${d}: ${what}`);
  const nInputs = op.inputs.length;
  const checkIndex = (i: bigint, what: string, allowScratch = true) => {
    if ((allowScratch && i === -1n) || (i >= 0n && i < BigInt(nInputs))) return;
    throw bad(`${what} refers to input ${i} but the op has ${nInputs} input(s)`);
  };
  switch (op.op.case) {
    case undefined:
      throw bad('unknown or empty operation (is the client newer than loom?)');
    case 'source':
      if (!op.op.value.identifier) throw bad('source op without identifier');
      return;
    case 'exec': {
      const e = op.op.value;
      if (!e.meta || e.meta.args.length === 0) throw bad('exec op without arguments');
      if (!(e.network in NetMode)) throw bad(`unknown network mode ${e.network}`);
      if (!(e.security in SecurityMode)) throw bad(`unknown security mode ${e.security}`);
      for (const m of e.mounts) {
        if (!(m.mountType in MountType)) throw bad(`mount ${m.dest}: unknown mount type ${m.mountType}`);
        if (m.mountType === MountType.BIND) checkIndex(m.input, `mount ${m.dest}`);
        if (m.cacheOpt && !(m.cacheOpt.sharing in CacheSharingOpt)) {
          throw bad(`mount ${m.dest}: unknown cache sharing mode ${m.cacheOpt.sharing}`);
        }
      }
      return;
    }
    case 'file': {
      const actions = op.op.value.actions;
      if (actions.length === 0) throw bad('file op without actions');
      actions.forEach((a: FileAction, i) => {
        if (a.action.case === undefined) throw bad(`file action #${i}: unknown action`);
        // Each index names an op input or an earlier action. Only a copy reads its secondary input;
        // another action's is unused but checked alike, as upstream's (naming the action itself is
        // upstream's "loop from index").
        const limit = BigInt(nInputs + i);
        for (const [idx, what] of [
          [a.input, 'input'],
          [a.secondaryInput, 'secondary input'],
        ] as const) {
          if (idx !== -1n && (idx < 0n || idx >= limit)) {
            throw bad(`file action #${i} (${a.action.case}): ${what} ${idx} out of range`);
          }
        }
      });
      return;
    }
    case 'merge':
      if (op.op.value.inputs.length === 0) throw bad('merge op without inputs');
      for (const m of op.op.value.inputs) checkIndex(m.input, 'merge input', false);
      return;
    case 'diff': {
      const { lower, upper } = op.op.value;
      checkIndex(lower?.input ?? -1n, 'diff lower');
      checkIndex(upper?.input ?? -1n, 'diff upper');
      return;
    }
    case 'build':
      throw bad('build ops are not supported (deprecated upstream)');
    case 'passthrough':
      throw bad('passthrough ops are not supported');
  }
}

function vertexName(op: Op, inputs: readonly Edge[], md: OpMetadata | undefined): string {
  const custom = md?.description['llb.customname'];
  if (custom) return custom;
  switch (op.op.case) {
    case 'source': {
      const inc = op.op.value.attrs['local.includepattern'] ?? op.op.value.attrs['local.includepatterns'];
      if (op.op.value.identifier.startsWith('local://') && inc) {
        try {
          const pats = JSON.parse(inc) as string[];
          if (Array.isArray(pats) && pats.length === 1) return `${op.op.value.identifier} (${pats[0]})`;
        } catch {
          /* not JSON: fall through to the plain identifier */
        }
      }
      return op.op.value.identifier;
    }
    case 'exec':
      return op.op.value.meta?.args.join(' ') ?? '';
    case 'file':
      return op.op.value.actions
        .map((a) => {
          switch (a.action.case) {
            case 'mkdir':
              return `mkdir ${a.action.value.path}`;
            case 'mkfile':
              return `mkfile ${a.action.value.path}`;
            case 'rm':
              return `rm ${a.action.value.path}`;
            case 'copy':
              return `copy ${a.action.value.src} ${a.action.value.dest}`;
            case 'symlink':
              return `symlink ${a.action.value.oldpath} -> ${a.action.value.newpath}`;
            default:
              return '';
          }
        })
        .filter(Boolean)
        .join(', ');
    case 'merge':
      return `merge (${inputs.map((i) => i.vertex.name).join(', ')})`;
    case 'diff': {
      const side = (i: bigint | undefined) => (i === undefined || i === -1n ? 'scratch' : `(${inputs[Number(i)]?.vertex.name})`);
      return `diff ${side(op.op.value.lower?.input)} -> ${side(op.op.value.upper?.input)}`;
    }
    case 'build':
      return 'build';
    default:
      return 'unknown';
  }
}

/** `file:line` of an op's first source-map range, if the definition carries one. */
function sourceLocation(def: Definition, d: string): string | undefined {
  const loc = def.Source?.locations[d]?.locations[0];
  const info = loc ? def.Source?.infos[loc.sourceIndex] : undefined;
  const line = loc?.ranges[0]?.start?.line;
  if (!info || line === undefined) return undefined;
  return `${info.filename}:${line}`;
}

/** Every source-map span of an op. */
function sourceSpans(def: Definition, d: string): ErrorSource[] | undefined {
  const locs = def.Source?.locations[d]?.locations;
  if (!locs?.length) return undefined;
  const out: ErrorSource[] = [];
  for (const l of locs) {
    const info = def.Source?.infos[l.sourceIndex];
    if (!info) continue;
    out.push({
      filename: info.filename,
      data: info.data,
      language: info.language,
      ranges: l.ranges.map((r) => ({ start: { line: r.start?.line ?? 0, character: r.start?.character ?? 0 }, end: { line: r.end?.line ?? 0, character: r.end?.character ?? 0 } })),
    });
  }
  return out;
}
