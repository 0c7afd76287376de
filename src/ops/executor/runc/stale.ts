import { execFile } from 'node:child_process';
import { readFile, readdir, rm, rmdir } from 'node:fs/promises';
import { readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { log as rootLog } from '../../../util/log.js';

const run = promisify(execFile);
const log = () => rootLog.child({ sub: 'executor' });

/** The executor's directories under the daemon's state root. */
export function executorPaths(stateRoot: string) {
  const base = path.join(path.resolve(stateRoot), 'executor');
  return {
    base,
    runcRoot: path.join(base, 'runc'),
    bundles: path.join(base, 'bundles'),
    secrets: path.join(base, 'secrets'),
    ssh: path.join(base, 'ssh'),
    emulators: path.join(base, 'qemu'),
    /** Upstream keeps it at `<root>/otel-grpc.sock`; loom's executor keeps its files together. */
    traceSocket: path.join(base, 'otel-grpc.sock'),
  };
}

/** Container ids loom makes: never anything a build chose. */
export const CONTAINER_ID_RE = /^loom-[0-9a-f]{24}$/;

/**
 * Cleans what a crashed daemon left: containers in loom's runc root (killed and deleted), bundle
 * directories, ssh sockets, emulator copies, and the secrets tmpfs. Shims kill their container when
 * the daemon dies, so normally there is nothing; this is the backstop. Call once at worker start,
 * before any step runs.
 */
export async function cleanupStale(opts: { stateRoot: string; runc?: string }): Promise<{ containers: string[] }> {
  const p = executorPaths(opts.stateRoot);
  const runc = opts.runc ?? 'runc';
  const removed: string[] = [];
  let list: { id: string }[] = [];
  try {
    const { stdout } = await run(runc, ['--root', p.runcRoot, 'list', '--format', 'json']);
    list = (JSON.parse(stdout || 'null') as { id: string }[] | null) ?? [];
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log().debug({ err: (err as Error).message }, 'runc list failed');
  }
  for (const c of list) {
    if (!CONTAINER_ID_RE.test(c.id)) continue;
    await run(runc, ['--root', p.runcRoot, 'kill', c.id, 'KILL']).catch(() => {});
    await run(runc, ['--root', p.runcRoot, 'delete', '--force', c.id]).catch((err: Error) =>
      log().warn({ id: c.id, err: err.message }, 'failed to delete a stale container'),
    );
    removed.push(c.id);
  }
  if (removed.length) log().info({ containers: removed }, 'removed containers left by an earlier run');
  await unmountUnder(p.base);
  for (const b of await readdir(p.bundles).catch(() => [] as string[])) await removeBundle(path.join(p.bundles, b));
  for (const d of [p.ssh, p.emulators]) await rm(d, { recursive: true, force: true });
  await rmdir(p.secrets).catch(() => {});
  return { containers: removed };
}

/** Unmounts everything mounted at or below `dir` (deepest first): secret tmpfs left by a crash. */
export async function unmountUnder(dir: string): Promise<void> {
  let info: string;
  try {
    info = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return;
  }
  const points = info
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of points) await run('umount', ['-l', m]).catch((err: Error) => log().warn({ mount: m, err: err.message }, 'umount failed'));
}

export async function listBundles(stateRoot: string): Promise<string[]> {
  return readdir(executorPaths(stateRoot).bundles).catch(() => []);
}

/**
 * Removes a bundle directory without ever recursing into a mount: staging entries (mount points
 * of sources the shim bound) are removed one level deep with rmdir/unlink, after a lazy unmount
 * if one is still there. A recursive rm could otherwise delete a cache's or snapshot's content.
 */
export async function removeBundle(bundle: string): Promise<void> {
  // Synchronous calls: a bundle is a few small files, removed after every step.
  const staging = path.join(bundle, 'mnt');
  for (const n of readdirOr(staging)) {
    const e = path.join(staging, n);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        try {
          rmdirSync(e);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOTDIR') throw err;
          unlinkSync(e);
        }
        break;
      } catch (err) {
        if (attempt === 0) await run('umount', ['-l', e]).catch(() => {});
        else log().warn({ path: e, err: (err as Error).message }, 'left a staging mount point in place');
      }
    }
  }
  try {
    rmdirSync(staging);
  } catch {
    /* absent, or a mount point left in place (warned above) */
  }
  for (const f of readdirOr(bundle)) {
    if (f === 'mnt') continue;
    try {
      unlinkSync(path.join(bundle, f));
    } catch {
      /* reported by the rmdir below */
    }
  }
  try {
    rmdirSync(bundle);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log().warn({ bundle, err: (err as Error).message }, 'failed to remove a bundle');
  }
}

function readdirOr(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
