import { lstatSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, LoomError } from './errors.js';

/**
 * Path resolution confined to a root directory, the way a container sees its rootfs.
 *
 * Every symlink met on the way is followed as if `root` were `/`: an absolute target restarts at
 * `root`, `..` never climbs above it. The result is always `root` or a path below it, so callers
 * can hand it to the host's syscalls without ever touching the host outside the tree. (This is the
 * behaviour of continuity's fs.RootPath that BuildKit's file ops rely on.)
 *
 * The usual race applies: a tree being modified concurrently by someone else may swap a component
 * for a symlink between resolution and use. Snapshots handed to file ops are owned by the op, so
 * nothing else writes to them meanwhile.
 */

const MAX_LINKS = 255;

export class TooManyLinksError extends LoomError {
  constructor(p: string) {
    super('INVALID_ARGUMENT', `too many links resolving ${p}`);
  }
}

/** Splits a slash path into its non-empty components. */
function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/**
 * Resolves `p` (taken as absolute inside the root whatever its form) to a host path under `root`,
 * following symlinks in every component, the last one included. Missing components are kept as
 * written, so the result may name something that does not exist yet.
 */
export async function resolveInRoot(root: string, p: string): Promise<string> {
  return resolve(root, p, true);
}

/**
 * As resolveInRoot, but the last component is not followed if it is a symlink: the result names
 * the entry itself (for rm, lchown, creating the entry). `/` resolves to the root itself.
 */
export async function resolveParentInRoot(root: string, p: string): Promise<string> {
  return resolve(root, p, false);
}

/**
 * resolveInRoot without a promise. The walk is one lstat (and readlink per symlink) per
 * component: metadata calls of microseconds, cheaper made in place than each sent to the
 * thread pool and awaited (a step's setup resolves a dozen such paths).
 */
export function resolveInRootSync(root: string, p: string): string {
  return resolve(root, p, true);
}

function resolve(root: string, p: string, followLast: boolean): string {
  if (!path.isAbsolute(root)) throw new InvalidArgumentError(`root ${JSON.stringify(root)} is not absolute`);
  const base = path.resolve(root);
  const pending = components(p);
  const resolved: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '..') {
      resolved.pop();
      continue;
    }
    if (!followLast && pending.length === 0) {
      resolved.push(c);
      break;
    }
    const host = path.join(base, ...resolved, c);
    if (!isSymlink(host)) {
      resolved.push(c);
      continue;
    }
    if (++links > MAX_LINKS) throw new TooManyLinksError(p);
    const target = readlinkSync(host);
    if (target.startsWith('/')) resolved.length = 0;
    pending.unshift(...components(target));
  }
  return path.join(base, ...resolved);
}

/** Whether `host` is a symlink; a missing entry (or a file where a directory was expected) is not. */
function isSymlink(host: string): boolean {
  try {
    return lstatSync(host).isSymbolicLink();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw err;
  }
}

/**
 * Joins a clean, root-relative (or slash-absolute) path onto root lexically, refusing any form that
 * would climb out. For paths that come from trusted walks (our own change lists) where no symlink
 * resolution is wanted.
 */
export function joinInRoot(root: string, p: string): string {
  const clean = path.posix.normalize('/' + p);
  const out = path.join(root, clean);
  const rel = path.relative(root, out);
  if (rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new InvalidArgumentError(`path ${JSON.stringify(p)} escapes its root`);
  }
  return out;
}

/** The path of `host` inside `root`, slash-absolute (`/` for the root itself). */
export function pathInRoot(root: string, host: string): string {
  const rel = path.relative(root, host);
  return rel === '' ? '/' : '/' + rel.split(path.sep).join('/');
}
