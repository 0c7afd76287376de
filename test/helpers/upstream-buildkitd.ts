import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlClient } from '../../src/client/control-client.js';

/**
 * An upstream buildkitd for checks of loom's client side against the real daemon: the binary in
 * $LOOM_UPSTREAM_BUILDKITD or /opt/upstream/bin/buildkitd (built locally, never part of loom).
 * Tests using it skip where it is absent or not root (`upstreamBuildkitdAvailable`).
 */
export const UPSTREAM_BUILDKITD = process.env.LOOM_UPSTREAM_BUILDKITD ?? '/opt/upstream/bin/buildkitd';
export const upstreamBuildkitdAvailable = existsSync(UPSTREAM_BUILDKITD) && process.getuid?.() === 0;

export interface UpstreamBuildkitd {
  dir: string;
  client: ControlClient;
  stop(): Promise<void>;
}

/** Starts one on a private root and socket (native snapshotter) and connects loom's client to it. */
export async function startUpstreamBuildkitd(prefix: string): Promise<UpstreamBuildkitd> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const sock = join(dir, 'bk.sock');
  const daemon: ChildProcess = spawn(UPSTREAM_BUILDKITD, ['--root', join(dir, 'root'), '--addr', `unix://${sock}`, '--oci-worker-snapshotter', 'native'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  daemon.stderr!.on('data', (d) => (log += String(d)));
  for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
  if (!existsSync(sock)) throw new Error(`buildkitd did not start:\n${log}`);
  const client = new ControlClient({ address: `unix://${sock}` });
  return {
    dir,
    client,
    async stop() {
      client.close();
      if (daemon.exitCode === null) {
        daemon.kill('SIGTERM');
        await new Promise((r) => daemon.once('exit', r));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
