import type { BigIntStats } from 'node:fs';
import { lstat, readlink } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { throwIfAborted } from '../../util/errors.js';
import { sortedNames } from './changes.js';
import { listXattrs } from './sys-ops.js';
import { TarWriter } from './tar-writer.js';
import { headerFor } from './write-layer-tar.js';

/**
 * Writes a whole tree as a tar (the tar exporter's output, as fsutil's WriteTar): every entry below
 * `dir` in layer order (depth first, names sorted by bytes), the root itself left out; directories
 * end in `/`; numeric owners; a file's second and later names become hard links to the first; all
 * xattrs as pax records; sockets left out. The same tree always gives the same bytes.
 * The output is not ended.
 */
export async function writeTreeTar(dir: string, out: Writable, opts: { signal?: AbortSignal } = {}): Promise<void> {
  const root = path.resolve(dir);
  const entries: { rel: string; host: string; st: BigIntStats }[] = [];
  const walk = async (host: string, rel: string): Promise<void> => {
    throwIfAborted(opts.signal);
    for (const name of await sortedNames(host)) {
      const h = path.join(host, name);
      const r = rel === '' ? name : rel + '/' + name;
      const st = await lstat(h, { bigint: true });
      if (st.isSocket()) continue;
      entries.push({ rel: r, host: h, st });
      if (st.isDirectory()) await walk(h, r);
    }
  };
  await walk(root, '');

  const xattrs = await listXattrs(entries.map((e) => e.host));
  const w = new TarWriter({ out });
  const firstName = new Map<string, string>();
  for (const [i, e] of entries.entries()) {
    throwIfAborted(opts.signal);
    const hdr = headerFor(e.rel, e.st);
    if (e.st.isSymbolicLink()) hdr.linkname = await readlink(e.host);
    const x = xattrs[i];
    if (x && x.size > 0) hdr.xattrs = x;
    if (!e.st.isDirectory() && e.st.nlink > 1n) {
      const key = `${e.st.dev}:${e.st.ino}`;
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
