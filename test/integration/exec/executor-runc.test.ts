import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitError } from '../../../src/ops/executor/executor.js';
import type { RuncExecutor } from '../../../src/ops/executor/runc/runc-executor.js';
import { canRunContainers, makeExecutor, makeRootfs, proc, runCollect } from './helpers.js';

describe.skipIf(!canRunContainers())('runc executor (integration, root, real runc)', () => {
  let dir: string;
  let ex: RuncExecutor;
  let n = 0;
  const rootfs = () => makeRootfs(join(dir, `rootfs-${n++}`));

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-exec-'));
    ex = makeExecutor(join(dir, 'state'));
    await ex.init();
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('streams stdout and stderr apart and reports success', async () => {
    const r = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'echo out; echo err >&2']) });
    expect(r.error).toBeNull();
    expect(r.out).toBe('out\n');
    expect(r.err).toBe('err\n');
  });

  it('reports the exit code as upstream words it', async () => {
    const r = await runCollect(ex, { rootfs: rootfs(), mounts: [], process: proc(['sh', '-c', 'exit 3']) });
    expect(r.error).toBeInstanceOf(ExitError);
    expect((r.error as ExitError).exitCode).toBe(3);
    expect(r.error!.message).toBe('exit code: 3');
  });
});
