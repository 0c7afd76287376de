import { chmod, lstat, mkdir, mkdtemp, open, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, readFileSync, rmSync, writeFileSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { setTimes } from '../../../src/snapshot/layer/sys-ops.js';
import { contentDigestCounts, FileDigestCache, fileDigest, KnownStats, linkDigests, treeDigest, treeDigests } from '../../../src/cache/content-hash.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tree(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'loom-hash-'));
  dirs.push(d);
  await mkdir(join(d, 'a/b'), { recursive: true });
  for (let i = 0; i < 150; i++) await writeFile(join(d, 'a', `f${i}`), `file ${i}\n`);
  await writeFile(join(d, 'a/b/deep'), 'deep');
  await writeFile(join(d, 'a.txt'), 'sorts after the a dir');
  await symlink('a/b/deep', join(d, 'link'));
  return d;
}

describe('treeDigest', () => {
  test('is the same with and without a cache, and for an identical copy of the tree', async () => {
    const t1 = await tree();
    const t2 = await tree();
    const cache = new FileDigestCache();
    const plain = await treeDigest(t1);
    expect(plain).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await treeDigest(t1, { cache })).toBe(plain);
    expect(await treeDigest(t1, { cache })).toBe(plain);
    expect(await treeDigest(t2)).toBe(plain);
    expect(cache.size).toBe(152);
  });

  test('content, mode and link targets count; times do not', async () => {
    const t = await tree();
    const d0 = await treeDigest(t);
    await utimes(join(t, 'a/f1'), new Date(0), new Date(0));
    expect(await treeDigest(t)).toBe(d0);
    await chmod(join(t, 'a/f1'), 0o600);
    const d1 = await treeDigest(t);
    expect(d1).not.toBe(d0);
    await rm(join(t, 'link'));
    await symlink('a/f1', join(t, 'link'));
    expect(await treeDigest(t)).not.toBe(d1);
  });

  test('with a cache, a file replaced by a new inode is read again, even with the same size and mtime', async () => {
    const t = await tree();
    const cache = new FileDigestCache();
    const d0 = await treeDigest(t, { cache });
    // The receiver's way: the new content is written beside the old and renamed over it.
    const f = join(t, 'a/f7');
    const tmp = `${t}.tmp`;
    dirs.push(tmp);
    await writeFile(tmp, 'FILE 7\n');
    const when = new Date('2021-05-06T07:08:09Z');
    await utimes(tmp, when, when);
    await utimes(f, when, when);
    const d1 = await treeDigest(t, { cache });
    expect(d1).toBe(d0);
    await rename(tmp, f);
    const d2 = await treeDigest(t, { cache });
    expect(d2).not.toBe(d0);
    expect(d2).toBe(await treeDigest(t));
  });

  test('a forgotten path is read again; cached files are not', async () => {
    const t = await tree();
    const cache = new FileDigestCache();
    await treeDigest(t, { cache });
    const st = { ino: 0n, size: 0n, mtimeNs: 0n };
    expect(cache.get(join(t, 'a/f3'), st as never)).toBeUndefined();
    cache.forget(join(t, 'a'));
    expect(cache.size).toBe(1); // a.txt: a sibling, not below a/
    await treeDigest(t, { cache });
    expect(cache.size).toBe(152);
    const spy = vi.spyOn(cache, 'set');
    await treeDigest(t, { cache });
    expect(spy).not.toHaveBeenCalled();
    cache.forget(join(t, 'a/b/deep'));
    await treeDigest(t, { cache });
    expect(spy).toHaveBeenCalledTimes(1);
    expect(spy.mock.calls[0]![0]).toBe(join(t, 'a/b/deep'));
  });

  test('files unchanged since an earlier digest are not read again; a change in place is seen', async () => {
    const t = await tree();
    const d0 = await treeDigest(t);
    // Entries are only kept for files whose ctime is older than a second (racy-git guard).
    await new Promise((r) => setTimeout(r, 1100));
    await treeDigest(t);
    const before = contentDigestCounts();
    expect(await treeDigest(t)).toBe(d0);
    const after = contentDigestCounts();
    expect(after.reads).toBe(before.reads);
    expect(after.hits - before.hits).toBe(152);
    // Same size, same mtime, same inode, new bytes: only the ctime tells.
    const f = join(t, 'a/f9');
    const { atimeNs, mtimeNs, size } = await lstat(f, { bigint: true });
    const fh = await open(f, 'r+');
    await fh.write('F');
    await fh.close();
    await setTimes([{ path: f, atimeNs, mtimeNs }]);
    expect((await lstat(f, { bigint: true })).mtimeNs).toBe(mtimeNs);
    expect((await lstat(f, { bigint: true })).size).toBe(size);
    const d1 = await treeDigest(t);
    expect(d1).not.toBe(d0);
    expect(contentDigestCounts().reads - after.reads).toBe(1);
    expect(await fileDigest(f)).toBe(await fileDigest(f));
  });

  test('with known stats (what a receiver knows of the tree it wrote) digests as the walk does, and so does a linked copy, also below its root, after the mirror changed', async () => {
    const t = await tree();
    const stats = (root: string) => {
      const m = new Map<string, BigIntStats>();
      for (const rel of execFileSync('find', ['.', '-mindepth', '1'], { cwd: root, encoding: 'utf8' }).trim().split('\n')) {
        m.set(rel.slice(2), lstatSync(join(root, rel), { bigint: true }));
      }
      return m;
    };
    const walked = await treeDigests(t);
    const map = stats(t);
    const known = new KnownStats(map);
    map.clear(); // copied: the receiver's next transfer changes its own map
    expect(await treeDigests(t, { known })).toEqual(walked);
    const sub = await treeDigest(join(t, 'a'));

    const copy = `${t}.links`;
    dirs.push(copy);
    execFileSync('cp', ['-a', '--link', '--no-target-directory', t, copy]);
    linkDigests(copy, t, new FileDigestCache(), known);
    // The mirror changes afterwards (a file added, one removed): the linked copy is as it was.
    await writeFile(join(t, 'a', 'new'), 'new');
    // The stats stand for the tree (no walk): they say what it held, not what it holds now.
    expect(await treeDigests(t, { known: new KnownStats(stats(copy)) })).toEqual(walked);
    expect((await treeDigests(t)).content).not.toBe(walked.content);
    await rm(join(t, 'a', 'f7'));
    expect(await treeDigest(copy)).toBe(walked.content);
    expect(await treeDigest(join(copy, 'a'))).toBe(sub);
    expect(await treeDigest(join(copy, 'a'))).not.toBe(await treeDigest(join(t, 'a')));
  });

  test('linkDigests: a hard-linked copy of a digested tree is digested without reading its files, and a file the mirror replaced since is read', async () => {
    const t = await tree();
    const cache = new FileDigestCache();
    const d0 = await treeDigest(t, { cache });
    const copy = `${t}.links`;
    dirs.push(copy);
    execFileSync('cp', ['-a', '--link', '--no-target-directory', t, copy]);
    linkDigests(copy, t, cache);
    const [file] = execFileSync('find', [t, '-type', 'f'], { encoding: 'utf8' }).trim().split('\n').sort();
    const rel = file!.slice(t.length);
    const fileD = createHash('sha256').update(readFileSync(file!)).digest('hex');
    const before = contentDigestCounts();
    expect(await treeDigest(copy)).toBe(d0);
    expect(await fileDigest(copy + rel)).toBe(fileD);
    expect(contentDigestCounts().reads).toBe(before.reads);

    // The mirror's writer puts a changed file in a new inode and tells the cache; the copy keeps
    // the old inode, which is now unknown to the cache: it is read, and its digest is its own.
    const old = readFileSync(file!);
    rmSync(file!);
    writeFileSync(file!, Buffer.concat([old, Buffer.from('more')]));
    cache.forget(file!);
    cache.set(file!, await lstat(file!, { bigint: true }), 'not the copy digest');
    expect(await treeDigest(copy)).toBe(d0);
    expect(contentDigestCounts().reads).toBeGreaterThan(before.reads);
  });

  test('an abort stops the walk', async () => {
    const t = await tree();
    const ac = new AbortController();
    ac.abort();
    await expect(treeDigest(t, { signal: ac.signal })).rejects.toThrow();
  });
});

