import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lutimes } from 'node:fs/promises';
import { log as rootLog } from '../../util/log.js';
import { LoomError } from '../../util/errors.js';

/**
 * The few syscalls Node lacks: extended attributes, timestamps with exact nanoseconds (Node's
 * utimes takes a double and rounds the nanoseconds, so a copied file would no longer compare equal
 * to its source in a later diff), and mknod. loom may not add native modules, so they go in
 * batches through one short python3 process per call (python3 is on every machine loom runs on).
 * Batching matters: a tree operation asks once for all its paths.
 *
 * When python3 is missing: xattr reads answer "none" and writes are skipped (with one warning, the
 * degradation upstream applies on filesystems without xattrs), times fall back to Node's rounding
 * lutimes, and mknod to the mknod(1) command.
 *
 * Symlinks are never followed.
 */

const log = rootLog.child({ sub: 'sys-ops' });

const HELPER = String.raw`
import os, sys, json, base64
req = json.load(sys.stdin)
op = req['op']
out = []
def b64(v):
    return base64.b64encode(v).decode('ascii')
if op == 'get':
    name = req['name']
    for p in req['paths']:
        try:
            out.append(b64(os.getxattr(p, name, follow_symlinks=False)))
        except OSError:
            out.append(None)
elif op == 'list':
    for p in req['paths']:
        d = {}
        try:
            for n in os.listxattr(p, follow_symlinks=False):
                try:
                    d[n] = b64(os.getxattr(p, n, follow_symlinks=False))
                except OSError:
                    pass
        except OSError:
            pass
        out.append(d)
elif op == 'set':
    for it in req['items']:
        try:
            os.setxattr(it['path'], it['name'], base64.b64decode(it['value']), follow_symlinks=False)
            out.append(None)
        except OSError as e:
            out.append(e.strerror or str(e))
elif op == 'utimes':
    for it in req['items']:
        try:
            os.utime(it['path'], ns=(int(it['atime']), int(it['mtime'])), follow_symlinks=False)
            out.append(None)
        except OSError as e:
            out.append(e.strerror or str(e))
elif op == 'mknod':
    for it in req['items']:
        try:
            os.mknod(it['path'], int(it['mode']), int(it['rdev']))
            out.append(None)
        except OSError as e:
            out.append(e.strerror or str(e))
json.dump(out, sys.stdout)
`;

let available: boolean | undefined;

/**
 * The system interpreter, not a version-manager shim (a pyenv shim costs ~200 ms a start); -S -E
 * skip site packages and environment for a ~20 ms start.
 */
const PYTHON = ['/usr/bin/python3', '/usr/local/bin/python3'].find((p) => existsSync(p)) ?? 'python3';

async function runHelper(req: unknown): Promise<unknown[] | null> {
  if (available === false) return null;
  const input = JSON.stringify(req);
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, ['-S', '-E', '-c', HELPER], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        if (available === undefined) log.warn('python3 not found: xattrs are not kept, times are rounded to microseconds');
        available = false;
        resolve(null);
      } else {
        reject(new LoomError('INTERNAL', `sys-ops helper failed to start: ${e.message}`, { cause: e }));
      }
    });
    child.on('close', (code) => {
      if (available === false) return;
      if (code !== 0) {
        reject(new LoomError('INTERNAL', `sys-ops helper exited ${code}: ${Buffer.concat(err).toString().trim()}`));
        return;
      }
      available = true;
      try {
        resolve(JSON.parse(Buffer.concat(out).toString('utf8')) as unknown[]);
      } catch (e) {
        reject(new LoomError('INTERNAL', 'sys-ops helper gave unreadable output', { cause: e }));
      }
    });
    // A child that died early closes stdin under us; the close handler reports it.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

/** The value of xattr `name` of each path (null where absent or unreadable). */
export async function getXattr(paths: readonly string[], name: string): Promise<(Buffer | null)[]> {
  if (paths.length === 0) return [];
  const res = await runHelper({ op: 'get', name, paths });
  if (res === null) return paths.map(() => null);
  return res.map((v) => (typeof v === 'string' ? Buffer.from(v, 'base64') : null));
}

