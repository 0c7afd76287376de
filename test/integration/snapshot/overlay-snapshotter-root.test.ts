import { execFileSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSnapshotter } from '../../../src/snapshot/create.js';
import { applyLayerTar } from '../../../src/snapshot/layer/apply-layer-tar.js';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import { Mounter, readMountInfo } from '../../../src/snapshot/overlay/mounter.js';
import { OverlaySnapshotter } from '../../../src/snapshot/overlay/overlay-snapshotter.js';
import { probeOverlay } from '../../../src/snapshot/overlay/probe.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';
import { LoomError } from '../../../src/util/errors.js';
import { busyboxLayers, HAVE_VECTORS } from '../../unit/snapshot/busybox-image.js';
import { IS_ROOT } from './tree-helpers.js';

/** Needs root and overlay mounts: the overlay snapshotter's mounts, crash cleanup, limits, cost. */
const probeDir = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-probe-'));
const probe = IS_ROOT ? await probeOverlay({ dir: probeDir }) : { ok: false as const, reason: 'not root' };
rmSync(probeDir, { recursive: true, force: true });
if (!probe.ok) console.warn(`skipping overlay snapshotter tests: ${probe.reason}`);

async function mountsUnder(dir: string): Promise<Map<string, string>> {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const out = new Map<string, string>();
  for (const m of await readMountInfo()) {
    if (!m.mountPoint.startsWith(dir + '/')) continue;
    const line = text.split('\n').find((l) => l.split(' ')[4] === m.mountPoint)!;
    out.set(path.relative(dir, m.mountPoint), `${m.fsType} ${line.split(' ')[5]!.split(',')[0]}`);
  }
  return out;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return err instanceof LoomError ? err.code : `not a LoomError: ${String(err)}`;
  }
  return 'no error';
}

