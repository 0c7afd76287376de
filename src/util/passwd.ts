import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { InvalidArgumentError } from './errors.js';
import { resolveInRootSync } from './fs-safe.js';

/**
 * /etc/passwd and /etc/group of a root filesystem, read the way runc's libcontainer/user reads them
 * (and so BuildKit): one entry a line, fields split on `:`, blank lines skipped, short lines
 * tolerated, unparsable numbers read as 0.
 *
 * The files come from images and build steps, i.e. from users: the read is capped in size and
 * refuses anything but a regular file (a FIFO would block the daemon forever, a device could be
 * endless).
 */

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** Large enough for any real account database; a bigger file is an error, not a slow read. */
export const ACCOUNT_FILE_MAX_BYTES = 4 * 1024 * 1024;

function atoi(s: string): number {
  // Go's strconv.Atoi as runc uses it: errors read as 0.
  if (!/^[+-]?\d+$/.test(s)) return 0;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : 0;
}

function lines(text: string): string[][] {
  const out: string[][] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    out.push(line.split(':'));
  }
  return out;
}

export function parsePasswd(text: string): PasswdEntry[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    uid: atoi(f[2] ?? ''),
    gid: atoi(f[3] ?? ''),
    home: f[5] ?? '',
    shell: f[6] ?? '',
  }));
}

export function parseGroup(text: string): GroupEntry[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    gid: atoi(f[2] ?? ''),
    members: f[3] ? f[3].split(',') : [],
  }));
}

/**
 * Reads a file of a root filesystem (resolved inside it), or null when it does not exist (also when
 * a component is not a directory, as upstream treats ENOTDIR). Refuses non-regular files and files
 * over `maxBytes`. The calls are synchronous: an account file is a few kilobytes (at most
 * `maxBytes`), read at every step's start, where a thread-pool round trip per call cost more than
 * the reads.
 */
export async function readAccountFile(
  root: string,
  file: string,
  maxBytes = ACCOUNT_FILE_MAX_BYTES,
): Promise<string | null> {
  const host = resolveInRootSync(root, file);
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = openSync(host, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new InvalidArgumentError(`failed to open ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new InvalidArgumentError(`${file} is not a regular file`);
    if (st.size > maxBytes) {
      throw new InvalidArgumentError(`${file} is too large (${st.size} bytes, at most ${maxBytes})`);
    }
    const buf = Buffer.alloc(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, n);
      if (got === 0) break;
      n += got;
      // More bytes than fstat said: the file grows under us; refuse rather than read without end.
      if (n >= buf.length) throw new InvalidArgumentError(`${file} changed while being read`);
    }
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** The first passwd entry named `name` in the root filesystem, or undefined (also when no file). */
export async function lookupUser(root: string, name: string): Promise<PasswdEntry | undefined> {
  const text = await readAccountFile(root, '/etc/passwd');
  if (text === null) return undefined;
  return parsePasswd(text).find((u) => u.name === name);
}

/** The first group entry named `name` in the root filesystem, or undefined (also when no file). */
export async function lookupGroup(root: string, name: string): Promise<GroupEntry | undefined> {
  const text = await readAccountFile(root, '/etc/group');
  if (text === null) return undefined;
  return parseGroup(text).find((g) => g.name === name);
}
