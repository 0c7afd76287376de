import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function tempDir(prefix = 'loom-fs-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDirs(dirs: string[]): Promise<void> {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
}

export interface EntryView {
  path: string;
  type: 'dir' | 'file' | 'symlink' | 'fifo' | 'char' | 'block' | 'other';
  perm: string;
  uid: number;
  gid: number;
  mtimeUs: bigint;
  size?: number;
  sha?: string;
  target?: string;
  /** Paths sharing this entry's inode (hard links), sorted. */
  links?: string[];
  rdev?: bigint;
}

/** Everything the receiver is expected to reproduce, per path, sorted. */
export async function snapshotTree(root: string, opts?: { dirTimes?: boolean }): Promise<EntryView[]> {
  const out: EntryView[] = [];
  const inodes = new Map<bigint, string[]>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const abs = join(root, p);
      const st = await lstat(abs, { bigint: true });
      const type = st.isDirectory()
        ? 'dir'
        : st.isFile()
          ? 'file'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isFIFO()
              ? 'fifo'
              : st.isCharacterDevice()
                ? 'char'
                : st.isBlockDevice()
                  ? 'block'
                  : 'other';
      const e: EntryView = {
        path: p,
        type,
        perm: (Number(st.mode) & 0o7777).toString(8),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtimeUs: type === 'dir' && !opts?.dirTimes ? 0n : st.mtimeNs / 1000n,
      };
      if (type === 'symlink') e.perm = '';
      if (type === 'file') {
        const data = await readFile(abs);
        e.size = data.length;
        e.sha = createHash('sha256').update(data).digest('hex');
        if (st.nlink > 1n) {
          const l = inodes.get(st.ino) ?? [];
          l.push(p);
          inodes.set(st.ino, l);
          e.links = l;
        }
      }
      if (type === 'symlink') e.target = await readlink(abs);
      if (type === 'char' || type === 'block') e.rdev = st.rdev;
      out.push(e);
      if (type === 'dir') await walk(p);
    }
  };
  await walk('');
  for (const e of out) if (e.links) e.links = [...e.links].sort();
  return out;
}
