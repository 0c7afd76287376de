/**
 * GC policies applied by the daemon itself (root, runc, real registry): a cache grown past a
 * policy's keepBytes comes back under it after a build without any prune from the client, the
 * records of a build still running stay, and `gc = false` turns it off.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { baseImageArchive, skopeoPush, startRegistry, type TestRegistry } from '../../helpers/registry.js';

const d = describe.runIf(process.getuid?.() === 0);

let reg: TestRegistry;
let work: string;

const MB = 1_000_000;

/** A build context: a Dockerfile and `files` (name to bytes). */
function context(name: string, dockerfile: string, files: Record<string, Buffer> = {}): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Dockerfile'), dockerfile);
  for (const [f, b] of Object.entries(files)) writeFileSync(join(dir, f), b);
  return dir;
}

const build = (daemon: TestDaemon, dir: string, out?: string) =>
  buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, ...(out ? ['--output', `type=local,dest=${out}`] : [])]);

interface Record_ {
  id: string;
  size: number;
  description: string;
}

/** `buildctl du -v` parsed: the records and the total. */
async function du(daemon: TestDaemon): Promise<{ records: Record_[]; total: number }> {
  const r = await buildctl(daemon.addr, ['du', '-v']);
  expect(r.code, r.stderr).toBe(0);
  const records = r.stdout
    .split(/\n\n/)
    .filter((b) => /^ID:/m.test(b))
    .map((b) => ({
      id: /^ID:\s+(\S+)/m.exec(b)![1]!,
      size: bytes(/^Size:\s+(\S+)/m.exec(b)![1]!),
      description: /^Description:\s+(.*)$/m.exec(b)?.[1] ?? '',
    }));
  const total = bytes(/^Total:\s+(\S+)/m.exec(r.stdout)![1]!);
  return { records, total };
}

