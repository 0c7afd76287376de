import { describe, expect, it } from 'vitest';
import { policyPruneOptions } from '../../../src/cache/gc.js';
import { parseConfig } from '../../../src/cli/config.js';

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
    const [a, b] = cfg.worker.oci.gcpolicy!;
    expect(a).toEqual({ all: false, keepBytes: 1e9, maxUsedSpace: 1e10, minFreeSpace: 20 * 2 ** 30, keepDuration: 48 * 3600, filters: [] });
    expect(b).toMatchObject({ all: true, keepBytes: 512e6, maxUsedSpace: 0, minFreeSpace: 0 });
    // Each policy prunes with its limits, as the client's prune with the same values would.
    expect(policyPruneOptions(a!)).toEqual({ all: false, keepBytes: 1e9, maxUsedSpace: 1e10, minFreeSpace: 20 * 2 ** 30, keepDurationMs: 48 * 3600 * 1000, filters: [] });
  });

  it('names a bad size by its key', () => {
    expect(() => parseConfig('[worker.oci]\n[[worker.oci.gcpolicy]]\nmaxUsedSpace = "lots"\n')).toThrow(/worker\.oci\.gcpolicy\[0\]\.maxUsedSpace: invalid size "lots"/);
  });
});
