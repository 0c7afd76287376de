import { spawn } from 'node:child_process';
import { mkdir, rename, readdir, rm, mkdtemp } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { RefManager } from '../../cache/ref-manager.js';
import type { OpContext, OpImpl, Ref } from '../../solver/types.js';
import { InvalidArgumentError, LoomError, NotFoundError, UnavailableError, isAbortError, CancelledError } from '../../util/errors.js';

/** A parsed git source: remote URL, ref (branch, tag or commit) and optional subdirectory. */
export interface GitIdentifier {
  remote: string;
  ref: string;
  subdir: string;
}

/**
 * Parses `git://host/path#ref[:subdir]` as BuildKit's LLB carries it. The full remote comes from
 * `git.fullurl` when set (the identifier drops the transport); otherwise https:// is assumed, as
 * upstream does. Refs and remotes starting with `-` are refused: they would reach git as options.
 */
export function parseGitIdentifier(identifier: string, attrs: Record<string, string>): GitIdentifier {
  const rest = identifier.slice('git://'.length);
  const hash = rest.indexOf('#');
  const fragment = hash >= 0 ? rest.slice(hash + 1) : '';
  let remote = attrs['git.fullurl'] || (hash >= 0 ? rest.slice(0, hash) : rest);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(remote)) {
    // Only network transports: a file:// (or ext::) remote would read the daemon's own host.
    if (!/^(https?|git|ssh):\/\//i.test(remote)) {
      throw new InvalidArgumentError(`invalid git remote ${JSON.stringify(remote)}: only http, https, git and ssh remotes are allowed`);
    }
  } else if (!/^[\w.-]+@[\w.-]+:/.test(remote)) {
    remote = `https://${remote}`;
  }
  const colon = fragment.indexOf(':');
  const ref = colon >= 0 ? fragment.slice(0, colon) : fragment;
  let subdir = colon >= 0 ? fragment.slice(colon + 1) : '';
  const clean = posix.normalize(`/${subdir}`);
  subdir = clean === '/' ? '' : clean.slice(1);
  if (ref.startsWith('-')) throw new InvalidArgumentError(`invalid git ref ${JSON.stringify(ref)} in ${identifier}: must not start with '-'`);
  if (remote.startsWith('-')) throw new InvalidArgumentError(`invalid git remote ${JSON.stringify(remote)}: must not start with '-'`);
  if (subdir.split('/').includes('..')) throw new InvalidArgumentError(`invalid git subdir ${JSON.stringify(subdir)} in ${identifier}`);
  return { remote, ref, subdir };
}

/** Whether a ref is a full commit id rather than a name. */
function isCommitSHA(ref: string): boolean {
  return /^[0-9a-f]{40}$/.test(ref);
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]+@/, '//xxxxx@');
}

/** Runs git with no terminal prompts and no user/system config, in `cwd`. */
function git(args: string[], opts: { cwd?: string; signal: AbortSignal }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('git', args, {
      cwd: opts.cwd,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        GIT_TERMINAL_PROMPT: '0',
        GIT_CONFIG_NOSYSTEM: '1',
        GIT_CONFIG_GLOBAL: '/dev/null',
        HOME: '/nonexistent',
        GIT_PROTOCOL_FROM_USER: '0',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: opts.signal,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(isAbortError(e) ? new CancelledError() : e));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`git ${args[0]}: exit code ${code}: ${err.trim()}`))));
  });
}

/**
 * `git://` sources through the git CLI. The cache key is the commit the ref names now (ls-remote),
 * so a moved branch misses and an unchanged one hits. The checkout is a shallow fetch of exactly
 * that commit; `.git` stays only with `git.keepgitdir=true`.
 */
export class GitSourceOp implements OpImpl {
  readonly #refs: RefManager;
  readonly #id: GitIdentifier;
  readonly #keepGitDir: boolean;
  #commit: Promise<string> | undefined;
  /** Whether the ref names an annotated tag (ls-remote lists it peeled). */
  #annotated = false;

  constructor(deps: { refs: RefManager }, identifier: string, attrs: Record<string, string>) {
    this.#refs = deps.refs;
    this.#id = parseGitIdentifier(identifier, attrs);
    this.#keepGitDir = attrs['git.keepgitdir'] === 'true';
  }

