/**
 * USTAR headers byte-for-byte as Go's archive/tar writes them for the image archives (zero-padded
 * octal fields ending in NUL, the checksum as six digits, NUL, space; empty user and group names;
 * zero times). Upstream's archives are built with Go's writer, so matching its bytes makes loom's
 * archives identical for identical content.
 */
import { InvalidArgumentError } from '../../util/errors.js';

export const BLOCK = 512;

export interface TarHeader {
  name: string;
  mode: number;
  size: number;
  type: 'file' | 'directory';
}

function octal(buf: Buffer, off: number, len: number, value: number, what: string): void {
  const s = value.toString(8).padStart(len - 1, '0');
  if (s.length > len - 1) throw new InvalidArgumentError(`tar header: ${what} ${value} does not fit`);
  buf.write(s, off, 'ascii');
  buf[off + len - 1] = 0;
}

export function encodeHeader(h: TarHeader): Buffer {
  const name = Buffer.from(h.name, 'utf8');
  if (name.length > 100) throw new InvalidArgumentError(`tar header: name too long: ${h.name}`);
  const b = Buffer.alloc(BLOCK);
  name.copy(b, 0);
  octal(b, 100, 8, h.mode, 'mode');
  octal(b, 108, 8, 0, 'uid');
  octal(b, 116, 8, 0, 'gid');
  octal(b, 124, 12, h.type === 'directory' ? 0 : h.size, 'size');
  octal(b, 136, 12, 0, 'mtime');
  b.fill(0x20, 148, 156); // checksum is computed with its own field as spaces
  b[156] = h.type === 'directory' ? 0x35 : 0x30;
  b.write('ustar\0', 257, 'ascii');
  b.write('00', 263, 'ascii');
  octal(b, 329, 8, 0, 'devmajor');
  octal(b, 337, 8, 0, 'devminor');
  let sum = 0;
  for (const byte of b) sum += byte;
  const cs = sum.toString(8).padStart(6, '0');
  b.write(cs, 148, 'ascii');
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

/** Zero bytes that pad `size` bytes of data to a whole block. */
export function padding(size: number): Buffer {
  const rem = size % BLOCK;
  return Buffer.alloc(rem === 0 ? 0 : BLOCK - rem);
}

/** The end-of-archive marker Go writes: two zero blocks. */
export function trailer(): Buffer {
  return Buffer.alloc(BLOCK * 2);
}
