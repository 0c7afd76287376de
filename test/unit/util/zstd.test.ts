/**
 * zstd streams through the system's zstd program (Debian's package; scripts/install-deps.sh).
 */
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { zstdLevel, zstdStream } from '../../../src/util/zstd.js';

async function through(mode: 'compress' | 'decompress', input: Buffer, what = 'test input'): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from([input.subarray(0, 1000), input.subarray(1000)]), zstdStream(mode, what), async function* (src) {
    for await (const c of src) out.push(c as Buffer);
  });
  return Buffer.concat(out);
}

describe('zstdStream', () => {
  it('compresses to a zstd frame that the zstd program reads back, and decompresses it again', async () => {
    // Half random, half repeated: several MiB, so both sides fill their pipes (backpressure).
    const input = Buffer.concat([randomBytes(3 << 20), Buffer.alloc(3 << 20, 'ab')]);
    const z = await through('compress', input);
    expect([...z.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
    expect(z.length).toBeLessThan(input.length);
    expect(execFileSync('zstd', ['-d', '-c', '-q'], { input: z, maxBuffer: 1 << 26 }).equals(input)).toBe(true);
    expect((await through('decompress', z)).equals(input)).toBe(true);
  });

  it('fails a corrupt or truncated input, naming it, instead of ending early', async () => {
    const z = execFileSync('zstd', ['-c', '-q'], { input: randomBytes(1 << 20), maxBuffer: 1 << 26 });
    await expect(through('decompress', z.subarray(0, z.length - 100), 'layer sha256:abc')).rejects.toThrow(/layer sha256:abc: zstd decompression failed/);
    await expect(through('decompress', Buffer.from('not zstd at all'), 'layer sha256:def')).rejects.toThrow(/layer sha256:def: zstd decompression failed/);
  });

  it("maps upstream's compression-level onto its encoder's four speeds", () => {
    expect([undefined, 0, 2, 3, 6, 7, 8, 9, 22].map((l) => zstdLevel(l))).toEqual([3, 1, 1, 3, 3, 7, 7, 11, 11]);
  });
});
