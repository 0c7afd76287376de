import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SecretFiles } from '../../../src/ops/executor/mounts/secrets.js';

const root = process.getuid?.() === 0;
const dir = mkdtempSync(join(tmpdir(), 'loom-secrets-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!root)('secret files (root: mounts a tmpfs)', () => {
  it("keeps secrets on a tmpfs mounted as upstream's (what a step sees in /proc/mounts), listable by nobody else, gone after release", async () => {
    const secrets = new SecretFiles({ dir: join(dir, 'secrets') });
    const s = await secrets.write(Buffer.from('s3cret'), { uid: 1000, gid: 1001, mode: 0o400 });
    try {
      const line = readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === join(dir, 'secrets'));
      expect(line).toMatch(/^tmpfs \S+ tmpfs rw,nosuid,nodev,noexec,relatime 0 0$/);
      expect(statSync(join(dir, 'secrets')).mode & 0o7777).toBe(0o711);
      const st = statSync(s.path);
      expect([st.uid, st.gid, st.mode & 0o777]).toEqual([1000, 1001, 0o400]);
      expect(readFileSync(s.path, 'utf8')).toBe('s3cret');
    } finally {
      // Unmounted even when an expectation failed: the temporary directory goes afterwards.
      await s.release();
    }
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(join(dir, 'secrets'));
  });
});
