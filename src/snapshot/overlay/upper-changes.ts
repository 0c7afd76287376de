import type { BigIntStats } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { throwIfAborted } from '../../util/errors.js';
import type { Change } from '../layer/change.js';
import { changes as doubleWalk, compareNames, sameContent } from '../layer/changes.js';
import { listXattrs } from '../layer/sys-ops.js';

/**
 * The changes of an overlay snapshot against its parent, read from its upper directory alone (the
 * facts BuildKit's overlay differ uses), in layer order (see layer/change.ts):
 * - a whiteout (character device 0/0) is a delete when the parent has the path, else nothing;
 * - an entry the parent lacks is an add;
 * - an entry the parent has is a modify unless it compares equal (a directory copied up because a
 *   child changed, a file copied up and renamed back): the comparison is the double walk's, so that
 *   writeLayerTar gives the same bytes as for layer.changes(parentDir, dir); equal multiply-linked
 *   files are reported `unmodified` as the double walk does, so writers keep links together;
 * - an opaque directory (trusted.overlay.opaque=y, made when a directory is created where a deleted
 *   one was) hides the parent's content: its subtree is diffed against the parent's by a double
 *   walk, which turns the hidden entries into deletes, as upstream does. The `opaque` flag of Change
 *   is not used, so layers match the double walk's and other snapshotters' byte for byte.
 *
 * `baseDir` is the parent's tree (its mounted view, or its only layer), null without parent. It is
 * only looked into below real directories (lstat all the way), so a symlink in the parent never
 * leads the comparison outside it. Stats are the upper directory's: read files from either the
 * upper or the snapshot's mounted view (same content), group hard links by these stats.
 *
 * Assumes mounts without redirect_dir and metacopy (the snapshotter mounts with both off): with
 * them the upper dir alone does not tell the content. Returns null when it finds a redirect anyway.
 */
export interface UpperChangesOptions {
  upperDir: string;
  baseDir: string | null;
  signal?: AbortSignal;
}

const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.overlay.opaque'];
const REDIRECT_XATTR = 'trusted.overlay.redirect';
const CAPS_XATTR = 'security.capability';

interface Node {
  path: string;
  upper: BigIntStats;
  /** lstat of the parent's entry; null when absent or not reachable through real directories. */
  base: BigIntStats | null;
  whiteout: boolean;
}

export async function upperChanges(opts: UpperChangesOptions): Promise<Change[] | null> {
  const { upperDir, baseDir, signal } = opts;
  // Pass 1: the upper tree in layer order, each entry with its counterpart in the parent.
  const nodes: Node[] = [];
  await walk(upperDir, baseDir, '/', true, nodes, signal);

  // One batch of xattrs: opaque and redirect markers of directories the parent also has, and the
  // capabilities of files whose metadata says "same" (a setcap changes only the xattr).
  const dirQueries = nodes.filter((n) => n.upper.isDirectory() && n.base?.isDirectory());
  const pending: { node: Node; change: Change; drop?: boolean; capCheck?: boolean }[] = [];
  for (const n of nodes) {
    if (n.whiteout) {
      if (n.base) pending.push({ node: n, change: { kind: 'delete', path: n.path } });
      continue;
    }
    if (!n.base) {
      pending.push({ node: n, change: { kind: 'add', path: n.path, stat: n.upper } });
      continue;
    }
    const same = await sameEntry(n.base, n.upper, hostPath(baseDir!, n.path), hostPath(upperDir, n.path));
    const p: (typeof pending)[number] = { node: n, change: { kind: 'modify', path: n.path, stat: n.upper } };
    if (same) {
      if (n.upper.isFile()) p.capCheck = true;
      else if (!n.upper.isDirectory() && n.upper.nlink > 1n) p.change.kind = 'unmodified';
      else p.drop = true;
    }
    pending.push(p);
  }
  const capQueries = pending.filter((p) => p.capCheck).map((p) => p.node);
  const lists = await listXattrs([
    ...dirQueries.map((n) => hostPath(upperDir, n.path)),
    ...capQueries.map((n) => hostPath(upperDir, n.path)),
    ...capQueries.map((n) => hostPath(baseDir!, n.path)),
  ]);
  const opaque = new Set<string>();
  for (const [i, n] of dirQueries.entries()) {
    const x = lists[i]!;
    // Only a mount with redirect_dir=on makes redirects: the upper alone then does not say where a
    // directory's content came from, and the caller must walk both trees (upstream does the same).
    if (x.has(REDIRECT_XATTR)) return null;
    if (OPAQUE_XATTRS.some((k) => x.get(k)?.toString() === 'y')) opaque.add(n.path);
  }
  const capOf = new Map<Node, [Buffer | undefined, Buffer | undefined]>();
  capQueries.forEach((n, i) => {
    capOf.set(n, [lists[dirQueries.length + i]!.get(CAPS_XATTR), lists[dirQueries.length + capQueries.length + i]!.get(CAPS_XATTR)]);
  });
  for (const p of pending) {
    if (!p.capCheck) continue;
    const [u, b] = capOf.get(p.node)!;
    const equal = u === undefined || b === undefined ? u === b : u.equals(b);
    if (!equal) continue;
    if (p.node.upper.nlink > 1n) p.change.kind = 'unmodified';
    else p.drop = true;
  }

  // Pass 2: emit, replacing the subtree of each opaque directory by a double walk of it.
  const out: Change[] = [];
  let skipUnder: string | null = null;
  for (const p of pending) {
    throwIfAborted(signal);
    if (skipUnder !== null && p.node.path.startsWith(skipUnder)) continue;
    skipUnder = null;
    if (!p.drop) out.push(p.change);
    if (opaque.has(p.node.path)) {
      skipUnder = p.node.path + '/';
      const sub = await doubleWalk(hostPath(baseDir!, p.node.path), hostPath(upperDir, p.node.path), { signal });
      for (const c of sub) {
        const rebased = { ...c, path: p.node.path + c.path };
        // Nothing in an opaque directory has a lower to hide, so the kernel makes no whiteouts
        // there; should one appear, it still means "absent".
        if (c.stat && isWhiteout(c.stat)) {
          if (c.kind === 'modify') out.push({ kind: 'delete', path: rebased.path });
          continue;
        }
        out.push(rebased);
      }
    }
  }
  return out;
}

