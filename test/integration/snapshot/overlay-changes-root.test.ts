import { execFileSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, linkSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLayerTar } from '../../../src/snapshot/layer/apply-layer-tar.js';
import { changes as doubleWalk } from '../../../src/snapshot/layer/changes.js';
import { getXattr, setXattrs } from '../../../src/snapshot/layer/sys-ops.js';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import { OverlaySnapshotter } from '../../../src/snapshot/overlay/overlay-snapshotter.js';
import { probeOverlay } from '../../../src/snapshot/overlay/probe.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';
import { writeFileSync as wf } from 'node:fs';
import { bufferStream, describeChanges, IS_ROOT, layerBytes, treeListing } from './tree-helpers.js';

/**
 * Needs root and overlay mounts. The overlay snapshotter's changes() (read from the upper dir)
 * must give the same layer tar, byte for byte, as the double walk of the parent's and the child's
 * trees, and that tar applied on the parent must give the child's tree.
 */
const probeDir = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-probe-'));
const probe = IS_ROOT ? await probeOverlay({ dir: probeDir }) : { ok: false as const, reason: 'not root' };
rmSync(probeDir, { recursive: true, force: true });
if (!probe.ok) console.warn(`skipping overlay changes tests: ${probe.reason}`);

const W = (root: string, p: string, data = p) => {
  mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
  writeFileSync(path.join(root, p), data);
};

/** security.capability v2 granting cap_net_raw: what `setcap cap_net_raw+p` writes. */
const CAP = Buffer.alloc(20);
CAP.writeUInt32LE(0x02000000, 0);
CAP.writeUInt32LE(1 << 13, 4);

/** Each mutation runs on a child of a two-layer parent; its changes are compared both ways. */
const scenarios: Record<string, (d: string) => void | Promise<void>> = {
  adds: (d) => {
    W(d, 'new/dir/file');
    W(d, 'etc/newfile');
    symlinkSync('../etc/newfile', path.join(d, 'newsym'));
    execFileSync('mkfifo', [path.join(d, 'new/fifo')]);
  },
  deletes: (d) => {
    unlinkSync(path.join(d, 'keep/same'));
    rmSync(path.join(d, 'gone'), { recursive: true });
    unlinkSync(path.join(d, 'etc/passwd')); // from the bottom layer
    unlinkSync(path.join(d, 'l1/new')); // from the middle layer
    unlinkSync(path.join(d, 'fifo'));
  },
  'deleted and written again': (d) => {
    unlinkSync(path.join(d, 'keep/edit'));
    W(d, 'keep/edit', 'new');
    W(d, 'tmpfile');
    unlinkSync(path.join(d, 'tmpfile'));
  },
  'dir replaced by file': (d) => {
    rmSync(path.join(d, 'dir2file'), { recursive: true });
    W(d, 'dir2file', 'now a file');
  },
  'file replaced by dir (opaque)': (d) => {
    unlinkSync(path.join(d, 'file2dir'));
    W(d, 'file2dir/inner');
  },
  'symlink replaced by dir (opaque, never looked through)': (d) => {
    unlinkSync(path.join(d, 'hostlink'));
    W(d, 'hostlink/passwd', 'not the host file');
  },
  'opaque dir': (d) => {
    rmSync(path.join(d, 'opq'), { recursive: true });
    W(d, 'opq/two', 'different');
    mkdirSync(path.join(d, 'opq/sub'));
    W(d, 'opq/fresh/x');
  },
  'chmod and chown only': (d) => {
    chmodSync(path.join(d, 'modes/f'), 0o600);
    chmodSync(path.join(d, 'keep'), 0o700);
    chownSync(path.join(d, 'owner/f'), 1000, 1000);
  },
  'mtime only': (d) => {
    utimesSync(path.join(d, 'keep/same'), 1_600_000_000, 1_600_000_000);
  },
  'copied up unchanged (renamed back)': (d) => {
    renameSync(path.join(d, 'same-content'), path.join(d, 'tmp-x'));
    renameSync(path.join(d, 'tmp-x'), path.join(d, 'same-content'));
    renameSync(path.join(d, 'keep/same'), path.join(d, 'keep/tmp'));
    renameSync(path.join(d, 'keep/tmp'), path.join(d, 'keep/same'));
  },
  'hard links: new link to a lower file': (d) => {
    linkSync(path.join(d, 'links/a'), path.join(d, 'links/a2'));
  },
  'hard links: one name of a lower pair written': (d) => {
    appendFileSync(path.join(d, 'links/c'), ' more');
  },
  'hard links: new pair': (d) => {
    W(d, 'hl/x', 'linked');
    linkSync(path.join(d, 'hl/x'), path.join(d, 'hl/y'));
  },
  capabilities: async (d) => {
    const errs = await setXattrs([{ path: path.join(d, 'bin/sh'), name: 'security.capability', value: CAP }]);
    expect(errs).toEqual([null]);
  },
  'everything at once': async (d) => {
    const all = ['mtime only', 'copied up unchanged (renamed back)', 'adds', 'deletes', 'deleted and written again', 'dir replaced by file', 'file replaced by dir (opaque)', 'opaque dir', 'chmod and chown only', 'hard links: new link to a lower file', 'hard links: new pair', 'capabilities'];
    for (const name of all) await scenarios[name]!(d);
  },
};

