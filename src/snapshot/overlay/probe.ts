import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { getXattr } from '../layer/sys-ops.js';
import { Mounter } from './mounter.js';

/**
 * What the kernel and the state directory's filesystem allow, found by a test mount in that
 * directory: overlay works on some filesystems and not others (not on overlayfs itself, as in a
 * container, nor on most network filesystems), so only trying tells.
 */
export interface OverlayFeatures {
  /**
   * Options added to every mount. `index=off` (no inode index: a snapshot's layers may be lowers of
   * many mounts at once), `redirect_dir=off` and `metacopy=off` (a renamed directory is copied, a
   * chmod copies data, so the upper dir alone holds every change), each only where the kernel knows
   * it (a kernel without the feature behaves as "off").
   */
  options: string[];
  /**
   * The upper dir can be diffed alone: whiteouts and opaque markers (trusted.* xattrs, read through
   * the sys-ops helper) are readable. Without it, changes() answers null and callers walk both trees.
   */
  upperDiff: boolean;
}

export type ProbeResult = { ok: true; features: OverlayFeatures } | { ok: false; reason: string };

const TUNABLES = ['index', 'redirect_dir', 'metacopy'];

/**
 * Tries an overlay mount under `dir` (created if missing) and cleans up after itself. `helperRoot`:
 * where the mount helper is built if it must be (the worker's state, as its executor; default `dir`).
 */
export async function probeOverlay(opts: { dir: string; helperRoot?: string }): Promise<ProbeResult> {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'loom is not running as root' };
  await mkdir(opts.dir, { recursive: true });
  const base = await mkdtemp(path.join(opts.dir, 'probe-'));
  const mounter = new Mounter({ cwd: base, stateRoot: opts.helperRoot ?? opts.dir });
  const merged = path.join(base, 'merged');
  let mounted = false;
  try {
    for (const d of ['lower/d', 'upper', 'work', 'merged']) await mkdir(path.join(base, d), { recursive: true });
    await writeFile(path.join(base, 'lower/f'), 'f');
    await writeFile(path.join(base, 'lower/d/x'), 'x');
    const spec = (options: string[]) => ({ target: merged, lower: ['lower'], upper: 'upper', work: 'work', options });
    let options = TUNABLES.map((t) => `${t}=off`);
    try {
      await mounter.mountOverlay(spec(options));
    } catch (err) {
      // An older kernel may lack an option: keep those it lists as module parameters (the
      // first attempt loaded the module) and try once more.
      options = TUNABLES.filter((t) => existsSync(`/sys/module/overlay/parameters/${t}`)).map((t) => `${t}=off`);
      try {
        await mounter.mountOverlay(spec(options));
      } catch {
        return { ok: false, reason: (err as Error).message };
      }
    }
    mounted = true;
    // What builds do: delete a lower file, replace a lower directory by a new one.
    await unlink(path.join(merged, 'f'));
    await unlink(path.join(merged, 'd/x'));
    await rmdir(path.join(merged, 'd'));
    await mkdir(path.join(merged, 'd'));
    const wh = await lstat(path.join(base, 'upper/f'), { bigint: true }).catch(() => null);
    if (!wh || !wh.isCharacterDevice() || wh.rdev !== 0n) {
      return { ok: false, reason: `overlay on ${opts.dir} made no whiteout for a deleted file` };
    }
    const [op] = await getXattr([path.join(base, 'upper/d')], 'trusted.overlay.opaque');
    return { ok: true, features: { options, upperDiff: op?.toString() === 'y' } };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  } finally {
    if (mounted) await mounter.unmount(merged, { detach: true }).catch(() => false);
    mounter.close();
    await rm(base, { recursive: true, force: true }).catch(() => undefined);
  }
}