async function walk(
  upperDir: string,
  baseDir: string | null,
  rel: string,
  baseIsDir: boolean,
  out: Node[],
  signal: AbortSignal | undefined,
): Promise<void> {
  throwIfAborted(signal);
  const dir = hostPath(upperDir, rel);
  const names = (await readdir(dir)).sort(compareNames);
  const stats = await Promise.all(names.map((n) => lstat(path.join(dir, n), { bigint: true })));
  const bases = await Promise.all(
    names.map((n) => (baseDir !== null && baseIsDir ? lstatOrNull(path.join(hostPath(baseDir, rel), n)) : null)),
  );
  for (let i = 0; i < names.length; i++) {
    const p = rel === '/' ? '/' + names[i] : rel + '/' + names[i];
    const upper = stats[i]!;
    const base = bases[i]!;
    out.push({ path: p, upper, base, whiteout: isWhiteout(upper) });
    if (upper.isDirectory()) await walk(upperDir, baseDir, p, base?.isDirectory() ?? false, out, signal);
  }
}

function isWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

function hostPath(root: string, p: string): string {
  return p === '/' ? root : path.join(root, p);
}

async function lstatOrNull(p: string): Promise<BigIntStats | null> {
  try {
    return await lstat(p, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}

/**
 * Equal entries, by the rules of layer/changes.ts (continuity's): same inode, or same type,
 * permissions, owner and rdev and, for non-directories, size and mtime, with content compared when
 * neither mtime has sub-second digits. Capabilities are compared by the caller. Keep in step with
 * layer/changes.ts: layer bytes depend on it.
 */
async function sameEntry(l: BigIntStats, u: BigIntStats, lp: string, up: string): Promise<boolean> {
  if (l.dev === u.dev && l.ino === u.ino) return true;
  if (l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid || l.rdev !== u.rdev) return false;
  if (u.isDirectory()) return true;
  if (l.size !== u.size) return false;
  if (l.mtimeNs / 1_000_000_000n !== u.mtimeNs / 1_000_000_000n) return false;
  const lns = l.mtimeNs % 1_000_000_000n;
  const uns = u.mtimeNs % 1_000_000_000n;
  if (lns === 0n && uns === 0n) {
    if (u.isSymbolicLink()) return (await readlink(lp)) === (await readlink(up));
    if (u.size === 0n || !u.isFile()) return true;
    return sameContent(lp, up);
  }
  return lns === uns;
}

