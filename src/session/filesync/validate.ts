import { cleanPath } from '../../util/patterns.js';
import { protocolError } from './errors.js';
import { compareNames } from './walker.js';

/**
 * fsutil's byte order of paths where `/` sorts before every other byte, so a directory's entries
 * come right after it ("a", "a/b", "a.txt").
 */
export function comparePath(p1: string, p2: string): number {
  // By UTF-16 code units while both are below the surrogates: there the order of the first
  // differing code unit is that of the first differing UTF-8 byte (and `/` is one byte either way).
  // This runs for every entry of a listing: no encoding unless needed.
  const m = Math.min(p1.length, p2.length);
  for (let i = 0; i < m; i++) {
    const x = p1.charCodeAt(i);
    const y = p2.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) return comparePathBytes(p1.slice(i), p2.slice(i));
    if ((y !== 0x2f && x < y) || x === 0x2f) return -1;
    return 1;
  }
  return p1.length - p2.length;
}

function comparePathBytes(p1: string, p2: string): number {
  const a = Buffer.from(p1);
  const b = Buffer.from(p2);
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    if ((y !== 0x2f && x < y) || x === 0x2f) return -1;
    return 1;
  }
  return a.length - b.length;
}

/**
 * Checks a listing as it arrives, as fsutil's receiver does: every path clean, relative, inside
 * the root, in walk order, and its parent directory listed before it. The last rule is what keeps
 * a sender from writing through a symlink it sent earlier: a symlink is never a parent.
 */
export class OrderValidator {
  // Stack of open directories and the last name seen in each.
  #parents: { dir: string; last: string }[] = [{ dir: '', last: '' }];

  check(p: string, isDir: boolean): void {
    if (p.includes('\0')) throw protocolError(`invalid path ${JSON.stringify(p)}: contains NUL`, p);
    if (p !== cleanPath(p)) throw protocolError(`unclean path ${JSON.stringify(p)}`, p);
    if (p.startsWith('/')) throw protocolError(`absolute path ${JSON.stringify(p)}`, p);
    if (p === '.' || p === '..' || p.startsWith('../')) throw protocolError(`path ${JSON.stringify(p)} escapes the destination`, p);
    const slash = p.lastIndexOf('/');
    const dir = slash >= 0 ? p.slice(0, slash) : '';
    const base = slash >= 0 ? p.slice(slash + 1) : p;
    // Close directories until the one this path is in (or an ancestor of it) is on top.
    while (this.#parents.length > 1 && comparePath(this.#parents[this.#parents.length - 1]!.dir, dir) > 0) this.#parents.pop();
    const top = this.#parents[this.#parents.length - 1]!;
    if (top.dir !== dir) {
      throw protocolError(`${JSON.stringify(p)} is not inside a directory listed before it (its parent is missing, out of order, or not a directory)`, p);
    }
    if (top.last !== '' && compareNames(top.last, base) >= 0) {
      throw protocolError(`changes out of order: ${JSON.stringify(p)} after ${JSON.stringify(dir === '' ? top.last : `${dir}/${top.last}`)}`, p);
    }
    top.last = base;
    if (isDir) this.#parents.push({ dir: p, last: '' });
  }
}

/** Hard links may only point at a file (not a directory or symlink, not another link) listed before. */
export class HardlinkValidator {
  #seen = new Set<string>();

  check(p: string, opts: { isDir: boolean; isSymlink: boolean; linkname: string }): void {
    if (opts.isDir || opts.isSymlink) return;
    if (opts.linkname !== '') {
      if (!this.#seen.has(opts.linkname)) {
        throw protocolError(`invalid link ${JSON.stringify(p)} to unknown path ${JSON.stringify(opts.linkname)}`, p);
      }
    } else {
      this.#seen.add(p);
    }
  }
}
