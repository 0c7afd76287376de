import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Platform } from '../../gen/buildkit/ops_pb.js';
import { resolveInRoot } from '../../util/fs-safe.js';
import { normalizePlatform } from '../../util/platform.js';
import type { EmulatorInfo } from '../../worker/platforms.js';
import { InvalidArgumentError } from '../../util/errors.js';

/** Where upstream mounts the static emulator in the container (inside the /dev tmpfs: no stub). */
export const QEMU_MOUNT_PATH = '/dev/.buildkit_qemu_emulator';

/** The 32-bit companion a CPU runs natively: it needs no emulator. */
function nativeCompanion(native: string, arch: string): boolean {
  return (native === 'amd64' && arch === '386') || (native === 'arm64' && arch === 'arm');
}

/**
 * How a step for `platform` runs on this host: natively (null), through a binfmt_misc handler the
 * kernel applies by itself (null too), or through the static emulator mounted at QEMU_MOUNT_PATH
 * and put in front of the args (upstream's getEmulator). A platform neither native nor emulated is
 * an error naming what the host supports.
 */
export function emulatorFor(platform: Platform, native: { architecture: string; variant?: string }, emulators: readonly EmulatorInfo[]): { staticPath: string } | null {
  const p = normalizePlatform({ os: platform.OS || 'linux', architecture: platform.Architecture, variant: platform.Variant || undefined });
  if (p.architecture === native.architecture) return null;
  if (nativeCompanion(native.architecture, p.architecture)) return null;
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
 * ELF header patterns of the binaries each emulator runs (e_ident class and byte order, e_type
 * executable or shared object, e_machine), as binfmt_misc magic and mask strings.
 */
const ELF_MAGIC: Record<string, { magic: string; mask: string }> = {
  x86_64: { magic: '7f454c4602010100000000000000000002003e00', mask: 'fffffffffffefe00fffffffffffffffffeffffff' },
  i386: { magic: '7f454c4601010100000000000000000002000300', mask: 'fffffffffffefe00fffffffffffffffffeffffff' },
  aarch64: { magic: '7f454c460201010000000000000000000200b700', mask: 'ffffffffffffff00fffffffffffffffffeffffff' },
  arm: { magic: '7f454c4601010100000000000000000002002800', mask: 'ffffffffffffff00fffffffffffffffffeffffff' },
  riscv64: { magic: '7f454c460201010000000000000000000200f300', mask: 'ffffffffffffff00fffffffffffffffffeffffff' },
  ppc64le: { magic: '7f454c4602010100000000000000000002001500', mask: 'fffffffffffffffcfffffffffffffffffeffff00' },
  s390x: { magic: '7f454c4602020100000000000000000000020016', mask: 'fffffffffffffffcfffffffffffffffffffeffff' },
  mips64el: { magic: '7f454c4602010100000000000000000002000800', mask: 'ffffffffffffff00fefffffffffffffffeffffff' },
  mips64: { magic: '7f454c4602020100000000000000000000020008', mask: 'ffffffffffffff00fefffffffffffffffffeffff' },
};

const hexEscape = (hex: string) => hex.replace(/../g, (b) => '\\x' + b);

/**
 * binfmt_misc registrations for every emulator the host has (never the host's own binaries):
 * written into a step's own binfmt_misc instance, they make the kernel run each foreign binary
 * the step executes, children included, through QEMU. Flags as the usual installers use: P keeps
 * argv[0], O and C pass the binary open and honour its set-id bits, F opens the emulator once, at
 * registration.
 */
export function binfmtRegistrations(native: { architecture: string }, emulators: readonly EmulatorInfo[]): string[] {
  const out = new Map<string, string>();
  for (const e of emulators) {
    const a = e.platform.architecture;
    if (!e.staticPath || a === native.architecture || nativeCompanion(native.architecture, a)) continue;
    const name = path.basename(e.staticPath).replace(/^qemu-/, '').replace(/-static$/, '');
    const elf = ELF_MAGIC[name];
    if (!elf || out.has(name)) continue;
    out.set(name, `:qemu-${name}:M::${hexEscape(elf.magic)}:${hexEscape(elf.mask)}:${e.staticPath}:POCF`);
  }
  return [...out.values()];
}

/**
 * What a step for `platform` that exited 126 is told when QEMU ran only its first process: a child
 * of that platform needs a binfmt_misc handler, which this host lacks and this kernel (before
 * 6.7) cannot give the step on its own.
 */
export function emulationHint(platform: Platform): string {
  const p = normalizePlatform({ os: platform.OS || 'linux', architecture: platform.Architecture, variant: platform.Variant || undefined });
  const name = `linux/${p.architecture}${p.variant ? '/' + p.variant : ''}`;
  return (
    `loom: exit code 126 in a ${name} step is most likely a child process of that platform the kernel could not execute: ` +
    `this host has no binfmt_misc handler for it, and its kernel (before Linux 6.7) cannot give the step one of its own. ` +
    `Register QEMU's handlers on the host (Debian: mount binfmt_misc and run update-binfmts --enable; ` +
    `or docker run --privileged --rm tonistiigi/binfmt --install all), then build again.\n`
  );
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
