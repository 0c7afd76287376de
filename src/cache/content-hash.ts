import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { throwIfAborted } from '../util/errors.js';
import type { Digest } from '../util/digest.js';

/**
 * A digest of a tree's content: for each entry in sorted path order its path, type, permission
 * bits, owner, link target and (for files) a digest of the bytes. Modification times are left out
 * on purpose: touching a file without changing it must not change the digest (as upstream's
 * contenthash), so a rebuild after `touch` stays cached.
 */
export async function treeDigest(root: string, opts: { signal?: AbortSignal } = {}): Promise<Digest> {
  const h = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    throwIfAborted(opts.signal);
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      const p = rel ? `${rel}/${name}` : name;
      const full = join(root, p);
      const st = await lstat(full);
      let body = '';
      if (st.isFile()) body = await fileDigest(full);
      else if (st.isSymbolicLink()) body = await readlink(full);
      else if (st.isCharacterDevice() || st.isBlockDevice()) body = String(st.rdev);
      h.update(`${JSON.stringify(p)} ${(st.mode >>> 0).toString(8)} ${st.uid}:${st.gid} ${body}\n`);
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return `sha256:${h.digest('hex')}`;
}

export function fileDigest(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}
