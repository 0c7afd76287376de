import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { copyPath, fastCopyDir, type CopyInfo } from '../../../../src/ops/file/copy.js';
import { chownerFor } from '../../../../src/ops/file/fs-util.js';
import { PatternMatcher } from '../../../../src/util/patterns.js';
import { listXattrs, setTimes, setXattrs } from '../../../../src/snapshot/layer/sys-ops.js';

// The one-process copy (cp -a) must leave exactly what the per-entry Copier leaves. Each case runs
// both (keepOwners false forces the Copier with the same owner rule) and compares every detail.

const IS_ROOT = process.getuid?.() === 0;
let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-fastcopy-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

function info(over: Partial<CopyInfo> = {}): CopyInfo {
  return { chown: chownerFor(null), utime: null, mode: null, copyDirContents: false, followLinks: true, include: null, exclude: null, ...over };
}

async function sourceTree(root: string): Promise<void> {
  const w = (p: string, data: string) => {
    mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    writeFileSync(path.join(root, p), data);
  };
  w('src/a/b/deep.txt', 'deep\n');
  w('src/a/mode600', 'private');
  chmodSync(path.join(root, 'src/a/mode600'), 0o600);
  w('src/suid', '#!/bin/sh\n');
  chmodSync(path.join(root, 'src/suid'), 0o4755);
  w('src/orig', 'linked');
  linkSync(path.join(root, 'src/orig'), path.join(root, 'src/a/hard'));
  symlinkSync('a/b/deep.txt', path.join(root, 'src/rel-link'));
  symlinkSync('/nowhere', path.join(root, 'src/dangling'));
  mkdirSync(path.join(root, 'src/empty'));
  chmodSync(path.join(root, 'src/empty'), 0o700);
  mkdirSync(path.join(root, 'src/sticky'));
  chmodSync(path.join(root, 'src/sticky'), 0o1777);
  execFileSync('mkfifo', [path.join(root, 'src/fifo')]);
  if (IS_ROOT) {
    chownSync(path.join(root, 'src/a/mode600'), 1234, 5678);
    chownSync(path.join(root, 'src/a'), 42, 43);
    execFileSync('mknod', [path.join(root, 'src/nulldev'), 'c', '1', '3']);
  }
  await setXattrs([{ path: path.join(root, 'src/a/b/deep.txt'), name: 'user.loom', value: Buffer.from('kept') }]);
  // Odd nanoseconds everywhere, directories last (their children moved their mtimes).
  const times = ['src/a/b/deep.txt', 'src/orig', 'src/suid', 'src/rel-link', 'src/a/b', 'src/a', 'src/empty', 'src/sticky', 'src'];
  await setTimes(times.map((p, i) => ({ path: path.join(root, p), atimeNs: 1_600_000_000_123_456_789n + BigInt(i), mtimeNs: 1_500_000_000_987_654_321n + BigInt(i) })));
}

/** Every detail of a tree except atimes (reading the source moves them): sorted entries. */
async function listing(root: string): Promise<unknown[]> {
  const out: unknown[] = [];
  const inodes = new Map<string, string>();
  const visit = async (rel: string): Promise<void> => {
    const p = rel === '' ? root : path.join(root, rel);
    const st = await lstat(p, { bigint: true });
    const e: Record<string, unknown> = { path: rel || '.', mode: st.mode.toString(8), uid: st.uid, gid: st.gid, mtimeNs: st.mtimeNs };
    if (st.isFile()) {
      e.sha = createHash('sha256').update(readFileSync(p)).digest('hex');
      const key = `${st.ino}`;
      if (st.nlink > 1n) e.linkedTo = inodes.get(key) ?? (inodes.set(key, rel), rel);
    }
    if (st.isSymbolicLink()) e.target = await readlink(p);
    if (st.isCharacterDevice()) e.rdev = st.rdev;
    if (!st.isSymbolicLink()) e.xattrs = Object.fromEntries([...(await listXattrs([p]))[0]!].filter(([k]) => k.startsWith('user.')).map(([k, v]) => [k, v.toString()]));
    out.push(e);
    if (st.isDirectory()) for (const n of (await readdir(p)).sort()) await visit(rel === '' ? n : `${rel}/${n}`);
  };
  await visit('');
  return out;
}

/** `now`: directories created by the copy around the tree (their mtime is the time of the copy). */
async function both(
  src: string,
  dst: string,
  over: Partial<CopyInfo>,
  prepare?: (dstRoot: string) => void,
  now: string[] = [],
): Promise<[unknown[], unknown[]]> {
  const fast = path.join(tmp, 'fast');
  const slow = path.join(tmp, 'slow');
  for (const d of [fast, slow]) {
    mkdirSync(d);
    prepare?.(d);
  }
  await copyPath(path.join(tmp, 'in'), src, fast, dst, info({ ...over, keepOwners: true }));
  await copyPath(path.join(tmp, 'in'), src, slow, dst, info({ ...over, keepOwners: false }));
  const strip = (l: unknown[]) => l.map((e) => (['.', ...now].includes((e as { path: string }).path) ? { ...(e as object), mtimeNs: 'now' } : e));
  return [strip(await listing(fast)), strip(await listing(slow))];
}