describe.skipIf(!probe.ok)('overlay snapshotter changes() against the double walk (root, overlay mounts)', () => {
  let root: string;
  let sn: OverlaySnapshotter;
  let n = 0;

  beforeAll(async () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-changes-'));
    sn = new OverlaySnapshotter({ root });
    const d0 = await sn.prepare('layer0');
    W(d0, 'bin/sh', 'shell');
    chmodSync(path.join(d0, 'bin/sh'), 0o755);
    W(d0, 'etc/passwd', 'root:x:0:0::/root:/bin/sh\n');
    W(d0, 'etc/group', 'root:x:0:\n');
    W(d0, 'keep/same');
    W(d0, 'keep/edit', 'old');
    W(d0, 'gone/a/b');
    W(d0, 'dir2file/x');
    W(d0, 'file2dir');
    W(d0, 'opq/one');
    W(d0, 'opq/two');
    W(d0, 'opq/sub/three');
    W(d0, 'links/a');
    linkSync(path.join(d0, 'links/a'), path.join(d0, 'links/b'));
    W(d0, 'links/c');
    linkSync(path.join(d0, 'links/c'), path.join(d0, 'links/d'));
    symlinkSync('/etc', path.join(d0, 'hostlink'));
    W(d0, 'modes/f');
    W(d0, 'owner/f');
    W(d0, 'same-content', 'whole seconds');
    execFileSync('mkfifo', [path.join(d0, 'fifo')]);
    // As if unpacked from a tar: whole-second times, where equality needs a content check.
    utimesSync(path.join(d0, 'same-content'), 1_500_000_000, 1_500_000_000);
    await sn.commit('layer0');
    const d1 = await sn.prepare('layer1', 'layer0');
    unlinkSync(path.join(d1, 'etc/group'));
    W(d1, 'l1/new');
    await sn.commit('layer1');
  });
  afterAll(async () => {
    await sn?.close();
    rmSync(root, { recursive: true, force: true });
  });

  for (const [name, mutate] of Object.entries(scenarios)) {
    it(name, async () => {
      const key = `child${++n}`;
      const dir = await sn.prepare(key, 'layer1');
      await mutate(dir);
      await sn.commit(key);
      const view = await sn.dir(key);
      const parentView = await sn.dir('layer1');

      const fromUpper = await sn.changes(key);
      expect(fromUpper).not.toBeNull();
      const walked = await doubleWalk(parentView, view);
      const a = await layerBytes(fromUpper!, view);
      const b = await layerBytes(walked, view);
      if (!a.equals(b)) {
        expect(describeChanges(fromUpper!)).toEqual(describeChanges(walked));
      }
      expect(a.equals(b)).toBe(true);

      // The layer on a copy of the parent gives the child's tree.
      const check = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-apply-'));
      try {
        execFileSync('cp', ['-a', parentView + '/.', check]);
        await applyLayerTar(bufferStream(a), check);
        expect(treeListing(check)).toEqual(treeListing(view));
      } finally {
        rmSync(check, { recursive: true, force: true });
      }
      await sn.remove(key);
    });
  }

  it('reports whiteouts as deletes only for paths the parent has, and drops copied-up equal entries', async () => {
    const dir = await sn.prepare('shape', 'layer1');
    W(dir, 'made-and-gone');
    unlinkSync(path.join(dir, 'made-and-gone'));
    renameSync(path.join(dir, 'same-content'), path.join(dir, 'x'));
    renameSync(path.join(dir, 'x'), path.join(dir, 'same-content'));
    unlinkSync(path.join(dir, 'keep/edit'));
    await sn.commit('shape');
    // Directories compare by metadata only: /keep lost a child, but is not reported.
    expect(describeChanges((await sn.changes('shape'))!)).toEqual(['delete /keep/edit']);
    await sn.remove('shape');
  });

  it('keeps the parent link of an unchanged name when one name of a lower pair is written', async () => {
    const dir = await sn.prepare('pair', 'layer1');
    appendFileSync(path.join(dir, 'links/c'), ' more');
    await sn.commit('pair');
    const list = (await sn.changes('pair'))!;
    expect(describeChanges(list)).toEqual(['modify /links/c 100000 n1']);
    const view = await sn.dir('pair');
    expect(readFileSync(path.join(view, 'links/d'), 'utf8')).toBe('links/c');
    expect(readFileSync(path.join(view, 'links/c'), 'utf8')).toBe('links/c more');
    await sn.remove('pair');
  });

  it('turns the hidden content of an opaque directory into deletes', async () => {
    const dir = await sn.prepare('opaque', 'layer1');
    rmSync(path.join(dir, 'opq'), { recursive: true });
    W(dir, 'opq/two', 'different');
    unlinkSync(path.join(dir, 'hostlink'));
    W(dir, 'hostlink/passwd', 'not the host file');
    await sn.commit('opaque');
    const upper = await sn.upperDir('opaque');
    expect((await getXattr([path.join(upper, 'opq'), path.join(upper, 'hostlink')], 'trusted.overlay.opaque')).map(String)).toEqual(['y', 'y']);
    expect(describeChanges((await sn.changes('opaque'))!)).toEqual([
      'modify /hostlink 40000 n2',
      'add /hostlink/passwd 100000 n1',
      'delete /opq/one',
      'delete /opq/sub',
      'modify /opq/two 100000 n1',
    ]);
    await sn.remove('opaque');
  });

  it('keeps capabilities in the layer', async () => {
    const dir = await sn.prepare('caps', 'layer1');
    await setXattrs([{ path: path.join(dir, 'bin/sh'), name: 'security.capability', value: CAP }]);
    await sn.commit('caps');
    const list = (await sn.changes('caps'))!;
    expect(list.map((c) => c.path)).toContain('/bin/sh');
    const check = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-caps-'));
    try {
      await applyLayerTar(bufferStream(await layerBytes(list, await sn.dir('caps'))), check);
      expect(await getXattr([path.join(check, 'bin/sh')], 'security.capability')).toEqual([CAP]);
    } finally {
      rmSync(check, { recursive: true, force: true });
    }
    await sn.remove('caps');
  });
});

