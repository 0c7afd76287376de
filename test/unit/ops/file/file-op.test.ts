import { execFileSync } from 'node:child_process';
import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileActionSchema, FileOpSchema } from '../../../../src/gen/buildkit/ops_pb.js';
import type { Snapshotter } from '../../../../src/snapshot/snapshotter.js';
import { FileActionError, runFileOp } from '../../../../src/ops/file/file-op.js';
import { IS_ROOT } from '../../snapshot/busybox-image.js';
import { SNAPSHOTTERS } from '../../snapshot/snapshotters.js';

type ActionInit = MessageInitShape<typeof FileActionSchema>;

let tmp: string;
let sn: Snapshotter;
let n = 0;
const newKey = () => `k${++n}`;

beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-fileop-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

/** A committed input snapshot built by `fill`. */
async function input(fill: (dir: string) => void): Promise<string> {
  const key = newKey();
  const dir = await sn.prepare(key);
  fill(dir);
  await sn.commit(key);
  return key;
}

const w = (p: string, data = 'x') => {
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, data);
};

/** Runs actions (defaults: chained one after another on input 0, last one output 0). */
async function run(inputs: (string | null)[], actions: ActionInit[]): Promise<string[]> {
  const acts = actions.map((a, i) => ({
    input: i === 0 ? 0n : BigInt(inputs.length + i - 1),
    secondaryInput: -1n,
    output: i === actions.length - 1 ? 0n : -1n,
    ...a,
  }));
  const res = await runFileOp({ op: create(FileOpSchema, { actions: acts }), inputs, snapshotter: sn, newKey });
  return Promise.all(res.outputs.map((o) => sn.dir(o.snapshot)));
}

const mkdir = (p: string, extra: object = {}): ActionInit => ({ action: { case: 'mkdir', value: { path: p, mode: 0o755, timestamp: -1n, ...extra } } });
const mkfile = (p: string, data: string, extra: object = {}): ActionInit => ({
  action: { case: 'mkfile', value: { path: p, mode: 0o644, data: Buffer.from(data), timestamp: -1n, ...extra } },
});
const rm = (p: string, extra: object = {}): ActionInit => ({ action: { case: 'rm', value: { path: p, ...extra } } });
const cp = (src: string, dest: string, extra: object = {}): ActionInit => ({
  secondaryInput: 1n,
  action: { case: 'copy', value: { src, dest, mode: -1, timestamp: -1n, createDestPath: true, ...extra } },
});
const modeOf = (p: string) => (lstatSync(p).mode & 0o7777).toString(8);

