import { execFileSync } from 'node:child_process';
import { type BigIntStats, chmodSync, chownSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { copySmall, linkedTreeUsage, linkTree, smallCopy, treeUsage } from '../../../src/snapshot/native/native-snapshotter.js';

let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-treecopy-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

function fill(root: string, files = 200): void {
  mkdirSync(path.join(root, 'd/e'), { recursive: true });
  for (let i = 0; i < files; i++) writeFileSync(path.join(root, 'd', `f${i}`), `file ${i}\n`.repeat(i));
  writeFileSync(path.join(root, 'd/e/deep'), 'deep');
  linkSync(path.join(root, 'd/e/deep'), path.join(root, 'hard'));
  symlinkSync('d/e/deep', path.join(root, 'link'));
  chmodSync(path.join(root, 'd/e'), 0o701);
}

// Small trees are linked in the daemon, larger ones by cp: both must give the same tree.
describe.each([
  { files: 200, how: 'in the daemon' },
  { files: 400, how: 'by cp' },
])('linkTree of $files files ($how)', ({ files }) => {
  it('makes new directories with the same metadata and hard links to every other entry', async () => {
    const src = path.join(tmp, 'src');
    const dst = path.join(tmp, 'dst');
    mkdirSync(src);
    mkdirSync(dst);
    fill(src, files);
    execFileSync('touch', ['-d', '2001-02-03 04:05:06.123456789', path.join(src, 'd/e')]);
    execFileSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], "user.k", b"v1")', path.join(src, 'd')]);
    if (process.getuid?.() === 0) chownSync(path.join(src, 'd'), 1234, 5678);
    chmodSync(src, 0o750);
    execFileSync('touch', ['-d', '2002-03-04 05:06:07.987654321', src]);
    await linkTree(src, dst);
    for (const p of ['d/f7', 'd/e/deep', 'hard', 'link']) expect(lstatSync(path.join(dst, p)).ino).toBe(lstatSync(path.join(src, p)).ino);
    expect(lstatSync(path.join(dst, 'link')).isSymbolicLink()).toBe(true);
    for (const p of ['', 'd', 'd/e']) {
      const s = lstatSync(path.join(src, p), { bigint: true });
      const d = lstatSync(path.join(dst, p), { bigint: true });
      expect(d.ino).not.toBe(s.ino);
      expect([p, d.mode, d.uid, d.gid, d.mtimeNs]).toEqual([p, s.mode, s.uid, s.gid, s.mtimeNs]);
    }
    const xattr = execFileSync('python3', ['-c', 'import os,sys; print(os.getxattr(sys.argv[1], "user.k").decode())', path.join(dst, 'd')], { encoding: 'utf8' });
    expect(xattr.trim()).toBe('v1');
    expect(readFileSync(path.join(dst, 'd/f3'), 'utf8')).toBe('file 3\n'.repeat(3));
  });

  it('linkedTreeUsage counts the linked tree as treeUsage does, from the source\'s stats', async () => {
    const src = path.join(tmp, 'src');
    const dst = path.join(tmp, 'dst');
    mkdirSync(src);
    mkdirSync(dst);
    fill(src, files);
    const stats: [string, BigIntStats][] = execFileSync('find', ['.', '-mindepth', '1'], { cwd: src, encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((rel) => [rel.slice(2), lstatSync(path.join(src, rel), { bigint: true })]);
    await linkTree(src, dst);
    expect(linkedTreeUsage(dst, stats)).toBe((await treeUsage(dst)).size);
  });
});

describe('copySmall', () => {
  it('copies a small tree as cp -a: new inodes with the metadata, links within the tree kept', async () => {
    const src = path.join(tmp, 'src');
    const dst = path.join(tmp, 'dst');
    mkdirSync(src);
    fill(src, 20);
    chmodSync(path.join(src, 'd/f3'), 0o4750);
    if (process.getuid?.() === 0) chownSync(path.join(src, 'd/f3'), 1234, 5678);
    execFileSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], "user.k", b"f")', path.join(src, 'd/f4')]);
    execFileSync('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789', path.join(src, 'link'), path.join(src, 'd/f5'), path.join(src, 'd')]);
    const tree = smallCopy(src);
    expect(tree?.entries.length).toBe(25); // d, d/e, 20 files, deep, hard, link
    await copySmall(src, dst, tree!);
    for (const p of ['', 'd', 'd/e', 'd/f3', 'd/f4', 'd/f5', 'd/e/deep', 'hard', 'link']) {
      const s = lstatSync(path.join(src, p), { bigint: true });
      const d = lstatSync(path.join(dst, p), { bigint: true });
      expect(d.ino).not.toBe(s.ino);
      expect([p, d.mode, d.uid, d.gid, d.size, d.mtimeNs]).toEqual([p, s.mode, s.uid, s.gid, s.size, s.mtimeNs]);
    }
    // One link per file, as a context's files have upstream; two linked files stay linked to each other.
    expect(lstatSync(path.join(dst, 'd/f5')).nlink).toBe(1);
    expect(lstatSync(path.join(dst, 'hard')).ino).toBe(lstatSync(path.join(dst, 'd/e/deep')).ino);
    expect(lstatSync(path.join(dst, 'hard')).nlink).toBe(2);
    expect(readFileSync(path.join(dst, 'd/f3'), 'utf8')).toBe('file 3\n'.repeat(3));
    const xattr = execFileSync('python3', ['-c', 'import os,sys; print(os.getxattr(sys.argv[1], "user.k").decode())', path.join(dst, 'd/f4')], { encoding: 'utf8' });
    expect(xattr.trim()).toBe('f');
  });

  it('leaves large trees, and special files, to linking', () => {
    const src = path.join(tmp, 'src');
    mkdirSync(src);
    fill(src, 300);
    expect(smallCopy(src)).toBeUndefined();
    const big = path.join(tmp, 'big');
    mkdirSync(big);
    writeFileSync(path.join(big, 'f'), Buffer.alloc(5 << 20));
    expect(smallCopy(big)).toBeUndefined();
    const fifo = path.join(tmp, 'fifo');
    mkdirSync(fifo);
    execFileSync('mkfifo', [path.join(fifo, 'p')]);
    expect(smallCopy(fifo)).toBeUndefined();
  });
});

describe('treeUsage', () => {
  it('counts each inode once, as du does', async () => {
    const root = path.join(tmp, 'u');
    mkdirSync(root);
    fill(root);
    const u = await treeUsage(root);
    // 3 directories (root, d, d/e), 200 files, deep (linked twice), one symlink.
    expect(u.inodes).toBe(3 + 200 + 1 + 1);
    const duBytes = Number(execFileSync('du', ['-s', '-B1', root], { encoding: 'utf8' }).split('\t')[0]);
    expect(u.size).toBe(duBytes);
  });
});
