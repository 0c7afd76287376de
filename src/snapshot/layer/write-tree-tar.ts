import type { BigIntStats } from 'node:fs';
import { lstat, readlink } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { throwIfAborted } from '../../util/errors.js';
import { sortedNames } from './changes.js';
import { listXattrs } from './sys-ops.js';
import { TarWriter } from './tar-writer.js';
import { headerFor } from './write-layer-tar.js';
import { subdirLinkname } from '../../util/subdir-fs.js';

/**
 * Writes a whole tree as a tar (the tar exporter's output, as fsutil's WriteTar): every entry below
 * `dir` in layer order (depth first, names sorted by bytes), the root itself left out; directories
 * end in `/`; numeric owners; a file's second and later names (within one tree of `dir`) become hard
 * links to the first; all xattrs as pax records; sockets left out. The same tree always gives the same bytes.
 * `dir` may also be a list of trees, each written under a directory of its own `name` (mode 0755,
 * root's, time 0: upstream's SubDirFS, for a multi-platform result's `linux_arm64/` and so on),
 * where an absolute symlink target gets the directory in front (`/linux_arm64/bin/busybox`).
 * The output is not ended.
 */
export async function writeTreeTar(dir: string | readonly { name: string; dir: string }[], out: Writable, opts: { signal?: AbortSignal; epoch?: Date } = {}): Promise<void> {
  // SOURCE_DATE_EPOCH: every entry's time, the platform directories' included (upstream's tar exporter).
  const epochSec = opts.epoch ? Math.floor(opts.epoch.getTime() / 1000) : undefined;
  const parts = typeof dir === 'string' ? [{ name: '', dir }] : dir;
  const entries: { rel: string; host?: string; st?: BigIntStats; part?: string }[] = [];
  const walk = async (host: string, rel: string, part: string): Promise<void> => {
    throwIfAborted(opts.signal);
    for (const name of await sortedNames(host)) {
      const h = path.join(host, name);
      const r = rel === '' ? name : rel + '/' + name;
      const st = await lstat(h, { bigint: true });
      if (st.isSocket()) continue;
      entries.push({ rel: r, host: h, st, part });
      if (st.isDirectory()) await walk(h, r, part);
    }
  };
  for (const p of parts) {
    if (p.name !== '') entries.push({ rel: p.name });
    await walk(path.resolve(p.dir), p.name, p.name);
  }

  const xattrs = await listXattrs(entries.map((e) => e.host).filter((h): h is string => h !== undefined));
  const w = new TarWriter({ out });
  const firstName = new Map<string, string>();
  let hosts = 0;
  for (const e of entries) {
    throwIfAborted(opts.signal);
    if (!e.host || !e.st) {
      await w.add({ name: `${e.rel}/`, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: epochSec ?? 0 });
      continue;
    }
    const hdr = headerFor(e.rel, e.st);
    // Go's tar writer, which upstream's tar exporter leaves to choose the format, rounds times to
    // the nearest second (layers, written as PAX by containerd, truncate them).
    hdr.mtime = epochSec ?? roundedSeconds(e.st.mtimeNs);
    if (e.st.isSymbolicLink()) {
      hdr.linkname = await readlink(e.host);
      if (e.part) hdr.linkname = subdirLinkname(e.part, hdr.linkname, true);
    }
    const x = xattrs[hosts++];
    if (x && x.size > 0) hdr.xattrs = x;
    if (!e.st.isDirectory() && e.st.nlink > 1n) {
      // Per platform directory: upstream walks each one on its own, so a tree exported for two
      // platforms holds files in both, not links from the second into the first.
      const key = `${e.part ?? ''}:${e.st.dev}:${e.st.ino}`;
      const first = firstName.get(key);
      if (first !== undefined) {
        await w.add({ ...hdr, type: 'link', linkname: first, size: 0 });
        continue;
      }
      firstName.set(key, hdr.name);
    }
    if (hdr.type === 'file' && (hdr.size ?? 0) > 0) await w.addFile(hdr, e.host, opts.signal);
    else await w.add(hdr);
  }
  await w.finish();
}

/** Nanoseconds since 1970 to the nearest second, halves up (Go's Time.Round(time.Second)). */
export function roundedSeconds(ns: bigint): number {
  const q = (ns + 500_000_000n) / 1_000_000_000n;
  // BigInt division truncates toward zero; times before 1970 need the floor.
  return Number((ns + 500_000_000n) % 1_000_000_000n < 0n ? q - 1n : q);
}