  #resolve(ctx: OpContext): Promise<string> {
    this.#commit ??= (async () => {
      const ref = this.#id.ref || 'HEAD';
      if (isCommitSHA(ref)) return ref;
      let out: string;
      try {
        // (With the peeled form asked for too: an annotated tag then names its commit.)
        out = await git(['ls-remote', '--', this.#id.remote, ref, `${ref}^{}`], { signal: ctx.signal });
      } catch (err) {
        if (isAbortError(err)) throw err;
        throw new UnavailableError(`failed to fetch remote ${redact(this.#id.remote)}: ${(err as Error).message}`, { cause: err });
      }
      const lines = out.split('\n').filter(Boolean).map((l) => l.split('\t') as [string, string]);
      // Prefer an exact ref, then a tag's peeled commit, then a branch, as git would.
      const pick =
        lines.find(([, r]) => r === ref) ??
        lines.find(([, r]) => r === `refs/tags/${ref}^{}`) ??
        lines.find(([, r]) => r === `refs/tags/${ref}`) ??
        lines.find(([, r]) => r === `refs/heads/${ref}`) ??
        lines[0];
      if (!pick) throw new NotFoundError(`repository ${redact(this.#id.remote)} does not contain ref ${ref}`);
      const peeled = lines.find(([, r]) => r === `${pick[1]}^{}`);
      this.#annotated = pick[1].startsWith('refs/tags/') && (pick[1].endsWith('^{}') || peeled !== undefined);
      return (peeled ?? pick)[0];
    })();
    return this.#commit;
  }

  /** The branch the remote's HEAD names (`git ls-remote --symref`), as upstream takes for a source without a ref. */
  async #defaultBranch(ctx: OpContext): Promise<string> {
    const out = await git(['ls-remote', '--symref', '--', this.#id.remote, 'HEAD'], { signal: ctx.signal });
    const m = /^ref: refs\/heads\/(\S+)\tHEAD$/m.exec(out);
    return m ? m[1]! : '';
  }

  async cacheKey(ctx: OpContext): Promise<string> {
    const commit = await this.#resolve(ctx);
    return JSON.stringify({ commit, subdir: this.#id.subdir, keepGitDir: this.#keepGitDir });
  }

  async run(ctx: OpContext): Promise<Ref[]> {
    const commit = await this.#resolve(ctx);
    const w = await this.#refs.prepare(null, { signal: ctx.signal });
    try {
      const work = await mkdtemp(join(w.dir, '.loom-git-'));
      await git(['-c', 'init.defaultBranch=master', 'init', '-q', work], { signal: ctx.signal });
      await git(['remote', 'add', 'origin', this.#id.remote], { cwd: work, signal: ctx.signal });
      // A kept .git is left as upstream's checkout of it: the ref (the remote's default branch
      // when none is named) fetched under its own name, an annotated tag under refs/tags/, and
      // refs/tags/<ref> at the commit (upstream fetches through its own copy, where every ref is
      // a tag); HEAD detached at the commit, no remote-tracking refs, no reflog, no FETCH_HEAD.
      const kept = this.#keepGitDir && !this.#id.subdir;
      const name = kept && !this.#id.ref ? await this.#defaultBranch(ctx) : this.#id.ref;
      const byName = name && !isCommitSHA(name);
      const fetchRef = byName ? name : commit;
      const refspec = !kept || !byName ? fetchRef : this.#annotated ? `${fetchRef}:refs/tags/${fetchRef}` : `${fetchRef}:${fetchRef}`;
      try {
        await git(['fetch', '-q', '--depth=1', '--no-tags', ...(kept ? ['-u', '--refmap='] : []), 'origin', '--', refspec], { cwd: work, signal: ctx.signal });
        if (kept && byName && !this.#annotated) await git(['update-ref', `refs/tags/${fetchRef}`, commit], { cwd: work, signal: ctx.signal });
      } catch (err) {
        if (isAbortError(err)) throw err;
        // Servers that refuse a fetch by commit need the full history.
        await git(['fetch', '-q', '--no-tags', 'origin'], { cwd: work, signal: ctx.signal }).catch((e2: Error) => {
          throw new UnavailableError(`failed to fetch remote ${redact(this.#id.remote)}: ${e2.message}`, { cause: e2 });
        });
      }
      await git(['-c', 'advice.detachedHead=false', 'checkout', '-q', commit], { cwd: work, signal: ctx.signal }).catch((err: Error) => {
        throw new LoomError('NOT_FOUND', `failed to checkout remote ${redact(this.#id.remote)}: ${err.message}`, { cause: err });
      });
      await git(['remote', 'set-url', 'origin', redact(this.#id.remote)], { cwd: work, signal: ctx.signal });
      if (kept) {
        await git(['reflog', 'expire', '--all', '--expire=now'], { cwd: work, signal: ctx.signal });
        await rm(join(work, '.git', 'FETCH_HEAD'), { force: true });
      }
      if (!this.#keepGitDir) await rm(join(work, '.git'), { recursive: true, force: true });
      const from = this.#id.subdir ? join(work, this.#id.subdir) : work;
      for (const n of await readdir(from).catch(() => {
        throw new NotFoundError(`subdir ${this.#id.subdir} not found in ${redact(this.#id.remote)}#${this.#id.ref}`);
      })) {
        await rename(join(from, n), join(w.dir, n));
      }
      await rm(work, { recursive: true, force: true });
      await mkdir(w.dir, { recursive: true });
      const ref = await w.commit({ description: `git snapshot for ${redact(this.#id.remote)}#${this.#id.ref || commit}`, recordType: 'source.git.checkout' });
      return [ref];
    } catch (err) {
      await w.discard();
      throw err;
    }
  }
}
