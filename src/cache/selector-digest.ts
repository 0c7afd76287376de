import { createHash } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import { lstatSync } from 'node:fs';
import path from 'node:path';
import { LoomError, NotFoundError } from '../util/errors.js';
import { containsWildcards, resolveWildcards, splitWildcards } from '../ops/file/wildcard.js';
import { LRUCache } from 'lru-cache';
import { resolveInRoot, resolveParentInRoot } from '../util/fs-safe.js';
import { fileDigest, treeDigest } from './content-hash.js';

/**
 * Answers already given, by tree, its root directory's identity, and selection. Trees handed to
 * selectorDigest are committed snapshots (a Ref's dir), which nobody writes again, so the answer
 * for one stays right as long as the tree exists; a fully cached rebuild asks again for the same
 * snapshot of its local context and gets it without a walk (upstream likewise keeps content
 * checksums per cache record). The root's device, inode and ctime are part of the key, so a
 * directory removed and made again at the same path is not mistaken for the old one.
 */
const memo = new LRUCache<string, Promise<string>>({ max: 4096 });

/**
 * A digest of exactly the paths a step reads from a tree (its copy sources): each path's type,
 * permission bits, owner and content (a directory's whole subtree); a missing path is an error
 * (NotFoundError naming it, as upstream's). Paths are
 * resolved inside the tree, following symlinks within it as the copy will. Changing anything
 * else in the tree leaves the digest as it is, which is what keeps such a step cached.
 *
 * With `wildcards`, a path holding glob characters is a copy's wildcard source: the digest covers
 * the pattern and each path it matches (resolved as the copy resolves them), so a change beside
 * the matches leaves it as it is, as upstream's wildcard checksum.
 *
 * `root` must be a committed snapshot's tree (never written again): answers are remembered (see
 * memo above).
 */
export async function selectorDigest(root: string, paths: readonly string[], followSymlinks: boolean, wildcards = false): Promise<string> {
  const rst = lstatSync(root, { bigint: true, throwIfNoEntry: false });
  if (!rst) return compute(root, paths, followSymlinks, wildcards);
  const key = JSON.stringify([root, `${rst.dev}:${rst.ino}:${rst.ctimeNs}`, followSymlinks, wildcards, [...paths].sort()]);
  let p = memo.get(key);
  if (!p) {
    p = compute(root, paths, followSymlinks, wildcards);
    memo.set(key, p);
    // A failure (a cancelled walk) is not remembered.
    p.catch(() => memo.delete(key));
  }
  return p;
}

/**
 * Where selected path `p` is on the host and its lstat; a path that is not there is upstream's
 * content-hash error, named as it resolved inside the tree (a symlink's target, `..` cleaned away).
 */
async function resolveSelected(root: string, p: string, followSymlinks: boolean) {
  let host: string;
  try {
    host = followSymlinks ? await resolveInRoot(root, p) : await resolveParentInRoot(root, p);
  } catch {
    throw new NotFoundError(`${JSON.stringify(path.posix.join('/', p))}: not found`);
  }
  const st = await lstat(host).catch(() => undefined);
  if (!st) throw new NotFoundError(`${JSON.stringify(path.posix.join('/', path.relative(root, host)))}: not found`);
  return { host, st };
}

/**
 * Fails as selectorDigest does when a selected path is missing, without digesting anything: for
 * inputs whose key does not hold their content (a stage's result), so that a step reading a path
 * that is not there fails with upstream's message rather than its copy's.
 */
export async function selectorsExist(root: string, paths: readonly string[], followSymlinks: boolean): Promise<void> {
  for (const p of [...paths].sort()) await resolveSelected(root, p, followSymlinks);
}

async function compute(root: string, paths: readonly string[], followSymlinks: boolean, wildcards: boolean): Promise<string> {
  const h = createHash('sha256');
  const add = async (p: string): Promise<void> => {
    const { host, st } = await resolveSelected(root, p, followSymlinks);
    const head = `${JSON.stringify(p)} ${(st.mode >>> 0).toString(8)} ${st.uid}:${st.gid}`;
    if (st.isDirectory()) h.update(`${head} dir ${await treeDigest(host)}\n`);
    else if (st.isFile()) h.update(`${head} file ${await fileDigest(host)}\n`);
    else h.update(`${head} other ${st.size}\n`);
  };
  for (const p of [...paths].sort()) {
    if (!wildcards || !containsWildcards(p)) {
      await add(p);
      continue;
    }
    let matches: string[];
    try {
      matches = await resolveWildcards(root, p, followSymlinks);
    } catch (err) {
      if (err instanceof LoomError) throw err;
      throw new NotFoundError(`${JSON.stringify(splitWildcards(path.posix.join('/', p))[0])}: not found`, { cause: err });
    }
    h.update(`${JSON.stringify(p)} matches ${matches.length}\n`);
    for (const m of matches) await add(m);
  }
  return `sha256:${h.digest('hex')}`;
}
