/**
 * ADD's archive decompression (src/ops/file/decompress.ts): the compression is told by magic
 * bytes, and each kind decodes to the original bytes; a corrupt archive fails naming the file.
 * Uses the system's gzip/bzip2/xz/zstd to make the inputs, as a user's archives would be made.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { detectCompression, fileCompression, openDecompressed, type Compression } from '../../../../src/ops/file/decompress.js';
import { readTar } from '../../../../src/snapshot/layer/tar-reader.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-decompress-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const plain = Buffer.from('loom decompress test\n'.repeat(5000));
writeFileSync(join(dir, 'plain'), plain);

async function readAll(p: string, c: Compression): Promise<Buffer> {
  const d = openDecompressed(p, c);
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of d.stream) chunks.push(chunk as Buffer);
    await d.done();
  } finally {
    d.close();
  }
  return Buffer.concat(chunks);
}

describe('decompress', () => {
  it('tells compressions by magic bytes, not by name', () => {
    expect(detectCompression(Buffer.from([0x1f, 0x8b, 0x08, 0]))).toBe('gzip');
    expect(detectCompression(Buffer.from('BZh91AY'))).toBe('bzip2');
    expect(detectCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))).toBe('xz');
    expect(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(detectCompression(Buffer.from('ustar'))).toBe('none');
    expect(detectCompression(Buffer.from([0x1f]))).toBe('none');
  });

  for (const [tool, kind] of [['gzip', 'gzip'], ['bzip2', 'bzip2'], ['xz', 'xz'], ['zstd', 'zstd']] as const) {
    it(`decodes ${kind} to the original bytes`, async () => {
      const out = join(dir, `data.${tool}`);
      writeFileSync(out, execFileSync(tool, ['-c', join(dir, 'plain')], { maxBuffer: 1 << 26 }));
      expect(await fileCompression(out)).toBe(kind);
      expect((await readAll(out, kind)).equals(plain)).toBe(true);
    });
  }

  it('fails a truncated xz archive with an error naming the file', async () => {
    const full = execFileSync('xz', ['-c', join(dir, 'plain')]);
    const cut = join(dir, 'cut.xz');
    writeFileSync(cut, full.subarray(0, Math.floor(full.length / 2)));
    await expect(readAll(cut, 'xz')).rejects.toThrow(/xz -d .*cut\.xz: exit 1/);
  });

  it('is no failure when the reader stops at the end of a tar with the decoder still writing (SIGPIPE)', async () => {
    // A tar followed by 4 MiB of zeros (as long record padding is): the reader stops at the first
    // end block and leaves the rest unread, so zstd is killed by SIGPIPE writing it. ADD of such an
    // archive failed now and then with 'zstd -d ...: exit SIGPIPE'.
    const tar = execFileSync('tar', ['-C', dir, '-cf', '-', 'plain'], { maxBuffer: 1 << 26 });
    const padded = Buffer.concat([tar, Buffer.alloc(4 << 20)]);
    const zst = join(dir, 'padded.tar.zst');
    writeFileSync(zst, execFileSync('zstd', ['-c', '-q'], { input: padded, maxBuffer: 1 << 26 }));
    for (let i = 0; i < 5; i++) {
      const d = openDecompressed(zst, 'zstd');
      try {
        const names: string[] = [];
        for await (const e of readTar(d.stream)) {
          names.push(e.name);
          for await (const _ of e.stream()) void _;
        }
        expect(names).toEqual(['plain']);
        await expect(d.done()).resolves.toBeUndefined();
      } finally {
        d.close();
      }
    }
  });

  it('ends the decoder when closed early', async () => {
    const big = join(dir, 'big.zst');
    writeFileSync(big, execFileSync('zstd', ['-c', join(dir, 'plain')]));
    const d = openDecompressed(big, 'zstd');
    const first = await new Promise<Buffer>((ok) => d.stream.once('data', ok));
    expect(first.length).toBeGreaterThan(0);
    d.close();
    await expect(d.done()).resolves.toBeUndefined();
    expect(readFileSync(big).length).toBeGreaterThan(0);
  });
});
