/**
 * Every miss explained (root, runc, real registry): the reason on the step's progress, a per-build
 * summary vertex, and the build records read back with `buildctl debug builds` / `debug build`.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';

const d = describe.runIf(process.getuid?.() === 0);

let reg: TestRegistry;
let daemon: TestDaemon;
let work: string;

interface Record {
  ref: string;
  stepsCached: number;
  stepsRun: number;
  bytesReused: number;
  steps: { name: string; cached: boolean; reason: string }[];
}

d('cache misses explained', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-explain-'));
    reg = await startRegistry();
    daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    if (daemon) removeDir(daemon.dir);
    await reg?.stop();
    if (work) removeDir(work);
  });

  it('says which build-arg, file or parent step changed, sums up each build, and keeps records to inspect', async () => {
    const dir = join(work, 'ctx');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nARG V=1\nRUN echo $V > /v\nCOPY a.txt /a.txt\nRUN cat /a.txt /v > /both\n`);
    writeFileSync(join(dir, 'a.txt'), 'first\n');
    const run = async (...extra: string[]) => {
      const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, ...extra]);
      expect(r.code, r.stderr).toBe(0);
      return r.stderr;
    };

    const first = await run('--opt', 'build-arg:V=1');
    expect(first).toMatch(/RUN echo 1 > \/v\n#\d+ cache miss: no earlier build of this step/);
    expect(first).toMatch(/cache summary: \d+ steps cached, \d+ run, /);

    // A build-arg reaches the step's env: the miss names it, old and new value.
    const second = await run('--opt', 'build-arg:V=2');
    expect(second).toContain('cache miss: the step\'s definition changed: env V: "1" -> "2"');
    // The COPY after it missed because its parent did.
    expect(second).toMatch(/COPY a.txt \/a.txt\n#\d+ cache miss: input 0 changed: \[2\/4\] RUN echo 2 > \/v/);

    // Unchanged: everything cached, and the summary says so.
    const third = await run('--opt', 'build-arg:V=2');
    expect(third).toMatch(/cache summary: \d+ steps cached, 0 run, [\d.]+k?B reused/);
    // It counts every step shown as cached (the three after FROM), and the unchanged local
    // sources (.dockerignore, the Dockerfile, the context).
    const shownCached = third.match(/^#\d+ CACHED$/gm)?.length ?? 0;
    expect(shownCached).toBe(3);
    expect(Number(/cache summary: (\d+) steps cached/.exec(third)![1])).toBeGreaterThanOrEqual(shownCached + 3);

    writeFileSync(join(dir, 'a.txt'), 'second version\n');
    const fourth = await run('--opt', 'build-arg:V=2');
    expect(fourth).toMatch(/COPY a.txt \/a.txt\n#\d+ cache miss: input 1 changed: \[internal\] load build context/);

    const list = await buildctl(daemon.addr, ['debug', 'builds', '--format', 'json']);
    expect(list.code, list.stderr).toBe(0);
    const builds = JSON.parse(list.stdout) as Record[];
    expect(builds.length).toBeGreaterThanOrEqual(4);
    // Newest first: the fourth build ran the COPY and what follows, reused the rest.
    const last = builds[0]!;
    expect(last.stepsRun).toBeGreaterThan(0);
    expect(last.stepsCached).toBeGreaterThan(0);
    expect(builds[1]!.stepsRun).toBe(0);
    expect(builds[1]!.bytesReused).toBeGreaterThan(0);

    const one = await buildctl(daemon.addr, ['debug', 'build', builds[2]!.ref]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/\[2\/4\] RUN echo 2 > \/v\s+run\s+[\d.]+s\s+the step's definition changed: env V: "1" -> "2"/);
    expect(one.stdout).toContain(`Ref:`);

    const missing = await buildctl(daemon.addr, ['debug', 'build', 'no-such-build']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('no record of build no-such-build');

    // Another project whose line 3 was a WORKDIR, then a RUN: not "the definition changed" (a
    // file op and an exec at the same line are unrelated steps), but a first build.
    const other = join(work, 'other');
    mkdirSync(other, { recursive: true });
    const otherBuild = async () => {
      const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${other}`, '--local', `dockerfile=${other}`]);
      expect(r.code, r.stderr).toBe(0);
      return r.stderr;
    };
    writeFileSync(join(other, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nENV A=1\nWORKDIR /w\n`);
    await otherBuild();
    writeFileSync(join(other, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nENV A=1\nRUN echo other > /o\n`);
    expect(await otherBuild()).toMatch(/RUN echo other > \/o\n#\d+ cache miss: no earlier build of this step/);

    // Sources: an image source at another project's line 2, then a URL there, are unrelated (not
    // "its options changed"); a line whose FROM names another image says which, digests included.
    // Two images pushed for it, each pulled first where the test needs a pull.
    const pushed = join(work, 'pushed');
    mkdirSync(pushed, { recursive: true });
    for (const tag of ['1', '2']) {
      writeFileSync(join(pushed, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN echo ${tag} > /other\n`);
      const push = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${pushed}`, '--local', `dockerfile=${pushed}`, '--output', `type=image,name=${reg.host}/other:${tag},push=true`]);
      expect(push.code, push.stderr).toBe(0);
    }
    writeFileSync(join(other, 'Dockerfile'), `FROM scratch\nADD http://${reg.host}/v2/ /x\n`);
    await otherBuild();
    writeFileSync(join(other, 'Dockerfile'), `FROM scratch AS s\nFROM ${reg.host}/other:2\n`);
    const image = await otherBuild();
    expect(image).toMatch(new RegExp(`#(\\d+) \\[stage-1 1/1\\] FROM ${reg.host}/other:2@sha256:[0-9a-f]{64}\\n(#\\1 (?!cache miss).*\\n)*#\\1 cache miss: no earlier build of this step`));
    writeFileSync(join(other, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN echo from > /f\n`);
    await otherBuild();
    writeFileSync(join(other, 'Dockerfile'), `FROM ${reg.host}/other:1\nRUN echo from > /f\n`);
    const moved = await otherBuild();
    expect(moved).toMatch(
      new RegExp(`#\\d+ cache miss: the step's definition changed: source: "docker-image://${reg.host}/busybox:latest@sha256:[0-9a-f]{64}" -> "docker-image://${reg.host}/other:1@sha256:[0-9a-f]{64}"`),
    );
  }, 180_000);
});
