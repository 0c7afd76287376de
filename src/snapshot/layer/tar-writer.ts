import { createReadStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { once } from 'node:events';
import { LoomError } from '../../util/errors.js';

/**
 * A POSIX (pax) tar writer: USTAR headers, with a pax extended header in front of an entry whose
 * fields do not fit (long or non-ASCII names and link targets, big ids, sizes or times) or that
 * carries xattrs. Values are raw bytes, so binary xattrs (security.capability) survive. This is
 * what Go's archive/tar writes in FormatPAX, which upstream layers and GNU tar agree on.
 *
 * tar-stream is not used for writing: it rewrites mode 0 (whiteouts) to 0644 and encodes pax
 * values as UTF-8 text.
 */

export type TarEntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  /** Relative path, `/`-separated, directories ending in `/`. */
  name: string;
  type: TarEntryType;
  /** Permission and setuid/setgid/sticky bits. */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of content; only for `file`. */
  size?: number;
  /** Seconds since the epoch (integer). */
  mtime: number;
  /** Target of a symlink or hard link. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes, written as SCHILY.xattr.<name> pax records. */
  xattrs?: ReadonlyMap<string, Buffer>;
}

const TYPEFLAG: Record<TarEntryType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

const BLOCK = 512;
const ZERO = Buffer.alloc(BLOCK * 2);

/** Largest value an octal field of `len` bytes holds (len-1 digits and a NUL). */
function octalMax(len: number): number {
  return 8 ** (len - 1) - 1;
}

function isAscii(s: string): boolean {
  // eslint-disable-next-line no-control-regex
  return /^[\x01-\x7f]*$/.test(s);
}

function writeOctal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'ascii');
}

function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.isBuffer(value) ? value : Buffer.from(value), Buffer.from('\n')]);
  // The length prefix counts itself: grow until it is stable.
  let n = body.length + 1;
  while (String(n).length + body.length !== n) n = String(n).length + body.length;
  return Buffer.concat([Buffer.from(String(n)), body]);
}

function encodeHeader(h: {
  name: string;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
}): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(h.name, 0, 100, 'utf8');
  writeOctal(b, 100, 8, h.mode);
  writeOctal(b, 108, 8, h.uid);
  writeOctal(b, 116, 8, h.gid);
  writeOctal(b, 124, 12, h.size);
  writeOctal(b, 136, 12, h.mtime);
  b.fill(0x20, 148, 156); // checksum computed over spaces
  b.write(h.typeflag, 156, 1, 'ascii');
  b.write(h.linkname, 157, 100, 'utf8');
  b.write('ustar\0', 257, 6, 'ascii');
  b.write('00', 263, 2, 'ascii');
  writeOctal(b, 329, 8, h.devmajor);
  writeOctal(b, 337, 8, h.devminor);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return b;
}

export class TarWriter {
  readonly #out: Writable;
  #finished = false;

  constructor(opts: { out: Writable }) {
    this.#out = opts.out;
  }

  async #write(buf: Buffer): Promise<void> {
    if (!this.#out.write(buf)) await once(this.#out, 'drain');
  }

  /** Writes the header (and pax header if needed) of one entry. */
  async #writeHeader(h: TarHeader): Promise<void> {
    const pax: [string, Buffer | string][] = [];
    const size = h.type === 'file' ? (h.size ?? 0) : 0;
    const linkname = h.linkname ?? '';
    let name = h.name;
    if (Buffer.byteLength(name) > 100 || !isAscii(name)) {
      pax.push(['path', name]);
      name = asciiPrefix(name, 100);
    }
    let link = linkname;
    if (Buffer.byteLength(link) > 100 || !isAscii(link)) {
      pax.push(['linkpath', link]);
      link = asciiPrefix(link, 100);
    }
    let { uid, gid, mtime } = h;
    if (uid > octalMax(8) || uid < 0) {
      pax.push(['uid', String(uid)]);
      uid = 0;
    }
    if (gid > octalMax(8) || gid < 0) {
      pax.push(['gid', String(gid)]);
      gid = 0;
    }
    let hsize = size;
    if (size > octalMax(12)) {
      pax.push(['size', String(size)]);
      hsize = 0;
    }
    if (mtime > octalMax(12) || mtime < 0) {
      pax.push(['mtime', String(mtime)]);
      mtime = 0;
    }
    if (h.xattrs) {
      for (const [k, v] of h.xattrs) {
        pax.push(['SCHILY.xattr.' + k, v]);
      }
    }
    if (pax.length > 0) {
      // Go sorts the records by key; keep that for reproducible output.
      pax.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      const data = Buffer.concat(pax.map(([k, v]) => paxRecord(k, v)));
      const dir = h.name.replace(/\/$/, '').split('/').slice(0, -1).join('/');
      const base = h.name.replace(/\/$/, '').split('/').pop() ?? '';
      const paxName = asciiPrefix((dir ? dir + '/' : '') + 'PaxHeaders.0/' + base, 100);
      await this.#write(
        encodeHeader({ name: paxName, typeflag: 'x', mode: 0, uid: 0, gid: 0, size: data.length, mtime: 0, linkname: '', devmajor: 0, devminor: 0 }),
      );
      await this.#write(data);
      await this.#pad(data.length);
    }
    await this.#write(
      encodeHeader({
        name,
        typeflag: TYPEFLAG[h.type],
        mode: h.mode & 0o7777,
        uid,
        gid,
        size: hsize,
        mtime,
        linkname: link,
        devmajor: h.devmajor ?? 0,
        devminor: h.devminor ?? 0,
      }),
    );
  }

  async #pad(n: number): Promise<void> {
    const rem = n % BLOCK;
    if (rem !== 0) await this.#write(ZERO.subarray(0, BLOCK - rem));
  }

  /** An entry without content (anything but a non-empty file). */
  async add(h: TarHeader): Promise<void> {
    if (this.#finished) throw new LoomError('INTERNAL', 'tar writer already finished');
    if (h.type === 'file' && (h.size ?? 0) > 0) throw new LoomError('INTERNAL', `tar entry ${h.name} needs content`);
    await this.#writeHeader(h);
  }

  /** A regular file whose content is read from `source` on the host; its size must not change. */
  async addFile(h: TarHeader, source: string, signal?: AbortSignal): Promise<void> {
    if (this.#finished) throw new LoomError('INTERNAL', 'tar writer already finished');
    const size = h.size ?? 0;
    await this.#writeHeader(h);
    if (size === 0) return;
    let n = 0;
    const rs = createReadStream(source, { end: size - 1, highWaterMark: 256 * 1024, signal });
    for await (const chunk of rs as AsyncIterable<Buffer>) {
      n += chunk.length;
      await this.#write(chunk);
    }
    if (n !== size) throw new LoomError('INTERNAL', `short read of ${source}: ${n} of ${size} bytes (file changed while archived)`);
    await this.#pad(size);
  }

  /** A regular file from memory. */
  async addBuffer(h: TarHeader, data: Buffer): Promise<void> {
    await this.#writeHeader({ ...h, size: data.length });
    if (data.length === 0) return;
    await this.#write(data);
    await this.#pad(data.length);
  }

  /** Writes the end-of-archive blocks. The output stream is left open for the caller to end. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    await this.#write(ZERO);
  }
}

/** A stand-in for the USTAR field when pax carries the real value: ASCII, at most `max` bytes. */
function asciiPrefix(s: string, max: number): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[^\x01-\x7f]/g, '_').slice(0, max);
}
