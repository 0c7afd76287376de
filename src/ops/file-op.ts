import type { RefManager } from '../cache/ref-manager.js';
import { newId } from '../cache/ref-manager.js';
import type { FileActionCopy, FileOp } from '../gen/buildkit/ops_pb.js';
import { patternSets, type ContentSelector, type CopyPatterns, type OpContext, type OpImpl, type Ref } from '../solver/types.js';
import { FileActionError, runFileOp } from './file/file-op.js';
import { containsWildcards } from './file/wildcard.js';
import { isAbortError, LoomError } from '../util/errors.js';

/** Characters that make a copy source a pattern. */
const GLOB = /[*?[\\]/;

type SourceSelector = { path: string; follow: boolean; wildcard?: boolean; patterns?: CopyPatterns };

/**
 * A copy's source as a selector path: a wildcard source as its pattern, a source holding glob
 * characters that is not a wildcard as null (rare enough to key its input whole), else its path;
 * with the copy's include/exclude patterns, if any (upstream's checksum with patterns).
 */
function sourceSelector(c: FileActionCopy): SourceSelector | null {
  const patterns: CopyPatterns | undefined =
    c.includePatterns.length || c.excludePatterns.length ? { include: [...c.includePatterns], exclude: [...c.excludePatterns] } : undefined;
  if (patterns && c.requiredPaths.length) patterns.required = [...c.requiredPaths];
  if (GLOB.test(c.src)) return c.allowWildcard ? { path: c.src, follow: c.followSymlink, wildcard: true, patterns } : null;
  return { path: c.src, follow: c.followSymlink, patterns };
}

/**
 * As upstream's file op keys its sources: a plain path (no wildcard, no patterns) below another
 * plain path of the same input is left out, its content being part of that one's. A source
 * `data/x` beside `data/` is then not looked for when the key is worked out: when it is not there
 * (a file .dockerignore keeps out), the copy fails as it runs, as upstream's.
 */
function withoutNested(sel: NonNullable<ContentSelector>): ContentSelector {
  const plain = (p: string) => !(sel.wildcards && containsWildcards(p)) && !sel.patterns?.[p];
  const plains = sel.paths.filter(plain);
  const paths = sel.paths.filter((p) => !plain(p) || !plains.some((q) => q !== p && p.startsWith(`${q}/`)));
  return paths.length === sel.paths.length ? sel : { ...sel, paths };
}

/**
 * FileOp: mkdir, mkfile, rm, symlink and copy actions (ops/file/ does the work on snapshots).
 * Each output becomes a ref whose layer is its diff against the op input it grew from.
 */
export class FileOpImpl implements OpImpl {
  readonly #refs: RefManager;
  readonly #op: FileOp;

  constructor(deps: { refs: RefManager }, op: FileOp) {
    this.#refs = deps.refs;
    this.#op = op;
  }

  async cacheKey(): Promise<string> {
    return '';
  }

  /**
   * For each op input, the paths read from it: null for an input some action changes (its whole
   * tree matters) or one `read` gives up on (null for a copy), else the paths `read` names for
   * the copies from it, all followed or not alike (null when they disagree), each path with the
   * sets of patterns it is read with.
   */
  #copySelectors(read: (c: FileActionCopy) => SourceSelector | null): ContentSelector[] {
    const n = Math.max(0, ...this.#op.actions.flatMap((a) => [Number(a.input), Number(a.secondaryInput)]).map((i) => i + 1));
    const sel: (ContentSelector | undefined)[] = new Array(n).fill(undefined);
    for (const a of this.#op.actions) {
      const i = Number(a.input);
      if (i >= 0 && i < n) sel[i] = null;
    }
    for (const a of this.#op.actions) {
      if (a.action.case !== 'copy') continue;
      const i = Number(a.secondaryInput);
      if (i < 0 || i >= n || sel[i] === null) continue;
      const r = read(a.action.value);
      const cur = sel[i] ?? (r && { paths: [], followSymlinks: r.follow });
      const known = !!r && !!cur?.paths.includes(r.path);
      if (!r || !cur || cur.followSymlinks !== r.follow) {
        sel[i] = null;
        continue;
      }
      if (r.wildcard) cur.wildcards = true;
      if (!known) {
        cur.paths.push(r.path);
        if (r.patterns) cur.patterns = { ...cur.patterns, [r.path]: r.patterns };
      } else {
        // Read again: as upstream keys each copy's selection, the path is keyed by each set of
        // patterns it is read with; read whole by one copy, it is keyed whole.
        const had = cur.patterns?.[r.path];
        if (had && r.patterns) {
          const sets = patternSets(had);
          if (!sets.some((x) => JSON.stringify(x) === JSON.stringify(r.patterns))) cur.patterns = { ...cur.patterns, [r.path]: [...sets, r.patterns] };
        } else if (had) {
          const { [r.path]: _, ...rest } = cur.patterns!;
          cur.patterns = Object.keys(rest).length ? rest : undefined;
        }
      }
      sel[i] = cur;
    }
    return sel.map((x) => (x ? withoutNested(x) : null));
  }

  /**
   * An op input used only as the source of copies (never as the tree an action changes) is read
   * only at those paths. A wildcard source is its pattern and a source with include/exclude
   * patterns carries them (see OpImpl.inputSelectors: a local source is keyed by what they
   * select; another input by the paths and patterns, or whole for a wildcard).
   */
  inputSelectors(): ContentSelector[] {
    // allowWildcard alone changes nothing for a source without glob characters (Dockerfile COPY
    // always sets it).
    return this.#copySelectors(sourceSelector);
  }

  /**
   * The inputs that are only copied from, by the paths copied: a wildcard source as its pattern
   * (what it matches, as upstream's wildcard checksum), a source with include/exclude patterns by
   * what they keep (upstream's checksum with patterns). A source holding glob characters that is
   * not a wildcard is rare enough to key its input whole. (The same selection as inputSelectors.)
   */
  contentSelectors(): ContentSelector[] {
    return this.inputSelectors();
  }

  async run(ctx: OpContext, inputs: readonly Ref[]): Promise<Ref[]> {
    const created: string[] = [];
    const protect: (() => void)[] = [];
    const newKey = () => {
      const k = newId();
      created.push(k);
      protect.push(this.#refs.protect([k]));
      return k;
    };
    try {
      const res = await runFileOp({
        op: this.#op,
        inputs: inputs.map((r) => (isEmptyRef(r) ? null : r.snapshot)),
        snapshotter: this.#refs.snapshotter,
        newKey,
        signal: ctx.signal,
      });
      const out: Ref[] = [];
      for (const o of res.outputs) {
        const parent = o.parentInput === null ? null : inputs[o.parentInput]!;
        out.push(
          await this.#refs.createRef({
            snapshot: o.snapshot,
            parent: parent && isEmptyRef(parent) ? null : parent,
            description: ctx.vertex.name,
          }),
        );
      }
      return out;
    } catch (err) {
      // As upstream's file backend: the action's own error, a plain one (gRPC Unknown), so
      // clients print no code in front of it.
      if (err instanceof FileActionError && err.code !== 'CANCELLED' && !isAbortError(err)) {
        throw new LoomError('UNKNOWN', err.message, { cause: err });
      }
      throw err;
    } finally {
      for (const p of protect) p();
    }
  }
}

/** A ref standing for an empty tree (scratch results of merge or diff). */
export function isEmptyRef(r: Ref): boolean {
  return r.chain.length === 0;
}
