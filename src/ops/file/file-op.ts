import type { ChownOpt, FileAction, FileOp, UserOpt } from '../../gen/buildkit/ops_pb.js';
import { InvalidArgumentError, LoomError, throwIfAborted } from '../../util/errors.js';
import { lookupGroup, lookupUser } from '../../util/passwd.js';
import type { Snapshotter } from '../../snapshot/snapshotter.js';
import { copyAction, mkdirAction, mkfileAction, rmAction, symlinkAction } from './actions.js';
import type { User } from './fs-util.js';

/**
 * Runs a FileOp: its actions form a small graph inside the op. Each action reads an `input`
 * (index < number of op inputs: that op input; >= it: the result of action index-numInputs; -1:
 * an empty tree), changes a writable copy of it, and may be declared output `output` of the op.
 * Copy also reads `secondaryInput` (same indexing); owners given by name are looked up in the
 * /etc/passwd and /etc/group of the input their NamedUserOpt names.
 *
 * As upstream (FileOpSolver): an action result consumed exactly once and not an output is changed
 * in place by its consumer; one consumed several times, or an output, is committed and each
 * consumer works on its own copy. Outputs must be numbered 0..n-1 without gaps; a cycle among
 * actions is an error. Failing actions surface as FileActionError naming the action.
 */
export interface RunFileOpOptions {
  op: FileOp;
  /** Committed snapshot key of each op input, in Op.inputs order (null for an empty input). */
  inputs: readonly (string | null)[];
  snapshotter: Snapshotter;
  /** Fresh, unique snapshot keys for the snapshots this op creates. */
  newKey: () => string;
  signal?: AbortSignal;
}

export interface FileOpOutput {
  /** The committed snapshot holding this output. */
  snapshot: string;
  /**
   * The op input this output was derived from by following action inputs back (its layer parent
   * for the ref's chain), or null when it grew from an empty tree.
   */
  parentInput: number | null;
}

export interface FileOpResult {
  outputs: FileOpOutput[];
  /**
   * Intermediate snapshots that outputs were prepared from (an action result consumed several
   * times). The snapshotter keeps them while those outputs exist; the caller removes them after
   * the outputs (children first). Other intermediates are removed before returning.
   */
  retained: string[];
}

export class FileActionError extends LoomError {
  /** Index of the failing action in FileOp.actions. */
  readonly action: number;

  constructor(action: number, cause: unknown) {
    super(cause instanceof LoomError ? cause.code : 'INTERNAL', cause instanceof Error ? cause.message : String(cause), {
      cause,
    });
    this.action = action;
  }
}

interface Result {
  /** Snapshot key. */
  key: string | null;
  /** Still active (writable), to be used in place by its only consumer. */
  active: boolean;
  parentInput: number | null;
}

