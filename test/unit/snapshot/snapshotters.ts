import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import { OverlaySnapshotter } from '../../../src/snapshot/overlay/overlay-snapshotter.js';
import { probeOverlay, type OverlayFeatures } from '../../../src/snapshot/overlay/probe.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';

/**
 * The snapshotters that tests of snapshot-generic behaviour run against: native always, overlayfs
 * where it works (root, overlay in the kernel, a suitable /tmp), so the same tests hold for both.
 * LOOM_TEST_OVERLAY=0 leaves overlay out.
 */
export interface SnapshotterImpl {
  name: string;
  make(root: string): Snapshotter;
  /** Releases what `make` set up (mounts) so that `root` can be deleted. */
  close(sn: Snapshotter): Promise<void>;
}

let features: OverlayFeatures | null = null;
const roots = new WeakMap<Snapshotter, string>();
if (process.getuid?.() === 0 && process.env.LOOM_TEST_OVERLAY !== '0') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'loom-probe-'));
  const probe = await probeOverlay({ dir });
  rmSync(dir, { recursive: true, force: true });
  if (probe.ok) features = probe.features;
}

export const SNAPSHOTTERS: SnapshotterImpl[] = [
  { name: 'native', make: (root) => new NativeSnapshotter({ root }), close: async () => {} },
  ...(features
    ? [
        {
          name: 'overlayfs',
          make: (root: string) => {
            const sn = new OverlaySnapshotter({ root, features: features! });
            roots.set(sn, path.resolve(root));
            return sn;
          },
          close: async (sn: Snapshotter) => {
            await (sn as OverlaySnapshotter).close();
            // A test that failed halfway may leave a mount the instance did not know of.
            const root = roots.get(sn)!;
            for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
              const mp = line.split(' ')[4];
              if (mp?.startsWith(root + '/')) execFileSync('umount', ['-l', mp]);
            }
          },
        },
      ]
    : []),
];
