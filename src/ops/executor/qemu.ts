import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Platform } from '../../gen/buildkit/ops_pb.js';
import { resolveInRoot } from '../../util/fs-safe.js';
import { normalizePlatform } from '../../util/platform.js';
import type { EmulatorInfo } from '../../worker/platforms.js';
import { InvalidArgumentError } from '../../util/errors.js';

/** Where upstream mounts the static emulator in the container (inside the /dev tmpfs: no stub). */
export const QEMU_MOUNT_PATH = '/dev/.buildkit_qemu_emulator';

/**
 * How a step for `platform` runs on this host: natively (null), through a binfmt_misc handler the
 * kernel applies by itself (null too), or through the static emulator mounted at QEMU_MOUNT_PATH
 * and put in front of the args (upstream's getEmulator). A platform neither native nor emulated is
 * an error naming what the host supports.
 */
export function emulatorFor(platform: Platform, native: { architecture: string; variant?: string }, emulators: readonly EmulatorInfo[]): { staticPath: string } | null {
  const p = normalizePlatform({ os: platform.OS || 'linux', architecture: platform.Architecture, variant: platform.Variant || undefined });
  if (p.architecture === native.architecture) return null;
  // 32-bit companions the CPU runs natively need no emulator.
  if ((native.architecture === 'amd64' && p.architecture === '386') || (native.architecture === 'arm64' && p.architecture === 'arm')) return null;
  const e = emulators.find((x) => x.platform.architecture === p.architecture && (!p.variant || !x.platform.variant || x.platform.variant === p.variant));
  if (!e) {
    const supported = [native.architecture, ...emulators.map((x) => x.platform.architecture + (x.platform.variant ? '/' + x.platform.variant : ''))];
    throw new InvalidArgumentError(
      `no support for running processes with linux/${p.architecture}${p.variant ? '/' + p.variant : ''} platform, supported: ${[...new Set(supported)].map((a) => 'linux/' + a).join(', ')}`,
    );
  }
  if (e.binfmt) return null;
  if (!e.staticPath) return null;
  return { staticPath: e.staticPath };
}

/**
 * The args that run `args` through the mounted emulator. qemu-user does not search PATH, so a bare
 * program name is looked up in the rootfs along the step's PATH (as the kernel's execvp would in
 * the container); `-0` keeps the program's own argv[0] (busybox applets need it).
 */
export async function emulatedArgs(rootfs: string, args: readonly string[], env: readonly string[]): Promise<string[]> {
  const [argv0, ...rest] = args;
  if (argv0 === undefined) return [...args];
  let program = argv0;
  if (!argv0.includes('/')) {
    const pathVar = [...env].reverse().find((e) => e.startsWith('PATH='))?.slice(5) ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
    for (const dir of pathVar.split(':')) {
      if (!dir.startsWith('/')) continue;
      const candidate = path.posix.join(dir, argv0);
      const st = await stat(await resolveInRoot(rootfs, candidate)).catch(() => null);
      if (st?.isFile() && (st.mode & 0o111) !== 0) {
        program = candidate;
        break;
      }
    }
  }
  return [QEMU_MOUNT_PATH, '-0', argv0, program, ...rest];
}
