import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayerTar } from '../../../src/snapshot/layer/apply-layer-tar.js';
import { listXattrs, setXattrs } from '../../../src/snapshot/layer/sys-ops.js';
import { readMountInfo } from '../../../src/snapshot/overlay/mounter.js';
import { OverlaySnapshotter } from '../../../src/snapshot/overlay/overlay-snapshotter.js';
import { probeOverlay } from '../../../src/snapshot/overlay/probe.js';
import { IS_ROOT } from './tree-helpers.js';

/**
 * A layer on a parent, written into the snapshot's upper directory unmounted (as containerd's
 * applier does on BuildKit's overlay snapshotter), gives the tree an apply through a mount gives,
 * without copy-ups: no directory of the layer carries overlay's origin/impure xattrs.
 */
const probeDir = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-probe-'));
const probe = IS_ROOT ? await probeOverlay({ dir: probeDir }) : { ok: false as const, reason: 'not root' };
rmSync(probeDir, { recursive: true, force: true });

type E = { name: string; type?: 'file' | 'directory' | 'symlink'; mode?: number; uid?: number; gid?: number; body?: string; linkname?: string };

async function layer(entries: E[]): Promise<Readable> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise((ok) => pack.on('end', ok));
  for (const e of entries) {
    const type = e.type ?? (e.name.endsWith('/') ? 'directory' : 'file');
    const mode = e.mode ?? (type === 'directory' ? 0o755 : 0o644);
    const h = { name: e.name, type, mode, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: new Date(1_000_000_000_000), linkname: e.linkname };
    await new Promise<void>((ok, fail) => pack.entry(h, type === 'file' ? (e.body ?? '') : undefined, (err) => (err ? fail(err) : ok())));
  }
  pack.finalize();
  await done;
  return Readable.from([Buffer.concat(chunks)]);
}

/** Every path of a tree with type, mode, owner and content: what a build could see. */
function listing(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const n of readdirSync(path.join(root, rel)).sort()) {
      const r = path.join(rel, n);
      const st = lstatSync(path.join(root, r));
      const what = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFile() ? `f:${readFileSync(path.join(root, r), 'utf8')}` : 'other';
      out.push(`${r} ${what} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}

describe.skipIf(!probe.ok)('layers applied into an overlay upper (root, overlay mounts)', () => {
  let root: string;
  let sn: OverlaySnapshotter;
  beforeEach(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-apply-'));
    sn = new OverlaySnapshotter({ root });
  });
  afterEach(async () => {
    await sn.close();
    for (const m of (await readMountInfo()).filter((x) => x.mountPoint.startsWith(root + '/')).reverse()) {
      execFileSync('umount', ['-l', m.mountPoint]);
    }
    rmSync(root, { recursive: true, force: true });
  });

  it('writes whiteouts, opaque dirs and missing parents in overlay form, as an apply through a mount would', async () => {
    const base = await sn.prepare('base', null);
    await applyLayerTar(
      await layer([
        { name: 'usr/' }, { name: 'usr/a', body: 'a' },
        { name: 'etc/' }, { name: 'etc/x', body: 'x' }, { name: 'etc/keep', body: 'k' },
        { name: 'opt/' }, { name: 'opt/old', body: 'o' }, { name: 'opt/sub/' }, { name: 'opt/sub/deep', body: 'd' },
        { name: 'var/', mode: 0o750, uid: 7, gid: 8 }, { name: 'var/lib/', mode: 0o700, uid: 9, gid: 9 },
      ]),
      base,
    );
    expect(await setXattrs([{ path: path.join(base, 'var/lib'), name: 'user.kept', value: Buffer.from('1') }])).toEqual([null]);
    await sn.commit('base');

    const second = [
      { name: 'usr/' }, { name: 'usr/b', body: 'b' },
      { name: 'etc/' }, { name: 'etc/.wh.x' },
      { name: 'opt/' }, { name: 'opt/.wh..wh..opq' }, { name: 'opt/new', body: 'n' },
      // No entries for var/ nor var/lib/: they are made from the parent's.
      { name: 'var/lib/app/f', body: 'f' },
    ];
    const upper = await sn.prepareLayer('direct', 'base');
    expect(upper).not.toBeNull();
    await applyLayerTar(await layer(second), upper!, { overlay: { lowerTree: () => sn.dir('base') } });
    await sn.commit('direct');

    const mounted = await sn.prepare('mounted', 'base');
    await applyLayerTar(await layer(second), mounted);
    await sn.commit('mounted');

    const direct = listing(await sn.dir('direct'));
    expect(direct).toEqual(listing(await sn.dir('mounted')));
    expect(direct).toContain('etc/keep f:k 644 0:0');
    expect(direct.some((l) => l.startsWith('etc/x '))).toBe(false);
    expect(direct.filter((l) => l.startsWith('opt/'))).toEqual(['opt/new f:n 644 0:0']);
    expect(direct).toContain('var d 750 7:8');
    expect(direct).toContain('var/lib d 700 9:9');
    expect(direct).toContain('var/lib/app/f f:f 644 0:0');
    const [libAttrs] = await listXattrs([path.join(await sn.dir('direct'), 'var/lib')]);
    expect(libAttrs!.get('user.kept')?.toString()).toBe('1');

    // The layer's own directories: no copy-up marks, only the opaque marker it asked for.
    const own = await sn.upperDir('direct');
    const dirs = ['usr', 'etc', 'opt', 'var', 'var/lib', 'var/lib/app'];
    const attrs = await listXattrs(dirs.map((d) => path.join(own, d)));
    expect(Object.fromEntries(dirs.map((d, i) => [d, [...attrs[i]!.keys()].sort()]))).toEqual({
      usr: [], etc: [], opt: ['trusted.overlay.opaque'], var: [], 'var/lib': ['user.kept'], 'var/lib/app': [],
    });
    const wh = lstatSync(path.join(own, 'etc/x'));
    expect([wh.isCharacterDevice(), wh.rdev]).toEqual([true, 0]);
    // The mounted apply copied usr up, origin and all: what made `du` differ from upstream.
    const [copied] = await listXattrs([path.join(await sn.upperDir('mounted'), 'usr')]);
    expect([...copied!.keys()]).toContain('trusted.overlay.origin');
    // What a diff of the snapshot reads: the same changes either way.
    const read = async (key: string) => (await sn.changes(key))!.map((c) => `${c.kind} ${c.path}${c.opaque ? ' opaque' : ''}`);
    expect(await read('direct')).toEqual(await read('mounted'));
    expect(await read('direct')).toContain('delete /etc/x');
  });
});
