import { NativeSnapshotter } from './native/native-snapshotter.js';
import type { Snapshotter } from './snapshotter.js';
import { InvalidArgumentError, UnimplementedError } from '../util/errors.js';

/**
 * The snapshotter named by --oci-worker-snapshotter. `auto` picks the best one that works here;
 * today that is `native` (full copies), which works on any filesystem.
 */
export async function createSnapshotter(opts: { root: string; name: string }): Promise<Snapshotter> {
  switch (opts.name) {
    case 'auto':
    case 'native': {
      const s = new NativeSnapshotter({ root: opts.root });
      await s.cleanup();
      return s;
    }
    case 'overlayfs':
    case 'overlay':
      throw new UnimplementedError('the overlayfs snapshotter is not available in loom yet; use --oci-worker-snapshotter native or auto');
    default:
      throw new InvalidArgumentError(`unknown snapshotter ${JSON.stringify(opts.name)}: expected auto, overlayfs or native`);
  }
}
