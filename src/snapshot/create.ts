import path from 'node:path';
import { NativeSnapshotter } from './native/native-snapshotter.js';
import { OverlaySnapshotter } from './overlay/overlay-snapshotter.js';
import { probeOverlay } from './overlay/probe.js';
import type { Snapshotter } from './snapshotter.js';
import { InvalidArgumentError, LoomError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';

const log = rootLog.child({ sub: 'snapshot' });

/**
 * The snapshotter named by --oci-worker-snapshotter, cleaned of what a crashed daemon left.
 * `auto` picks overlayfs when a test mount in the state directory works (root, a kernel with
 * overlay, a filesystem it accepts as upper: not overlayfs itself, as when loom runs in a
 * container), else native (full copies, works anywhere), and logs which and why, as upstream does.
 * Asking for `overlayfs` where it does not work is an error, not a silent fallback. Each
 * snapshotter needs its own `root` (the worker uses `runc-<name>`, as upstream): a cache index
 * names the snapshots of one snapshotter only.
 */
export async function createSnapshotter(opts: { root: string; name: string }): Promise<Snapshotter> {
  switch (opts.name) {
    case 'auto':
    case 'overlayfs':
    case 'overlay': {
      const probe = await probeOverlay({ dir: path.join(path.resolve(opts.root), 'overlayfs'), helperRoot: opts.root });
      if (probe.ok) {
        const s = new OverlaySnapshotter({ root: opts.root, features: probe.features });
        await s.cleanup();
        if (!probe.features.upperDiff) log.warn('overlay xattrs are unreadable (no python3?): layers are computed by comparing whole trees');
        log.info({ snapshotter: s.name, options: probe.features.options }, 'using the overlayfs snapshotter');
        return s;
      }
      if (opts.name !== 'auto') {
        throw new LoomError('FAILED_PRECONDITION', `the overlayfs snapshotter does not work on ${opts.root}: ${probe.reason}; use --oci-worker-snapshotter native`);
      }
      log.info({ reason: probe.reason }, 'overlayfs is not usable here; using the native snapshotter');
      return native(opts.root);
    }
    case 'native':
      return native(opts.root);
    default:
      throw new InvalidArgumentError(`unknown snapshotter ${JSON.stringify(opts.name)}: expected auto, overlayfs or native`);
  }
}

async function native(root: string): Promise<Snapshotter> {
  const s = new NativeSnapshotter({ root });
  await s.cleanup();
  return s;
}