/** Whether the one-process path takes a copy of `src` to host path `target` (made fresh). */
async function takesFastPath(src: string, target: string, over: Partial<CopyInfo> = {}): Promise<boolean> {
  return fastCopyDir(path.join(tmp, 'in', src), path.join(tmp, target), info({ keepOwners: true, ...over }));
}

describe('copy: the one-process path for whole directories', () => {
  it('is taken only without owner, mode, time or pattern changes, for a directory to a fresh place', async () => {
    await sourceTree(path.join(tmp, 'in'));
    expect(await takesFastPath('src/a/b/deep.txt', 'f1')).toBe(false);
    expect(await takesFastPath('src', 'f2', { keepOwners: false })).toBe(false);
    expect(await takesFastPath('src', 'f3', { mode: 0o700 })).toBe(false);
    expect(await takesFastPath('src', 'f4', { utime: 1n })).toBe(false);
    mkdirSync(path.join(tmp, 'full/x'), { recursive: true });
    expect(await takesFastPath('src', 'full')).toBe(false);
    expect(await takesFastPath('src', 'fresh')).toBe(true);
    expect((await listing(path.join(tmp, 'fresh'))).length).toBe((await listing(path.join(tmp, 'in/src'))).length);
    mkdirSync(path.join(tmp, 'empty'));
    expect(await takesFastPath('src', 'empty')).toBe(true);
  });

  it('a directory\'s contents into a new destination (COPY dir/ /app/): same tree as the per-entry copy', async () => {
    await sourceTree(path.join(tmp, 'in'));
    const [fast, slow] = await both('/src', '/app/', { copyDirContents: true });
    expect(fast).toEqual(slow);
    // The root of a copy is created 0755 with the source directory's mtime.
    expect(fast.find((e) => (e as { path: string }).path === 'app')).toMatchObject({ mode: '40755', mtimeNs: 1_500_000_000_987_654_329n });
    expect(fast.find((e) => (e as { path: string }).path === 'app/a/b/deep.txt')).toMatchObject({ xattrs: { 'user.loom': 'kept' } });
  });

  it('a directory as a new directory (COPY --from=x /src /out/src): same tree', async () => {
    await sourceTree(path.join(tmp, 'in'));
    const [fast, slow] = await both('/src/a', '/out/src', {}, undefined, ['out']);
    expect(fast).toEqual(slow);
    if (IS_ROOT) expect(fast.find((e) => (e as { path: string }).path === 'out/src')).toMatchObject({ uid: 42n, gid: 43n });
  });

  it('into an existing empty directory, which keeps its mode and owner and takes the source\'s times', async () => {
    await sourceTree(path.join(tmp, 'in'));
    const [fast, slow] = await both('/src', '/existing', { copyDirContents: true }, (d) => {
      mkdirSync(path.join(d, 'existing'));
      chmodSync(path.join(d, 'existing'), 0o711);
    });
    expect(fast).toEqual(slow);
    expect(fast.find((e) => (e as { path: string }).path === 'existing')).toMatchObject({ mode: '40711', mtimeNs: 1_500_000_000_987_654_329n });
  });

  it('into a non-empty directory, and a tree holding a socket, give the per-entry result', async () => {
    await sourceTree(path.join(tmp, 'in'));
    const sock = path.join(tmp, 'in/src/a/b/sock');
    const server = createServer();
    await new Promise<void>((r) => server.listen(sock, () => r()));
    try {
      const [fast, slow] = await both('/src', '/full', { copyDirContents: true }, (d) => {
        mkdirSync(path.join(d, 'full/a'), { recursive: true });
        writeFileSync(path.join(d, 'full/suid'), 'replaced');
      });
      expect(fast).toEqual(slow);
      // A socket becomes an empty regular file, as upstream's copy makes it.
      expect(fast.find((e) => (e as { path: string }).path === 'full/a/b/sock')).toMatchObject({ mode: expect.stringMatching(/^100/) });
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('copy: include patterns (COPY --parents)', () => {
  it('a directory made only because something below it matched gets the copy\'s time as mtime, as upstream\'s; a matched one keeps the source\'s', async () => {
    await sourceTree(path.join(tmp, 'in'));
    const before = BigInt(Date.now() - 1000) * 1_000_000n;
    const dst = path.join(tmp, 'dst');
    mkdirSync(dst);
    await copyPath(path.join(tmp, 'in'), '/src', dst, '/out/', info({ copyDirContents: true, include: new PatternMatcher(['a/b/*.txt', 'empty']) }));
    const l = (await listing(dst)) as { path: string; mode: string; mtimeNs: bigint }[];
    expect(l.map((e) => e.path)).toEqual(['.', 'out', 'out/a', 'out/a/b', 'out/a/b/deep.txt', 'out/empty']);
    const at = (p: string) => l.find((e) => e.path === p)!;
    // Parents made for the match: the source's mode (and owner), the time of the copy.
    for (const p of ['out/a', 'out/a/b']) {
      expect(at(p).mode).toBe('40755');
      expect(at(p).mtimeNs).toBeGreaterThan(before);
    }
    if (IS_ROOT) expect(at('out/a')).toMatchObject({ uid: 42n, gid: 43n });
    // What matched keeps the source's times, directories included.
    expect(at('out/a/b/deep.txt').mtimeNs).toBe(1_500_000_000_987_654_321n);
    expect(at('out/empty')).toMatchObject({ mode: '40700', mtimeNs: 1_500_000_000_987_654_327n });
  });
});
