/**
 * fsutil puts Go's `os.FileMode` in `Stat.mode`, not a POSIX `st_mode`: the file type and the
 * setuid/setgid/sticky bits live in the high bits, in Go's own positions. Both ends of the wire
 * must agree on these exact values, so they are spelled out here rather than derived.
 */

export const GoMode = {
  dir: 0x8000_0000, // 1 << 31
  append: 1 << 30,
  exclusive: 1 << 29,
  temporary: 1 << 28,
  symlink: 1 << 27,
  device: 1 << 26,
  namedPipe: 1 << 25,
  socket: 1 << 24,
  setuid: 1 << 23,
  setgid: 1 << 22,
  charDevice: 1 << 21,
  sticky: 1 << 20,
  irregular: 1 << 19,
  perm: 0o777,
} as const;

/** Go's os.ModeType: the bits that make an entry something other than a regular file. */
export const GO_MODE_TYPE =
  (GoMode.dir | GoMode.symlink | GoMode.namedPipe | GoMode.socket | GoMode.device | GoMode.charDevice | GoMode.irregular) >>> 0;

// POSIX st_mode bits (Linux values).
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;
export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;
export const S_ISVTX = 0o1000;

/** Go FileMode (as `uint32`) from a POSIX `st_mode`, as Go's os.Lstat computes it on Linux. */
export function goModeFromPosix(stMode: number): number {
  let m = stMode & 0o777;
  switch (stMode & S_IFMT) {
    case S_IFBLK:
      m |= GoMode.device;
      break;
    case S_IFCHR:
      m |= GoMode.device | GoMode.charDevice;
      break;
    case S_IFDIR:
      m |= GoMode.dir;
      break;
    case S_IFIFO:
      m |= GoMode.namedPipe;
      break;
    case S_IFLNK:
      m |= GoMode.symlink;
      break;
    case S_IFSOCK:
      m |= GoMode.socket;
      break;
    default:
      // S_IFREG: no type bit.
      break;
  }
  if (stMode & S_ISGID) m |= GoMode.setgid;
  if (stMode & S_ISUID) m |= GoMode.setuid;
  if (stMode & S_ISVTX) m |= GoMode.sticky;
  return m >>> 0;
}

/**
 * POSIX `st_mode` (type and permission bits) from a Go FileMode. Unknown or irregular types map
 * to a regular file, as tar and fsutil's disk writer treat them.
 */
export function posixModeFromGo(goMode: number): number {
  const g = goMode >>> 0;
  let m = posixPermFromGo(g);
  if (g & GoMode.dir) m |= S_IFDIR;
  else if (g & GoMode.symlink) m |= S_IFLNK;
  else if (g & GoMode.device) m |= g & GoMode.charDevice ? S_IFCHR : S_IFBLK;
  else if (g & GoMode.namedPipe) m |= S_IFIFO;
  else if (g & GoMode.socket) m |= S_IFSOCK;
  else m |= S_IFREG;
  return m;
}

/** The chmod(2) argument for a Go FileMode: permissions plus setuid/setgid/sticky (Go's syscallMode). */
export function posixPermFromGo(goMode: number): number {
  const g = goMode >>> 0;
  let m = g & 0o777;
  if (g & GoMode.setuid) m |= S_ISUID;
  if (g & GoMode.setgid) m |= S_ISGID;
  if (g & GoMode.sticky) m |= S_ISVTX;
  return m;
}

export function isDirMode(goMode: number): boolean {
  return ((goMode >>> 0) & GoMode.dir) !== 0;
}

export function isSymlinkMode(goMode: number): boolean {
  return ((goMode >>> 0) & GoMode.symlink) !== 0;
}

/** Regular file: no type bit at all. */
export function isRegularMode(goMode: number): boolean {
  return ((goMode >>> 0) & GO_MODE_TYPE) === 0;
}

/**
 * Whether the receiver may ask for this entry's contents. Both ends count on the same answer
 * (fsutil: "needs to match between sender/receiver"): regular files only, hard links included.
 */
export function fileCanRequestData(goMode: number): boolean {
  return isRegularMode(goMode);
}

/** `ls -l` style rendering (Go's FileMode.String), for error messages and tests. */
export function goModeString(goMode: number): string {
  const g = goMode >>> 0;
  const letters = 'dalTLDpSugct?';
  let s = '';
  for (let i = 0; i < letters.length; i++) {
    if (g & ((1 << (31 - i)) >>> 0)) s += letters[i];
  }
  if (s === '') s = '-';
  const rwx = 'rwxrwxrwx';
  for (let i = 0; i < 9; i++) s += g & (1 << (8 - i)) ? rwx[i] : '-';
  return s;
}
