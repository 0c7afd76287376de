/**
 * The cache under stress (root, runc, real registry): identical steps of concurrent builds run
 * once, a daemon killed with SIGKILL mid-build starts again cleanly, and a corrupt index is moved
 * aside instead of stopping the daemon.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, startDaemon } from '../../helpers/daemon.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';

const d = describe.runIf(process.getuid?.() === 0);

let reg: TestRegistry;
let work: string;

function dockerfile(name: string, text: string): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Dockerfile'), text);
  return dir;
}

const dfArgs = (dir: string, out?: string) => ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, ...(out ? ['--output', `type=local,dest=${out}`] : [])];

d('cache durability', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-durable-'));
    reg = await startRegistry();
  }, 120_000);

  afterAll(async () => {
    await reg?.stop();
    if (work) removeDir(work);
  });

  it('runs an identical step of two concurrent builds once, and both get its result', async () => {
    const daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
    try {
      const dir = dockerfile('dedupe', `FROM ${reg.host}/busybox:latest\nRUN sleep 2 && date +%s%N > /stamp && echo ran once\n`);
      const [a, b] = await Promise.all([buildctl(daemon.addr, dfArgs(dir, join(work, 'out-a'))), buildctl(daemon.addr, dfArgs(dir, join(work, 'out-b')))]);
      expect(a.code, a.stderr).toBe(0);
      expect(b.code, b.stderr).toBe(0);
      // One run: both outputs carry the same timestamp written by the step.
      expect(readFileSync(join(work, 'out-a', 'stamp'), 'utf8')).toBe(readFileSync(join(work, 'out-b', 'stamp'), 'utf8'));
      // Both builds show the step running, its output and done, as upstream's vertex shared by
      // two builds: the one waiting on the other's run too.
      for (const r of [a, b]) expect(r.stderr).toMatch(/^#(\d+) \[2\/2\] RUN sleep 2 && date \+%s%N > \/stamp && echo ran once\n(?:#\1 (?!CACHED)[^\n]*\n)*#\1 [\d.]+ ran once\n(?:#\1 [^\n]*\n)*#\1 DONE \d+\.\ds$/m);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('cancels the steps still running when a build fails (CANCELED), and a build sharing such a step computes it itself', async () => {
    const daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
    try {
      const slow = `FROM ${reg.host}/busybox:latest AS slow\nRUN sleep 2 && echo slow-done > /stamp\n`;
      const failing = dockerfile('fails', `${slow}FROM ${reg.host}/busybox:latest AS bad\nRUN sleep 1.5 && exit 3\nFROM scratch\nCOPY --from=slow /stamp /a\nCOPY --from=bad /etc/passwd /b\n`);
      const sharing = dockerfile('shares', `${slow}FROM scratch\nCOPY --from=slow /stamp /a\n`);
      const a = buildctl(daemon.addr, dfArgs(failing));
      // The second build joins the first one's run of the slow step, which the first one's failure stops.
      await new Promise((r) => setTimeout(r, 400));
      const b = await buildctl(daemon.addr, dfArgs(sharing, join(work, 'out-shares')));
      const ra = await a;
      expect(ra.code).not.toBe(0);
      expect(ra.stderr).toMatch(/#(\d+) \[slow 2\/2\] RUN sleep 2[^\n]*\n(?:#\1 [^\n]*\n)*#\1 CANCELED/);
      expect(ra.stderr).toMatch(/did not complete successfully: exit code: 3/);
      expect(b.code, b.stderr).toBe(0);
      expect(readFileSync(join(work, 'out-shares', 'a'), 'utf8')).toBe('slow-done\n');
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('starts cleanly after SIGKILL in the middle of a step, and builds again with the same result', async () => {
    const config = `[registry."${reg.host}"]\n  http = true\n`;
    let daemon = await startDaemon({ config });
    const dir = dockerfile('killed', `FROM ${reg.host}/busybox:latest\nRUN echo stable > /a\nRUN sleep 30\n`);
    const building = buildctl(daemon.addr, dfArgs(dir));
    // Give the build time to reach the slow step (pull, first step, start of the second), then
    // kill the daemon without warning.
    await new Promise((r) => setTimeout(r, 5000));
    await daemon.kill('SIGKILL');
    const r = await building;
    expect(r.code).not.toBe(0);
    daemon = await startDaemon({ config, root: daemon.root, dir: daemon.dir });
    try {
      const dir2 = dockerfile('after-kill', `FROM ${reg.host}/busybox:latest\nRUN echo stable > /a\n`);
      const again = await buildctl(daemon.addr, dfArgs(dir2, join(work, 'after')));
      expect(again.code, again.stderr).toBe(0);
      expect(readFileSync(join(work, 'after', 'a'), 'utf8')).toBe('stable\n');
      // No container of the killed run is left behind.
      const runcRoot = readdirSync(daemon.root).filter((n) => n.startsWith('runc-'))[0]!;
      const containers = join(daemon.root, runcRoot, 'executor', 'runc');
      const left = (() => {
        try {
          return readdirSync(containers);
        } catch {
          return [];
        }
      })();
      expect(left).toEqual([]);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('moves a corrupt index aside with a log line and starts with an empty cache', async () => {
    const first = await startDaemon();
    await first.stop();
    const runcRoot = readdirSync(first.root).filter((n) => n.startsWith('runc-'))[0]!;
    const db = join(first.root, runcRoot, 'metadata.db');
    for (const ext of ['-wal', '-shm']) writeFileSync(db + ext, '');
    writeFileSync(db, Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(4096, 0xab)]));
    const daemon = await startDaemon({ root: first.root, dir: first.dir });
    try {
      expect(daemon.logs()).toMatch(/metadata database is corrupt; moved aside/);
      const du = await buildctl(daemon.addr, ['du']);
      expect(du.code, du.stderr).toBe(0);
      expect(readdirSync(join(first.root, runcRoot)).some((n) => n.startsWith('metadata.db.corrupt-'))).toBe(true);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });
});
