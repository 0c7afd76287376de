import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { execUser, resolveUser } from '../../../src/ops/executor/user.js';

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n';
const GROUP = 'root:x:0:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:app\n';

describe('user resolution (runc libcontainer/user semantics)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-user-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const root = (files: Record<string, string>) => {
    const r = mkdtempSync(join(dir, 'r-'));
    mkdirSync(join(r, 'etc'));
    for (const [k, v] of Object.entries(files)) writeFileSync(join(r, 'etc', k), v);
    return r;
  };

  it('resolves a name to its uid, gid and member groups', () => {
    expect(execUser('app', PASSWD, GROUP)).toEqual({ uid: 1000, gid: 1000, additionalGids: [2000, 10], home: '/home/app' });
  });

  it('takes a numeric user as a uid even without a passwd entry', () => {
    expect(execUser('4242', PASSWD, GROUP)).toMatchObject({ uid: 4242, gid: 0 });
    expect(execUser('1000', PASSWD, GROUP)).toMatchObject({ uid: 1000, gid: 1000 });
  });

  it('resolves user:group by name and by id', () => {
    expect(execUser('app:extra', PASSWD, GROUP)).toMatchObject({ uid: 1000, gid: 2000, additionalGids: [] });
    expect(execUser('app:777', PASSWD, GROUP)).toMatchObject({ uid: 1000, gid: 777 });
  });

  it('refuses unknown names with upstream\'s messages', () => {
    expect(() => execUser('ghost', PASSWD, GROUP)).toThrow('unable to find user ghost: no matching entries in passwd file');
    expect(() => execUser('app:ghosts', PASSWD, GROUP)).toThrow('unable to find group ghosts: no matching entries in group file');
    expect(() => execUser('root', null, GROUP)).toThrow('unable to find user root: invalid argument');
  });

  it('reads the rootfs files: default user is root, uid:gid needs no files, primary gid is always listed', async () => {
    const r = root({ passwd: PASSWD, group: GROUP });
    expect(await resolveUser(r, '')).toEqual({ uid: 0, gid: 0, additionalGids: [0], home: '/root' });
    expect(await resolveUser(r, 'app')).toEqual({ uid: 1000, gid: 1000, additionalGids: [1000, 2000, 10], home: '/home/app' });
    const empty = root({});
    expect(await resolveUser(empty, '5:6')).toEqual({ uid: 5, gid: 6, additionalGids: [6], home: '/' });
    expect(await resolveUser(empty, '')).toMatchObject({ uid: 0, gid: 0 });
    await expect(resolveUser(empty, 'root')).rejects.toThrow('unable to find user root');
  });

  it('refuses a FIFO or a huge /etc/passwd instead of hanging or exhausting memory', async () => {
    const fifo = root({});
    execFileSync('mkfifo', [join(fifo, 'etc', 'passwd')]);
    await expect(resolveUser(fifo, 'app')).rejects.toThrow(/passwd is not a regular file/);
    const huge = root({ passwd: 'x'.repeat(5 * 1024 * 1024) });
    await expect(resolveUser(huge, 'app')).rejects.toThrow(/too large/);
  });
});