/** Every xattr of each path. */
export async function listXattrs(paths: readonly string[]): Promise<Map<string, Buffer>[]> {
  if (paths.length === 0) return [];
  const res = await runHelper({ op: 'list', paths });
  if (res === null) return paths.map(() => new Map());
  return res.map((d) => new Map(Object.entries(d as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64')])));
}

export interface XattrWrite {
  path: string;
  name: string;
  value: Buffer;
}

/** Sets xattrs; returns one error string (or null) per item so callers pick their own policy. */
export async function setXattrs(items: readonly XattrWrite[]): Promise<(string | null)[]> {
  if (items.length === 0) return [];
  const res = await runHelper({
    op: 'set',
    items: items.map((i) => ({ path: i.path, name: i.name, value: i.value.toString('base64') })),
  });
  if (res === null) return items.map(() => 'xattrs unsupported (no python3)');
  return res.map((v) => (typeof v === 'string' ? v : null));
}

/** Copies every xattr of each src onto its dst; errors are returned per pair, not thrown. */
export async function copyXattrs(pairs: readonly { src: string; dst: string }[]): Promise<void> {
  if (pairs.length === 0) return;
  const lists = await listXattrs(pairs.map((p) => p.src));
  const writes: XattrWrite[] = [];
  lists.forEach((m, i) => {
    for (const [name, value] of m) writes.push({ path: pairs[i]!.dst, name, value });
  });
  const errs = await setXattrs(writes);
  errs.forEach((e, i) => {
    // Upstream's copy logs and goes on: xattrs from one filesystem may not fit another.
    if (e) log.debug({ path: writes[i]!.path, xattr: writes[i]!.name, err: e }, 'failed to set xattr');
  });
}

export interface TimesWrite {
  path: string;
  /** Nanoseconds since the epoch. */
  atimeNs: bigint;
  mtimeNs: bigint;
}

/**
 * Sets access and modification times with nanosecond precision, not following symlinks. Throws on
 * the first failure, naming the path.
 */
export async function setTimes(items: readonly TimesWrite[]): Promise<void> {
  if (items.length === 0) return;
  const res = await runHelper({
    op: 'utimes',
    items: items.map((i) => ({ path: i.path, atime: i.atimeNs.toString(), mtime: i.mtimeNs.toString() })),
  });
  if (res === null) {
    for (const i of items) {
      await lutimes(i.path, nsToSeconds(i.atimeNs), nsToSeconds(i.mtimeNs));
    }
    return;
  }
  res.forEach((e, idx) => {
    if (typeof e === 'string') throw new LoomError('INTERNAL', `failed to set times of ${items[idx]!.path}: ${e}`);
  });
}

function nsToSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}

/** Creates a device node, FIFO or socket stub: mode carries the S_IF* type bits. */
export async function mknod(path: string, mode: number, rdev: number): Promise<void> {
  const res = await runHelper({ op: 'mknod', items: [{ path, mode, rdev }] });
  if (res !== null) {
    if (typeof res[0] === 'string') throw new LoomError('INTERNAL', `failed to mknod ${path}: ${res[0]}`);
    return;
  }
  await mknodCommand(path, mode, rdev);
}

async function mknodCommand(path: string, mode: number, rdev: number): Promise<void> {
  const type = mode & 0o170000;
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  const args = ['-m', (mode & 0o7777).toString(8), path];
  if (type === 0o020000) args.push('c', String(major), String(minor));
  else if (type === 0o060000) args.push('b', String(major), String(minor));
  else if (type === 0o010000) args.push('p');
  else throw new LoomError('INTERNAL', `cannot create ${path}: unsupported file type ${type.toString(8)}`);
  await new Promise<void>((resolve, reject) => {
    const child = spawn('mknod', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new LoomError('INTERNAL', `mknod ${path}: ${Buffer.concat(err).toString().trim()}`)),
    );
  });
}