describe('FileDigestCache.forget', () => {
  const st = (ino: number) => ({ ino: BigInt(ino), size: 1n, mtimeNs: 1n }) as unknown as import('node:fs').BigIntStats;

  test('a file drops only itself; a directory drops everything below it', () => {
    const c = new FileDigestCache();
    c.set('/m/a/f1', st(1), 'd1');
    c.set('/m/a/f2', st(2), 'd2');
    c.set('/m/a/b/f3', st(3), 'd3');
    c.set('/m/ab', st(4), 'd4');
    c.forget('/m/a/f1');
    expect(c.get('/m/a/f1', st(1))).toBeUndefined();
    expect(c.get('/m/a/f2', st(2))).toBe('d2');
    c.forget('/m/a/');
    expect(c.get('/m/a/f2', st(2))).toBeUndefined();
    expect(c.get('/m/a/b/f3', st(3))).toBeUndefined();
    // A sibling whose name merely starts the same is kept.
    expect(c.get('/m/ab', st(4))).toBe('d4');
    expect(c.size).toBe(1);
  });

  test('a directory forgotten, then filled again, is forgotten again as a whole', () => {
    const c = new FileDigestCache();
    c.set('/m/a/f1', st(1), 'd1');
    c.forget('/m/a');
    c.set('/m/a/f1', st(5), 'd5');
    c.set('/m/a/x/y', st(6), 'd6');
    c.forget('/m/a');
    expect(c.size).toBe(0);
  });
});
