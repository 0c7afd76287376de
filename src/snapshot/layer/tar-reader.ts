import type { Readable } from 'node:stream';
import { InvalidArgumentError } from '../../util/errors.js';
import type { TarEntryType } from './tar-writer.js';

/**
 * A tar reader for layers: USTAR, pax (per-entry and global headers; binary-safe values so
 * SCHILY.xattr records keep their bytes), GNU long names and links, base-256 numbers. Sparse files
 * and multi-volume archives are refused with an error naming the entry.
 *
 * Usage: `for await (const e of readTar(stream)) { ... await e.body() or e.skip() ... }`: each
 * entry's content must be consumed (or skipped) before the next entry is asked for.
 */

export interface TarEntry {
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds, possibly fractional (pax mtime). */
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
  /** The content, in chunks. */
  stream(): AsyncGenerator<Buffer>;
}

const BLOCK = 512;

class ByteReader {
  readonly #it: AsyncIterator<Buffer | string>;
  #buf: Buffer = Buffer.alloc(0);
  #eof = false;

  constructor(input: Readable) {
    this.#it = input[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const r = await this.#it.next();
    if (r.done) {
      this.#eof = true;
      return false;
    }
    const chunk = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    return true;
  }

  /** Exactly n bytes, or fewer only at end of input. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) if (!(await this.#fill())) break;
    const out = this.#buf.subarray(0, Math.min(n, this.#buf.length));
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  /** Up to n bytes (at least one unless at end). */
  async chunk(n: number): Promise<Buffer> {
    if (this.#buf.length === 0) await this.#fill();
    const out = this.#buf.subarray(0, Math.min(n, this.#buf.length));
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }

  /** Reads the input to its end, discarding it. */
  async drain(): Promise<void> {
    this.#buf = Buffer.alloc(0);
    while (await this.#fill()) this.#buf = Buffer.alloc(0);
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

function cstr(b: Buffer, off: number, len: number): string {
  const f = b.subarray(off, off + len);
  const z = f.indexOf(0);
  return f.subarray(0, z === -1 ? f.length : z).toString('utf8');
}

function num(b: Buffer, off: number, len: number, what: string, entry: string): number {
  const f = b.subarray(off, off + len);
  if (f[0]! & 0x80) {
    // base-256: big-endian two's complement, top bit of the first byte is the marker.
    let v = BigInt(f[0]! & 0x7f);
    if (f[0]! & 0x40) v -= 0x80n;
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new InvalidArgumentError(`invalid tar header: ${what} of ${entry} out of range`);
    }
    return Number(v);
  }
  const s = f.toString('ascii').replace(/[\0 ]+$/, '').replace(/^[ ]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new InvalidArgumentError(`invalid tar header: ${what} ${JSON.stringify(s)} of ${entry}`);
  return parseInt(s, 8);
}

function checksumOk(b: Buffer): boolean {
  const stored = num(b, 148, 8, 'checksum', '?');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : b[i]!;
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  return stored === unsigned || stored === signed;
}

function parsePax(data: Buffer, entry: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  let off = 0;
  while (off < data.length) {
    const sp = data.indexOf(0x20, off);
    if (sp === -1) break;
    const lenStr = data.subarray(off, sp).toString('ascii');
    if (!/^\d+$/.test(lenStr)) throw new InvalidArgumentError(`invalid pax header of ${entry}`);
    const len = parseInt(lenStr, 10);
    if (len <= sp - off + 1 || off + len > data.length || data[off + len - 1] !== 0x0a) {
      throw new InvalidArgumentError(`invalid pax record in header of ${entry}`);
    }
    const rec = data.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw new InvalidArgumentError(`invalid pax record in header of ${entry}`);
    m.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    off += len;
  }
  return m;
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

export async function* readTar(input: Readable, opts: { drain?: boolean } = {}): AsyncGenerator<TarEntry> {
  const r = new ByteReader(input);
  // With `drain`, whatever follows the end blocks is read too, as Docker's Untar reads its input
  // to the end: an input that fails there fails the read.
  const end = async () => {
    if (opts.drain) await r.drain();
  };
  let global = new Map<string, Buffer>();
  let local: Map<string, Buffer> | null = null;
  let longName: string | null = null;
  let longLink: string | null = null;
  let index = 0;
  try {
    for (;;) {
      const block = await r.read(BLOCK);
      if (block.length === 0) return; // no end blocks at all: tolerated, as Go and GNU tar do
      if (block.length < BLOCK) throw new InvalidArgumentError(`truncated tar: header ${index} is cut short`);
      if (block.every((x) => x === 0)) return await end();
      index++;
      const rawName = cstr(block, 0, 100);
      if (!checksumOk(block)) throw new InvalidArgumentError(`invalid tar header checksum at entry ${index} (${JSON.stringify(rawName)})`);
      const typeflag = String.fromCharCode(block[156]!);
      const size = num(block, 124, 12, 'size', rawName);
      const magic = block.subarray(257, 263).toString('latin1');
      let name = rawName;
      if (magic === 'ustar\0' && block[345] !== 0) name = cstr(block, 345, 155) + '/' + name;

      const readData = async (): Promise<Buffer> => {
        if (size > 64 * 1024 * 1024) throw new InvalidArgumentError(`tar metadata entry for ${JSON.stringify(name)} too large`);
        const d = await r.read(size);
        if (d.length < size) throw new InvalidArgumentError(`truncated tar in metadata of ${JSON.stringify(name)}`);
        const pad = (BLOCK - (size % BLOCK)) % BLOCK;
        if ((await r.read(pad)).length < pad) throw new InvalidArgumentError(`truncated tar after ${JSON.stringify(name)}`);
        return d;
      };

      if (typeflag === 'x') {
        local = parsePax(await readData(), name);
        continue;
      }
      if (typeflag === 'g') {
        global = new Map([...global, ...parsePax(await readData(), name)]);
        continue;
      }
      if (typeflag === 'L') {
        longName = cstr(await readData(), 0, size);
        continue;
      }
      if (typeflag === 'K') {
        longLink = cstr(await readData(), 0, size);
        continue;
      }
      const pax = new Map([...global, ...(local ?? [])]);
      local = null;
      let type = TYPES[typeflag];
      if (!type) {
        throw new InvalidArgumentError(`unsupported tar entry type ${JSON.stringify(typeflag)} for ${JSON.stringify(longName ?? name)}`);
      }
      if (longName !== null) name = longName;
      let linkname = longLink ?? cstr(block, 157, 100);
      longName = longLink = null;
      if (pax.has('path')) name = pax.get('path')!.toString('utf8');
      if (pax.has('linkpath')) linkname = pax.get('linkpath')!.toString('utf8');
      if ([...pax.keys()].some((k) => k.startsWith('GNU.sparse'))) {
        throw new InvalidArgumentError(`sparse tar entries are not supported: ${JSON.stringify(name)}`);
      }
      if (type === 'file' && typeflag !== '0' && name.endsWith('/')) type = 'dir';
      const paxNum = (k: string, dflt: number): number => {
        const v = pax.get(k);
        if (!v) return dflt;
        const n = Number(v.toString('ascii'));
        if (!Number.isFinite(n)) throw new InvalidArgumentError(`invalid pax ${k} for ${JSON.stringify(name)}`);
        return n;
      };
      const entrySize = paxNum('size', size);
      const dataSize = type === 'file' ? entrySize : typeflag === '1' || typeflag === '2' || typeflag === '5' ? 0 : entrySize;
      const xattrs = new Map<string, Buffer>();
      for (const [k, v] of pax) if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice('SCHILY.xattr.'.length), v);

      let consumed = false;
      let remaining = dataSize;
      const stream = async function* (): AsyncGenerator<Buffer> {
        if (consumed) throw new InvalidArgumentError(`content of ${JSON.stringify(name)} read twice`);
        consumed = true;
        while (remaining > 0) {
          const c = await r.chunk(Math.min(remaining, 1024 * 1024));
          if (c.length === 0) throw new InvalidArgumentError(`truncated tar in content of ${JSON.stringify(name)}`);
          remaining -= c.length;
          yield c;
        }
      };
      const entry: TarEntry = {
        name,
        type,
        mode: num(block, 100, 8, 'mode', name),
        uid: paxNum('uid', num(block, 108, 8, 'uid', name)),
        gid: paxNum('gid', num(block, 116, 8, 'gid', name)),
        size: type === 'file' ? entrySize : 0,
        mtime: paxNum('mtime', num(block, 136, 12, 'mtime', name)),
        linkname,
        devmajor: num(block, 329, 8, 'devmajor', name),
        devminor: num(block, 337, 8, 'devminor', name),
        xattrs,
        stream,
      };
      yield entry;
      // Whatever the consumer left unread is skipped here.
      while (remaining > 0) {
        const c = await r.chunk(Math.min(remaining, 1024 * 1024));
        if (c.length === 0) throw new InvalidArgumentError(`truncated tar in content of ${JSON.stringify(name)}`);
        remaining -= c.length;
      }
      const pad = (BLOCK - (dataSize % BLOCK)) % BLOCK;
      if ((await r.read(pad)).length < pad) throw new InvalidArgumentError(`truncated tar after ${JSON.stringify(name)}`);
    }
  } finally {
    await r.close();
  }
}
