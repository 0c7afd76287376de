import { execFileSync } from 'node:child_process';
import {
  createReadStream,
  createWriteStream,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { changes } from '../../../src/snapshot/layer/changes.js';
import { writeLayerTar } from '../../../src/snapshot/layer/write-layer-tar.js';
import { applyLayerTar } from '../../../src/snapshot/layer/apply-layer-tar.js';
import { applyChanges } from '../../../src/snapshot/layer/apply-changes.js';
import { writeTreeTar } from '../../../src/snapshot/layer/write-tree-tar.js';
import { TarWriter } from '../../../src/snapshot/layer/tar-writer.js';
import { readTar } from '../../../src/snapshot/layer/tar-reader.js';
import { getXattr, setXattrs } from '../../../src/snapshot/layer/sys-ops.js';
import { IS_ROOT } from './busybox-image.js';

/** Entries owned by whoever runs the tests, so applying them needs no root. */
const me = { uid: process.getuid!(), gid: process.getgid!() };

let tmp: string;
let lower: string;
let upper: string;
beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-layer-'));
  lower = path.join(tmp, 'lower');
  upper = path.join(tmp, 'upper');
  mkdirSync(lower);
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

const w = (p: string, data = 'x') => {
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, data);
};
/** Whole-second times, as tars carry, so a round trip can compare equal. */
const stamp = (dir: string) => execFileSync('find', [dir, '-exec', 'touch', '-h', '-d', '@1600000000', '{}', '+']);
const copy = (a: string, b: string) => execFileSync('cp', ['-a', a, b]);

async function toFile(file: string, fn: (out: PassThrough) => Promise<void>): Promise<void> {
  const out = createWriteStream(file);
  const pt = new PassThrough();
  pt.pipe(out);
  await fn(pt);
  pt.end();
  await finished(out);
}

