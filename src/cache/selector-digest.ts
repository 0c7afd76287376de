import { createHash } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import { resolveInRoot, resolveParentInRoot } from '../util/fs-safe.js';
import { fileDigest, treeDigest } from './content-hash.js';

/**
 * A digest of exactly the paths a step reads from a tree (its copy sources): each path's type,
 * permission bits, owner and content (a directory's whole subtree), or "missing". Paths are
 * resolved inside the tree, following symlinks within it as the copy will. Changing anything
 * else in the tree leaves the digest as it is, which is what keeps such a step cached.
 */
export async function selectorDigest(root: string, paths: readonly string[], followSymlinks: boolean): Promise<string> {
  const h = createHash('sha256');
  for (const p of [...paths].sort()) {
    let host: string;
    try {
      host = followSymlinks ? await resolveInRoot(root, p) : await resolveParentInRoot(root, p);
    } catch {
      h.update(`${JSON.stringify(p)} unresolvable\n`);
      continue;
    }
    const st = await lstat(host).catch(() => undefined);
    if (!st) {
      h.update(`${JSON.stringify(p)} missing\n`);
      continue;
    }
    const head = `${JSON.stringify(p)} ${(st.mode >>> 0).toString(8)} ${st.uid}:${st.gid}`;
    if (st.isDirectory()) h.update(`${head} dir ${await treeDigest(host)}\n`);
    else if (st.isFile()) h.update(`${head} file ${await fileDigest(host)}\n`);
    else h.update(`${head} other ${st.size}\n`);
  }
  return `sha256:${h.digest('hex')}`;
}
