import { execFileSync } from 'node:child_process';
import { linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { lchown } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import { getXattr, setXattrs } from '../../../src/snapshot/layer/sys-ops.js';
import { LoomError } from '../../../src/util/errors.js';
import { IS_ROOT } from './busybox-image.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';
import { changes as doubleWalk } from '../../../src/snapshot/layer/changes.js';
import { SNAPSHOTTERS } from './snapshotters.js';

let root: string;
let sn: NativeSnapshotter;
beforeEach(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'loom-snap-'));
  sn = new NativeSnapshotter({ root });
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return err instanceof LoomError ? err.code : `not a LoomError: ${String(err)}`;
  }
  return 'no error';
}

describe('NativeSnapshotter', () => {
  it('prepares, commits, lists and removes snapshots under <root>/snapshots/<key>/fs', async () => {
    const dir = await sn.prepare('base');
    expect(dir).toBe(path.join(root, 'snapshots', 'base', 'fs'));
    expect(lstatSync(dir).mode & 0o7777).toBe(0o755);
    writeFileSync(path.join(dir, 'f'), 'x');
    await sn.commit('base');
    const child = await sn.prepare('child', 'base');
    expect(readFileSync(path.join(child, 'f'), 'utf8')).toBe('x');
    writeFileSync(path.join(child, 'f'), 'changed');
    expect(readFileSync(path.join(dir, 'f'), 'utf8')).toBe('x');

    const infos = (await sn.list()).sort((a, b) => a.key.localeCompare(b.key));
    expect(infos.map((i) => [i.key, i.parent, i.kind])).toEqual([
      ['base', null, 'committed'],
      ['child', 'base', 'active'],
    ]);
    expect(await code(sn.remove('base'))).toBe('FAILED_PRECONDITION');
    await sn.remove('child');
    await sn.remove('base');
    expect(await sn.list()).toEqual([]);
    expect(await code(sn.dir('base'))).toBe('NOT_FOUND');
  });

  it('cleanup() removes the debris of an interrupted prepare', async () => {
    mkdirSync(path.join(root, 'snapshots', 'half', 'fs.tmp'), { recursive: true });
    await sn.prepare('whole');
    await sn.cleanup();
    expect((await sn.list()).map((i) => i.key)).toEqual(['whole']);
    expect(() => lstatSync(path.join(root, 'snapshots', 'half'))).toThrow();
  });
});

