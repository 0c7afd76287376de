/**
 * The attr tools' xattr listing for many paths at once (one getfattr process), as the walker and
 * the local exporter use it: names getfattr escapes come back as the paths asked for.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { systemXattrs } from '../../../../src/session/filesync/xattr.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-xattr-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function userXattrsWork(): boolean {
  try {
    writeFileSync(join(dir, 'probe'), '');
    execFileSync('setfattr', ['-n', 'user.probe', '-v', '1', join(dir, 'probe')], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe.runIf(userXattrsWork())('systemXattrs().listMany', () => {
  it('lists the xattrs of many paths, escaped names included, and leaves out paths without any', async () => {
    const names = ['a b', 'back\\slash', 'nl\nx', 'ünï', 'eq=x', 'plain'];
    mkdirSync(join(dir, 'sub'));
    for (const n of names) writeFileSync(join(dir, 'sub', n), n);
    for (const n of names.slice(0, 5)) execFileSync('setfattr', ['-n', 'user.t', '-v', '0x00ff01', join(dir, 'sub', n)]);
    execFileSync('setfattr', ['-n', 'user.empty', join(dir, 'sub', 'a b')]);
    symlinkSync('plain', join(dir, 'sub', 'link'));
    const io = (await systemXattrs())!;
    const paths = [...names, 'link', 'gone'].map((n) => join(dir, 'sub', n));
    const found = await io.listMany(paths);
    expect([...found.keys()].sort()).toEqual(names.slice(0, 5).map((n) => join(dir, 'sub', n)).sort());
    expect(found.get(join(dir, 'sub', 'a b'))).toEqual({ 'user.t': Buffer.from([0, 0xff, 1]), 'user.empty': Buffer.alloc(0) });
    expect(found.get(join(dir, 'sub', 'nl\nx'))).toEqual({ 'user.t': Buffer.from([0, 0xff, 1]) });
  });
});
