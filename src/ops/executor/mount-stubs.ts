import { lstatSync } from 'node:fs';
import path from 'node:path';
import { pathInRoot, resolveInRootSync } from '../../util/fs-safe.js';

/**
 * The mount stubs a run may leave: for /etc/resolv.conf, /etc/hosts and each mount destination
 * that does not exist in the rootfs before the run (runc creates an empty file or directory to
 * mount on), the path, and with `recursive` each missing parent too, deepest first. Paths are
 * rootfs-relative with every symlink already resolved inside the rootfs, so the remover can walk
 * them without following any link (see runc-shim: a symlink found there afterwards stops it).
 */
export function mountStubs(rootfs: string, dests: readonly string[], recursive: boolean): string[] {
  const out: string[] = [];
  for (const d of ['/etc/resolv.conf', '/etc/hosts', ...dests]) {
    const p = path.posix.join('/', d);
    if (p === '/') continue;
    let host = resolveInRootSync(rootfs, p);
    for (;;) {
      if (host === rootfs) break;
      try {
        lstatSync(host);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ENOTDIR') break;
      }
      out.push(pathInRoot(rootfs, host).slice(1));
      if (!recursive) break;
      host = path.dirname(host);
    }
  }
  return out;
}
