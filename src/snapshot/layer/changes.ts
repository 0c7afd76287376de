import type { BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { throwIfAborted } from '../../util/errors.js';
import type { Change } from './change.js';
import { getXattr } from './sys-ops.js';

/**
 * The changes that turn `lowerDir` (or an empty tree) into `upperDir`, by walking both trees side
 * by side in layer order: continuity's fs.Changes double walk, which BuildKit's native snapshotter
 * uses for layers and merges.
 *
 * Two entries are the same when they are the same inode, or when mode (type and permission bits),
 * uid, gid, rdev and security.capability are equal and, for non-directories, size and mtime are
 * equal too; if neither mtime has sub-second precision the content (symlink target, file bytes) is
 * compared as well, as such times say too little. Directories are compared by metadata only (their
 * mtime moves with every child). A deleted directory is reported alone, not its children; a
 * directory replaced by a non-directory is one modify.
 */
export interface ChangesOptions {
  signal?: AbortSignal;
  /** Compare security.capability (default true): a `setcap` touches only ctime. */
  capabilities?: boolean;
}

interface Pending {
  change: Change;
  /** Same in both trees and not worth reporting. */
  drop?: boolean;
  /** Set when metadata said "same" for a regular file: capabilities still to compare. */
  capCheck?: { lower: string; upper: string; linked: boolean };
}

export async function changes(lowerDir: string | null, upperDir: string, opts: ChangesOptions = {}): Promise<Change[]> {
  const out: Pending[] = [];
  await walk(lowerDir, upperDir, '/', out, opts.signal);

  if (opts.capabilities !== false) {
    const checks = out.filter((p) => p.capCheck);
    if (checks.length > 0) {
      const [lowerCaps, upperCaps] = await Promise.all([
        getXattr(checks.map((p) => p.capCheck!.lower), 'security.capability'),
        getXattr(checks.map((p) => p.capCheck!.upper), 'security.capability'),
      ]);
      checks.forEach((p, i) => {
        const a = lowerCaps[i] ?? null;
        const b = upperCaps[i] ?? null;
        const equal = a === null || b === null ? a === b : a.equals(b);
        if (equal) markSame(p, p.capCheck!.linked);
      });
    }
  } else {
    for (const p of out) if (p.capCheck) markSame(p, p.capCheck.linked);
  }
  return out.filter((p) => !p.drop).map((p) => p.change);
}

function markSame(p: Pending, linked: boolean): void {
  if (linked) p.change.kind = 'unmodified';
  else p.drop = true;
}

/** Names of a directory in byte order of their UTF-8 encoding (Go's sort order). */
export async function sortedNames(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names.sort(compareNames);
}

export function compareNames(a: string, b: string): number {
  // UTF-16 order equals UTF-8 byte order except around surrogates; fall back to bytes there.
  if (/[\ud800-\udfff]/.test(a) || /[\ud800-\udfff]/.test(b)) return Buffer.compare(Buffer.from(a), Buffer.from(b));
  return a < b ? -1 : a > b ? 1 : 0;
}

async function listDir(dir: string | null): Promise<Map<string, BigIntStats>> {
  const m = new Map<string, BigIntStats>();
  if (dir === null) return m;
  const names = await readdir(dir);
  const stats = await Promise.all(names.map((n) => lstat(path.join(dir, n), { bigint: true })));
  names.forEach((n, i) => m.set(n, stats[i]!));
  return m;
}

async function walk(
  lowerDir: string | null,
  upperDir: string,
  rel: string,
  out: Pending[],
  signal: AbortSignal | undefined,
): Promise<void> {
  throwIfAborted(signal);
  const [lower, upper] = await Promise.all([listDir(lowerDir), listDir(upperDir)]);
  const names = [...new Set([...lower.keys(), ...upper.keys()])].sort(compareNames);
  for (const name of names) {
    const p = rel === '/' ? '/' + name : rel + '/' + name;
    const l = lower.get(name);
    const u = upper.get(name);
    const upperPath = path.join(upperDir, name);
    if (!u) {
      // Deleted: its children go with it, unreported.
      out.push({ change: { kind: 'delete', path: p } });
      continue;
    }
    if (!l) {
      out.push({ change: { kind: 'add', path: p, stat: u } });
      if (u.isDirectory()) await walk(null, upperPath, p, out, signal);
      continue;
    }
    const lowerPath = path.join(lowerDir!, name);
    const pending: Pending = { change: { kind: 'modify', path: p, stat: u } };
    const same = await sameEntry(l, u, lowerPath, upperPath);
    if (same === 'same') {
      const linked = !u.isDirectory() && u.nlink > 1n;
      if (u.isFile()) pending.capCheck = { lower: lowerPath, upper: upperPath, linked };
      else markSame(pending, linked);
    }
    out.push(pending);
    // A directory over a non-directory: everything under it is new. A non-directory over a
    // directory: the lower children vanish with the modify, unreported.
    if (u.isDirectory()) await walk(l.isDirectory() ? lowerPath : null, upperPath, p, out, signal);
  }
}

async function sameEntry(l: BigIntStats, u: BigIntStats, lp: string, up: string): Promise<'same' | 'differ'> {
  if (l.dev === u.dev && l.ino === u.ino) return 'same';
  if (l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid || l.rdev !== u.rdev) return 'differ';
  if (u.isDirectory()) return 'same';
  if (l.size !== u.size) return 'differ';
  const ls = l.mtimeNs / 1_000_000_000n;
  const us = u.mtimeNs / 1_000_000_000n;
  if (ls !== us) return 'differ';
  const lns = l.mtimeNs % 1_000_000_000n;
  const uns = u.mtimeNs % 1_000_000_000n;
  if (lns === 0n && uns === 0n) {
    if (u.isSymbolicLink()) return (await readlink(lp)) === (await readlink(up)) ? 'same' : 'differ';
    if (u.size === 0n || !u.isFile()) return 'same';
    return (await sameContent(lp, up)) ? 'same' : 'differ';
  }
  return lns === uns ? 'same' : 'differ';
}

/** Byte-for-byte equality of two files (shared with the overlay differ). */
export async function sameContent(a: string, b: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const ba = Buffer.alloc(64 * 1024);
    const bb = Buffer.alloc(64 * 1024);
    for (;;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, ba.length, null), fb.read(bb, 0, bb.length, null)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
