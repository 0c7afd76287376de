import { describe, expect, it } from 'vitest';
import { policyPruneOptions } from '../../../src/cache/gc.js';
import { diskSpaceBytes, parseConfig, resolveGCPolicy } from '../../../src/cli/config.js';
import { defaultGCPolicy } from '../../../src/cli/daemon.js';

const GiB = 2 ** 30;

describe('buildkitd.toml GC policies', () => {
  it('reads the space limits of BuildKit v0.17+ (reservedSpace, maxUsedSpace, minFreeSpace) and the older keepBytes', () => {
    const cfg = parseConfig(
      [
        '[worker.oci]',
        '  [[worker.oci.gcpolicy]]',
        '    reservedSpace = "1GB"',
        '    maxUsedSpace = "10GB"',
        '    minFreeSpace = "20GiB"',
        '    keepDuration = "48h"',
        '  [[worker.oci.gcpolicy]]',
        '    keepBytes = 512000000',
        '    all = true',
        '',
      ].join('\n'),
    );
    const [a, b] = cfg.worker.oci.gcpolicy!.map((p) => resolveGCPolicy(p, 0));
    // Sizes are go-units RAMInBytes, as upstream's DiskSpace: "GB" and "GiB" are both 2^30.
    expect(a).toEqual({ all: false, keepBytes: GiB, maxUsedSpace: 10 * GiB, minFreeSpace: 20 * GiB, keepDuration: 48 * 3600, filters: [] });
    expect(b).toMatchObject({ all: true, keepBytes: 512e6, maxUsedSpace: 0, minFreeSpace: 0 });
    // Each policy prunes with its limits, as the client's prune with the same values would.
    expect(policyPruneOptions(a!)).toEqual({ all: false, keepBytes: GiB, maxUsedSpace: 10 * GiB, minFreeSpace: 20 * GiB, keepDurationMs: 48 * 3600 * 1000, filters: [] });
  });

  it('takes sizes as a share of the disk, as upstream (whole GB, rounded up)', () => {
    const cfg = parseConfig('[worker.oci]\n[[worker.oci.gcpolicy]]\nminFreeSpace = "20%"\nmaxUsedSpace = "512MB"\n');
    const p = resolveGCPolicy(cfg.worker.oci.gcpolicy![0]!, 100 * GiB);
    expect(p.minFreeSpace).toBe(21e9);
    expect(p.maxUsedSpace).toBe(512 * 2 ** 20);
    expect(diskSpaceBytes({ percent: 10 }, 0)).toBe(2e9);
  });

  it('makes upstream v0.17 default policies from the worker-level keys, and keeps v0.11 ones for gckeepstorage', () => {
    const cfg = parseConfig('[worker.oci]\nreservedSpace = "2GB"\nmaxUsedSpace = "50%"\nminFreeSpace = 1000000\n');
    const oci = cfg.worker.oci;
    const p = defaultGCPolicy({ reservedSpace: oci.reservedSpace, maxUsedSpace: oci.maxUsedSpace, minFreeSpace: oci.minFreeSpace }, 40 * GiB);
    expect(p.map((x) => [x.filters, x.keepDuration, x.keepBytes, x.maxUsedSpace, x.minFreeSpace, x.all])).toEqual([
      [['type==source.local,type==exec.cachemount,type==source.git.checkout'], 48 * 3600, 0, 512e6, 0, false],
      [[], 60 * 24 * 3600, 2 * GiB, 21e9, 1e6, false],
      [[], 0, 2 * GiB, 21e9, 1e6, false],
      [[], 0, 2 * GiB, 21e9, 1e6, true],
    ]);
    const old = parseConfig('[worker.oci]\ngckeepstorage = 3000000000\n').worker.oci;
    expect(defaultGCPolicy({ keepStorage: old.gckeepstorage }, 40 * GiB).map((x) => x.keepBytes)).toEqual([512e6, 3e9, 3e9, 3e9]);
  });

  it('names a bad size by its key', () => {
    expect(() => parseConfig('[worker.oci]\n[[worker.oci.gcpolicy]]\nmaxUsedSpace = "lots"\n')).toThrow(/worker\.oci\.gcpolicy\[0\]\.maxUsedSpace: invalid size "lots"/);
    expect(() => parseConfig('[worker.oci]\nminFreeSpace = "x%"\n')).toThrow(/worker\.oci\.minFreeSpace: invalid size "x%"/);
  });
});
