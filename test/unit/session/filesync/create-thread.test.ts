import { closeSync, constants as fsc, mkdtempSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CreateThread } from '../../../../src/session/filesync/create-thread.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-create-thread-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;

describe('CreateThread', () => {
  it('creates a batch in order; the descriptors are usable by the caller; failures are per path, with the code and the path', async () => {
    const t = new CreateThread();
    const paths = [join(dir, 'a'), join(dir, 'missing', 'b'), join(dir, 'c')];
    const r = await t.open(paths, FLAGS, 0o600);
    expect(r).toHaveLength(3);
    expect(typeof r[0]).toBe('number');
    expect(typeof r[2]).toBe('number');
    const err = r[1] as NodeJS.ErrnoException;
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ENOENT');
    expect(err.message).toContain(paths[1]);
    writeSync(r[0] as number, Buffer.from('first'));
    closeSync(r[0] as number);
    closeSync(r[2] as number);
    expect(readFileSync(paths[0]!, 'utf8')).toBe('first');
    expect(statSync(paths[2]!).mode & 0o777).toBe(0o600);
    // O_EXCL: an existing file is an error, not a truncation.
    const again = await t.open([paths[0]!], FLAGS, 0o600);
    expect((again[0] as NodeJS.ErrnoException).code).toBe('EEXIST');
    expect(readFileSync(paths[0]!, 'utf8')).toBe('first');
  });

  it('keeps answering batches sent at once, each with its own results', async () => {
    const t = new CreateThread();
    const batches = Array.from({ length: 5 }, (_, b) => Array.from({ length: 40 }, (_, i) => join(dir, `m${b}-${i}`)));
    const all = await Promise.all(batches.map((p) => t.open(p, FLAGS, 0o644)));
    for (const r of all) {
      expect(r.every((x) => typeof x === 'number')).toBe(true);
      for (const fd of r) closeSync(fd as number);
    }
    expect(new Set(all.flat()).size).toBeGreaterThan(1);
  });
});