describe.skipIf(!probe.ok)('OverlaySnapshotter (root, overlay mounts)', () => {
  let root: string;
  let sn: OverlaySnapshotter;
  const others: OverlaySnapshotter[] = [];
  beforeEach(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'loom-ovl-'));
    sn = new OverlaySnapshotter({ root });
  });
  afterEach(async () => {
    for (const s of [sn, ...others.splice(0)]) await s.close();
    // Nothing of ours may stay mounted, or the delete below would walk into a mount.
    for (const m of (await readMountInfo()).filter((x) => x.mountPoint.startsWith(root + '/')).reverse()) {
      execFileSync('umount', ['-l', m.mountPoint]);
    }
    rmSync(root, { recursive: true, force: true });
  });

  it('mounts a writable overlay while active, a read-only one once committed, nothing for a lone layer', async () => {
    const snaps = path.join(root, 'overlayfs', 'snapshots');
    const base = await sn.prepare('base');
    expect(base).toBe(path.join(snaps, '0', 'fs'));
    writeFileSync(path.join(base, 'f'), 'base');
    await sn.commit('base');
    expect(await sn.dir('base')).toBe(base);

    const child = await sn.prepare('child', 'base');
    expect(child).toBe(path.join(snaps, '1', 'merged'));
    expect(await mountsUnder(snaps)).toEqual(new Map([['1/merged', 'overlay rw']]));
    expect(readFileSync(path.join(child, 'f'), 'utf8')).toBe('base');
    writeFileSync(path.join(child, 'f'), 'child');
    writeFileSync(path.join(child, 'g'), 'g');
    expect(readFileSync(path.join(base, 'f'), 'utf8')).toBe('base');
    // The change landed in the child's own layer only.
    expect(readdirSync(await sn.upperDir('child')).sort()).toEqual(['f', 'g']);

    await sn.commit('child');
    expect(await mountsUnder(snaps)).toEqual(new Map());
    const view = await sn.dir('child');
    expect(view).toBe(path.join(snaps, '1', 'view'));
    expect(await mountsUnder(snaps)).toEqual(new Map([['1/view', 'overlay ro']]));
    expect(readFileSync(path.join(view, 'f'), 'utf8')).toBe('child');
    expect(() => writeFileSync(path.join(view, 'h'), 'x')).toThrow(/EROFS/);
    expect(await sn.dir('child')).toBe(view); // mounted once

    const grand = await sn.prepare('grand', 'child');
    expect(readFileSync(path.join(grand, 'g'), 'utf8')).toBe('g');
    const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.includes('/2/merged'))!;
    expect(line).toMatch(/lowerdir=1\/fs:0\/fs,upperdir=2\/fs,workdir=2\/work/);

    expect(await code(sn.remove('child'))).toBe('FAILED_PRECONDITION');
    await sn.remove('grand');
    await sn.remove('child');
    await sn.remove('base');
    expect(await mountsUnder(snaps)).toEqual(new Map());
    expect(readdirSync(snaps)).toEqual([]);
    expect(await sn.list()).toEqual([]);
  });

  it('counts usage of the snapshot own layer only', async () => {
    const base = await sn.prepare('big');
    writeFileSync(path.join(base, 'big'), Buffer.alloc(1 << 20, 1));
    await sn.commit('big');
    const child = await sn.prepare('small', 'big');
    writeFileSync(path.join(child, 'small'), Buffer.alloc(10_000, 2));
    const u = await sn.usage('small');
    expect(u.inodes).toBe(2); // the layer's root and `small`
    expect(u.size).toBeGreaterThanOrEqual(10_000);
    expect(u.size).toBeLessThan(100_000);
    expect((await sn.usage('big')).size).toBeGreaterThanOrEqual(1 << 20);
  });

  it('serves concurrent dir() calls with one mount', async () => {
    await sn.prepare('a');
    await sn.commit('a');
    await sn.prepare('b', 'a');
    await sn.commit('b');
    const dirs = await Promise.all(Array.from({ length: 8 }, () => sn.dir('b')));
    expect(new Set(dirs).size).toBe(1);
    expect((await readMountInfo()).filter((m) => m.mountPoint === dirs[0]).length).toBe(1);
  });

  it('cleanup() after a crash: unmounts what was left mounted, removes debris, keeps snapshots', async () => {
    const dead = new OverlaySnapshotter({ root });
    others.push(dead);
    const base = await dead.prepare('base');
    writeFileSync(path.join(base, 'f'), 'f');
    await dead.commit('base');
    const active = await dead.prepare('active', 'base');
    writeFileSync(path.join(active, 'work-in-progress'), 'w');
    await dead.prepare('c2', 'base');
    await dead.commit('c2');
    await dead.dir('c2');
    // A prepare cut short between its mount and its metadata: mounted, without info.json.
    const snaps = path.join(root, 'overlayfs', 'snapshots');
    mkdirSync(path.join(snaps, 'zz', 'fs'), { recursive: true });
    mkdirSync(path.join(snaps, 'zz', 'work'));
    mkdirSync(path.join(snaps, 'zz', 'merged'));
    execFileSync('mount', ['-t', 'overlay', '-o', 'lowerdir=0/fs,upperdir=zz/fs,workdir=zz/work', 'overlay', path.join(snaps, 'zz', 'merged')], { cwd: snaps });
    expect((await mountsUnder(snaps)).size).toBe(3);

    const fresh = new OverlaySnapshotter({ root });
    await fresh.cleanup();
    sn = fresh;
    expect(await mountsUnder(snaps)).toEqual(new Map());
    expect(existsSync(path.join(snaps, 'zz'))).toBe(false);
    expect((await fresh.list()).map((s) => `${s.key} ${s.kind}`).sort()).toEqual(['active active', 'base committed', 'c2 committed']);
    // Active snapshots are mounted again on demand, with what was written before the crash.
    const again = await fresh.dir('active');
    expect(readFileSync(path.join(again, 'work-in-progress'), 'utf8')).toBe('w');
    expect(readFileSync(path.join(again, 'f'), 'utf8')).toBe('f');
    await fresh.commit('active');
    // New ids do not collide with debris or old ones.
    await fresh.prepare('next', 'active');
    expect((await fresh.list()).length).toBe(4);
  });

  it('mounts long chains: short relative lowerdirs fit 300 layers in one page', async () => {
    let parent: string | null = null;
    for (let i = 0; i < 300; i++) {
      const key = `l${i}`;
      const dir = await sn.prepare(key, parent);
      writeFileSync(path.join(dir, `f${i}`), String(i));
      await sn.commit(key);
      parent = key;
    }
    const top = await sn.dir('l299');
    expect(readdirSync(top).length).toBe(300);
    expect(readFileSync(path.join(top, 'f0'), 'utf8')).toBe('0');
    const child = await sn.prepare('child', 'l299');
    expect(readFileSync(path.join(child, 'f150'), 'utf8')).toBe('150');
    const changes = await sn.changes('l299');
    expect(changes!.map((c) => `${c.kind} ${c.path}`)).toEqual(['add /f299']);
  }, 120_000);

  it('refuses chains longer than overlayfs allows, naming the snapshot', async () => {
    // A fake deep chain: metadata only, no mounts needed to hit the limit.
    const snaps = path.join(root, 'overlayfs', 'snapshots');
    for (let i = 0; i < 500; i++) {
      const id = i.toString(36);
      mkdirSync(path.join(snaps, id, 'fs'), { recursive: true });
      writeFileSync(path.join(snaps, id, 'info.json'), JSON.stringify({ key: `d${i}`, parent: i ? `d${i - 1}` : null, kind: 'committed', createdAt: 0, committedAt: 0 }));
    }
    const err = await sn.prepare('too-deep', 'd499').catch((e: unknown) => e as LoomError);
    expect(err).toBeInstanceOf(LoomError);
    expect((err as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((err as LoomError).message).toMatch(/too-deep.*500 layers/);
  });
});

