// selectorDigest: the digest of exactly the paths a step reads from a tree, which keys a step by
// content. A digest that stays the same when what the step reads changed is a wrong cache hit.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { selectorDigest, selectorsExist } from '../../../src/cache/selector-digest.js';

let tmp: string;
let n = 0;
beforeEach(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-seldigest-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

/** A new tree (a new root: answers are remembered per tree) holding `files` (path -> content). */
function tree(files: Record<string, string>): string {
  const root = path.join(tmp, `t${n++}`);
  mkdirSync(root);
  for (const [p, data] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    writeFileSync(path.join(root, p), data);
  }
  return root;
}

describe('selectorDigest', () => {
  const base = { 'd/a.txt': 'a', 'd/b.txt': 'b', 'd/other.bin': 'o', 'd/sub/c.txt': 'c', 'e/x': 'x' };

  it('digests what a wildcard matches: a change beside the matches keeps it, a change to a match or a new match does not', async () => {
    const d0 = await selectorDigest(tree(base), ['/d/*.txt'], true, true);
    expect(await selectorDigest(tree({ ...base, 'd/other.bin': 'changed', 'd/sub/c.txt': 'changed', 'e/new': 'n' }), ['/d/*.txt'], true, true)).toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/b.txt': 'B' }), ['/d/*.txt'], true, true)).not.toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/new.txt': 'n' }), ['/d/*.txt'], true, true)).not.toBe(d0);
    const { 'd/a.txt': _, ...withoutA } = base;
    expect(await selectorDigest(tree(withoutA), ['/d/*.txt'], true, true)).not.toBe(d0);
  });

  it('follows a matched symlink as the copy does, and tells a match by its name', async () => {
    const t1 = tree({ 'real/f': '1', 'd/keep.txt': 'k' });
    symlinkSync('../real', path.join(t1, 'd/l.txt'));
    const t2 = tree({ 'real/f': '2', 'd/keep.txt': 'k' });
    symlinkSync('../real', path.join(t2, 'd/l.txt'));
    expect(await selectorDigest(t1, ['/d/*.txt'], true, true)).not.toBe(await selectorDigest(t2, ['/d/*.txt'], true, true));
    expect(await selectorDigest(tree({ 'd/a.txt': 'same' }), ['/d/*.txt'], true, true)).not.toBe(await selectorDigest(tree({ 'd/z.txt': 'same' }), ['/d/*.txt'], true, true));
  });

  it('reads glob characters literally without `wildcards`; a pattern whose base is missing matches nothing (the copy fails, not the key)', async () => {
    const t = tree({ 'd/*.txt': 'literal', 'd/a.txt': 'a' });
    const literal = await selectorDigest(t, ['/d/*.txt'], true, false);
    expect(literal).not.toBe(await selectorDigest(t, ['/d/*.txt'], true, true));
    const none = await selectorDigest(tree(base), ['/nothere/*.txt'], true, true);
    expect(none).not.toBe(await selectorDigest(tree({ ...base, 'nothere/a.txt': 'a' }), ['/nothere/*.txt'], true, true));
  });

  it("names a missing path as upstream: as asked through a parent symlink, by the target of a followed last symlink", async () => {
    // Debian's merged /usr: /bin is a symlink to usr/bin.
    const t = tree({ 'usr/bin/sh': 's' });
    symlinkSync('usr/bin', path.join(t, 'bin'));
    symlinkSync('../gone/x', path.join(t, 'usr/bin/dangling'));
    await expect(selectorDigest(t, ['/bin/busybox'], true)).rejects.toThrow(/^"\/bin\/busybox": not found$/);
    await expect(selectorDigest(t, ['/bin/dangling'], true)).rejects.toThrow(/^"\/gone\/x": not found$/);
    await expect(selectorDigest(t, ['/usr/bin/dangling'], true)).rejects.toThrow(/^"\/usr\/gone\/x": not found$/);
  });

  it('digests what include/exclude patterns keep: an excluded file may change, a kept one or a new kept one may not', async () => {
    const ex = { '/d': { include: [], exclude: ['*.bin', 'sub'] } };
    const d0 = await selectorDigest(tree(base), ['/d'], true, false, ex);
    expect(await selectorDigest(tree({ ...base, 'd/other.bin': 'changed', 'd/sub/c.txt': 'changed', 'd/sub/new': 'n', 'e/x': 'y' }), ['/d'], true, false, ex)).toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/a.txt': 'A' }), ['/d'], true, false, ex)).not.toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/new.txt': 'n' }), ['/d'], true, false, ex)).not.toBe(d0);
    // The same tree without patterns, or with others, is another selection.
    expect(await selectorDigest(tree(base), ['/d'], true, false)).not.toBe(d0);
    expect(await selectorDigest(tree(base), ['/d'], true, false, { '/d': { include: [], exclude: ['*.bin'] } })).not.toBe(d0);

    // Include patterns (with an exception below): only what they keep counts, and the directories above it.
    const inc = { '/d': { include: ['sub', '!sub/skip'], exclude: [] } };
    const i0 = await selectorDigest(tree({ ...base, 'd/sub/skip': 's' }), ['/d'], true, false, inc);
    expect(await selectorDigest(tree({ ...base, 'd/sub/skip': 'changed', 'd/a.txt': 'A', 'd/b.txt': 'B' }), ['/d'], true, false, inc)).toBe(i0);
    expect(await selectorDigest(tree({ ...base, 'd/sub/skip': 's', 'd/sub/c.txt': 'C' }), ['/d'], true, false, inc)).not.toBe(i0);
    const tighter = tree({ ...base, 'd/sub/skip': 's' });
    chmodSync(path.join(tighter, 'd/sub'), 0o700);
    expect(await selectorDigest(tighter, ['/d'], true, false, inc)).not.toBe(i0);
  });

  it("with patterns, a path that is not there (or a link to nowhere) is no key error, as upstream's checksum with patterns: the copy fails as it runs", async () => {
    const ex = { '/gone': { include: [], exclude: ['*.md'] }, '/dangling': { include: [], exclude: ['*.md'] } };
    const t = tree(base);
    symlinkSync('nowhere/x', path.join(t, 'dangling'));
    const d0 = await selectorDigest(t, ['/gone'], true, false, ex);
    expect(await selectorDigest(tree({ ...base, 'gone/a.txt': 'a' }), ['/gone'], true, false, ex)).not.toBe(d0);
    await selectorDigest(t, ['/dangling'], true, false, ex);
    await selectorDigest(t, ['/gone'], true, false, ex, true);
    await selectorsExist(t, ['/gone', '/dangling'], true, true, ex);
    // Without patterns, the same paths fail the key.
    await expect(selectorDigest(t, ['/gone'], true)).rejects.toThrow('"/gone": not found');
    // A read with patterns reads the whole tree, as upstream's: a missing parent is then no walk error.
    const fresh = tree(base);
    await selectorsExist(fresh, ['/d'], true, true, { '/d': { include: [], exclude: ['*.md'] } });
    await expect(selectorsExist(fresh, ['/nope/z'], true, true)).rejects.toThrow(/^"\/nope\/z": not found$/);
    await expect(selectorsExist(t, ['/dangling'], true, false)).rejects.toThrow('"/nowhere/x": not found');
  });

  it('fails a COPY --parents path nothing kept is at or below (required paths) as upstream: "/a/b": not found', async () => {
    const t = tree(base);
    const sel = (required: string[]) => ({ '/': { include: ['d/sub'], exclude: [], required } });
    await selectorDigest(t, ['/'], true, false, sel(['/d/sub']));
    // Compared as strings, as upstream's: /d/sub/c.txt counts for /d/s.
    await selectorDigest(t, ['/'], true, false, sel(['/d/s']));
    await expect(selectorDigest(t, ['/'], true, false, sel(['/d/sub/nope']))).rejects.toThrow(/^"\/d\/sub\/nope": not found$/);
    await expect(selectorsExist(t, ['/'], true, true, sel(['/e/x']))).rejects.toThrow(/^"\/e\/x": not found$/);
    // Kept by the include pattern but left out by an exclude one: not there either.
    await expect(selectorDigest(t, ['/'], true, false, { '/': { include: ['d/sub'], exclude: ['**/c.txt'], required: ['/d/sub/c.txt'] } })).rejects.toThrow('"/d/sub/c.txt": not found');
    // A source that is not there at all.
    await expect(selectorDigest(t, ['/q'], true, false, { '/q': { include: ['z'], exclude: [], required: ['/q/z'] } })).rejects.toThrow('"/q/z": not found');
    // A file as the source (COPY --parents d/a.txt/./): upstream's checksum finds nothing below it.
    await expect(selectorDigest(t, ['/d/a.txt'], true, false, { '/d/a.txt': { include: [''], exclude: [], required: ['/d/a.txt'] } })).rejects.toThrow('"/d/a.txt": not found');
  });

  it('digests a path read with several sets of patterns by what each keeps', async () => {
    const two = { '/d': [{ include: ['a.txt'], exclude: [] }, { include: ['sub'], exclude: [] }] };
    const d0 = await selectorDigest(tree(base), ['/d'], true, false, two);
    expect(await selectorDigest(tree({ ...base, 'd/b.txt': 'B', 'e/x': 'y' }), ['/d'], true, false, two)).toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/a.txt': 'A' }), ['/d'], true, false, two)).not.toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/sub/c.txt': 'C' }), ['/d'], true, false, two)).not.toBe(d0);
    await expect(selectorDigest(tree(base), ['/d'], true, false, { '/d': [two['/d'][0]!, { include: ['nope'], exclude: [], required: ['/d/nope'] }] })).rejects.toThrow('"/d/nope": not found');
  });

  it('applies patterns below each match of a wildcard', async () => {
    const sel = { '/d*': { include: [], exclude: ['*.bin'] } };
    const d0 = await selectorDigest(tree(base), ['/d*'], true, true, sel);
    expect(await selectorDigest(tree({ ...base, 'd/other.bin': 'changed' }), ['/d*'], true, true, sel)).toBe(d0);
    expect(await selectorDigest(tree({ ...base, 'd/a.txt': 'A' }), ['/d*'], true, true, sel)).not.toBe(d0);
  });

  it("fails a path whose parent is not there as upstream's lazy read of a tree another step made: in the walk's words, until a directory above it has been read", async () => {
    const t = tree({ 'x/a': 'a', 'etc/passwd': 'p' });
    // A local directory (no lazy read): simply not found.
    await expect(selectorDigest(t, ['/x/b/c'], true)).rejects.toThrow('"/x/b/c": not found');
    // Nothing read yet: the parent is walked first, and is not there.
    const walked = path.join(t, 'x', 'b');
    await expect(selectorsExist(t, ['/x/b/c'], true, true)).rejects.toThrow(`failed to walk ${walked}: lstat ${walked}: no such file or directory`);
    await expect(selectorDigest(t, ['/nope/z'], true, false, undefined, true)).rejects.toThrow(`failed to walk ${path.join(t, 'nope')}: lstat ${path.join(t, 'nope')}: no such file or directory`);
    // A parent below a file: not a directory. (A file as the parent is walked as the file.)
    await expect(selectorsExist(t, ['/etc/passwd/y/z'], true, true)).rejects.toThrow(`failed to walk ${path.join(t, 'etc/passwd/y')}: lstat ${path.join(t, 'etc/passwd/y')}: not a directory`);
    // The paths of one step are read side by side: /etc read for /etc/passwd does not spare
    // /etc/nope/z its walk. Once a step has read /etc, a later step's path under it is not found.
    await expect(selectorsExist(t, ['/etc/passwd', '/etc/nope/z'], true, true)).rejects.toThrow(`failed to walk ${path.join(t, 'etc/nope')}`);
    await expect(selectorsExist(t, ['/etc/nope/y'], true, true)).rejects.toThrow('"/etc/nope/y": not found');
    // And a path there is read as before.
    await expect(selectorsExist(t, ['/x/a'], true, true)).resolves.toBeUndefined();
  });
});
