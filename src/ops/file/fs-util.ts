import { chmod, lchown, lstat, mkdir, stat } from 'node:fs/promises';
import { lstatSync } from 'node:fs';
import path from 'node:path';
import { clarifyNameError, LoomError, type ErrorCode } from '../../util/errors.js';
import { pathInRoot } from '../../util/fs-safe.js';
import { setTimes } from '../../snapshot/layer/sys-ops.js';

/**
 * Small filesystem steps shared by the file actions, with upstream's (fsutil copy, BuildKit file
 * backend) semantics. loom's daemon behaves as upstream's, which runs with umask 0: modes given by
 * the client are applied exactly, so every create is followed by an explicit chmod (Node's process
 * umask must not leak into results).
 */

/** uid/gid to give new or copied entries; null keeps what they have (or root for new ones). */
export interface User {
  uid: number;
  gid: number;
}

/**
 * Decides the owner of an entry from its source owner (null for entries created from nothing);
 * returns null to leave the owner as created. Upstream's copy.Chowner.
 */
export type Chowner = (old: User | null) => User | null;

export function chownerFor(user: User | null): Chowner {
  if (user === null) return (old) => old;
  return () => user;
}

export async function applyChown(p: string, old: User | null, ch: Chowner | null): Promise<void> {
  if (!ch) return;
  const u = ch(old);
  if (u) await lchown(p, u.uid, u.gid);
}

/** Sets both times of `p` (symlinks not followed) to `ns` when given. */
export async function applyUtime(p: string, ns: bigint | null): Promise<void> {
  if (ns === null) return;
  await setTimes([{ path: p, atimeNs: ns, mtimeNs: ns }]);
}

/** An action's timestamp field: -1 for "keep", else nanoseconds since the epoch. */
export function timestampNs(ts: bigint): bigint | null {
  return ts === -1n ? null : ts;
}

/**
 * Creates directory `p` and missing parents with `perm`, giving each created one the owner and time
 * (existing ones are left alone). `p` is a host path already resolved inside `root`; creation stops
 * at the root. Upstream's copy.MkdirAll.
 */
export async function mkdirAll(
  root: string,
  p: string,
  perm: number,
  ch: Chowner | null,
  tm: bigint | null,
): Promise<void> {
  try {
    const st = await stat(p);
    if (st.isDirectory()) return;
    throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${p}'`), { code: 'ENOTDIR', syscall: 'mkdir', path: p });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // A path below a file: upstream resolves the path in the root first, and its lstat of the
    // first name below the file fails (`lstat /file/sub: not a directory`).
    if (code === 'ENOTDIR' && (err as NodeJS.ErrnoException).syscall !== 'mkdir') throw belowFile(root, p) ?? err;
    if (code !== 'ENOENT') throw err;
  }
  const parent = path.dirname(p);
  if (parent !== p && parent.length >= root.length && p !== root) await mkdirAll(root, parent, perm, ch, tm);
  try {
    if ((await lstat(p)).isDirectory()) return;
  } catch {
    // not there: create below
  }
  try {
    await mkdir(p);
  } catch (err) {
    try {
      if ((await lstat(p)).isDirectory()) return;
    } catch {
      // report the mkdir error
    }
    throw err;
  }
  await chmod(p, perm);
  await applyChown(p, null, ch);
  await applyUtime(p, tm);
}

/** The lstat error of the first name of `p` (below `root`) whose parent is not a directory. */
function belowFile(root: string, p: string): NodeJS.ErrnoException | undefined {
  const names = path.relative(root, p).split(path.sep);
  for (let i = 1; i <= names.length; i++) {
    const q = path.join(root, ...names.slice(0, i));
    try {
      lstatSync(q);
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? (err as NodeJS.ErrnoException) : undefined;
    }
  }
  return undefined;
}

/**
 * Turns a Node filesystem error into the message upstream gives (`mkdir /x/y: no such file or
 * directory`: upstream's file actions return the system call's error bare), with host paths shown
 * as paths inside the op's roots, prefixed by `what` when given (`failed to stat /dst`).
 */
export function fsError(err: unknown, roots: readonly string[], what?: string): LoomError {
  const { code, message } = fsErrorText(err, roots);
  return new LoomError(code, what ? `${what}: ${message}` : message, { cause: err });
}

/** An error's text with paths shown inside the roots (`mkdir /x: not a directory` for a system call's), and its code. */
export function fsErrorText(err: unknown, roots: readonly string[]): { code: ErrorCode; message: string } {
  const named = clarifyNameError(err);
  if (named !== err) return { code: (named as LoomError).code, message: hidePaths((named as LoomError).message, roots) };
  if (err instanceof LoomError) return { code: err.code, message: hidePaths(err.message, roots) };
  const e = err as NodeJS.ErrnoException;
  let msg = e?.message ?? String(err);
  let code: ErrorCode = 'INVALID_ARGUMENT';
  if (e && typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code)) {
    const desc = /^E[A-Z]+: (.*?)(, |$)/.exec(msg)?.[1] ?? e.code;
    const p = e.path ? shown(e.path, roots) : '';
    msg = `${e.syscall ?? 'open'} ${p}: ${desc}`;
    if (e.code === 'ENOENT') code = 'NOT_FOUND';
  }
  return { code, message: msg };
}

/** Rewrites host paths below the roots in a message to paths inside the roots. */
function hidePaths(msg: string, roots: readonly string[]): string {
  let out = msg;
  for (const r of [...roots].sort((a, b) => b.length - a.length)) {
    out = out.split(r + '/').join('/');
    out = out.split(r).join('/');
  }
  return out;
}

function shown(p: string, roots: readonly string[]): string {
  for (const r of roots) {
    if (p === r || p.startsWith(r + '/')) return pathInRoot(r, p);
  }
  return p;
}