describe.skipIf(!probe.ok)('Mounter (root, overlay mounts)', () => {
  it('runs concurrent requests through one helper; errors name the mount point and carry the kernel\'s words', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), "loom-mounter-it's "));
    const m = new Mounter({ cwd: tmp, stateRoot: tmp });
    try {
      const targets = Array.from({ length: 12 }, (_, i) => {
        for (const d of ['l', 'u', 'w', 'm']) mkdirSync(path.join(tmp, `${i}`, d), { recursive: true });
        writeFileSync(path.join(tmp, `${i}`, 'l', 'f'), String(i));
        return path.join(tmp, `${i}`, 'm');
      });
      await Promise.all(targets.map((t, i) => m.mountOverlay({ target: t, lower: [`${i}/l`], upper: `${i}/u`, work: `${i}/w` })));
      targets.forEach((t, i) => expect(readFileSync(path.join(t, 'f'), 'utf8')).toBe(String(i)));
      expect(await Promise.all(targets.map((t) => m.unmount(t)))).toEqual(targets.map(() => true));
      expect(await m.unmount(targets[0]!)).toBe(false);
      const err = await m.mountOverlay({ target: targets[0]!, lower: ['missing/l'], upper: '0/u', work: '0/w' }).catch((e: unknown) => e as LoomError);
      expect((err as LoomError).message).toBe(`failed to mount overlay at ${targets[0]}: No such file or directory`);
      const long = await m.mountOverlay({ target: targets[0]!, lower: Array.from({ length: 400 }, () => 'a-rather-long-layer-name/fs'), upper: '0/u', work: '0/w' }).catch((e: unknown) => e as LoomError);
      expect((long as LoomError).code).toBe('FAILED_PRECONDITION');
    } finally {
      m.close();
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!probe.ok)('createSnapshotter auto (root, overlay mounts)', () => {
  it('picks overlayfs where a test mount works, native on a state dir that is itself overlayfs', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-auto-'));
    const made: Snapshotter[] = [];
    try {
      const a = await createSnapshotter({ root: path.join(tmp, 'plain'), name: 'auto' });
      made.push(a);
      expect(a.name).toBe('overlayfs');
      for (const d of ['l', 'u', 'w', 'm']) mkdirSync(path.join(tmp, d));
      execFileSync('mount', ['-t', 'overlay', '-o', `lowerdir=${tmp}/l,upperdir=${tmp}/u,workdir=${tmp}/w`, 'overlay', path.join(tmp, 'm')]);
      try {
        const b = await createSnapshotter({ root: path.join(tmp, 'm', 'state'), name: 'auto' });
        expect(b.name).toBe('native');
        const err = await createSnapshotter({ root: path.join(tmp, 'm', 'state'), name: 'overlayfs' }).catch((e: unknown) => e as LoomError);
        expect((err as LoomError).code).toBe('FAILED_PRECONDITION');
        expect((err as LoomError).message).toMatch(/not supported as upperdir|wrong fs type|overlay/);
        expect(readdirSync(path.join(tmp, 'm', 'state', 'overlayfs'))).toEqual([]); // the probe cleaned up
      } finally {
        execFileSync('umount', [path.join(tmp, 'm')]);
      }
    } finally {
      for (const s of made) if (s instanceof OverlaySnapshotter) await s.close();
      // A mount point just unmounted can stay busy for a moment on a loaded machine (EBUSY).
      for (let i = 0; ; i++) {
        try {
          rmSync(tmp, { recursive: true, force: true });
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || i >= 20) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    }
  });
});

