/**
 * Helpers for the executor's integration tests: they need root, runc and Debian's busybox-static.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync, copyFileSync, chmodSync, chownSync } from 'node:fs';
import { join } from 'node:path';
import { RuncExecutor } from '../../../src/ops/executor/runc/runc-executor.js';
import { createNetworkProviders } from '../../../src/ops/executor/network.js';
import type { ProcessSpec, RunRequest } from '../../../src/ops/executor/executor.js';

export const BUSYBOX = '/bin/busybox';

export function canRunContainers(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('runc', ['--version'], { stdio: 'ignore' });
  } catch {
    return false;
  }
  return existsSync(BUSYBOX);
}

/** A minimal rootfs: static busybox with its applets as symlinks, passwd/group, /tmp. */
export function makeRootfs(dir: string): string {
  mkdirSync(join(dir, 'bin'), { recursive: true });
  copyFileSync(BUSYBOX, join(dir, 'bin', 'busybox'));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  const applets = execFileSync(BUSYBOX, ['--list']).toString().split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'busybox') symlinkSync('busybox', join(dir, 'bin', a));
  mkdirSync(join(dir, 'etc'));
  writeFileSync(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  writeFileSync(join(dir, 'etc', 'group'), 'root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n');
  mkdirSync(join(dir, 'tmp'));
  chmodSync(join(dir, 'tmp'), 0o1777);
  mkdirSync(join(dir, 'home', 'app'), { recursive: true });
  chownSync(join(dir, 'home', 'app'), 1000, 1000);
  return dir;
}

export function makeExecutor(stateRoot: string): RuncExecutor {
  return new RuncExecutor({ stateRoot, network: createNetworkProviders({ workerNet: 'host' }), hostArch: 'amd64' });
}

export function proc(args: string[], over: Partial<ProcessSpec> = {}): ProcessSpec {
  return {
    args,
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
    cwd: '/',
    user: '',
    hostname: '',
    extraHosts: [],
    ulimits: [],
    netMode: 'sandbox',
    security: 'sandbox',
    removeMountStubsRecursive: true,
    readonlyRootfs: false,
    cgroupParent: '',
    ...over,
  };
}

/** Runs and collects output; resolves with the error (or null) rather than throwing. */
export async function runCollect(
  ex: RuncExecutor,
  req: Omit<RunRequest, 'signal' | 'stdout' | 'stderr'> & { signal?: AbortSignal },
): Promise<{ out: string; err: string; error: Error | null }> {
  let out = '';
  let err = '';
  try {
    await ex.run({
      ...req,
      signal: req.signal ?? new AbortController().signal,
      stdout: (b) => (out += b.toString()),
      stderr: (b) => (err += b.toString()),
    });
    return { out, err, error: null };
  } catch (e) {
    return { out, err, error: e as Error };
  }
}