describe.each(SNAPSHOTTERS)('snapshotter contract: $name', (impl) => {
  let sn: Snapshotter;
  beforeEach(() => {
    sn = impl.make(root);
  });
  // Before the file's afterEach deletes root (hooks run innermost first on the way out).
  afterEach(async () => impl.close(sn));

  it('prepares, commits, lists and removes; a child starts as its parent and never writes it', async () => {
    const dir = await sn.prepare('base');
    expect(lstatSync(dir).mode & 0o7777).toBe(0o755);
    writeFileSync(path.join(dir, 'f'), 'x');
    mkdirSync(path.join(dir, 'd'));
    writeFileSync(path.join(dir, 'd/g'), 'g');
    await sn.commit('base');
    const child = await sn.prepare('child', 'base');
    expect(readFileSync(path.join(child, 'f'), 'utf8')).toBe('x');
    writeFileSync(path.join(child, 'f'), 'changed');
    rmSync(path.join(child, 'd'), { recursive: true });
    await sn.commit('child');
    expect(readFileSync(path.join(await sn.dir('base'), 'f'), 'utf8')).toBe('x');
    expect(readFileSync(path.join(await sn.dir('base'), 'd/g'), 'utf8')).toBe('g');
    expect(readFileSync(path.join(await sn.dir('child'), 'f'), 'utf8')).toBe('changed');
    expect(lstatSync(path.join(await sn.dir('child'), 'd'), { throwIfNoEntry: false })).toBeUndefined();

    const infos = (await sn.list()).sort((a, b) => a.key.localeCompare(b.key));
    expect(infos.map((i) => [i.key, i.parent, i.kind])).toEqual([
      ['base', null, 'committed'],
      ['child', 'base', 'committed'],
    ]);
    expect((await sn.stat('child')).committedAt).toBeGreaterThan(0);
    expect(await code(sn.remove('base'))).toBe('FAILED_PRECONDITION');
    await sn.remove('child');
    await sn.remove('base');
    expect(await sn.list()).toEqual([]);
    expect(await code(sn.dir('base'))).toBe('NOT_FOUND');
    expect(await code(sn.stat('base'))).toBe('NOT_FOUND');
    expect(await code(sn.remove('base'))).toBe('NOT_FOUND');
  });

  it('changes() is null or the double walk\'s list', async () => {
    const dir = await sn.prepare('p');
    writeFileSync(path.join(dir, 'a'), 'a');
    writeFileSync(path.join(dir, 'b'), 'b');
    await sn.commit('p');
    const c = await sn.prepare('c', 'p');
    writeFileSync(path.join(c, 'a'), 'A');
    rmSync(path.join(c, 'b'));
    writeFileSync(path.join(c, 'n'), 'n');
    await sn.commit('c');
    const known = await sn.changes('c');
    const walked = await doubleWalk(await sn.dir('p'), await sn.dir('c'));
    if (known) expect(known.map((x) => `${x.kind} ${x.path}`)).toEqual(walked.map((x) => `${x.kind} ${x.path}`));
    expect(walked.map((x) => `${x.kind} ${x.path}`)).toEqual(['modify /a', 'delete /b', 'add /n']);
  });

  it('refuses taken keys, active parents, double commits and unsafe keys', async () => {
    await sn.prepare('a');
    expect(await code(sn.prepare('a'))).toBe('ALREADY_EXISTS');
    expect(await code(sn.prepare('b', 'a'))).toBe('FAILED_PRECONDITION');
    expect(await code(sn.prepare('b', 'missing'))).toBe('NOT_FOUND');
    await sn.commit('a');
    expect(await code(sn.commit('a'))).toBe('FAILED_PRECONDITION');
    expect(await code(sn.prepare('../evil'))).toBe('INVALID_ARGUMENT');
    expect(await code(sn.prepare('x/y'))).toBe('INVALID_ARGUMENT');
  });

  it('counts usage in blocks and distinct inodes (hard links once)', async () => {
    const dir = await sn.prepare('u');
    writeFileSync(path.join(dir, 'big'), Buffer.alloc(100_000, 1));
    linkSync(path.join(dir, 'big'), path.join(dir, 'big2'));
    mkdirSync(path.join(dir, 'd'));
    const u = await sn.usage('u');
    expect(u.inodes).toBe(3); // root, big (twice linked), d
    expect(u.size).toBeGreaterThanOrEqual(100_000);
    expect(u.size).toBeLessThan(200_000);
  });

  it.skipIf(!IS_ROOT)('copies a parent keeping modes, owners, ns times, links, xattrs and FIFOs', async () => {
    const dir = await sn.prepare('p');
    writeFileSync(path.join(dir, 'suid'), 'x');
    await lchown(path.join(dir, 'suid'), 1000, 1001);
    execFileSync('chmod', ['4755', path.join(dir, 'suid')]);
    mkdirSync(path.join(dir, 'sticky'));
    execFileSync('chmod', ['1777', path.join(dir, 'sticky')]);
    symlinkSync('/etc/passwd', path.join(dir, 'link'));
    linkSync(path.join(dir, 'suid'), path.join(dir, 'hard'));
    execFileSync('mkfifo', [path.join(dir, 'fifo')]);
    execFileSync('touch', ['-d', '2001-02-03 04:05:06.123456789', path.join(dir, 'suid')]);
    await setXattrs([{ path: path.join(dir, 'suid'), name: 'user.test', value: Buffer.from([0, 1, 255]) }]);
    await sn.commit('p');

    const c = await sn.prepare('c', 'p');
    const st = lstatSync(path.join(c, 'suid'), { bigint: true });
    expect(Number(st.mode) & 0o7777).toBe(0o4755);
    expect([st.uid, st.gid]).toEqual([1000n, 1001n]);
    expect(st.mtimeNs % 1_000_000_000n).toBe(123456789n);
    expect(lstatSync(path.join(c, 'sticky')).mode & 0o7777).toBe(0o1777);
    expect(readlinkSync(path.join(c, 'link'))).toBe('/etc/passwd');
    expect(lstatSync(path.join(c, 'hard')).ino).toBe(lstatSync(path.join(c, 'suid')).ino);
    expect(lstatSync(path.join(c, 'fifo')).isFIFO()).toBe(true);
    expect(await getXattr([path.join(c, 'suid')], 'user.test')).toEqual([Buffer.from([0, 1, 255])]);
  });
});
