import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { dedupePaths, followLinks, walkDir, type WalkOptions } from '../../../../src/session/filesync/walker.js';
import { comparePath } from '../../../../src/session/filesync/validate.js';
import { removeDirs, tempDir } from './tree-helpers.js';

const dirs: string[] = [];
afterEach(() => removeDirs(dirs));

async function tree(): Promise<string> {
  const d = await tempDir();
  dirs.push(d);
  await mkdir(join(d, 'a/b'), { recursive: true });
  await mkdir(join(d, 'a-b'));
  await mkdir(join(d, 'lib/x'), { recursive: true });
  await writeFile(join(d, 'a/b/f'), '');
  await writeFile(join(d, 'a.txt'), '');
  await writeFile(join(d, 'a-b/x'), '');
  await writeFile(join(d, 'lib/x/y'), '');
  await writeFile(join(d, '\uffff'), '');
  await writeFile(join(d, '\u{1F600}'), '');
  await symlink('lib/x', join(d, 'l'));
  return d;
}

async function paths(root: string, opts?: WalkOptions): Promise<string[]> {
  const out: string[] = [];
  for await (const e of walkDir(root, opts)) out.push(e.stat.path);
  return out;
}

describe('walkDir', () => {
  test('lexical by UTF-8 bytes per directory, a directory right before its entries', async () => {
    // Checked against fsutil.Walk: "a" and its entries come before "a-b" and "a.txt".
    expect(await paths(await tree())).toEqual(['a', 'a/b', 'a/b/f', 'a-b', 'a-b/x', 'a.txt', 'l', 'lib', 'lib/x', 'lib/x/y', '\uffff', '\u{1F600}']);
  });

  test('refuses a name or link target that is not UTF-8 instead of leaving it out', async () => {
    const root = await tempDir();
    dirs.push(root);
    await writeFile(join(root, 'ok'), '');
    await mkdir(join(root, 'sub'));
    writeFileSync(Buffer.concat([Buffer.from(`${root}/sub/caf`), Buffer.from([0xe9])]), 'x');
    await expect(paths(root)).rejects.toThrow('file name "sub/caf\\xe9" is not valid UTF-8');
    const root2 = await tempDir();
    dirs.push(root2);
    symlinkSync(Buffer.from([0x74, 0xe9]), join(root2, 'lnk'));
    await expect(paths(root2)).rejects.toThrow('symlink "lnk" has a target that is not valid UTF-8: "t\\xe9"');
  });

  test('the listing is in the order the receiver checks', async () => {
    const p = await paths(await tree());
    for (let i = 1; i < p.length; i++) expect(comparePath(p[i - 1]!, p[i]!)).toBeLessThan(0);
  });

  test('include patterns bring in parents lazily; excluded dirs with exceptions are descended', async () => {
    const root = await tree();
    expect(await paths(root, { includePatterns: ['lib/**'] })).toEqual(['lib', 'lib/x', 'lib/x/y']);
    expect(await paths(root, { excludePatterns: ['lib', '!lib/x/y'] })).toContain('lib/x/y');
    expect(await paths(root, { excludePatterns: ['*', '!a/b'] })).toEqual(['a', 'a/b', 'a/b/f']);
    // Parents left out are listed once, just before their first kept entry, after kept siblings
    // (files and directories) and after leaving a directory whose entries were kept.
    expect(await paths(root, { includePatterns: ['a.txt', 'lib/x/y'] })).toEqual(['a.txt', 'lib', 'lib/x', 'lib/x/y']);
    expect(await paths(root, { includePatterns: ['a/b', 'a-b/x', 'lib/x/y'] })).toEqual(['a', 'a/b', 'a/b/f', 'a-b', 'a-b/x', 'lib', 'lib/x', 'lib/x/y']);
    expect(await paths(root, { includePatterns: ['a/b/f', 'a-b', 'lib/x'] })).toEqual(['a', 'a/b', 'a/b/f', 'a-b', 'a-b/x', 'lib', 'lib/x', 'lib/x/y']);
  });

  test('followPaths adds the symlink target', async () => {
    const root = await tree();
    expect(await paths(root, { followPaths: ['l'] })).toEqual(['l', 'lib', 'lib/x', 'lib/x/y']);
    expect(await followLinks(root, ['l/y', 'a.txt'])).toEqual(['a.txt', 'l', 'lib/x/y']);
    expect(await followLinks(root, ['.'])).toBeUndefined();
  });

  test('symlinks carry their target, hard links the first path', async () => {
    const root = await tree();
    const stats = [];
    for await (const e of walkDir(root)) stats.push(e.stat);
    expect(stats.find((s) => s.path === 'l')?.linkname).toBe('lib/x');
  });

  test('a root that is a file is refused', async () => {
    const root = await tree();
    await expect(paths(join(root, 'a.txt'))).rejects.toThrow(/not a directory/);
  });

  test('dedupePaths', () => {
    expect(dedupePaths(['a', 'a/b', 'b'])).toEqual(['a', 'b']);
    expect(dedupePaths(['a', '.'])).toBeUndefined();
  });
});
