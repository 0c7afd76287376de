/**
 * Merges on overlay keep the inputs' common base as the merged snapshot's parent and link the other
 * layers' files into its own layer (upstream's merge snapshotter). The tree must be exactly the one
 * the plain merge (every layer applied to an empty tree) gives: random layers with deletes, type
 * changes, directories deleted and made again, links, modes and owners, compared entry by entry.
 */
import { chmodSync, linkSync, lchownSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { childChain, mergeChains, type LayerRef } from '../../../../src/ops/merge-diff/chain.js';
import { materializeChain } from '../../../../src/ops/merge-diff/materialize.js';
import { runMerge } from '../../../../src/ops/merge-diff/merge-op.js';
import { applyChanges } from '../../../../src/snapshot/layer/apply-changes.js';
import { listXattrs } from '../../../../src/snapshot/layer/sys-ops.js';
import type { Snapshotter } from '../../../../src/snapshot/snapshotter.js';
import { SNAPSHOTTERS } from '../../snapshot/snapshotters.js';
import { prng } from '../../../helpers/prng.js';

const overlay = SNAPSHOTTERS.filter((s) => s.name === 'overlayfs');

/** Every entry under `root`: type, mode, owner, size, time, link target, content; not inode numbers or link counts. */
function listing(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const p = path.join(rel, name);
      const st = lstatSync(path.join(root, p), { bigint: true });
      let what = '';
      if (st.isDirectory()) what = 'dir';
      else if (st.isSymbolicLink()) what = `link ${readlinkSync(path.join(root, p))}`;
      else if (st.isFile()) what = `file ${readFileSync(path.join(root, p), 'utf8')}`;
      else what = `other ${st.rdev}`;
      const mtime = st.isSymbolicLink() ? '' : ` ${st.mtimeNs}`;
      out.push(`${p} ${what} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid}${mtime}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk('.');
  return out;
}

describe.each(overlay)('merges on a base ($name)', (impl) => {
  let tmp: string;
  let sn: Snapshotter;
  let n = 0;
  const newKey = () => `m${++n}`;
  beforeEach(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-mergebase-'));
    sn = impl.make(tmp);
  });
  afterEach(async () => {
    await impl.close(sn);
    rmSync(tmp, { recursive: true, force: true });
  });

  async function step(parent: LayerRef | null, change: (dir: string) => void): Promise<LayerRef> {
    const key = newKey();
    const dir = await sn.prepare(key, parent?.snapshot ?? null);
    change(dir);
    await sn.commit(key);
    return { snapshot: key, chain: childChain(parent, key) };
  }

  /** Random edits of a tree: files, directories, symlinks, hard links, deletes and type changes. */
  function mutate(r: () => number, dir: string, tag: string): void {
    const names = ['a', 'b', 'c', 'd'];
    const pick = () => {
      const depth = 1 + Math.floor(r() * 3);
      return Array.from({ length: depth }, () => names[Math.floor(r() * names.length)]).join('/');
    };
    const edits = 4 + Math.floor(r() * 8);
    for (let i = 0; i < edits; i++) {
      const p = path.join(dir, pick());
      const kind = r();
      let st: ReturnType<typeof lstatSync> | null = null;
      try {
        st = lstatSync(p);
      } catch {
        /* absent */
      }
      try {
        if (kind < 0.3) {
          if (st) rmSync(p, { recursive: true, force: true });
          mkdirSync(path.dirname(p), { recursive: true });
          writeFileSync(p, `${tag}-${i}`);
          chmodSync(p, r() < 0.5 ? 0o644 : 0o750);
          if (r() < 0.3) lchownSync(p, 1000 + i, 2000);
          utimesSync(p, 1_600_000_000 + i, 1_600_000_000 + i);
        } else if (kind < 0.45) {
          if (st && !st.isDirectory()) rmSync(p, { force: true });
          mkdirSync(p, { recursive: true });
          chmodSync(p, r() < 0.5 ? 0o755 : 0o700);
        } else if (kind < 0.7) {
          if (st) rmSync(p, { recursive: true, force: true });
        } else if (kind < 0.8) {
          if (st) rmSync(p, { recursive: true, force: true });
          mkdirSync(path.dirname(p), { recursive: true });
          symlinkSync(`../target-${tag}`, p);
        } else if (kind < 0.9) {
          // A hard link to a file of this tree, when there is one at another random path.
          const other = path.join(dir, pick());
          if (lstatSync(other, { throwIfNoEntry: false })?.isFile() && !st) {
            mkdirSync(path.dirname(p), { recursive: true });
            linkSync(other, p);
          }
        } else if (st?.isDirectory()) {
          // Deleted and made again: the new directory must not show the old content.
          rmSync(p, { recursive: true, force: true });
          mkdirSync(p);
          writeFileSync(path.join(p, 'fresh'), tag);
        }
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTDIR' && code !== 'EEXIST' && code !== 'ENOENT') throw err;
      }
    }
  }

  it.each(Array.from({ length: 40 }, (_, i) => i + 1))('seed %i: same tree as the plain merge, base left as a lower', async (seed) => {
    const r = prng(seed);
    // A base: an "image" of two layers and a step on it.
    let base = await step(null, (d) => mutate(r, d, 'img0'));
    base = await step(base, (d) => mutate(r, d, 'img1'));
    base = await step(base, (d) => mutate(r, d, 'run'));
    // Inputs merged on it: COPY --link-like layers from scratch, and a step on another base.
    const inputs: LayerRef[] = [base];
    const count = 1 + Math.floor(r() * 3);
    for (let i = 0; i < count; i++) {
      if (r() < 0.6) inputs.push(await step(null, (d) => mutate(r, d, `link${i}`)));
      else {
        const other = await step(null, (d) => mutate(r, d, `other${i}`));
        inputs.push(await step(other, (d) => mutate(r, d, `on-other${i}`)));
      }
    }
    const merged = (await runMerge({ inputs, snapshotter: sn, newKey }))!;
    expect(merged.parent).toBe(base.snapshot);
    // The reference: the base's own tree, mounted and written through the kernel's overlay by
    // the generic apply (copies, no links), one layer after another. (Not the plain merge from an
    // empty tree: layer changes leave out directories whose only change is their time, which the
    // base's real tree has.)
    const refKey = newKey();
    const target = await sn.prepare(refKey, base.snapshot);
    for (const pair of mergeChains(inputs).slice(base.chain.length)) {
      await applyChanges(pair.lower === null ? null : await sn.dir(pair.lower), await sn.dir(pair.upper), target);
    }
    await sn.commit(refKey);
    expect(listing(await sn.dir(merged.snapshot))).toEqual(listing(await sn.dir(refKey)));
    // And without times, the plain merge gives the same tree.
    const plainKey = newKey();
    await materializeChain({ snapshotter: sn, key: plainKey, chain: mergeChains(inputs) });
    const timeless = (l: string[]) => l.map((e) => e.replace(/ \d+$/, ''));
    expect(timeless(listing(await sn.dir(merged.snapshot)))).toEqual(timeless(listing(await sn.dir(plainKey))));
  });

  it('links the layers after the base, keeps the base files as they are, hides what a layer deleted, and marks a directory made again opaque', async () => {
    const base = await step(null, (d) => {
      mkdirSync(path.join(d, 'etc/conf.d'), { recursive: true });
      writeFileSync(path.join(d, 'etc/conf.d/old'), 'old');
      writeFileSync(path.join(d, 'etc/passwd'), 'root');
      mkdirSync(path.join(d, 'data'));
      writeFileSync(path.join(d, 'data/x'), 'x');
    });
    const copied = await step(null, (d) => {
      mkdirSync(path.join(d, 'app'));
      writeFileSync(path.join(d, 'app/f'), 'f');
    });
    // A layer that deletes /etc/conf.d and makes it again with new content.
    const other = await step(null, (d) => {
      mkdirSync(path.join(d, 'etc/conf.d'), { recursive: true });
      writeFileSync(path.join(d, 'etc/conf.d/old'), 'x');
    });
    const remade = await step(other, (d) => {
      rmSync(path.join(d, 'etc/conf.d'), { recursive: true });
      mkdirSync(path.join(d, 'etc/conf.d'));
      writeFileSync(path.join(d, 'etc/conf.d/new'), 'new');
    });
    // /data: a file in one layer, a directory again in the next.
    const dataFile = await step(null, (d) => writeFileSync(path.join(d, 'data'), 'file'));
    const dataDir = await step(null, (d) => {
      mkdirSync(path.join(d, 'data'));
      writeFileSync(path.join(d, 'data/y'), 'y');
    });
    const merged = (await runMerge({ inputs: [base, copied, remade, dataFile, dataDir], snapshotter: sn, newKey }))!;
    const dir = await sn.dir(merged.snapshot);
    expect(readdirSync(path.join(dir, 'etc/conf.d')).sort()).toEqual(['new']);
    expect(readdirSync(path.join(dir, 'data')).sort()).toEqual(['y']);
    expect(readFileSync(path.join(dir, 'etc/passwd'), 'utf8')).toBe('root');
    // Linked: the copied file is the layer's inode (two links), the base's file is not linked.
    expect(lstatSync(path.join(dir, 'app/f')).nlink).toBe(2);
    expect(lstatSync(path.join(dir, 'etc/passwd')).nlink).toBe(1);
    // The merged snapshot's own layer holds only what came after the base: a whiteout for the
    // deleted file, an opaque directory where a file hid the base's directory.
    const own = await sn.upperDir!(merged.snapshot);
    expect(readdirSync(own).sort()).toEqual(['app', 'data', 'etc']);
    const wh = lstatSync(path.join(own, 'etc/conf.d/old'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    const [x] = await listXattrs([path.join(own, 'data')]);
    expect(x!.get('trusted.overlay.opaque')?.toString()).toBe('y');
  });
});