/**
 * The same mutations on native snapshots give the same layer bytes (once the times the two runs
 * cannot share are stamped equal): a layer's digest does not depend on the snapshotter. Hard-link
 * writes are left out: there overlay and full copies differ by nature (a copied-up name leaves its
 * lower links behind), and each side is checked above.
 */
describe.skipIf(!probe.ok)('overlay and native snapshotters make identical layers (root, overlay mounts)', () => {
  let root: string;
  let ov: OverlaySnapshotter;
  let nat: NativeSnapshotter;
  beforeAll(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-vs-native-'));
    ov = new OverlaySnapshotter({ root });
    nat = new NativeSnapshotter({ root });
  });
  afterAll(async () => {
    await ov?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const build = async (sn: Snapshotter, mutate: (d: string) => void | Promise<void>): Promise<Buffer> => {
    const d0 = await sn.prepare('p0');
    W(d0, 'etc/passwd');
    W(d0, 'keep/same');
    W(d0, 'keep/edit', 'old');
    W(d0, 'gone/a/b');
    W(d0, 'opq/one');
    W(d0, 'opq/sub/two');
    W(d0, 'dir2file/x');
    W(d0, 'modes/f');
    execFileSync('touch', ['-h', '-d', '@1500000000', ...['etc/passwd', 'keep/same', 'keep/edit', 'gone/a/b', 'gone/a', 'gone', 'opq/one', 'opq/sub/two', 'opq/sub', 'opq', 'dir2file/x', 'dir2file', 'modes/f', 'modes', 'keep', 'etc', '.'].map((p) => path.join(d0, p))]);
    await sn.commit('p0');
    const d1 = await sn.prepare('p1', 'p0');
    await mutate(d1);
    // Stamp what changed and the directories above it, so both runs carry the same times.
    const stamp = new Set<string>();
    for (const c of await doubleWalk(await sn.dir('p0'), d1)) {
      if (c.kind !== 'delete') stamp.add(c.path);
      for (let p = path.posix.dirname(c.path); p !== '/'; p = path.posix.dirname(p)) stamp.add(p);
    }
    for (const p of stamp) execFileSync('touch', ['-h', '-d', '@1600000000', path.join(d1, p)]);
    await sn.commit('p1');
    const view = await sn.dir('p1');
    const list = (await sn.changes('p1')) ?? (await doubleWalk(await sn.dir('p0'), view));
    const bytes = await layerBytes(list, view);
    await sn.remove('p1');
    await sn.remove('p0');
    return bytes;
  };

  const mutations: Record<string, (d: string) => void> = {
    'adds, deletes, modes': (d) => {
      W(d, 'new/file');
      unlinkSync(path.join(d, 'keep/same'));
      rmSync(path.join(d, 'gone'), { recursive: true });
      writeFileSync(path.join(d, 'keep/edit'), 'new');
      chmodSync(path.join(d, 'modes/f'), 0o600);
    },
    'opaque dir and dir replaced by file': (d) => {
      rmSync(path.join(d, 'opq'), { recursive: true });
      W(d, 'opq/fresh');
      rmSync(path.join(d, 'dir2file'), { recursive: true });
      W(d, 'dir2file', 'file');
    },
  };

  for (const [name, mutate] of Object.entries(mutations)) {
    it(name, async () => {
      const a = await build(ov, mutate);
      const b = await build(nat, mutate);
      if (!a.equals(b)) expect(tarList(a)).toEqual(tarList(b));
      expect(a.equals(b)).toBe(true);
    });
  }
});

function tarList(b: Buffer): string[] {
  const f = path.join(os.tmpdir(), `loom-tar-${process.pid}.tar`);
  wf(f, b);
  return execFileSync('tar', ['--full-time', '-tvf', f, '--numeric-owner'], { encoding: 'utf8' }).trim().split('\n');
}