/** buildctl's sizes (go-units HumanSize: decimal units). */
function bytes(s: string): number {
  const m = /^([\d.]+)([kMGT]?)B$/.exec(s);
  if (!m) throw new Error(`unparsable size ${s}`);
  return Number(m[1]) * { '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }[m[2]!]!;
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 25_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** Bytes the daemon's state uses on disk (hard links once; mounted overlay views not entered). */
function diskBytes(root: string): number {
  const r = spawnSync('du', ['-sxb', root], { encoding: 'utf8' });
  return Number(r.stdout.split(/\s/)[0]);
}

const policy = (keepBytes: number, extra = '') => `[worker.oci]\n${extra}  [[worker.oci.gcpolicy]]\n    keepBytes = ${keepBytes}\n`;

d('GC policies (daemon)', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-gc-'));
    reg = await startRegistry();
  }, 120_000);

  afterAll(async () => {
    await reg?.stop();
    if (work) removeDir(work);
  });

  it('prunes the cache down to keepBytes by itself after a build exceeds it', async () => {
    const daemon = await startDaemon({ config: policy(3 * MB) });
    try {
      const dir = context('grow', 'FROM scratch\nCOPY a.bin /a.bin\n', { 'a.bin': randomBytes(2 * MB) });
      const before = diskBytes(daemon.root);
      const r = await build(daemon, dir);
      expect(r.code, r.stderr).toBe(0);
      // Context (2 MB) and its copy (2 MB): over 3 MB until the daemon's own GC runs.
      // Records leave du first; the run's log line comes once their snapshots and mirrors are gone.
      const after = await until('the GC to bring du under keepBytes', async () => {
        const u = await du(daemon);
        return u.total < 3 * MB && /gc removed cache records/.test(daemon.logs()) ? u : undefined;
      });
      // Least recently used first, and only down to the budget: the copy stays.
      expect(after.records.some((x) => x.description.includes('COPY a.bin'))).toBe(true);
      // The disk really gave the bytes back (snapshot and mirror of the context are gone).
      expect(diskBytes(daemon.root) - before).toBeLessThan(3 * MB);
      // The cache still works: the same build succeeds and gives the same file.
      const out = join(work, 'grow-out');
      const again = await build(daemon, dir, out);
      expect(again.code, again.stderr).toBe(0);
      expect(readFileSync(join(out, 'a.bin')).equals(readFileSync(join(dir, 'a.bin')))).toBe(true);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  }, 90_000);

  it('leaves the records of a running build alone while it prunes older ones', async () => {
    const daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` + policy(6 * MB) });
    try {
      // An older build's records (about 4 MB): under the budget alone.
      const old = await build(daemon, context('old', 'FROM scratch\nCOPY old.bin /old.bin\n', { 'old.bin': randomBytes(2 * MB) }));
      expect(old.code, old.stderr).toBe(0);
      const oldIds = new Set((await du(daemon)).records.map((x) => x.id));
      // A long build: its context and copy put the cache over 6 MB while its last step runs.
      const longDir = context('long', `FROM ${reg.host}/busybox:latest\nCOPY long.bin /long.bin\nRUN sleep 12 && wc -c /long.bin > /count\n`, { 'long.bin': randomBytes(2 * MB) });
      const longOut = join(work, 'long-out');
      let longDone = false;
      const long = build(daemon, longDir, longOut).finally(() => (longDone = true));
      const during = await until('the long build to reach its last step', async () => {
        const u = await du(daemon);
        return u.records.some((x) => x.description.includes('COPY long.bin')) ? u : undefined;
      });
      expect(during.total).toBeGreaterThan(6 * MB);
      const longIds = during.records.filter((x) => !oldIds.has(x.id)).map((x) => x.id);
      // Another build ends: the GC runs while the long one is still in its RUN step.
      const quick = await build(daemon, context('quick', 'FROM scratch\nCOPY q /q\n', { q: Buffer.from('q') }));
      expect(quick.code, quick.stderr).toBe(0);
      const pruned = await until('the GC to remove the older build\'s records', async () => {
        const u = await du(daemon);
        return [...oldIds].some((id) => !u.records.some((x) => x.id === id)) ? u : undefined;
      });
      expect(longDone).toBe(false);
      // Every record of the running build is still there, whatever the budget says.
      for (const id of longIds) expect(pruned.records.map((x) => x.id)).toContain(id);
      const r = await long;
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(join(longOut, 'count'), 'utf8')).toBe(`${2 * MB} /long.bin\n`);
      expect(readFileSync(join(longOut, 'long.bin')).equals(readFileSync(join(longDir, 'long.bin')))).toBe(true);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  }, 120_000);

  it("a client's prune without --all takes a single-platform image pulled for two platforms: nothing shows shared and its bytes count once, as upstream's", async () => {
    await skopeoPush(await baseImageArchive(), `${reg.host}/single:latest`, { arch: 'amd64' });
    const daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n${policy(1000 * MB, '  gc = false\n')}` });
    try {
      const dir = context('two-platforms', `FROM ${reg.host}/single:latest\nCOPY f /f\n`, { f: Buffer.from('f\n') });
      const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, '--opt', 'platform=linux/amd64,linux/arm64']);
      expect(r.code, r.stderr).toBe(0);
      const v = await buildctl(daemon.addr, ['du', '-v']);
      // No image store, so nothing backs a stored image (upstream's OCI worker shows none shared).
      expect(v.stdout).toMatch(/^Shared:\s+false$/m);
      expect(v.stdout).not.toMatch(/^Shared:\s+true$/m);
      // Local directories are mutable records, as upstream's; what steps made is not.
      const blocks = v.stdout.split(/\n\n/).filter((b) => /^ID:/m.test(b));
      const mutable = (b: string) => /^Mutable:\s+true$/m.test(b);
      const locals = blocks.filter((b) => /^Description:\s+local source for /m.test(b));
      expect(locals.length).toBeGreaterThanOrEqual(2);
      expect(locals.every(mutable)).toBe(true);
      expect(blocks.filter((b) => /^Description:\s+pulled from /m.test(b)).some(mutable)).toBe(false);
      const { records, total } = await du(daemon);
      const pulled = records.filter((x) => x.description.startsWith('pulled from'));
      // Each layer's snapshot is in two records (one per platform); its bytes count once.
      expect(pulled.length).toBe(8);
      const base = pulled.reduce((n, x) => n + x.size, 0);
      expect(base).toBeGreaterThan(MB);
      expect(base).toBeLessThan(2.5 * MB);
      expect(total).toBeLessThan(base + 0.2 * MB);
      // Reserved 1 MB: records go, least recently used first, until less than that is left.
      const pr = await buildctl(daemon.addr, ['prune', '--keep-storage', '1']);
      expect(pr.code, pr.stderr).toBe(0);
      expect((await du(daemon)).total).toBeLessThan(MB);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  }, 60_000);

  it('does nothing by itself with gc = false', async () => {
    const daemon = await startDaemon({ config: policy(3 * MB, '  gc = false\n') });
    try {
      const workers = await buildctl(daemon.addr, ['debug', 'workers', '-v']);
      expect(workers.code, workers.stderr).toBe(0);
      expect(workers.stdout).not.toMatch(/GC Policy/);
      const r = await build(daemon, context('off', 'FROM scratch\nCOPY a.bin /a.bin\n', { 'a.bin': randomBytes(2 * MB) }));
      expect(r.code, r.stderr).toBe(0);
      const total = (await du(daemon)).total;
      expect(total).toBeGreaterThan(4 * MB);
      // Past the start run's pause and a build's trigger delay: still nothing removed.
      await new Promise((res) => setTimeout(res, 8000));
      expect((await du(daemon)).total).toBe(total);
      expect(daemon.logs()).not.toMatch(/sub="gc"|"sub":"gc"/);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  }, 60_000);
});
