import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import type { Change } from '../../../src/snapshot/layer/change.js';
import { writeLayerTar } from '../../../src/snapshot/layer/write-layer-tar.js';

/** Shared helpers of the snapshot integration tests. */

export const IS_ROOT = process.getuid?.() === 0;

/** The layer tar of `list` read from `dir`, with a fixed whiteout time so runs compare. */
export async function layerBytes(list: readonly Change[], dir: string): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (b: Buffer) => chunks.push(b));
  await writeLayerTar(list, dir, out, { whiteoutTime: new Date(1_700_000_000_000) });
  out.end();
  return Buffer.concat(chunks);
}

export function bufferStream(b: Buffer): Readable {
  return Readable.from([b]);
}

/** One line per change, for readable failure messages. */
export function describeChanges(list: readonly Change[]): string[] {
  return list.map((c) => `${c.kind} ${c.path}${c.stat ? ` ${(Number(c.stat.mode) & 0o170000).toString(8)} n${c.stat.nlink}` : ''}`);
}

/**
 * What a tree holds, times left out: type, permissions, owner, size, content digest or link
 * target, and which paths share an inode.
 */
export function treeListing(root: string): string[] {
  const rows: string[] = [];
  const inodes = new Map<string, string>();
  const visit = (rel: string) => {
    const p = path.join(root, rel);
    const st = lstatSync(p, { bigint: true });
    let what = '';
    if (st.isFile()) {
      what = createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 12);
      if (st.nlink > 1n) {
        const k = `${st.dev}:${st.ino}`;
        const first = inodes.get(k);
        if (first) what += ` =${first}`;
        else inodes.set(k, rel);
      }
    } else if (st.isSymbolicLink()) what = '-> ' + readlinkSync(p);
    else if (st.isCharacterDevice() || st.isBlockDevice()) what = `dev ${st.rdev}`;
    if (rel !== '') rows.push(`${rel} ${(Number(st.mode) & 0o170000).toString(8)} ${(Number(st.mode) & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.isDirectory() ? '' : st.size} ${what}`);
    if (st.isDirectory()) for (const n of readdirSync(p).sort()) visit(rel === '' ? n : rel + '/' + n);
  };
  visit('');
  return rows;
}
