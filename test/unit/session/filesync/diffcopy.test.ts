import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, open, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { create, toBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { afterEach, describe, expect, test } from 'vitest';
import { StatSchema, type Stat } from '../../../../src/gen/fsutil/stat_pb.js';
import { PacketSchema, Packet_PacketType, type Packet } from '../../../../src/gen/fsutil/wire_pb.js';
import { GoMode } from '../../../../src/session/filesync/mode.js';
import { receiveDir, type KnownTree, type ReceiveDirOptions } from '../../../../src/session/filesync/receive.js';
import { sendDir, type SendDirOptions } from '../../../../src/session/filesync/send.js';
import { streamPair } from '../../../helpers/stream-pair.js';
import { removeDirs, snapshotTree, tempDir } from './tree-helpers.js';

const isRoot = process.getuid?.() === 0;
const dirs: string[] = [];
afterEach(() => removeDirs(dirs));

async function tmp(): Promise<string> {
  const d = await tempDir();
  dirs.push(d);
  return d;
}

async function transfer(
  src: string,
  dest: string,
  send?: Partial<SendDirOptions>,
  recv?: Partial<ReceiveDirOptions>,
  highWater = 4,
) {
  const { a, b } = streamPair<Packet, Packet>({ highWater });
  const [s, r] = await Promise.all([sendDir(a, { root: src, ...send }), receiveDir(b, { dest, xattrs: false, ...recv })]);
  return { s, r };
}

describe('sendDir -> receiveDir', () => {
  test('reproduces a tree: nested and empty dirs, symlinks, hard links, modes, times, unicode', async () => {
    const src = await tmp();
    const dest = await tmp();
    await mkdir(join(src, 'a/b/c'), { recursive: true });
    await mkdir(join(src, 'empty'));
    await writeFile(join(src, 'a/b/c/deep.txt'), 'deep\n');
    await writeFile(join(src, 'a.txt'), 'sibling sorts after the a dir\n');
    await writeFile(join(src, 'zero'), '');
    await writeFile(join(src, 'héllo wörld ☃ 🎉.txt'), 'unicode\n');
    await writeFile(join(src, 'exec.sh'), '#!/bin/sh\n');
    await chmod(join(src, 'exec.sh'), 0o755);
    await writeFile(join(src, 'suid'), 'x');
    await chmod(join(src, 'suid'), 0o4755);
    await writeFile(join(src, 'sgid'), 'x');
    await chmod(join(src, 'sgid'), 0o2711);
    await mkdir(join(src, 'sticky'));
    await chmod(join(src, 'sticky'), 0o1777);
    await mkdir(join(src, 'readonly-dir'));
    await writeFile(join(src, 'readonly-dir/inside'), 'in a read-only dir\n');
    await chmod(join(src, 'readonly-dir'), 0o555);
    await writeFile(join(src, 'readonly-file'), 'ro');
    await chmod(join(src, 'readonly-file'), 0o400);
    await symlink('a/b/c/deep.txt', join(src, 'rel-link'));
    await symlink('/etc/passwd', join(src, 'abs-link'));
    await symlink('does/not/exist', join(src, 'dangling'));
    await symlink('a', join(src, 'dir-link'));
    await writeFile(join(src, 'a/orig'), 'shared inode\n');
    await link(join(src, 'a/orig'), join(src, 'hard1'));
    await link(join(src, 'a/orig'), join(src, 'a/b/hard2'));
    await utimes(join(src, 'a.txt'), new Date('2001-02-03T04:05:06.789Z'), new Date('2001-02-03T04:05:06.789Z'));
    if (isRoot) {
      await chown(join(src, 'a.txt'), 1234, 5678);
      await chown(join(src, 'a/b'), 42, 43);
      execFileSync('mkfifo', [join(src, 'fifo')]);
      execFileSync('mknod', [join(src, 'nulldev'), 'c', '1', '3']);
    }

    const { s, r } = await transfer(src, dest);
    const want = await snapshotTree(src, { dirTimes: true });
    const got = await snapshotTree(dest, { dirTimes: true });
    expect(got).toEqual(want);
    expect(want.find((e) => e.path === 'suid')?.perm).toBe('4755');
    expect(want.find((e) => e.path === 'sticky')?.perm).toBe('1777');
    expect(got.find((e) => e.path === 'hard1')?.links).toEqual(['a/b/hard2', 'a/orig', 'hard1']);
    if (isRoot) {
      expect(got.find((e) => e.path === 'a.txt')).toMatchObject({ uid: 1234, gid: 5678 });
      expect(got.find((e) => e.path === 'fifo')?.type).toBe('fifo');
      expect(got.find((e) => e.path === 'nulldev')).toMatchObject({ type: 'char', rdev: want.find((e) => e.path === 'nulldev')!.rdev });
    }
    expect(r.entries).toBe(want.length);
    expect(s.entries).toBe(want.length);
    // Regular files not hard-linked to an earlier one: their contents went over the wire.
    expect(r.files).toBe(s.files);
    expect(r.bytes).toBe(s.bytes);
  });

  test('a resend of hard links into the tree they already arrived in leaves no temporary names', async () => {
    // rename(2) of a name over another link to the same file does nothing and keeps both names:
    // a second build's sync of a context holding hard links left .tmp.loom-* files in the
    // mirror, and COPY . took them into the image.
    const src = await tmp();
    const dest = await tmp();
    await mkdir(join(src, 'sub'));
    await writeFile(join(src, 'a.txt'), 'shared\n');
    await link(join(src, 'a.txt'), join(src, 'b.txt'));
    await link(join(src, 'a.txt'), join(src, 'sub/c.txt'));
    await transfer(src, dest);
    await transfer(src, dest);
    const got = await snapshotTree(dest, { dirTimes: true });
    expect(got.map((e) => e.path).sort()).toEqual(['a.txt', 'b.txt', 'sub', 'sub/c.txt']);
    expect(got.find((e) => e.path === 'a.txt')?.links).toEqual(['a.txt', 'b.txt', 'sub/c.txt']);
    // And a link that moves to another file on the resend.
    await writeFile(join(src, 'other.txt'), 'other\n');
    await rm(join(src, 'b.txt'));
    await link(join(src, 'other.txt'), join(src, 'b.txt'));
    await transfer(src, dest);
    const again = await snapshotTree(dest, { dirTimes: true });
    expect(again.map((e) => e.path).sort()).toEqual(['a.txt', 'b.txt', 'other.txt', 'sub', 'sub/c.txt']);
    expect(await readFile(join(dest, 'b.txt'), 'utf8')).toBe('other\n');
  });

  test('big files go as many 32 KiB DATA packets and arrive intact', async () => {
    const src = await tmp();
    const dest = await tmp();
    const big = randomBytes(5 * 1024 * 1024 + 123);
    await writeFile(join(src, 'big.bin'), big);
    await writeFile(join(src, 'big2.bin'), randomBytes(3 * 1024 * 1024));
    const { a, b } = streamPair<Packet, Packet>({ highWater: 2 });
    const seen: Packet[] = [];
    const tap = {
      ...b,
      recv: async function* () {
        for await (const p of b.recv()) {
          if (p.type === Packet_PacketType.PACKET_DATA) seen.push(p);
          yield p;
        }
      },
    };
    let progress = 0;
    let done = false;
    const [, r] = await Promise.all([
      sendDir(a, { root: src }),
      receiveDir(tap, { dest, xattrs: false, onProgress: (n, d) => ((progress = n), (done = d)) }),
    ]);
    expect(Buffer.compare(await readFile(join(dest, 'big.bin')), big)).toBe(0);
    expect(r.bytes).toBe(big.length + 3 * 1024 * 1024);
    expect(Math.max(...seen.map((p) => p.data.length))).toBe(32 * 1024);
    // Two files: each ends with one empty DATA.
    expect(seen.filter((p) => p.data.length === 0)).toHaveLength(2);
    expect(progress).toBeGreaterThan(r.bytes);
    expect(done).toBe(true);
  });

  test("the sender's progress counts each entry's STAT and the DATA that carries bytes, as upstream's (a file's closing empty DATA is not counted)", async () => {
    const src = await tmp();
    const dest = await tmp();
    await writeFile(join(src, 'a.txt'), 'a\n');
    await mkdir(join(src, 'd'));
    await writeFile(join(src, 'd', 'big.bin'), randomBytes(100 * 1024));
    await writeFile(join(src, 'd', 'empty'), '');
    const { a, b } = streamPair<Packet, Packet>({ highWater: 4 });
    const sent: Packet[] = [];
    const tap = {
      ...a,
      send: (p: Packet) => (sent.push(p), a.send(p)),
      sendMany: async (ps: readonly Packet[]) => {
        for (const p of ps) await tap.send(p);
      },
    };
    let progress = 0;
    let last = false;
    await Promise.all([sendDir(tap, { root: src, onProgress: (n, done) => ((progress = n), (last = done)) }), receiveDir(b, { dest, xattrs: false })]);
    const counted = sent.filter((p) => (p.type === Packet_PacketType.PACKET_STAT && p.stat) || (p.type === Packet_PacketType.PACKET_DATA && p.data.length > 0));
    expect(counted.filter((p) => p.type === Packet_PacketType.PACKET_STAT)).toHaveLength(4);
    expect(progress).toBe(counted.reduce((n, p) => n + toBinary(PacketSchema, p).length, 0));
    expect(last).toBe(true);
  });

  test('hundreds of files (more than are created ahead of their data) arrive intact, each with the digest of its bytes', async () => {
    const src = await tmp();
    const dest = await tmp();
    const files = new Map<string, Buffer>();
    for (let d = 0; d < 5; d++) {
      await mkdir(join(src, `d${d}`));
      for (let f = 0; f < 60; f++) {
        // Empty, small and multi-packet (over 32 KiB) files.
        const data = f % 20 === 0 ? Buffer.alloc(0) : f % 20 === 1 ? randomBytes(70 * 1024) : Buffer.from(`file ${d}/${f}\n`);
        files.set(`d${d}/f${f}`, data);
        await writeFile(join(src, `d${d}`, `f${f}`), data);
      }
    }
    await symlink('d0/f1', join(src, 'link'));
    const digests = new Map<string, string>();
    const { r } = await transfer(src, dest, {}, { onFileDigest: (abs, hex) => digests.set(abs, hex) }, 2);
    expect(r.files).toBe(files.size);
    for (const [rel, data] of files) {
      expect(Buffer.compare(await readFile(join(dest, rel)), data), rel).toBe(0);
      expect(digests.get(join(dest, rel)), rel).toBe(createHash('sha256').update(data).digest('hex'));
    }
    // Only regular files whose data was written here get a digest.
    expect(digests.size).toBe(files.size);
  });

  test('include and exclude patterns select what is sent, parents of included paths included', async () => {
    const src = await tmp();
    await mkdir(join(src, 'src/lib'), { recursive: true });
    await mkdir(join(src, 'node_modules/x'), { recursive: true });
    await mkdir(join(src, 'docs'), { recursive: true });
    await writeFile(join(src, 'src/main.go'), 'x');
    await writeFile(join(src, 'src/lib/a.go'), 'x');
    await writeFile(join(src, 'src/lib/a_test.go'), 'x');
    await writeFile(join(src, 'src/README.md'), 'x');
    await writeFile(join(src, 'node_modules/x/index.js'), 'x');
    await writeFile(join(src, 'docs/keep.md'), 'x');
    await writeFile(join(src, 'docs/drop.md'), 'x');
    await writeFile(join(src, 'Dockerfile'), 'x');

    const listed = async (send: Partial<SendDirOptions>): Promise<string[]> => {
      const dest = await tmp();
      await transfer(src, dest, send);
      return (await snapshotTree(dest)).map((e) => e.path);
    };
    expect(await listed({ excludePatterns: ['node_modules', '**/*_test.go', 'docs', '!docs/keep.md'] })).toEqual([
      'Dockerfile',
      'docs',
      'docs/keep.md',
      'src',
      'src/README.md',
      'src/lib',
      'src/lib/a.go',
      'src/main.go',
    ]);
    expect(await listed({ includePatterns: ['src/**/*.go'] })).toEqual(['src', 'src/lib', 'src/lib/a.go', 'src/lib/a_test.go', 'src/main.go']);
    expect(await listed({ includePatterns: ['src/lib'], excludePatterns: ['*/*/a_test.go'] })).toEqual(['src', 'src/lib', 'src/lib/a.go']);
    expect(await listed({ includePatterns: ['Dockerfile', 'docs/keep.md'] })).toEqual(['Dockerfile', 'docs', 'docs/keep.md']);
  });

  test('followPaths brings in symlink targets', async () => {
    const src = await tmp();
    await mkdir(join(src, 'real'), { recursive: true });
    await writeFile(join(src, 'real/Dockerfile'), 'FROM x');
    await writeFile(join(src, 'other'), 'x');
    await symlink('real/Dockerfile', join(src, 'Dockerfile'));
    const dest = await tmp();
    await transfer(src, dest, { followPaths: ['Dockerfile'] });
    expect((await snapshotTree(dest)).map((e) => `${e.path}:${e.type}`)).toEqual(['Dockerfile:symlink', 'real:dir', 'real/Dockerfile:file']);
  });

  test('a second transfer into the same dest sends only what changed and removes what is gone', async () => {
    const src = await tmp();
    const dest = await tmp();
    await mkdir(join(src, 'd/e'), { recursive: true });
    await writeFile(join(src, 'same.txt'), 'unchanged');
    await writeFile(join(src, 'changed.txt'), 'v1');
    await writeFile(join(src, 'gone.txt'), 'bye');
    await writeFile(join(src, 'd/e/gone-too'), 'bye');
    await writeFile(join(src, 'type-change'), 'file first');
    await transfer(src, dest);

    await writeFile(join(src, 'changed.txt'), 'version 2');
    await execFileSync('rm', ['-r', join(src, 'gone.txt'), join(src, 'd/e')]);
    await execFileSync('rm', [join(src, 'type-change')]);
    await mkdir(join(src, 'type-change'));
    await writeFile(join(src, 'type-change/inner'), 'now a dir');
    const changes: string[] = [];
    const { r } = await transfer(src, dest, {}, { onChange: (c) => changes.push(`${c.kind} ${c.path}`) });
    expect(await snapshotTree(dest, { dirTimes: true })).toEqual(await snapshotTree(src, { dirTimes: true }));
    expect(r.files).toBe(2); // changed.txt and type-change/inner
    expect(r.unchanged).toBeGreaterThanOrEqual(2); // same.txt, d
    expect(changes).toContain('delete gone.txt');
    expect(changes).toContain('delete d/e');
    expect(changes).toContain('modify changed.txt');
    expect(changes).toContain('modify type-change');
    expect(changes).not.toContain('modify same.txt');
  });

  test('differ none (the Dockerfile source) sends every file again, even one of the same size and mtime', async () => {
    const src = await tmp();
    const dest = await tmp();
    await writeFile(join(src, 'Dockerfile'), 'FROM a\nRUN one\n');
    const t = new Date('2020-01-02T03:04:05Z');
    await utimes(join(src, 'Dockerfile'), t, t);
    await transfer(src, dest);
    // Another file in the same place: same size, same mtime, other bytes.
    await writeFile(join(src, 'Dockerfile'), 'FROM a\nRUN two\n');
    await utimes(join(src, 'Dockerfile'), t, t);
    const same = await transfer(src, dest);
    expect(same.r.files).toBe(0); // metadata says unchanged: not sent (upstream's DiffMetadata too)
    expect(await readFile(join(dest, 'Dockerfile'), 'utf8')).toBe('FROM a\nRUN one\n');
    const none = await transfer(src, dest, {}, { differ: 'none' });
    expect(none.r.files).toBe(1);
    expect(await readFile(join(dest, 'Dockerfile'), 'utf8')).toBe('FROM a\nRUN two\n');
  });

  test("a resend compared against the last transfer's tree: the same result, the tree kept current, and a recreated dest not trusted", async () => {
    const src = await tmp();
    const dest = await tmp();
    await mkdir(join(src, 'd/e'), { recursive: true });
    await writeFile(join(src, 'same.txt'), 'unchanged');
    await writeFile(join(src, 'changed.txt'), 'v1');
    await writeFile(join(src, 'd/e/gone'), 'bye');
    await writeFile(join(src, 'd/kept'), 'k');
    await symlink('same.txt', join(src, 'link'));
    await link(join(src, 'd/kept'), join(src, 'hard'));
    // The tree reported must be what an lstat of every entry of dest finds.
    const fresh = async (): Promise<Record<string, string>> => {
      const out: Record<string, string> = {};
      const walk = async (rel: string): Promise<void> => {
        for (const n of await readdir(join(dest, rel))) {
          const p = rel ? `${rel}/${n}` : n;
          const st = await lstat(join(dest, p), { bigint: true });
          out[p] = `${st.ino} ${st.mode} ${st.uid}:${st.gid} ${st.size} ${st.mtimeNs}`;
          if (st.isDirectory()) await walk(p);
        }
      };
      await walk('');
      return out;
    };
    const describe = (t: KnownTree): Record<string, string> =>
      Object.fromEntries([...t.entries].map(([p, st]) => [p, `${st.ino} ${st.mode} ${st.uid}:${st.gid} ${st.size} ${st.mtimeNs}`]));
    let tree: KnownTree | undefined;
    const onTree = (t: KnownTree): void => void (tree = t);

    await transfer(src, dest, {}, { onTree });
    expect(describe(tree!)).toEqual(await fresh());

    await writeFile(join(src, 'changed.txt'), 'version 2');
    await rm(join(src, 'd/e'), { recursive: true });
    await writeFile(join(src, 'd/new'), 'n');
    const changes: string[] = [];
    let r = (await transfer(src, dest, {}, { known: tree, onTree, onChange: (c) => changes.push(`${c.kind} ${c.path}`) })).r;
    expect(await snapshotTree(dest, { dirTimes: true })).toEqual(await snapshotTree(src, { dirTimes: true }));
    expect(changes.sort()).toEqual(['add d/new', 'delete d/e', 'modify changed.txt', 'modify hard']);
    expect(r.files).toBe(2); // changed.txt, d/new (hard is linked)
    expect(describe(tree!)).toEqual(await fresh());

    // Nothing changed: nothing sent.
    r = (await transfer(src, dest, {}, { known: tree, onTree })).r;
    expect(r.files).toBe(0);
    expect(r.unchanged).toBe(r.entries - 1); // all but the hard link, which is always linked again

    // The tree is trusted (only the daemon's own mirrors use it): a file removed behind the
    // receiver's back below the root is not sent again...
    await rm(join(dest, 'd/new'));
    r = (await transfer(src, dest, {}, { known: tree, onTree })).r;
    expect(r.files).toBe(0);
    // ...but a dest removed and made again, as a prune does, is a new directory: looked at afresh.
    await rm(dest, { recursive: true });
    await mkdir(dest);
    r = (await transfer(src, dest, {}, { known: tree, onTree })).r;
    expect(await snapshotTree(dest, { dirTimes: true })).toEqual(await snapshotTree(src, { dirTimes: true }));
    expect(r.files).toBe(4);
  });

  test('removals on a resend: each gone subtree once, a directory replaced by a file, deep leftovers under kept dirs', async () => {
    const src = await tmp();
    const dest = await tmp();
    await mkdir(join(src, 'keep/deep/er'), { recursive: true });
    await writeFile(join(src, 'keep/deep/er/stays'), 's');
    await writeFile(join(src, 'keep/deep/er/goes'), 'g');
    await mkdir(join(src, 'gone/sub/subsub'), { recursive: true });
    await writeFile(join(src, 'gone/sub/subsub/f'), 'f');
    await writeFile(join(src, 'gone/g'), 'g');
    await mkdir(join(src, 'dir-to-file/inner'), { recursive: true });
    await writeFile(join(src, 'dir-to-file/inner/x'), 'x');
    await symlink('keep', join(src, 'link-gone'));
    await transfer(src, dest);

    execFileSync('rm', ['-r', join(src, 'keep/deep/er/goes'), join(src, 'gone'), join(src, 'dir-to-file'), join(src, 'link-gone')]);
    await writeFile(join(src, 'dir-to-file'), 'now a file');
    const changes: string[] = [];
    const { r } = await transfer(src, dest, {}, { onChange: (c) => changes.push(`${c.kind} ${c.path}`) });
    expect(await snapshotTree(dest, { dirTimes: true })).toEqual(await snapshotTree(src, { dirTimes: true }));
    expect(changes.filter((c) => c.startsWith('delete')).sort()).toEqual(['delete gone', 'delete keep/deep/er/goes', 'delete link-gone']);
    expect(r.deleted).toBe(3);
    expect(changes).toContain('modify dir-to-file');
  });

  test('a resend never writes an existing inode in place: links made to dest files keep their content and metadata', async () => {
    // The local source hard-links the mirror into snapshots, which must never change.
    const src = await tmp();
    const dest = await tmp();
    const outside = await tmp();
    await mkdir(join(src, 'd'));
    await writeFile(join(src, 'd/content.txt'), 'old!');
    await writeFile(join(src, 'mode.txt'), 'same bytes');
    await chmod(join(src, 'mode.txt'), 0o644);
    await writeFile(join(src, 'kept.txt'), 'kept');
    await transfer(src, dest);
    for (const f of ['d/content.txt', 'mode.txt', 'kept.txt']) await link(join(dest, f), join(outside, f.replace('/', '_')));
    const before = await snapshotTree(outside);

    // Same size, new bytes; a mode-only change; and an unchanged file.
    await writeFile(join(src, 'd/content.txt'), 'new!');
    await utimes(join(src, 'd/content.txt'), new Date('2020-01-01T00:00:00Z'), new Date('2020-01-01T00:00:00Z'));
    await chmod(join(src, 'mode.txt'), 0o600);
    const { r } = await transfer(src, dest);
    expect(r.unchanged).toBeGreaterThanOrEqual(1);
    // (kept.txt has a second link, outside: leave link lists out of this comparison)
    const noLinks = (t: Awaited<ReturnType<typeof snapshotTree>>) => t.map(({ links: _, ...e }) => e);
    expect(noLinks(await snapshotTree(dest, { dirTimes: true }))).toEqual(noLinks(await snapshotTree(src, { dirTimes: true })));
    expect(noLinks(await snapshotTree(outside))).toEqual(noLinks(before));
    expect(await readFile(join(outside, 'd_content.txt'), 'utf8')).toBe('old!');
    expect((await stat(join(outside, 'mode.txt'))).mode & 0o777).toBe(0o644);
    // The unchanged file is still the same inode (nothing was rewritten).
    expect((await stat(join(outside, 'kept.txt'))).ino).toBe((await stat(join(dest, 'kept.txt'))).ino);
  });

  test('merge keeps what is already in dest', async () => {
    const src = await tmp();
    const dest = await tmp();
    await writeFile(join(src, 'new'), 'n');
    await writeFile(join(dest, 'old'), 'o');
    await transfer(src, dest, {}, { merge: true });
    expect((await readdir(dest)).sort()).toEqual(['new', 'old']);
  });

  test('an existing symlink in dest is replaced, never written through', async () => {
    const src = await tmp();
    const dest = await tmp();
    const outside = await tmp();
    await mkdir(join(src, 'sub'));
    await writeFile(join(src, 'sub/file'), 'inside');
    await writeFile(join(src, 'f'), 'plain');
    await symlink(outside, join(dest, 'sub'));
    await symlink(join(outside, 'f'), join(dest, 'f'));
    await transfer(src, dest, {}, { merge: true });
    expect((await lstat(join(dest, 'sub'))).isDirectory()).toBe(true);
    expect(await readFile(join(dest, 'sub/file'), 'utf8')).toBe('inside');
    expect((await lstat(join(dest, 'f'))).isFile()).toBe(true);
    expect(await readdir(outside)).toEqual([]);
  });

  test('mapStat rewrites owners and can leave entries out; chown can be turned off', async () => {
    const src = await tmp();
    const dest = await tmp();
    await writeFile(join(src, 'keep'), 'k');
    await writeFile(join(src, 'skip'), 's');
    await transfer(src, dest, {}, {
      mapStat: (p, st) => {
        st.uid = 4321;
        return p !== 'skip';
      },
      chown: isRoot,
    });
    expect(await readdir(dest)).toEqual(['keep']);
    if (isRoot) expect((await stat(join(dest, 'keep'))).uid).toBe(4321);
  });

  test('a missing root fails on both ends with the path in the message', async () => {
    const dest = await tmp();
    const { a, b } = streamPair<Packet, Packet>();
    const [s, r] = await Promise.allSettled([sendDir(a, { root: join(dest, 'nope') }), receiveDir(b, { dest, xattrs: false })]);
    expect(s.status).toBe('rejected');
    expect(String((s as PromiseRejectedResult).reason)).toMatch(/nope/);
    expect(r.status).toBe('rejected');
    expect(String((r as PromiseRejectedResult).reason)).toMatch(/error from sender: .*nope/);
  });

  test('abort during a transfer names the file in flight', async () => {
    const src = await tmp();
    const dest = await tmp();
    await writeFile(join(src, 'huge.bin'), randomBytes(8 * 1024 * 1024));
    const { a, b } = streamPair<Packet, Packet>({ highWater: 1 });
    const ctl = new AbortController();
    const [s, r] = await Promise.allSettled([
      sendDir(a, { root: src }),
      receiveDir(b, {
        dest,
        xattrs: false,
        signal: ctl.signal,
        onProgress: (n) => {
          if (n > 1024 * 1024) ctl.abort();
        },
      }),
    ]);
    expect(r.status).toBe('rejected');
    const err = (r as PromiseRejectedResult).reason as Error & { code: string };
    expect(err.code).toBe('CANCELLED');
    expect(err.message).toMatch(/huge\.bin/);
    expect(s.status).toBe('rejected');
  });
});

// A scripted peer: the test plays the other end packet by packet.
function pkt(init: MessageInitShape<typeof PacketSchema> & { type: Packet_PacketType }): Packet {
  return create(PacketSchema, init);
}
function st(path: string, mode: number, extra?: MessageInitShape<typeof StatSchema>): Stat {
  return create(StatSchema, { path, mode, modTime: 1_600_000_000_000_000_000n, ...extra });
}
const DIR = (GoMode.dir | 0o755) >>> 0;
const FILE = 0o644;
const LINK = (GoMode.symlink | 0o777) >>> 0;

async function hostileSend(packets: Packet[], recv?: Partial<ReceiveDirOptions>) {
  const dest = await tmp();
  const { a, b } = streamPair<Packet, Packet>({ highWater: 100 });
  const fromReceiver: Packet[] = [];
  const result = receiveDir(b, { dest, xattrs: false, ...recv }).then(
    () => undefined,
    (e: unknown) => e as Error & { code: string; path?: string },
  );
  const reader = (async () => {
    try {
      for await (const p of a.recv()) fromReceiver.push(p);
    } catch {
      // closed by the receiver's failure
    }
  })();
  for (const p of packets) await a.send(p).catch(() => undefined);
  a.end();
  const err = await result;
  await reader;
  return { err, dest, fromReceiver };
}

describe('receiveDir refuses hostile senders', () => {
  test('a path escaping with ..', async () => {
    const { err, dest, fromReceiver } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('../x', FILE) })]);
    expect(err?.message).toMatch(/"\.\.\/x" escapes the destination/);
    expect(err?.code).toBe('INVALID_ARGUMENT');
    expect(err?.path).toBe('../x');
    await expect(stat(join(dest, '../x'))).rejects.toThrow();
    // The sender is told why.
    expect(fromReceiver.some((p) => p.type === Packet_PacketType.PACKET_ERR && /escapes/.test(new TextDecoder().decode(p.data)))).toBe(true);
  });

  test('an unclean path', async () => {
    const { err } = await hostileSend([
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('a', DIR) }),
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('a/../../x', FILE) }),
    ]);
    expect(err?.message).toMatch(/unclean path "a\/\.\.\/\.\.\/x"/);
  });

  test('an absolute path', async () => {
    const { err } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('/etc/x', FILE) })]);
    expect(err?.message).toMatch(/absolute path "\/etc\/x"/);
  });

  test('a file under a symlink sent earlier', async () => {
    const outside = await tmp();
    const { err, dest } = await hostileSend([
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('l', LINK, { linkname: outside }) }),
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('l/x', FILE) }),
    ]);
    expect(err?.message).toMatch(/"l\/x" is not inside a directory listed before it/);
    expect(await readdir(outside)).toEqual([]);
    expect((await lstat(join(dest, 'l'))).isSymbolicLink()).toBe(true);
  });

  test('a file whose parent was never listed', async () => {
    const { err } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('nodir/x', FILE) })]);
    expect(err?.message).toMatch(/"nodir\/x" is not inside a directory listed before it/);
  });

  test('entries out of order', async () => {
    const { err } = await hostileSend([
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('b', FILE) }),
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('a', FILE) }),
    ]);
    expect(err?.message).toMatch(/changes out of order: "a" after "b"/);
  });

  test('a hard link to a path not sent', async () => {
    const { err } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('h', FILE, { linkname: '../../etc/passwd' }) })]);
    expect(err?.message).toMatch(/invalid link "h" to unknown path "..\/..\/etc\/passwd"/);
  });

  test('DATA for an id that was not requested', async () => {
    const { err } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_DATA, ID: 7, data: new Uint8Array([1]) })]);
    expect(err?.message).toMatch(/invalid file request 7/);
  });

  test('an unknown packet type', async () => {
    const { err } = await hostileSend([pkt({ type: 9 as Packet_PacketType })]);
    expect(err?.message).toMatch(/unexpected unknown\(9\) packet from the sender/);
  });

  test('the sender ends before sending a requested file', async () => {
    const { err, fromReceiver } = await hostileSend([
      pkt({ type: Packet_PacketType.PACKET_STAT, stat: st('f', FILE, { size: 10n }) }),
      pkt({ type: Packet_PacketType.PACKET_STAT }),
    ]);
    expect(fromReceiver.filter((p) => p.type === Packet_PacketType.PACKET_REQ).map((p) => p.ID)).toEqual([0]);
    expect(err?.message).toMatch(/sender ended the stream before the transfer finished/);
  });

  test('an ERR from the sender is reported as such', async () => {
    const { err } = await hostileSend([pkt({ type: Packet_PacketType.PACKET_ERR, data: new TextEncoder().encode('disk on fire') })]);
    expect(err?.message).toBe('error from sender: disk on fire');
  });
});

