import { posix } from 'node:path';

/**
 * A link's target as upstream's SubDirFS shows an entry moved under `sub` (a multi-platform
 * export's `linux_arm64`): a hard link's target moves under `sub`, and so does an absolute
 * symlink's (`/bin/busybox` becomes `/linux_arm64/bin/busybox`); a relative symlink's stays.
 */
export function subdirLinkname(sub: string, linkname: string, symlink: boolean): string {
  if (!symlink) return posix.join(sub, linkname);
  return linkname.startsWith('/') ? posix.join('/' + sub, linkname) : linkname;
}