// Every test runs on each snapshotter: file ops see snapshots only through the interface.
describe.each(SNAPSHOTTERS)('on $name snapshots', (impl) => {
  beforeEach(() => {
    sn = impl.make(tmp);
  });
  afterEach(() => impl.close(sn));

  describe('file op: mkdir, mkfile, rm, symlink', () => {
    it('applies modes exactly (no umask), owners by id, timestamps', async () => {
      const [out] = await run(
        [null],
        [
          { input: -1n, ...mkdir('/a/b', { makeParents: true, mode: 0o777 }) },
          mkfile('/a/b/f', 'hello', {
            mode: 0o666,
            timestamp: 1_000_000_000_500_000_000n,
            ...(IS_ROOT ? { owner: { user: { user: { case: 'byID', value: 7 } } } } : {}),
          }),
        ],
      );
      expect(modeOf(path.join(out!, 'a'))).toBe('777');
      expect(modeOf(path.join(out!, 'a/b'))).toBe('777');
      expect(lstatSync(path.join(out!, 'a/b/f'), { bigint: true }).mtimeNs).toBe(1_000_000_000_500_000_000n);
      expect(readFileSync(path.join(out!, 'a/b/f'), 'utf8')).toBe('hello');
      expect(modeOf(path.join(out!, 'a/b/f'))).toBe('666');
      if (IS_ROOT) expect([lstatSync(path.join(out!, 'a/b/f')).uid, lstatSync(path.join(out!, 'a/b/f')).gid]).toEqual([7, 7]);
    });

    it('mkdir without parents in a missing directory fails naming the path inside the root', async () => {
      const err = await run([null], [{ input: -1n, ...mkdir('/no/such') }]).catch((e) => e);
      expect(err).toBeInstanceOf(FileActionError);
      expect(err.action).toBe(0);
      expect(err.message).toBe('mkdir /no/such: no such file or directory');
    });

    it('a directory made below a file fails as upstream: lstat of the first name below the file, or mkdir of the file itself', async () => {
      const base = await input((d) => writeFileSync(path.join(d, 'file'), 'x'));
      await expect(run([base], [mkdir('/file/sub/deeper', { makeParents: true })])).rejects.toThrow(/^lstat \/file\/sub: not a directory$/);
      await expect(run([base], [mkdir('/file', { makeParents: true })])).rejects.toThrow(/^mkdir \/file: not a directory$/);
      const src = await input((d) => writeFileSync(path.join(d, 's'), 's'));
      await expect(run([base, src], [cp('/s', '/file/sub/x')])).rejects.toThrow(/^lstat \/file\/sub: not a directory$/);
      await expect(run([base, src], [cp('/s', '/file/x')])).rejects.toThrow(/^mkdir \/file: not a directory$/);
    });

    it('resolves paths inside the root: a symlink to /etc is the root\'s /etc, .. cannot climb', async () => {
      const base = await input((d) => {
        mkdirSync(path.join(d, 'etc'));
        symlinkSync('/etc', path.join(d, 'link'));
        symlinkSync('../../../../..', path.join(d, 'up'));
      });
      const [out] = await run([base], [mkfile('/link/hostname', 'mine'), mkfile('/up/../../x', 'y')]);
      expect(readFileSync(path.join(out!, 'etc/hostname'), 'utf8')).toBe('mine');
      expect(readFileSync(path.join(out!, 'x'), 'utf8')).toBe('y');
      expect(readFileSync('/etc/hostname', 'utf8')).not.toBe('mine');
    });

    it('rm: missing path is an error unless allowNotFound; wildcards; removes a symlink not its target', async () => {
      const base = await input((d) => {
        w(path.join(d, 'logs/a.log'));
        w(path.join(d, 'logs/b.log'));
        w(path.join(d, 'logs/keep.txt'));
        w(path.join(d, 'target/file'));
        symlinkSync('/target', path.join(d, 'ln'));
      });
      const [out] = await run([base], [rm('/logs/*.log', { allowWildcard: true }), rm('/ln'), rm('/nope', { allowNotFound: true })]);
      expect(readdir(out!, 'logs')).toEqual(['keep.txt']);
      expect(existsSync(path.join(out!, 'ln'))).toBe(false);
      expect(existsSync(path.join(out!, 'target/file'))).toBe(true);
      await expect(run([base], [rm('/nope')])).rejects.toThrow(/^lstat \/nope: no such file or directory$/);
    });

    it('symlink action creates the link as given', async () => {
      const [out] = await run([null], [{ input: -1n, action: { case: 'symlink', value: { oldpath: '../t', newpath: '/l', timestamp: -1n } } }]);
      expect(readlinkSync(path.join(out!, 'l'))).toBe('../t');
    });
  });

  const readdir = (...p: string[]) => execFileSync('ls', ['-A', path.join(...p)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);

  describe('file op: copy', () => {
    let src: string;
    let dst: string;
    beforeEach(async () => {
      src = await input((d) => {
        w(path.join(d, 'dir/a'), 'A');
        w(path.join(d, 'dir/sub/b'), 'B');
        linkSync(path.join(d, 'dir/a'), path.join(d, 'dir/a-hard'));
        symlinkSync('dir/a', path.join(d, 'ln'));
        w(path.join(d, 'file'), 'F');
        execFileSync('chmod', ['750', path.join(d, 'dir')]);
        execFileSync('touch', ['-d', '2001-01-01 00:00:00.25', path.join(d, 'file')]);
      });
      dst = await input((d) => w(path.join(d, 'existing/x')));
    });

    it('file to dir/ lands under its name; missing parents are created 0755', async () => {
      const [out] = await run([dst, src], [cp('/file', '/new/place/')]);
      expect(readFileSync(path.join(out!, 'new/place/file'), 'utf8')).toBe('F');
      expect(modeOf(path.join(out!, 'new'))).toBe('755');
      expect(lstatSync(path.join(out!, 'new/place/file'), { bigint: true }).mtimeNs % 1_000_000_000n).toBe(250_000_000n);
    });

    it('a dir is copied as dest when dest is missing, into dest when it exists, contents only with dirCopyContents', async () => {
      const [as, into, contents] = await Promise.all([
        run([dst, src], [cp('/dir', '/copied')]),
        run([dst, src], [cp('/dir', '/existing')]),
        run([dst, src], [cp('/dir', '/existing', { dirCopyContents: true })]),
      ]);
      expect(readdir(as[0]!, 'copied')).toEqual(['a', 'a-hard', 'sub']);
      expect(modeOf(path.join(as[0]!, 'copied'))).toBe('750');
      expect(lstatSync(path.join(as[0]!, 'copied/a-hard')).ino).toBe(lstatSync(path.join(as[0]!, 'copied/a')).ino);
      expect(readdir(into[0]!, 'existing')).toEqual(['dir', 'x']);
      expect(readdir(contents[0]!, 'existing')).toEqual(['a', 'a-hard', 'sub', 'x']);
    });

    it('a name that is not UTF-8 fails the copy with an error saying so, not as a missing file', async () => {
      const odd = await input((d) => {
        mkdirSync(Buffer.from(path.join(d, 'n/d\xff'), 'latin1'), { recursive: true });
        writeFileSync(Buffer.from(path.join(d, 'n/d\xff/f'), 'latin1'), 'x');
      });
      await expect(run([dst, odd], [cp('/n', '/n2')])).rejects.toThrow(/^a file name is not valid UTF-8 \(shown with U\+FFFD\): \/n\/d\uFFFD: loom cannot store such names yet/);
    });

    it('symlinks: copied as links unless followSymlink', async () => {
      const [asLink] = await run([dst, src], [cp('/ln', '/l')]);
      expect(readlinkSync(path.join(asLink!, 'l'))).toBe('dir/a');
      const [followed] = await run([dst, src], [cp('/ln', '/l', { followSymlink: true })]);
      expect(readFileSync(path.join(followed!, 'l'), 'utf8')).toBe('A');
    });

    it('mode and owner (by name from an input\'s /etc/passwd and /etc/group)', async () => {
      if (!IS_ROOT) return;
      const accounts = await input((d) => {
        w(path.join(d, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\nbob:x:1234:1500::/home/bob:/bin/sh\n');
        w(path.join(d, 'etc/group'), 'root:x:0:\nstaff:x:2222:bob\n');
      });
      const owner = {
        user: { user: { case: 'byName' as const, value: { name: 'bob', input: 2n } } },
        group: { user: { case: 'byName' as const, value: { name: 'staff', input: 2n } } },
      };
      const res = await runFileOp({
        op: create(FileOpSchema, {
          actions: [{ input: 0n, secondaryInput: 1n, output: 0n, action: { case: 'copy', value: { src: '/dir', dest: '/d', mode: 0o700, owner, timestamp: -1n, createDestPath: true } } }],
        }),
        inputs: [dst, src, accounts],
        snapshotter: sn,
        newKey,
      });
      const out = await sn.dir(res.outputs[0]!.snapshot);
      for (const p of ['d', 'd/a', 'd/sub/b']) {
        const st = lstatSync(path.join(out, p));
        expect([st.uid, st.gid, (st.mode & 0o777).toString(8)]).toEqual([1234, 2222, '700']);
      }
    });

    it('wildcards (Go filepath.Match), include/exclude patterns, errors as upstream words them', async () => {
      const [wild] = await run([dst, src], [cp('/d?r/s*', '/w/', { allowWildcard: true })]);
      expect(readdir(wild!, 'w')).toEqual(['sub']);
      const [filtered] = await run([dst, src], [cp('/dir', '/f', { includePatterns: ['sub/**'], excludePatterns: ['**/c'] })]);
      expect(readdir(filtered!, 'f')).toEqual(['sub']);
      await expect(run([dst, src], [cp('/zz*', '/w/', { allowWildcard: true })])).rejects.toThrow(/^\/zz\* not found$/);
      await run([dst, src], [cp('/zz*', '/w/', { allowWildcard: true, allowEmptyWildcard: true })]);
      await expect(run([dst, src], [cp('/missing', '/x')])).rejects.toThrow(/^lstat \/missing: no such file or directory$/);
      await expect(run([dst, src], [cp('/file', '/nodir/x', { createDestPath: false })])).rejects.toThrow(
        'failed to stat /nodir/x: lstat /nodir: no such file or directory',
      );
    });
  });

  describe('file op graph', () => {
    it('validates indexes and outputs', async () => {
      const op = (actions: ActionInit[]) => runFileOp({ op: create(FileOpSchema, { actions }), inputs: [null], snapshotter: sn, newKey });
      await expect(op([{ input: 5n, secondaryInput: -1n, output: 0n, ...mkdir('/a') }])).rejects.toThrow('invalid input index 5 of file action 0, 2 provided');
      await expect(op([{ input: -1n, secondaryInput: -1n, output: -1n, ...mkdir('/a') }])).rejects.toThrow('no outputs specified');
      await expect(op([{ input: -1n, secondaryInput: -1n, output: 1n, ...mkdir('/a') }])).rejects.toThrow('missing output index 0');
      await expect(
        op([
          { input: 2n, secondaryInput: -1n, output: 0n, ...mkdir('/a') },
          { input: 1n, secondaryInput: -1n, output: -1n, ...mkdir('/b') },
        ]),
      ).rejects.toThrow(/loop/);
      expect((await sn.list()).length).toBe(0);
    });

    it('an action result used twice is committed and each consumer gets its own copy; outputs keep their parent input', async () => {
      const base = await input((d) => w(path.join(d, 'base')));
      const res = await runFileOp({
        op: create(FileOpSchema, {
          actions: [
            { input: 0n, secondaryInput: -1n, output: -1n, ...mkfile('/shared', 's') },
            { input: 1n, secondaryInput: -1n, output: 0n, ...mkfile('/one', '1') },
            { input: 1n, secondaryInput: -1n, output: 1n, ...mkfile('/two', '2') },
            { input: -1n, secondaryInput: -1n, output: 2n, ...mkfile('/scratch', '3') },
          ],
        }),
        inputs: [base],
        snapshotter: sn,
        newKey,
      });
      const [o1, o2, o3] = await Promise.all(res.outputs.map((o) => sn.dir(o.snapshot)));
      expect(readdir(o1!)).toEqual(['base', 'one', 'shared']);
      expect(readdir(o2!)).toEqual(['base', 'shared', 'two']);
      expect(readdir(o3!)).toEqual(['scratch']);
      expect(res.outputs.map((o) => o.parentInput)).toEqual([0, 0, null]);
      expect(res.retained.length).toBe(1); // the shared intermediate, parent of outputs 0 and 1
      const keys = (await sn.list()).map((i) => i.key).sort();
      expect(keys).toEqual([base, ...res.outputs.map((o) => o.snapshot), ...res.retained].sort());
    });
  });
});