/**
 * What a build step pays for its snapshot: prepare a child of a busybox-sized parent, get its dir,
 * write one file, commit. Overlay mounts (one mount, one unmount); native copies the parent.
 */
describe.skipIf(!probe.ok || !HAVE_VECTORS)('snapshot cost of one step (root, overlay mounts)', () => {
  it('overlay prepare+dir+commit of a busybox child is cheaper than native', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'loom-cost-'));
    const ov = new OverlaySnapshotter({ root: tmp });
    const nat = new NativeSnapshotter({ root: tmp });
    try {
      const results: Record<string, number> = {};
      for (const [name, sn] of [['overlayfs', ov], ['native', nat]] as const) {
        const base = await sn.prepare('busybox');
        for (const layer of busyboxLayers()) await applyLayerTar(createReadStream(layer).pipe(createGunzip()), base);
        await sn.commit('busybox');
        const times: number[] = [];
        const prepTimes: number[] = [];
        const commitTimes: number[] = [];
        for (let i = 0; i < 15; i++) {
          const t0 = process.hrtime.bigint();
          await sn.prepare(`step${i}`, 'busybox');
          const dir = await sn.dir(`step${i}`);
          const t1 = process.hrtime.bigint();
          writeFileSync(path.join(dir, 'out'), 'x');
          const t2 = process.hrtime.bigint();
          await sn.commit(`step${i}`);
          const t3 = process.hrtime.bigint();
          times.push(Number(t3 - t0) / 1e6);
          prepTimes.push(Number(t1 - t0) / 1e6);
          commitTimes.push(Number(t3 - t2) / 1e6);
        }
        const viewTimes: number[] = [];
        for (let i = 0; i < 15; i++) {
          const t0 = process.hrtime.bigint();
          await sn.dir(`step${i}`);
          viewTimes.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
        const removeT0 = process.hrtime.bigint();
        for (let i = 0; i < 15; i++) await sn.remove(`step${i}`);
        const removeMs = Number(process.hrtime.bigint() - removeT0) / 15e6;
        const med = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
        results[name] = med(times);
        console.log(
          `${name}: prepare+dir+write+commit median ${med(times).toFixed(1)} ms (min ${Math.min(...times).toFixed(1)}; prepare+dir ${med(prepTimes).toFixed(1)}, commit ${med(commitTimes).toFixed(1)}), ` +
            `first dir() after commit ${med(viewTimes).toFixed(1)} ms, remove ${removeMs.toFixed(1)} ms`,
        );
      }
      expect(results.overlayfs!).toBeLessThan(results.native!);
    } finally {
      await ov.close();
      rmSync(tmp, { recursive: true, force: true });
    }
  }, 120_000);
});