function gnuList(file: string): string[] {
  return execFileSync('tar', ['-tvf', file, '--numeric-owner'], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((l) => {
      const m = /^(\S+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(.*)$/.exec(l)!;
      return `${m[1]} ${m[2]} ${m[3]}`;
    });
}

describe('changes (double walk)', () => {
  it('reports adds, modifies and deletes in layer order; a deleted dir alone; a replaced dir once', async () => {
    w(path.join(lower, 'keep/same'));
    w(path.join(lower, 'keep/edit'), 'old');
    w(path.join(lower, 'gone/a/b'));
    w(path.join(lower, 'dir2file/x'));
    w(path.join(lower, 'file2dir'));
    stamp(lower);
    copy(lower, upper);
    writeFileSync(path.join(upper, 'keep/edit'), 'new!');
    rmSync(path.join(upper, 'gone'), { recursive: true });
    rmSync(path.join(upper, 'dir2file'), { recursive: true });
    w(path.join(upper, 'dir2file'));
    rmSync(path.join(upper, 'file2dir'));
    w(path.join(upper, 'file2dir/child'));
    w(path.join(upper, 'a-new'));
    w(path.join(upper, 'keep-sorted/z'));
    const c = (await changes(lower, upper)).map((x) => `${x.kind} ${x.path}`);
    expect(c).toEqual([
      'add /a-new',
      'modify /dir2file',
      'modify /file2dir',
      'add /file2dir/child',
      'delete /gone',
      // /keep itself is not reported: directories compare by metadata, not mtime.
      'modify /keep/edit',
      'add /keep-sorted',
      'add /keep-sorted/z',
    ]);
  });

  it('sees same-size same-second edits by content, and chmod/chown-only changes', async () => {
    w(path.join(lower, 'f'), 'aaaa');
    w(path.join(lower, 'm'), 'm');
    stamp(lower);
    copy(lower, upper);
    writeFileSync(path.join(upper, 'f'), 'bbbb');
    execFileSync('chmod', ['600', path.join(upper, 'm')]);
    stamp(upper);
    const c = (await changes(lower, upper)).map((x) => `${x.kind} ${x.path}`);
    expect(c).toEqual(['modify /f', 'modify /m']);
    expect(await changes(lower, lower)).toEqual([]);
  });

  it.skipIf(!IS_ROOT)('sees a security.capability change that touched nothing else', async () => {
    w(path.join(lower, 'bin/ping'));
    copy(lower, upper);
    // vfs_cap_data v2: cap_net_raw permitted + effective.
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');
    const [err] = await setXattrs([{ path: path.join(upper, 'bin/ping'), name: 'security.capability', value: cap }]);
    expect(err).toBeNull();
    const c = await changes(lower, upper);
    expect(c.map((x) => `${x.kind} ${x.path}`)).toEqual(['modify /bin/ping']);
  });
});

describe('layer tars', () => {
  async function layerOf(l: string | null, u: string, file: string): Promise<void> {
    const c = await changes(l, u);
    await toFile(file, (out) => writeLayerTar(c, u, out, { whiteoutTime: new Date(1_700_000_000_000) }));
  }

  it('writes whiteouts, parents before children, hard links and long names that GNU tar reads', async () => {
    w(path.join(lower, 'etc/old'));
    w(path.join(lower, 'etc/keep'));
    w(path.join(lower, 'deep/a/b/c'));
    stamp(lower);
    copy(lower, upper);
    rmSync(path.join(upper, 'etc/old'));
    w(path.join(upper, 'deep/a/b/new'), 'n');
    const long = 'l'.repeat(120) + '/' + 'é'.repeat(30);
    w(path.join(upper, long), 'long');
    linkSync(path.join(upper, 'deep/a/b/new'), path.join(upper, 'hl'));
    symlinkSync('../etc/keep', path.join(upper, 'sym'));
    const file = path.join(tmp, 'layer.tar');
    await layerOf(lower, upper, file);
    const list = gnuList(file);
    expect(list).toEqual([
      'drwxr-xr-x 0/0 deep/',
      'drwxr-xr-x 0/0 deep/a/',
      'drwxr-xr-x 0/0 deep/a/b/',
      '-rw-r--r-- 0/0 deep/a/b/new',
      'drwxr-xr-x 0/0 etc/',
      '---------- 0/0 etc/.wh.old',
      'hrw-r--r-- 0/0 hl link to deep/a/b/new',
      `drwxr-xr-x 0/0 ${'l'.repeat(120)}/`,
      `-rw-r--r-- 0/0 ${long}`,
      'lrwxrwxrwx 0/0 sym -> ../etc/keep',
    ]);
    // GNU tar extracts it, and applying it onto lower reproduces upper.
    const x = path.join(tmp, 'x');
    mkdirSync(x);
    execFileSync('tar', ['-xf', file, '-C', x]);
    expect(readFileSync(path.join(x, long), 'utf8')).toBe('long');
    const applied = path.join(tmp, 'applied');
    copy(lower, applied);
    await applyLayerTar(createReadStream(file), applied);
    expect(existsSync(path.join(applied, 'etc/old'))).toBe(false);
    expect(lstatSync(path.join(applied, 'hl')).ino).toBe(lstatSync(path.join(applied, 'deep/a/b/new')).ino);
    expect(readlinkSync(path.join(applied, 'sym'))).toBe('../etc/keep');
    stamp(applied);
    stamp(upper);
    // Linked files come back as 'unmodified' (for link tracking), nothing else differs.
    expect((await changes(applied, upper)).filter((c) => c.kind !== 'unmodified')).toEqual([]);
  });

  it('keeps security.capability through a layer (pax SCHILY.xattr, binary-safe)', async () => {
    if (!IS_ROOT) return;
    w(path.join(upper, 'bin/ping'));
    const cap = Buffer.from('0100000200200000ff0000800000000000000000', 'hex');
    await setXattrs([{ path: path.join(upper, 'bin/ping'), name: 'security.capability', value: cap }]);
    const file = path.join(tmp, 'cap.tar');
    await layerOf(null, upper, file);
    const target = path.join(tmp, 't');
    mkdirSync(target);
    await applyLayerTar(createReadStream(file), target);
    expect(await getXattr([path.join(target, 'bin/ping')], 'security.capability')).toEqual([cap]);
  });

  it('applies opaque directories and whiteouts from a tar', async () => {
    const dir = path.join(tmp, 'root');
    w(path.join(dir, 'opq/old1'));
    w(path.join(dir, 'opq/sub/old2'));
    w(path.join(dir, 'rm-me/inner'));
    const pt = new PassThrough();
    const tw = new TarWriter({ out: pt });
    const done = applyLayerTar(pt, dir);
    await tw.add({ name: 'opq/', type: 'dir', mode: 0o700, ...me, mtime: 1 });
    await tw.addBuffer({ name: 'opq/new', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('n'));
    await tw.add({ name: 'opq/.wh..wh..opq', type: 'file', mode: 0, ...me, mtime: 1 });
    await tw.add({ name: '.wh.rm-me', type: 'file', mode: 0, ...me, mtime: 1 });
    await tw.finish();
    pt.end();
    await done;
    expect(execFileSync('find', ['.'], { cwd: dir, encoding: 'utf8' }).trim().split('\n').sort()).toEqual(['.', './opq', './opq/new']);
    expect(lstatSync(path.join(dir, 'opq')).mode & 0o777).toBe(0o700);
  });

  it('keeps every entry inside the target: symlinked parents resolve inside, `..` stops at the root', async () => {
    const dir = path.join(tmp, 'root');
    const outside = path.join(tmp, 'outside');
    mkdirSync(dir);
    mkdirSync(outside);
    const mk = async (entries: ((tw: TarWriter) => Promise<void>)[]) => {
      const pt = new PassThrough();
      const tw = new TarWriter({ out: pt });
      const done = applyLayerTar(pt, dir);
      for (const e of entries) await e(tw);
      await tw.finish();
      pt.end();
      return done;
    };
    await mk([
      (tw) => tw.add({ name: 'esc', type: 'symlink', linkname: outside, mode: 0o777, ...me, mtime: 1 }),
      (tw) => tw.add({ name: 'rel', type: 'symlink', linkname: '../../../..', mode: 0o777, ...me, mtime: 1 }),
      (tw) => tw.addBuffer({ name: 'esc/pwned', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('x')),
      (tw) => tw.addBuffer({ name: 'rel/pwned2', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('x')),
    ]);
    expect(existsSync(path.join(outside, 'pwned'))).toBe(false);
    expect(readFileSync(path.join(dir, outside, 'pwned'), 'utf8')).toBe('x');
    expect(existsSync(path.join(dir, 'pwned2'))).toBe(true);
    // Names and hard-link targets that climb with `..` are held at the root, as containerd does.
    mkdirSync(path.join(dir, 'etc'), { recursive: true });
    writeFileSync(path.join(dir, 'etc', 'passwd'), 'inside');
    await mk([
      (tw) => tw.addBuffer({ name: '../escape', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('x')),
      (tw) => tw.addBuffer({ name: 'd/../../../escape2', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('y')),
      (tw) => tw.add({ name: 'hl', type: 'link', linkname: 'a/../../etc/passwd', mode: 0o644, ...me, mtime: 1 }),
    ]);
    expect(existsSync(path.join(tmp, 'escape'))).toBe(false);
    expect(existsSync(path.join(path.dirname(tmp), 'escape2'))).toBe(false);
    expect(readFileSync(path.join(dir, 'escape'), 'utf8')).toBe('x');
    expect(readFileSync(path.join(dir, 'escape2'), 'utf8')).toBe('y');
    expect(readFileSync(path.join(dir, 'hl'), 'utf8')).toBe('inside');
    expect(statSync(path.join(dir, 'hl')).ino).toBe(statSync(path.join(dir, 'etc', 'passwd')).ino);
  });

  it("extracts ADD's archives as Docker's Untar: parents made through symlinks that lead somewhere, not through dangling ones", async () => {
    const dir = path.join(tmp, 'add-root');
    mkdirSync(path.join(dir, 'real'), { recursive: true });
    const apply = async (entries: ((tw: TarWriter) => Promise<void>)[]) => {
      const pt = new PassThrough();
      const tw = new TarWriter({ out: pt });
      const done = applyLayerTar(pt, dir, { whiteouts: false });
      for (const e of entries) await e(tw);
      await tw.finish();
      pt.end();
      return done;
    };
    const link = (name: string, to: string) => (tw: TarWriter) => tw.add({ name, type: 'symlink', linkname: to, mode: 0o777, ...me, mtime: 1 });
    const file = (name: string) => (tw: TarWriter) => tw.addBuffer({ name, type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from(name));
    await apply([link('to-real', '/real'), file('to-real/new/f.txt')]);
    expect(readFileSync(path.join(dir, 'real', 'new', 'f.txt'), 'utf8')).toBe('to-real/new/f.txt');
    await expect(apply([link('dl', '/nowhere'), file('dl/f.txt')])).rejects.toThrow('open /dl/f.txt: no such file or directory');
    await expect(apply([link('dm', '/nowhere2'), file('dm/sub/f.txt')])).rejects.toThrow('mkdir /dm: file exists');
    expect(existsSync(path.join(dir, 'nowhere'))).toBe(false);
    expect(existsSync(path.join(dir, 'nowhere2'))).toBe(false);
    // A layer (whiteouts on) makes the missing directory, as containerd's applier does.
    const pt = new PassThrough();
    const tw = new TarWriter({ out: pt });
    const done = applyLayerTar(pt, dir);
    await file('dl/f.txt')(tw);
    await tw.finish();
    pt.end();
    await done;
    expect(readFileSync(path.join(dir, 'nowhere', 'f.txt'), 'utf8')).toBe('dl/f.txt');
  });

  it('reads GNU-format tars (long names via ././@LongLink) and pax tars made by GNU tar', async () => {
    const src = path.join(tmp, 'src');
    const long = 'd'.repeat(150) + '/f';
    w(path.join(src, long), 'gnu');
    for (const format of ['gnu', 'pax']) {
      const file = path.join(tmp, `${format}.tar`);
      execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', src, '.']);
      const names: string[] = [];
      for await (const e of readTar(createReadStream(file))) names.push(e.name);
      expect(names).toContain(`./${long}`);
      const dst = path.join(tmp, `dst-${format}`);
      mkdirSync(dst);
      await applyLayerTar(createReadStream(file), dst);
      expect(readFileSync(path.join(dst, long), 'utf8')).toBe('gnu');
    }
  });

  it('rejects a corrupt header with an error naming the entry', async () => {
    const pt = new PassThrough();
    const tw = new TarWriter({ out: pt });
    const chunks: Buffer[] = [];
    pt.on('data', (b: Buffer) => chunks.push(b));
    await tw.addBuffer({ name: 'victim', type: 'file', mode: 0o644, ...me, mtime: 1 }, Buffer.from('x'));
    await tw.finish();
    const bytes = Buffer.concat(chunks);
    bytes[100] = 0x39; // mode field now holds a non-octal digit: checksum breaks
    const dir = path.join(tmp, 'c');
    mkdirSync(dir);
    await expect(applyLayerTar(Readable.from([bytes]), dir)).rejects.toThrow(/checksum.*"victim"/);
  });
});

describe('applyChanges (merge materialization)', () => {
  it('applies deletions, replacements and parent metadata; keeps hard links', async () => {
    w(path.join(lower, 'a'));
    w(path.join(lower, 'd/x'));
    copy(lower, upper);
    rmSync(path.join(upper, 'a'));
    execFileSync('chmod', ['700', path.join(upper, 'd')]);
    w(path.join(upper, 'd/y'), 'y');
    linkSync(path.join(upper, 'd/y'), path.join(upper, 'd/y2'));
    const target = path.join(tmp, 'target');
    mkdirSync(target);
    w(path.join(target, 'a'), 'from another layer');
    w(path.join(target, 'other'));
    await applyChanges(lower, upper, target);
    expect(existsSync(path.join(target, 'a'))).toBe(false);
    expect(existsSync(path.join(target, 'other'))).toBe(true);
    expect(existsSync(path.join(target, 'd/x'))).toBe(false); // unchanged in the diff: not brought
    expect(lstatSync(path.join(target, 'd')).mode & 0o777).toBe(0o700);
    expect(lstatSync(path.join(target, 'd/y2')).ino).toBe(lstatSync(path.join(target, 'd/y')).ino);
    expect(lstatSync(path.join(target, 'd/y'), { bigint: true }).mtimeNs).toBe(lstatSync(path.join(upper, 'd/y'), { bigint: true }).mtimeNs);
  });
});

describe('writeTreeTar', () => {
  it('writes the whole tree deterministically, hard links as links, xattrs as pax', async () => {
    const d = path.join(tmp, 'tree');
    w(path.join(d, 'b/file'), 'content');
    w(path.join(d, 'a'));
    linkSync(path.join(d, 'b/file'), path.join(d, 'c'));
    await setXattrs([{ path: path.join(d, 'a'), name: 'user.k', value: Buffer.from('v') }]);
    const f1 = path.join(tmp, '1.tar');
    const f2 = path.join(tmp, '2.tar');
    await toFile(f1, (out) => writeTreeTar(d, out));
    await toFile(f2, (out) => writeTreeTar(d, out));
    expect(readFileSync(f1).equals(readFileSync(f2))).toBe(true);
    expect(gnuList(f1)).toEqual(['-rw-r--r-- 0/0 a', 'drwxr-xr-x 0/0 b/', '-rw-r--r-- 0/0 b/file', 'hrw-r--r-- 0/0 c link to b/file'].map((l) => (IS_ROOT ? l : l.replace('0/0', `${process.getuid!()}/${process.getgid!()}`))));
    const x = path.join(tmp, 'x');
    mkdirSync(x);
    execFileSync('tar', ['--xattrs', '--xattrs-include=user.*', '-xf', f1, '-C', x]);
    expect(await getXattr([path.join(x, 'a')], 'user.k')).toEqual([Buffer.from('v')]);
  });

  it('links hard links only within one platform directory (one tree exported for two platforms)', async () => {
    // A stage pinned to one platform (FROM --platform=linux/amd64) is the same tree for every
    // target platform; upstream walks each platform directory on its own, so the second
    // platform's files are files, not links into the first's.
    const d = path.join(tmp, 'tree');
    w(path.join(d, 'f'), 'content');
    linkSync(path.join(d, 'f'), path.join(d, 'g'));
    const f1 = path.join(tmp, '1.tar');
    await toFile(f1, (out) => writeTreeTar([{ name: 'linux_amd64', dir: d }, { name: 'linux_arm64', dir: d }], out));
    const own = IS_ROOT ? '0/0' : `${process.getuid!()}/${process.getgid!()}`;
    expect(gnuList(f1)).toEqual(
      ['drwxr-xr-x 0/0 linux_amd64/', `-rw-r--r-- ${own} linux_amd64/f`, `hrw-r--r-- ${own} linux_amd64/g link to linux_amd64/f`, 'drwxr-xr-x 0/0 linux_arm64/', `-rw-r--r-- ${own} linux_arm64/f`, `hrw-r--r-- ${own} linux_arm64/g link to linux_arm64/f`],
    );
  });
});
