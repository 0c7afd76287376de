import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveInRoot, resolveParentInRoot } from '../../../../src/util/fs-safe.js';
import { lookupGroup, lookupUser, parsePasswd, readAccountFile } from '../../../../src/util/passwd.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'loom-safe-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('resolveInRoot', () => {
  it('follows symlinks as if the root were /', async () => {
    mkdirSync(path.join(root, 'usr/lib'), { recursive: true });
    symlinkSync('/usr/lib', path.join(root, 'lib'));
    symlinkSync('../../../../../../etc', path.join(root, 'usr/up'));
    symlinkSync('loop2', path.join(root, 'loop1'));
    symlinkSync('loop1', path.join(root, 'loop2'));
    symlinkSync('/', path.join(root, 'slash'));
    expect(await resolveInRoot(root, '/lib/x')).toBe(path.join(root, 'usr/lib/x'));
    expect(await resolveInRoot(root, 'lib/../bin')).toBe(path.join(root, 'usr/bin'));
    expect(await resolveInRoot(root, '/usr/up/passwd')).toBe(path.join(root, 'etc/passwd'));
    expect(await resolveInRoot(root, '/../../..')).toBe(root);
    expect(await resolveInRoot(root, '/slash/slash/etc')).toBe(path.join(root, 'etc'));
    expect(await resolveParentInRoot(root, '/lib')).toBe(path.join(root, 'lib'));
    expect(await resolveParentInRoot(root, '/lib/x')).toBe(path.join(root, 'usr/lib/x'));
    await expect(resolveInRoot(root, '/loop1')).rejects.toThrow('too many links');
  });
});

describe('passwd and group', () => {
  it('parses as runc does: blank lines skipped, short lines tolerated, bad numbers read as 0', () => {
    expect(parsePasswd('root:x:0:0:root:/root:/bin/sh\n\n  short:x\nodd:x:abc:12\n')).toEqual([
      { name: 'root', uid: 0, gid: 0, home: '/root', shell: '/bin/sh' },
      { name: 'short', uid: 0, gid: 0, home: '', shell: '' },
      { name: 'odd', uid: 0, gid: 12, home: '', shell: '' },
    ]);
  });

  it('looks names up inside the root, through symlinks, and gives undefined when absent', async () => {
    mkdirSync(path.join(root, 'real'));
    writeFileSync(path.join(root, 'real/passwd'), 'app:x:1000:1001::/home/app:/bin/sh\n');
    writeFileSync(path.join(root, 'real/group'), 'app:x:1001:\n');
    symlinkSync('/real', path.join(root, 'etc'));
    expect(await lookupUser(root, 'app')).toMatchObject({ uid: 1000, gid: 1001 });
    expect(await lookupGroup(root, 'app')).toMatchObject({ gid: 1001 });
    expect(await lookupUser(root, 'nobody')).toBeUndefined();
    expect(await readAccountFile(path.join(root, 'real'), '/nothing/here')).toBeNull();
  });

  it('refuses a FIFO and a huge file with a clear error instead of hanging or reading forever', async () => {
    mkdirSync(path.join(root, 'etc'));
    execFileSync('mkfifo', [path.join(root, 'etc/passwd')]);
    await expect(lookupUser(root, 'x')).rejects.toThrow('/etc/passwd is not a regular file');
    writeFileSync(path.join(root, 'etc/group'), '');
    truncateSync(path.join(root, 'etc/group'), 10 * 1024 * 1024);
    await expect(lookupGroup(root, 'x')).rejects.toThrow(/\/etc\/group is too large \(10485760 bytes/);
  });
});