export async function runFileOp(opts: RunFileOpOptions): Promise<FileOpResult> {
  const { op, inputs, snapshotter } = opts;
  const actions = op.actions;
  const n = inputs.length;
  const total = n + actions.length;

  const uses = new Map<number, number>();
  const outs = new Map<number, number>(); // output index -> action index
  actions.forEach((a, i) => {
    for (const [what, v] of [
      ['input', a.input],
      ['secondary input', a.secondaryInput],
    ] as const) {
      if (v < -1n || v >= BigInt(total)) {
        throw new InvalidArgumentError(`invalid ${what} index ${v} of file action ${i}, ${total} provided`);
      }
    }
    for (const v of [a.input, a.secondaryInput]) uses.set(Number(v), (uses.get(Number(v)) ?? 0) + 1);
    if (a.output !== -1n) {
      const o = Number(a.output);
      if (o < 0 || outs.has(o)) throw new InvalidArgumentError(`invalid or duplicate output ${a.output} of file action ${i}`);
      outs.set(o, i);
    }
    if (a.action.case === undefined) throw new InvalidArgumentError(`file action ${i} has no action`);
  });
  if (outs.size === 0) throw new InvalidArgumentError('no outputs specified');
  for (let i = 0; i < outs.size; i++) if (!outs.has(i)) throw new InvalidArgumentError(`missing output index ${i}`);
  const outputActions = new Set(outs.values());

  const results = new Map<number, Result>();
  const created: string[] = [];
  const evaluating = new Set<number>();

  const get = async (idx: number): Promise<Result> => {
    if (idx === -1) return { key: null, active: false, parentInput: null };
    if (idx < n) return { key: inputs[idx] ?? null, active: false, parentInput: idx };
    const done = results.get(idx);
    if (done) return done;
    if (evaluating.has(idx)) throw new InvalidArgumentError(`loop from index ${idx}`);
    evaluating.add(idx);
    const ai = idx - n;
    const a = actions[ai]!;
    try {
      const r = await runAction(ai, a);
      results.set(idx, r);
      return r;
    } finally {
      evaluating.delete(idx);
    }
  };

  const dirOf = async (r: Result): Promise<string | null> => (r.key === null ? null : snapshotter.dir(r.key));

  const runAction = async (ai: number, a: FileAction): Promise<Result> => {
    throwIfAborted(opts.signal);
    const base = await get(Number(a.input));
    const secondary = a.action.case === 'copy' ? await get(Number(a.secondaryInput)) : null;
    let key: string;
    try {
      if (base.active && base.key !== null) {
        key = base.key; // sole consumer: change it in place
      } else {
        key = opts.newKey();
        await snapshotter.prepare(key, base.key, { signal: opts.signal });
        created.push(key);
      }
      const root = await snapshotter.dir(key);
      switch (a.action.case) {
        case 'mkdir': {
          const user = await readUser(a.action.value.owner, get, dirOf);
          await mkdirAction(root, a.action.value, user);
          break;
        }
        case 'mkfile': {
          const user = await readUser(a.action.value.owner, get, dirOf);
          await mkfileAction(root, a.action.value, user);
          break;
        }
        case 'rm':
          await rmAction(root, a.action.value);
          break;
        case 'symlink': {
          const user = await readUser(a.action.value.owner, get, dirOf);
          await symlinkAction(root, a.action.value, user);
          break;
        }
        case 'copy': {
          const user = await readUser(a.action.value.owner, get, dirOf);
          let src = secondary ? await dirOf(secondary) : null;
          let emptyKey: string | null = null;
          if (src === null) {
            // Copy from scratch: an empty tree, as upstream mounts one.
            emptyKey = opts.newKey();
            src = await snapshotter.prepare(emptyKey, null);
            created.push(emptyKey);
          }
          await copyAction(src, root, a.action.value, user, opts.signal);
          break;
        }
        default:
          throw new InvalidArgumentError(`file action ${ai} has no action`);
      }
    } catch (err) {
      throw err instanceof FileActionError ? err : new FileActionError(ai, err);
    }
    const idx = n + ai;
    const mustCommit = outputActions.has(ai) || (uses.get(idx) ?? 0) > 1;
    if (mustCommit) await snapshotter.commit(key);
    return { key, active: !mustCommit, parentInput: base.parentInput };
  };

  try {
    const outputs: FileOpOutput[] = [];
    for (let o = 0; o < outs.size; o++) {
      const r = await get(n + outs.get(o)!);
      outputs.push({ snapshot: r.key!, parentInput: r.parentInput });
    }
    // Remove what only served inside the op; keep what outputs were prepared from.
    const keep = new Set(outputs.map((o) => o.snapshot));
    const retained: string[] = [];
    for (const k of [...created].reverse()) {
      if (keep.has(k)) continue;
      try {
        await snapshotter.remove(k);
      } catch (err) {
        if (err instanceof LoomError && err.code === 'FAILED_PRECONDITION') retained.push(k);
        else throw err;
      }
    }
    return { outputs, retained };
  } catch (err) {
    for (const k of [...created].reverse()) {
      await snapshotter.remove(k).catch(() => undefined);
    }
    throw err;
  }
}

/**
 * The owner a ChownOpt asks for, as upstream's readUser: by id, user id sets uid and gid alike and
 * a group id then overrides gid; by name, the name is looked up in the named input's files, and an
 * unknown name (or missing file) gives 0, as upstream does.
 */
async function readUser(
  opt: ChownOpt | undefined,
  get: (idx: number) => Promise<Result>,
  dirOf: (r: Result) => Promise<string | null>,
): Promise<User | null> {
  if (!opt) return null;
  const u: User = { uid: 0, gid: 0 };
  const rootFor = async (o: UserOpt, what: string): Promise<string | null> => {
    if (o.user.case !== 'byName') return null;
    const idx = Number(o.user.value.input);
    if (idx < 0) throw new InvalidArgumentError(`invalid ${what} index: ${idx}`);
    return dirOf(await get(idx));
  };
  if (opt.user) {
    if (opt.user.user.case === 'byID') {
      u.uid = u.gid = opt.user.user.value;
    } else if (opt.user.user.case === 'byName') {
      const root = await rootFor(opt.user, 'user');
      if (root === null) throw new InvalidArgumentError('invalid missing user mount');
      const e = await lookupUser(root, opt.user.user.value.name);
      if (e) {
        u.uid = e.uid;
        u.gid = e.gid;
      }
    }
  }
  if (opt.group) {
    if (opt.group.user.case === 'byID') {
      u.gid = opt.group.user.value;
    } else if (opt.group.user.case === 'byName') {
      const root = await rootFor(opt.group, 'group');
      if (root === null) throw new InvalidArgumentError('invalid missing group mount');
      const g = await lookupGroup(root, opt.group.user.value.name);
      if (g) u.gid = g.gid;
    }
  }
  return u;
}
