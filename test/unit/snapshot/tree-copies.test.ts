import { execFileSync } from 'node:child_process';
import { chmodSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { linkTree, treeUsage } from '../../../src/snapshot/native/native-snapshotter.js';

let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-treecopy-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

function fill(root: string): void {
  mkdirSync(path.join(root, 'd/e'), { recursive: true });
  for (let i = 0; i < 200; i++) writeFileSync(path.join(root, 'd', `f${i}`), `file ${i}\n`.repeat(i));
  writeFileSync(path.join(root, 'd/e/deep'), 'deep');
  linkSync(path.join(root, 'd/e/deep'), path.join(root, 'hard'));
  symlinkSync('d/e/deep', path.join(root, 'link'));
  chmodSync(path.join(root, 'd/e'), 0o701);
}

describe('linkTree', () => {
  it('makes new directories with the same metadata and hard links to every other entry', async () => {
    const src = path.join(tmp, 'src');
    const dst = path.join(tmp, 'dst');
    mkdirSync(src);
    mkdirSync(dst);
    fill(src);
    execFileSync('touch', ['-d', '2001-02-03 04:05:06.123456789', path.join(src, 'd/e')]);
    await linkTree(src, dst);
    for (const p of ['d/f7', 'd/e/deep', 'hard', 'link']) expect(lstatSync(path.join(dst, p)).ino).toBe(lstatSync(path.join(src, p)).ino);
    const se = lstatSync(path.join(src, 'd/e'), { bigint: true });
    const de = lstatSync(path.join(dst, 'd/e'), { bigint: true });
    expect(de.ino).not.toBe(se.ino);
    expect([de.mode, de.mtimeNs]).toEqual([se.mode, se.mtimeNs]);
    expect(readFileSync(path.join(dst, 'd/f3'), 'utf8')).toBe('file 3\n'.repeat(3));
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