describe('sendDir refuses hostile receivers', () => {
  async function hostileReceive(script: (stats: Packet[]) => Packet[], onData?: (p: Packet) => Packet[]) {
    const src = await tmp();
    await mkdir(join(src, 'd'));
    await writeFile(join(src, 'd/f'), 'data');
    const { a, b } = streamPair<Packet, Packet>({ highWater: 100 });
    const result = sendDir(a, { root: src }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    const stats: Packet[] = [];
    const got: Packet[] = [];
    try {
      for await (const p of b.recv()) {
        got.push(p);
        if (p.type === Packet_PacketType.PACKET_STAT) {
          stats.push(p);
          if (!p.stat) for (const q of script(stats)) await b.send(q);
        }
        if (p.type === Packet_PacketType.PACKET_DATA && onData) for (const q of onData(p)) await b.send(q);
      }
    } catch {
      // closed by the sender's failure
    }
    return { err: await result, got };
  }

  test('a REQ for an unknown id', async () => {
    const { err, got } = await hostileReceive(() => [pkt({ type: Packet_PacketType.PACKET_REQ, ID: 999 })]);
    expect(err?.message).toMatch(/invalid file id 999/);
    expect(got.some((p) => p.type === Packet_PacketType.PACKET_ERR)).toBe(true);
  });

  test('a REQ for a directory', async () => {
    const { err } = await hostileReceive(() => [pkt({ type: Packet_PacketType.PACKET_REQ, ID: 0 })]);
    expect(err?.message).toMatch(/invalid file id 0/);
  });

  test('an unknown packet type', async () => {
    const { err } = await hostileReceive(() => [pkt({ type: 42 as Packet_PacketType })]);
    expect(err?.message).toMatch(/unexpected unknown\(42\) packet from the receiver/);
  });

  // The listing says how big a file is; what is sent is what the file holds when it is requested
  // (upstream copies to EOF), whichever way the sender reads it.
  test('a file is sent as it is when requested: grown past its listed size, or gone (sent empty)', async () => {
    const src = await tmp();
    await writeFile(join(src, 'grows'), 'small');
    await writeFile(join(src, 'gone'), 'soon gone');
    await writeFile(join(src, 'kept'), 'kept');
    const grown = randomBytes(3 * 1024 * 1024 + 123);
    const { a, b } = streamPair<Packet, Packet>({ highWater: 100 });
    const result = sendDir(a, { root: src });
    const data = new Map<number, Buffer[]>();
    let ended = 0;
    for await (const p of b.recv()) {
      if (p.type === Packet_PacketType.PACKET_STAT && !p.stat) {
        await writeFile(join(src, 'grows'), grown);
        await rm(join(src, 'gone'));
        for (const id of [0, 1, 2]) await b.send(pkt({ type: Packet_PacketType.PACKET_REQ, ID: id }));
      }
      if (p.type === Packet_PacketType.PACKET_DATA) {
        if (p.data.length > 0) expect(p.data.length).toBeLessThanOrEqual(32 * 1024);
        data.set(p.ID, [...(data.get(p.ID) ?? []), Buffer.from(p.data)]);
        if (p.data.length === 0 && ++ended === 3) await b.send(pkt({ type: Packet_PacketType.PACKET_FIN }));
      }
    }
    const summary = await result;
    // Listing order: gone, grows, kept.
    expect(Buffer.concat(data.get(0)!).length).toBe(0);
    expect(Buffer.concat(data.get(1)!).equals(grown)).toBe(true);
    expect(Buffer.concat(data.get(2)!).toString()).toBe('kept');
    expect(summary).toEqual({ entries: 3, files: 3, bytes: grown.length + 4 });
  });

  test('a file replaced by a FIFO before it is requested is read without blocking the event loop', async () => {
    const src = await tmp();
    await writeFile(join(src, 'f'), 'listed as a file');
    const { a, b } = streamPair<Packet, Packet>({ highWater: 100 });
    const result = sendDir(a, { root: src });
    const got: Buffer[] = [];
    for await (const p of b.recv()) {
      if (p.type === Packet_PacketType.PACKET_STAT && !p.stat) {
        await rm(join(src, 'f'));
        execFileSync('mkfifo', [join(src, 'f')]);
        await b.send(pkt({ type: Packet_PacketType.PACKET_REQ, ID: 0 }));
        // The writer runs in this process: a sender blocked in open(2) on the loop would never let it.
        const w = await open(join(src, 'f'), 'w');
        await w.writeFile('through the fifo');
        await w.close();
      }
      if (p.type === Packet_PacketType.PACKET_DATA) {
        got.push(Buffer.from(p.data));
        if (p.data.length === 0) await b.send(pkt({ type: Packet_PacketType.PACKET_FIN }));
      }
    }
    await result;
    expect(Buffer.concat(got).toString()).toBe('through the fifo');
  });

  test('ids are positions in the listing, and a file is served once', async () => {
    const { err, got } = await hostileReceive(
      (stats) => {
        expect(stats.map((p) => p.stat?.path)).toEqual(['d', 'd/f', undefined]);
        return [pkt({ type: Packet_PacketType.PACKET_REQ, ID: 1 })];
      },
      (p) => (p.data.length === 0 ? [pkt({ type: Packet_PacketType.PACKET_FIN })] : []),
    );
    expect(err).toBeUndefined();
    const data = got.filter((p) => p.type === Packet_PacketType.PACKET_DATA);
    expect(data.map((p) => [p.ID, new TextDecoder().decode(p.data)])).toEqual([
      [1, 'data'],
      [1, ''],
    ]);
    expect(got[got.length - 1]!.type).toBe(Packet_PacketType.PACKET_FIN);
  });
});
