import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ContentStore } from '../../../src/content/store.js';
import { LoomError } from '../../../src/util/errors.js';
import type { Digest } from '../../../src/util/digest.js';

function digestOf(b: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

async function text(r: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('ContentStore', () => {
  let root: string;
  let store: ContentStore;

  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'loom-content-'));
    store = new ContentStore({ root });
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('stores a blob under blobs/sha256/<hex> and reads it back', async () => {
    const data = 'hello, content store\n';
    const d = await store.writeBlob(data, { mediaType: 'text/plain' });
    expect(d).toEqual({ mediaType: 'text/plain', digest: digestOf(data), size: data.length });
    const file = join(root, 'content', 'blobs', 'sha256', d.digest.slice(7));
    expect(store.path(d)).toBe(file);
    expect(readFileSync(file, 'utf8')).toBe(data);
    expect(statSync(file).mode & 0o777).toBe(0o444);
    expect(await store.has(d)).toBe(true);
    expect(await store.info(d.digest)).toEqual({ digest: d.digest, size: data.length });
    expect(await text(await store.read(d))).toBe(data);
    expect(await text(await store.read(d, { start: 7 }))).toBe(data.slice(7));
    expect((await store.readAll(d)).toString()).toBe(data);
    expect(await store.list()).toEqual([{ digest: d.digest, size: data.length }]);
    expect(await store.usage()).toEqual({ count: 1, size: data.length });
    expect(readdirSync(join(root, 'content', 'ingest'))).toEqual([]);
  });

  it('rejects a digest mismatch, naming both digests, and leaves nothing visible', async () => {
    const wrong = digestOf('something else');
    const err = await store.writeBlob('actual bytes', { digest: wrong }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LoomError);
    expect((err as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((err as Error).message).toContain(wrong);
    expect((err as Error).message).toContain(digestOf('actual bytes'));
    expect(await store.has(wrong)).toBe(false);
    expect(await store.has(digestOf('actual bytes'))).toBe(false);
    expect(await store.list()).toEqual([]);
    expect(readdirSync(join(root, 'content', 'ingest'))).toEqual([]);
  });

  it('rejects a size mismatch, short or long', async () => {
    const data = Buffer.from('12345');
    await expect(store.writeBlob(data, { digest: digestOf(data), size: 6 })).rejects.toThrow(/unexpected size 5, expected 6/);
    const w = await store.ingest({ size: 3 });
    await expect(w.write(data)).rejects.toThrow(/more than the expected 3 bytes/);
    await w.abort();
    expect(await store.list()).toEqual([]);
  });

  it('streams through ingest() computing the digest while writing', async () => {
    const parts = ['a'.repeat(70_000), 'b'.repeat(70_000), 'c'];
    const whole = parts.join('');
    const w = await store.ingest({ digest: digestOf(whole), size: whole.length });
    // Writes issued without awaiting each one must still land in order.
    await Promise.all(parts.map((p) => w.write(Buffer.from(p))));
    expect(w.offset).toBe(whole.length);
    const d = await w.commit();
    expect(d.digest).toBe(digestOf(whole));
    expect((await store.readAll(d)).toString()).toBe(whole);
    await expect(w.write(Buffer.from('x'))).rejects.toThrow(/after commit/);

    const progress: number[] = [];
    const d2 = await store.writeStream(Readable.from([Buffer.from('xy'), Buffer.from('z')]), undefined, {
      onProgress: (n) => progress.push(n),
    });
    expect(d2.digest).toBe(digestOf('xyz'));
    expect(progress).toEqual([2, 3]);
  });

  it('aborts a stream copy when the signal fires and discards the partial ingest', async () => {
    const ac = new AbortController();
    async function* src() {
      yield Buffer.from('first');
      ac.abort();
      yield Buffer.from('second');
    }
    const err = await store.writeStream(src(), undefined, { signal: ac.signal }).catch((e: unknown) => e);
    expect((err as LoomError).code).toBe('CANCELLED');
    expect(await store.list()).toEqual([]);
    expect(readdirSync(join(root, 'content', 'ingest'))).toEqual([]);
  });

  it('lets concurrent writers of the same digest commit without corrupting it', async () => {
    const data = Buffer.alloc(256 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    const digest = digestOf(data);
    const results = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const w = await store.ingest({ digest, size: data.length });
        for (let off = 0; off < data.length; off += 10_000) await w.write(data.subarray(off, off + 10_000));
        return w.commit();
      }),
    );
    for (const r of results) expect(r.digest).toBe(digest);
    expect(digestOf(await store.readAll(digest))).toBe(digest);
    expect(await store.list()).toEqual([{ digest, size: data.length }]);
    expect(readdirSync(join(root, 'content', 'ingest'))).toEqual([]);
  });

  it('deletes blobs and reports missing ones as not found naming the digest', async () => {
    const d = await store.writeBlob('to delete');
    expect(await store.delete(d)).toBe(true);
    expect(await store.delete(d)).toBe(false);
    await expect(store.read(d)).rejects.toThrow(`content ${d.digest}: not found`);
    await expect(store.readAll(d)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(() => store.path('sha256:nothex' as Digest)).toThrow(/invalid digest/);
  });

  it('never shows a blob whose writer was killed mid-ingest, and cleans the ingest on open', async () => {
    const size = 1 << 20;
    const full = Buffer.alloc(size, 0x61);
    const hex = digestOf(full).slice(7);
    const repo = resolve(__dirname, '../../..');
    const child = spawn(join(repo, 'node_modules/.bin/vite-node'), [join(__dirname, 'store-crash-child.ts'), root, hex, String(size)], {
      cwd: repo,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((ok, fail) => {
      child.stdout.on('data', (b: Buffer) => {
        if (b.toString().includes('half-written')) ok();
      });
      child.once('exit', (code) => fail(new Error(`child exited early with ${code}`)));
    });
    child.kill('SIGKILL');
    await new Promise((ok) => child.once('exit', ok));

    const ingestDir = join(root, 'content', 'ingest');
    // The half-written file is there, but nothing under blobs/.
    expect(readdirSync(ingestDir).length).toBe(1);
    expect(existsSync(join(root, 'content', 'blobs', 'sha256', hex))).toBe(false);
    expect(await store.has(`sha256:${hex}`)).toBe(false);

    const reopened = new ContentStore({ root });
    expect(readdirSync(ingestDir)).toEqual([]);
    expect(await reopened.list()).toEqual([]);
    // And the same blob can then be written whole.
    expect((await reopened.writeBlob(full, { digest: `sha256:${hex}`, size })).digest).toBe(`sha256:${hex}`);
  });
});
