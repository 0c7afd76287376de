/**
 * The built-in Dockerfile frontend end to end (root, real registry): context and Dockerfile sent
 * over the session as two local sources, the result exported as an OCI archive. Steps here need
 * no RUN (exec is tested with its own issue's tests).
 */
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { arch, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, run, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';
import { askSubrequest } from '../../../fixtures/subrequests/ask.js';
import { spawn } from 'node:child_process';
import { ControlClient } from '../../../src/client/control-client.js';
import { solve } from '../../../src/client/solve.js';
import type { StatusResponse } from '../../../src/gen/buildkit/control_pb.js';
import { uploadURL } from '../../../src/session/client/index.js';

const d = describe.runIf(process.getuid?.() === 0);

let daemon: TestDaemon;
let reg: TestRegistry;
let work: string;

/** Builds the Dockerfile in `ctx` into the emptied directory `out` with plain progress; it must succeed. Returns the progress output. */
async function buildToDir(ctx: string, out: string, extra: string[] = []): Promise<string> {
  rmSync(out, { recursive: true, force: true });
  const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${out}`, ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return r.stderr;
}

function readJson(dir: string, digest: string): any {
  return JSON.parse(readFileSync(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), 'utf8'));
}

d('dockerfile.v0', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-df-'));
    reg = await startRegistry();
    daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await reg?.stop();
    if (daemon) removeDir(daemon.dir);
    if (work) removeDir(work);
  });

  it("builds a context sent as one tar through the client's session (buildx's `-`: http://buildkit-session/<id>), fetched once", async () => {
    const ctx = join(work, 'upload-ctx');
    mkdirSync(join(ctx, 'sub'), { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY sub/ /in/\nRUN cat /in/hello > /out.txt\n`);
    writeFileSync(join(ctx, 'sub', 'hello'), 'hello from a tar\n');
    const control = new ControlClient({ address: daemon.addr });
    const build = async (out: string) => {
      let pulls = 0;
      const statuses: StatusResponse[] = [];
      await solve({
        control,
        frontend: 'dockerfile.v0',
        frontendAttrs: { context: uploadURL('ctx-1') },
        uploads: new Map([['ctx-1', () => (pulls++, spawn('tar', ['-c', '-C', ctx, '.']).stdout)]]),
        exports: [{ type: 'local', attrs: {}, outputDir: out }],
        auth: false,
        onStatus: (st) => statuses.push(st),
      });
      return { pulls, vertices: statuses.flatMap((st) => st.vertexes) };
    };
    try {
      const first = await build(join(work, 'upload-out'));
      expect(readFileSync(join(work, 'upload-out', 'out.txt'), 'utf8')).toBe('hello from a tar\n');
      expect(first.pulls).toBe(1);
      expect(first.vertices.some((v) => v.name === '[internal] load remote build context' && v.completed && !v.error)).toBe(true);
      // The context's unpacking runs in the frontend's own solve (it reads the Dockerfile) and is
      // used again by the final one: it shows DONE, never CACHED, in the build that ran it, as upstream.
      const unpack = first.vertices.filter((v) => v.name === 'copy /context /');
      expect(unpack.some((v) => v.completed && !v.error)).toBe(true);
      expect(unpack.some((v) => v.cached)).toBe(false);
      // The same bytes again: the context is keyed by its content, so every step is cached.
      const again = await build(join(work, 'upload-out2'));
      expect(again.pulls).toBe(1);
      const run = again.vertices.find((v) => v.name.startsWith('[3/3] RUN'));
      expect(again.vertices.filter((v) => v.name === run?.name).some((v) => v.cached)).toBe(true);
      // The context itself ends CACHED, as upstream's: the final solve does not show it again (DONE).
      expect(again.vertices.filter((v) => v.name === '[internal] load remote build context').at(-1)?.cached).toBe(true);
      expect(again.vertices.filter((v) => v.name === 'copy /context /').at(-1)?.cached).toBe(true);
    } finally {
      control.close();
    }
  }, 120_000);

  it('builds a multi-stage Dockerfile with COPY --from, --chown, ARG, ENV, LABEL, WORKDIR, CMD and .dockerignore', async () => {
    const started = Date.now();
    const ctx = join(work, 'ctx');
    mkdirSync(join(ctx, 'src'), { recursive: true });
    writeFileSync(join(ctx, 'src', 'app.txt'), 'app\n');
    writeFileSync(join(ctx, 'src', 'secret.key'), 'never copy me\n');
    writeFileSync(join(ctx, '.dockerignore'), '**/*.key\n');
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        'ARG BASE=busybox',
        `FROM ${reg.host}/\${BASE}:latest AS base`,
        'WORKDIR /app',
        'COPY src/ ./',
        'ENV GREETING=hello',
        'FROM scratch',
        'ARG VERSION=1',
        'LABEL org.example.version=$VERSION',
        'COPY --from=base /app /app',
        'COPY --chown=1000:1000 src/app.txt /owned.txt',
        'WORKDIR /app',
        'CMD ["/app/app.txt"]',
        '',
      ].join('\n'),
    );
    const out = join(work, 'img.tar');
    const r = await buildctl(daemon.addr, [
      'build', '--progress', 'plain', '--frontend', 'dockerfile.v0',
      '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`,
      '--opt', 'build-arg:VERSION=2',
      '--output', `type=oci,dest=${out}`,
      '--metadata-file', join(work, 'img.json'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('[internal] load build definition from Dockerfile');
    // The response as upstream's: the image's descriptor with its platform, and build info naming
    // the frontend, its build-arg and the base image with the digest its tag resolved to.
    const meta = JSON.parse(readFileSync(join(work, 'img.json'), 'utf8'));
    expect(meta['containerimage.descriptor'].platform).toEqual({ architecture: 'amd64', os: 'linux' });
    const raw = (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/busybox:latest`])).stdout;
    expect(meta['containerimage.buildinfo']).toEqual({
      frontend: 'dockerfile.v0',
      attrs: { 'build-arg:VERSION': '2' },
      sources: [{ type: 'docker-image', ref: `${reg.host}/busybox:latest`, pin: `sha256:${createHash('sha256').update(raw).digest('hex')}` }],
    });
    expect(r.stderr).toMatch(/\[stage-1 1\/3\] COPY --from=base \/app \/app/);
    const dir = join(work, 'img');
    mkdirSync(dir);
    await run('tar', ['-xf', out, '-C', dir]);
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
    const manifest = readJson(dir, index.manifests[0].digest);
    const config = readJson(dir, manifest.config.digest);
    expect(config.config.Labels).toMatchObject({ 'org.example.version': '2' });
    expect(config.config.WorkingDir).toBe('/app');
    expect(config.config.Cmd).toEqual(['/app/app.txt']);
    expect(config.architecture).toBe('amd64');
    // As upstream v0.11 writes it (checked against its daemon): the ARG is a history entry too.
    expect(config.history.map((h: { created_by: string }) => h.created_by)).toEqual([
      'ARG VERSION=1',
      'LABEL org.example.version=2',
      'COPY /app /app # buildkit',
      'COPY src/app.txt /owned.txt # buildkit',
      'WORKDIR /app',
      'CMD ["/app/app.txt"]',
    ]);
    // Times as upstream's image writer gives them: each layer's entry the time its layer was made,
    // entries without a layer the time of the layer before them (the first new layer's, for those
    // at the top), and the image's the last entry's.
    const history: { created?: string; empty_layer?: boolean }[] = config.history;
    expect(history.map((h) => h.empty_layer === true)).toEqual([true, true, false, false, false, true]);
    const times = history.map((h) => h.created!);
    expect(times.every((t) => typeof t === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(t))).toBe(true);
    const ms = times.map((t) => Date.parse(t));
    expect(ms[2]).toBeGreaterThanOrEqual(started - 1000);
    expect(ms[3]).toBeGreaterThanOrEqual(ms[2]!);
    expect(ms[4]).toBeGreaterThanOrEqual(ms[3]!);
    expect(ms[4]).toBeLessThanOrEqual(Date.now());
    expect([times[0], times[1], times[5]]).toEqual([times[2], times[2], times[4]]);
    expect(config.created).toBe(times[5]);
    // The files, with the owner asked for and without what .dockerignore excludes.
    const layers = await Promise.all(
      manifest.layers.map((l: { digest: string }) => run('tar', ['-tvzf', join(dir, 'blobs', 'sha256', l.digest.slice(7)), '--numeric-owner'])),
    );
    const listing = layers.map((l) => l.stdout).join('');
    expect(listing).toMatch(/app\/app\.txt/);
    expect(listing).not.toMatch(/secret\.key/);
    expect(listing).toMatch(/1000\/1000 .* owned\.txt/);
  });

  it('applies SOURCE_DATE_EPOCH to the image times and to every file of local and tar exports, as upstream v0.11', async () => {
    const ctx = join(work, 'ctx-sde');
    mkdirSync(join(ctx, 'dir'), { recursive: true });
    writeFileSync(join(ctx, 'dir', 'f.txt'), 'f\n');
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nARG SOURCE_DATE_EPOCH\nCOPY dir /dir\nENV A=1\n`);
    const epoch = 1600000000;
    const iso = '2020-09-13T12:26:40Z';
    const build = (output: string) =>
      buildctl(daemon.addr, [
        'build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`,
        '--opt', `build-arg:SOURCE_DATE_EPOCH=${epoch}`, '--output', output,
      ]);
    const local = join(work, 'sde-local');
    let r = await build(`type=local,dest=${local}`);
    expect(r.code, r.stderr).toBe(0);
    const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
      const p = join(dir, e.name);
      return e.isDirectory() ? [p, ...walk(p)] : [p];
    });
    const files = walk(local);
    expect(files.length).toBeGreaterThan(100);
    // Symlinks included (the receiver sets their own times).
    const off = files.filter((p) => lstatSync(p).mtimeMs !== epoch * 1000);
    expect(off).toEqual([]);
    const tarFile = join(work, 'sde.tar');
    r = await build(`type=tar,dest=${tarFile}`);
    expect(r.code, r.stderr).toBe(0);
    const listing = (await run('tar', ['-tvf', tarFile, '--full-time'], { env: { ...process.env, TZ: 'UTC' } })).stdout.trim().split('\n');
    expect(listing.length).toBeGreaterThan(100);
    expect(listing.filter((l) => !l.includes(' 2020-09-13 12:26:40 '))).toEqual([]);
    const oci = join(work, 'sde-oci.tar');
    r = await build(`type=oci,dest=${oci}`);
    expect(r.code, r.stderr).toBe(0);
    const dir = join(work, 'sde-oci');
    mkdirSync(dir);
    await run('tar', ['-xf', oci, '-C', dir]);
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
    expect(index.manifests[0].annotations['org.opencontainers.image.created']).toBe(iso);
    const config = readJson(dir, readJson(dir, index.manifests[0].digest).config.digest);
    expect(config.created).toBe(iso);
    // busybox's own entries keep their times; the Dockerfile's are the epoch.
    const mine = config.history.slice(-3);
    expect(mine.map((h: { created_by: string }) => h.created_by.split(' ')[0])).toEqual(['ARG', 'COPY', 'ENV']);
    expect(mine.map((h: { created: string }) => h.created)).toEqual([iso, iso, iso]);
  });

  it('writes times in a tar export rounded to the second, as upstream (Go rounds), and keeps nanoseconds in a local export', async () => {
    const ctx = join(work, 'ctx-round');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'late.txt'), 'l\n');
    writeFileSync(join(ctx, 'early.txt'), 'e\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY late.txt early.txt /\n');
    // utimes takes seconds as a double: .75 and .25 are exact.
    utimesSync(join(ctx, 'late.txt'), 1000000000.75, 1000000000.75);
    utimesSync(join(ctx, 'early.txt'), 1000000000.25, 1000000000.25);
    const build = (output: string) =>
      buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', output]);
    const tarFile = join(work, 'round.tar');
    let r = await build(`type=tar,dest=${tarFile}`);
    expect(r.code, r.stderr).toBe(0);
    const listing = (await run('tar', ['-tvf', tarFile, '--full-time'], { env: { ...process.env, TZ: 'UTC' } })).stdout;
    expect(listing).toMatch(/ 2001-09-09 01:46:41 late\.txt/);
    expect(listing).toMatch(/ 2001-09-09 01:46:40 early\.txt/);
    const local = join(work, 'round-local');
    r = await build(`type=local,dest=${local}`);
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(join(local, 'late.txt'), { bigint: true }).mtimeNs).toBe(1000000000750000000n);
  });

  it('carries extended attributes from the context (LOOM_SEND_XATTRS=1) to a local export, as upstream', async () => {
    const ctx = join(work, 'xattr-ctx');
    mkdirSync(join(ctx, 'd'), { recursive: true });
    writeFileSync(join(ctx, 'f'), 'f\n');
    writeFileSync(join(ctx, 'd', 'g'), 'g\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY f /f\nCOPY d /d/\n');
    const set = await run('setfattr', ['-n', 'user.loom', '-v', 'v1', join(ctx, 'f')]);
    if (set.code !== 0) return; // no user xattrs on this file system
    expect((await run('setfattr', ['-n', 'user.bin', '-v', '0x00ff10', join(ctx, 'd', 'g')])).code).toBe(0);
    const out = join(work, 'xattr-out');
    const args = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${out}`];
    const r = await buildctl(daemon.addr, args, { env: { ...process.env, LOOM_SEND_XATTRS: '1' } });
    expect(r.code, r.stderr).toBe(0);
    const dump = (await run('getfattr', ['--absolute-names', '-d', '-e', 'hex', '-m', '-', join(out, 'f'), join(out, 'd', 'g')])).stdout;
    expect(dump).toContain(`# file: ${join(out, 'f')}\nuser.loom=0x7631`);
    expect(dump).toContain(`# file: ${join(out, 'd', 'g')}\nuser.bin=0x00ff10`);
  });

  it('exports a multi-platform result to a directory and a tarball with a directory per platform, as upstream', async () => {
    const ctx = join(work, 'multi');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY a.txt /a.txt\nRUN uname -m > /arch && ln -s /a.txt /abs-link && ln -s a.txt /rel-link && ln /a.txt /hard.txt\n`);
    const args = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/amd64,linux/arm64', '--progress', 'plain'];
    const out = join(work, 'multi-out');
    const r = await buildctl(daemon.addr, [...args, '--output', `type=local,dest=${out}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['linux_amd64', 'linux_arm64']);
    for (const [dir, arch] of [['linux_amd64', 'x86_64'], ['linux_arm64', 'aarch64']]) {
      expect(readFileSync(join(out, dir!, 'arch'), 'utf8')).toBe(`${arch}\n`);
      expect(readFileSync(join(out, dir!, 'a.txt'), 'utf8')).toBe('a\n');
      // As upstream's SubDirFS: an absolute symlink target and a hard link move under the platform's directory.
      expect(readlinkSync(join(out, dir!, 'abs-link'))).toBe(`/${dir}/a.txt`);
      expect(readlinkSync(join(out, dir!, 'rel-link'))).toBe('a.txt');
      expect(statSync(join(out, dir!, 'hard.txt')).ino).toBe(statSync(join(out, dir!, 'a.txt')).ino);
      const st = statSync(join(out, dir!));
      expect([st.mode & 0o7777, st.mtimeMs]).toEqual([0o755, 0]);
    }
    // Upstream's progress: a "copying files <platform>" status per platform.
    expect(r.stderr).toMatch(/copying files linux\/amd64 [\d.]+[kM]?B [\d.]+s done/);
    expect(r.stderr).toMatch(/copying files linux\/arm64 [\d.]+[kM]?B [\d.]+s done/);
    // Both platforms copy from the one context: it is sent once, as upstream's shared vertex.

    const tarFile = join(work, 'multi.tar');
    const t = await buildctl(daemon.addr, [...args, '--output', `type=tar,dest=${tarFile}`]);
    expect(t.code, t.stderr).toBe(0);
    const listing = (await run('tar', ['-tvf', tarFile])).stdout.split('\n');
    const names = listing.map((l) => l.split(/\s+/).slice(5).join(' ')).filter(Boolean);
    expect(names[0]).toBe('linux_amd64/');
    expect(listing[0]).toMatch(/^drwxr-xr-x 0\/0 +0 1970-01-01 00:00 linux_amd64\/$/);
    expect(names).toContain('linux_amd64/arch');
    expect(names).toContain('linux_arm64/');
    expect(names).toContain('linux_arm64/arch');
    expect(listing.find((l) => l.includes('linux_arm64/abs-link'))).toMatch(/linux_arm64\/abs-link -> \/linux_arm64\/a\.txt$/);
    expect(listing.find((l) => l.includes('linux_amd64/rel-link'))).toMatch(/linux_amd64\/rel-link -> a\.txt$/);
    expect(listing.find((l) => l.includes('linux_arm64/hard.txt'))).toMatch(/linux_arm64\/hard\.txt link to linux_arm64\/a\.txt$/);
    expect(names.indexOf('linux_arm64/')).toBeGreaterThan(names.indexOf('linux_amd64/arch'));
  }, 120_000);

  it('sends the context once when both platforms of a build copy from it in a shared build stage, as upstream', async () => {
    const ctx = join(work, 'multi-shared');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(
      join(ctx, 'Dockerfile'),
      `FROM --platform=$BUILDPLATFORM ${reg.host}/busybox:latest AS build\nCOPY a.txt /a.txt\nFROM ${reg.host}/busybox:latest\nCOPY --from=build /a.txt /a.txt\n`,
    );
    const out = join(work, 'multi-shared-out');
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/amd64,linux/arm64', '--progress', 'plain', '--output', `type=local,dest=${out}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'linux_arm64', 'a.txt'), 'utf8')).toBe('a\n');
    // One vertex for the context, one transfer on it (each platform's solve once sent it again).
    const contextVertex = /^(#\d+) \[internal\] load build context$/m.exec(r.stderr)?.[1];
    expect(contextVertex).toBeDefined();
    expect(r.stderr.split('\n').filter((l) => l.startsWith(`${contextVertex} transferring context:`))).toHaveLength(1);
  }, 120_000);

  it('makes a copy that does not depend on the platform once for a multi-platform build: both images share its layer, as upstream', async () => {
    const ctx = join(work, 'multi-scratch');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a.txt /a\n');
    const out = join(work, 'multi-scratch.tar');
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/arm64,linux/amd64', '--progress', 'plain', '--output', `type=oci,dest=${out}`]);
    expect(r.code, r.stderr).toBe(0);
    // Upstream (v0.11.6) shows the step once, named by one of the platforms.
    expect(r.stderr.match(/^#\d+ \[linux\/(amd64|arm64) 1\/1\] COPY a\.txt \/a$/gm), r.stderr).toHaveLength(1);
    // And once, cached, when built again (the other platform's result is merged into it).
    const again = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/arm64,linux/amd64', '--progress', 'plain']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr.match(/^#\d+ \[linux\/(amd64|arm64) 1\/1\] COPY a\.txt \/a$/gm), again.stderr).toHaveLength(1);
    expect(again.stderr).toMatch(/^#(\d+) \[linux\/(amd64|arm64) 1\/1\] COPY a\.txt \/a\n#\1 CACHED$/m);
    const dir = join(work, 'multi-scratch');
    mkdirSync(dir, { recursive: true });
    await run('tar', ['-xf', out, '-C', dir]);
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
    const list = readJson(dir, index.manifests[0].digest);
    const layers = list.manifests.map((m: { digest: string }) => readJson(dir, m.digest).layers.map((l: { digest: string }) => l.digest));
    expect(list.manifests.map((m: { platform: { architecture: string } }) => m.platform.architecture).sort()).toEqual(['amd64', 'arm64']);
    expect(layers[0]).toHaveLength(1);
    expect(layers[1]).toEqual(layers[0]);
  }, 120_000);

  it('refuses to export a multi-platform result whose every platform is empty, in the words of upstream v0.11.6 exporters', async () => {
    const ctx = join(work, 'multi-empty');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nENV A=1\n');
    const build = (output: string) =>
      buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/arm64,linux/amd64', '--progress', 'plain', '--output', output]);
    for (const output of [`type=tar,dest=${join(work, 'multi-empty.tar')}`, `type=local,dest=${join(work, 'multi-empty-dir')}`]) {
      const r = await build(output);
      expect(r.code, output).not.toBe(0);
      expect(r.stderr).toMatch(/error: failed to solve: unable to export multiple platforms without map/);
    }
    const oci = await build(`type=oci,dest=${join(work, 'multi-empty-oci.tar')}`);
    expect(oci.code).not.toBe(0);
    expect(oci.stderr).toMatch(/error: failed to solve: cannot export multiple platforms without multi-platform enabled/);
    // One platform: an empty image, as before.
    const one = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/arm64', '--output', `type=tar,dest=${join(work, 'one-empty.tar')}`]);
    expect(one.code, one.stderr).toBe(0);
  }, 120_000);

  it('shows one metadata vertex for one image and platform resolved twice (a named context and a FROM), as upstream', async () => {
    const ctx = join(work, 'resolve-twice');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM base AS one\nRUN true\nFROM ${reg.host}/busybox:latest\nCOPY --from=one /bin/busybox /bb\n`);
    const r = await buildctl(daemon.addr, [
      'build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`,
      '--opt', `context:base=docker-image://${reg.host}/busybox`, '--progress', 'plain',
    ]);
    expect(r.code, r.stderr).toBe(0);
    // Upstream's vertex is the digest of the reference and the platform: two resolves, one vertex.
    const numbers = new Set(r.stderr.split('\n').map((l) => /^(#\d+) \[.*\] load metadata for /.exec(l)?.[1]).filter((n) => n !== undefined));
    expect(numbers.size, r.stderr).toBe(1);
    // Named by the named context every time (upstream's name varies between this and [internal]).
    for (let i = 0; i < 3; i++) {
      const again = await buildctl(daemon.addr, [
        'build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`,
        '--opt', `context:base=docker-image://${reg.host}/busybox`, '--progress', 'plain', '--no-cache',
      ]);
      expect(again.code, again.stderr).toBe(0);
      const names = [...again.stderr.matchAll(/^#\d+ (\[.*\]) load metadata for /gm)].map((m) => m[1]);
      expect(new Set(names), again.stderr).toEqual(new Set(['[context base]']));
    }
  }, 120_000);

  it('shows "merging" under a COPY --link whose merged tree a later step reads, as upstream (not under one another COPY --link merges on)', async () => {
    const ctx = join(work, 'link-merging');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'f'), 'f\n');
    writeFileSync(join(ctx, 'g'), 'g\n');
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY --link f /f\nCOPY --link g /g\nRUN cat /f /g > /fg\n`);
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--progress', 'plain']);
    expect(r.code, r.stderr).toBe(0);
    const linesOf = (step: string) => {
      const n = new RegExp(`^(#\\d+) \\[${step}\\] `, 'm').exec(r.stderr)?.[1];
      expect(n, r.stderr).toBeDefined();
      return r.stderr.split('\n').filter((l) => l.startsWith(`${n} `));
    };
    expect(linesOf('3/4').some((l) => / merging( [\d.]+s)? done$/.test(l)), r.stderr).toBe(true);
    expect(linesOf('2/4').some((l) => l.includes('merging')), r.stderr).toBe(false);
  }, 120_000);

  it('shows a step without inputs (a WORKDIR on scratch) done when a cached build works out its key, not cached, as upstream', async () => {
    const ctx = join(work, 'no-inputs');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nWORKDIR /srv/app\nCOPY a.txt /x\n');
    const args = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--progress', 'plain'];
    expect((await buildctl(daemon.addr, args)).code).toBe(0);
    const r = await buildctl(daemon.addr, args);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^#(\d+) \[1\/2\] WORKDIR \/srv\/app\n#\1 DONE [\d.]+s$/m);
    expect(r.stderr).toMatch(/^#(\d+) \[2\/2\] COPY a\.txt \/x\n#\1 CACHED$/m);
  }, 120_000);

  it("fails a copy from another stage's missing path as upstream's key does: in the walk's words, as soon as the stage is made", async () => {
    const ctx = join(work, 'stage-walk');
    mkdirSync(ctx);
    // The step below the copy fails, but later than the stage is made: upstream computes the copy's
    // key from the stage's content first, and that fails (its parent /x/y is not there).
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest AS s\nRUN mkdir -p /x\nFROM ${reg.host}/busybox:latest\nRUN sleep 2 && exit 3\nCOPY --from=s /x/y/z /\n`);
    const local = ['--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--progress', 'plain'];
    // (Again with the stage cached: nothing has read /x yet.)
    for (let i = 0; i < 2; i++) {
      const r = await buildctl(daemon.addr, ['build', ...local]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/^ > \[stage-1 3\/3\] COPY --from=s \/x\/y\/z \/:$/m);
      expect(r.stderr).toMatch(/error: failed to solve: failed to compute cache key: failed to calculate checksum of ref \w+::\w+: failed to walk (\/\S+)\/x\/y: lstat \1\/x\/y: no such file or directory$/m);
    }
  }, 120_000);

  it('announces a build\'s vertices in upstream\'s order (a COPY --link\'s merge before its copy), and a missing source is the step\'s own error, as upstream', async () => {
    const ctx = join(work, 'link-fails');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'g.txt'), 'g\n');
    // The copy (a weak member of the step's progress group) fails before the merge starts. Upstream
    // announces every loaded vertex, the result first and each before its inputs; its clients keep
    // the group's members in arrival order (a Go map) and so mostly never reveal the group: the
    // build fails with no step shown. loom's client, iterating in insertion order, never does.
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY --link --chown=app:app g.txt /linked.txt\n`);
    const local = ['--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--progress', 'plain'];
    const raw = await buildctl(daemon.addr, ['build', ...local, '--progress', 'rawjson']);
    expect(raw.code).not.toBe(0);
    const messages = raw.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { vertexes?: { name?: string; started?: string; progressGroup?: { weak?: boolean } }[] });
    const announce = messages.find((m) => m.vertexes?.some((v) => v.name === '[2/2] LINK COPY --link --chown=app:app g.txt /linked.txt'));
    expect(announce, raw.stderr).toBeDefined();
    const announced = announce!.vertexes!.filter((v) => v.started === undefined);
    expect(announced.map((v) => v.name)).toEqual([
      '[2/2] LINK COPY --link --chown=app:app g.txt /linked.txt',
      'copy /g.txt /linked.txt',
      '[internal] load build context',
      expect.stringMatching(new RegExp(`^\\[1/2\\] FROM ${reg.host.replace(/\./g, '\\.')}/busybox:latest@sha256:[0-9a-f]{64}$`)),
    ]);
    expect(announced[1]!.progressGroup).toEqual({ id: expect.any(String), name: '[2/2] COPY --link --chown=app:app g.txt /linked.txt', weak: true });
    expect(raw.stderr).toContain('"error":"invalid user index: -1"');
    const r = await buildctl(daemon.addr, ['build', ...local]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^error: failed to solve: invalid user index: -1$/m);
    expect(r.stderr).not.toMatch(/^#\d+ \[2\/2\] COPY --link/m);
    // A source that is not there: the step says which path; the build error says it was the key.
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY missing.txt /\n`);
    const m = await buildctl(daemon.addr, ['build', ...local]);
    expect(m.code).not.toBe(0);
    expect(m.stderr).toMatch(/^#\d+ ERROR: failed to calculate checksum of ref \w+::\w+: "\/missing\.txt": not found$/m);
    expect(m.stderr).toMatch(/error: failed to solve: failed to compute cache key: failed to calculate checksum of ref \S+: "\/missing\.txt": not found/);
    // Two missing sources: both steps fail; the build's error is the one nearest the result, as
    // upstream's mostly (it works out such keys side by side).
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY m1.txt /\nRUN true\nCOPY m2.txt /\n`);
    const two = await buildctl(daemon.addr, ['build', ...local]);
    expect(two.code).not.toBe(0);
    expect(two.stderr).toMatch(/^#\d+ ERROR: failed to calculate checksum of ref \S+: "\/m1\.txt": not found$/m);
    expect(two.stderr).toMatch(/error: failed to solve: failed to compute cache key: failed to calculate checksum of ref \S+: "\/m2\.txt": not found$/m);
    // Both: a step below fails as it runs (started early by the heredoc copy above it, whose key
    // is by content) after the context came, and a key above it cannot be computed. Upstream's
    // key is ready as the context arrives: its error is the build's.
    // (The key is a wildcard's, over a tree and then a link to nowhere: loom's takes a while to compute.)
    symlinkSync('../outside', join(ctx, 'zz-link'));
    mkdirSync(join(ctx, 'tree'));
    for (let i = 0; i < 200; i++) writeFileSync(join(ctx, 'tree', `f${i}`), `${i}\n`);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY --link --chown=app:app g.txt /linked.txt\nCOPY <<EOT /b\ny\nEOT\nCOPY * /all/\n`);
    for (let i = 0; i < 3; i++) {
      const both = await buildctl(daemon.addr, ['build', ...local]);
      expect(both.code).not.toBe(0);
      expect(both.stderr).toMatch(/error: failed to solve: failed to compute cache key: failed to calculate checksum of ref \S+: "\/outside": not found/);
    }
  }, 120_000);

  it('runs a RUN before `COPY . /app` (or `COPY --link`) while the context is still transferring, as upstream starts a step no cache can match', async () => {
    const ctx = join(work, 'run-beside-transfer');
    mkdirSync(ctx);
    // 96 MiB to transfer (sparse here, all of it sent); the base image's layers are local by now.
    writeFileSync(join(ctx, 'big.bin'), '');
    truncateSync(join(ctx, 'big.bin'), 96 << 20);
    for (const copy of ['COPY', 'COPY --link']) {
      writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN echo beside-${Date.now()} > /early\n${copy} . /app\nRUN ls -l /app/big.bin > /late\n`);
      const local = ['--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`];
      const raw = await buildctl(daemon.addr, ['build', ...local, '--progress', 'rawjson']);
      expect(raw.code, raw.stderr).toBe(0);
      const times = new Map<string, { started?: string; completed?: string }>();
      for (const l of raw.stderr.split('\n')) {
        if (!l.startsWith('{')) continue;
        for (const v of (JSON.parse(l) as { vertexes?: { name?: string; started?: string; completed?: string }[] }).vertexes ?? []) {
          const t = times.get(v.name!) ?? {};
          times.set(v.name!, { started: t.started ?? v.started, completed: v.completed ?? t.completed });
        }
      }
      const run = [...times].find(([n]) => n.startsWith('[2/4] RUN echo beside-'))?.[1];
      const context = times.get('[internal] load build context');
      expect(run?.started, raw.stderr).toBeDefined();
      expect(context?.completed, raw.stderr).toBeDefined();
      // Before, the RUN waited for the copy's key, so for the whole transfer.
      expect(Date.parse(run!.started!), copy).toBeLessThan(Date.parse(context!.completed!));
      // And the RUN after the copy still sees all of the context.
      const out = join(work, 'run-beside-transfer-out');
      await buildToDir(ctx, out);
      expect(readFileSync(join(out, 'late'), 'utf8')).toMatch(/ 100663296 .*\/app\/big\.bin\n$/);
      expect(readFileSync(join(out, 'early'), 'utf8')).toMatch(/^beside-/);
    }
  }, 120_000);

  // Linux 6.7 gave each user namespace its own binfmt_misc: there an arm64 step's own children run
  // through QEMU without a handler on the host (this machine has none registered).
  const [kMaj = 0, kMin = 0] = release().split('.').map((x) => parseInt(x, 10));
  it.runIf(arch() === 'x64' && (kMaj > 6 || (kMaj === 6 && kMin >= 7)))('runs the arm64 programs an arm64 RUN starts (apk/apt-style child processes)', async () => {
    const ctx = join(work, 'arm-children');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN /bin/ls -d /bin > /out && env uname -m >> /out && sh -c '/bin/echo nested' >> /out\n`);
    const out = join(work, 'arm-children-out');
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/arm64', '--output', `type=local,dest=${out}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'out'), 'utf8')).toBe('/bin\naarch64\nnested\n');
  }, 120_000);

  it("gives RUN steps upstream's trace collector: the OTEL variables and a socket at /dev/otel-grpc.sock", async () => {
    const ctx = join(work, 'otel');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nENV MINE=1\nRUN env > /env && test -S /dev/otel-grpc.sock && ls -l /dev/otel-grpc.sock > /sock\n`);
    const out = join(work, 'otel-out');
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${out}`]);
    expect(r.code, r.stderr).toBe(0);
    const env = readFileSync(join(out, 'env'), 'utf8').trim().split('\n').sort();
    const otel = env.filter((l) => /^(OTEL_|TRACEPARENT=)/.test(l));
    expect(otel.map((l) => l.replace(/00-[0-9a-f]{32}-[0-9a-f]{16}-01$/, 'TP'))).toEqual([
      'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=unix:///dev/otel-grpc.sock',
      'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc',
      'OTEL_TRACES_EXPORTER=otlp',
      'OTEL_TRACE_PARENT=TP',
      'TRACEPARENT=TP',
    ]);
    expect(env).toContain('MINE=1');
    // A socket anyone may write to, as upstream's.
    expect(readFileSync(join(out, 'sock'), 'utf8')).toMatch(/^srw-rw-rw- /);
  });

  it('names the Dockerfile line of an unknown instruction', async () => {
    const ctx = join(work, 'bad');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nFROBNICATE now\n');
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/dockerfile parse error on line 2: unknown instruction: FROBNICATE/i);
  });

  it('answers buildx subrequests (targets, outline, describe, lint) through the gateway without building, and refuses unknown ones', async () => {
    const ctx = join(work, 'subrequests');
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `ARG BASE=${reg.host}/busybox`,
        '# build compiles it',
        'FROM ${BASE} AS build',
        '# LEVEL how hard to try',
        'ARG LEVEL=3',
        'RUN --mount=type=secret,id=token,required=true --mount=type=ssh false',
        'FROM scratch',
        'COPY --from=build /bin/busybox /',
        '',
      ].join('\n'),
    );
    const targets = await askSubrequest(daemon.addr, ctx, { requestid: 'frontend.targets' });
    expect(Buffer.from(targets.metadata!['result.txt']!).toString()).toBe('TARGET    DESCRIPTION\nbuild     compiles it\n(default) \n');
    const outline = await askSubrequest(daemon.addr, ctx, { requestid: 'frontend.outline', 'build-arg:LEVEL': '9' });
    const o = JSON.parse(Buffer.from(outline.metadata!['result.json']!).toString());
    expect(o.args.map((a: { name: string; value: string }) => [a.name, a.value])).toEqual([['BASE', `${reg.host}/busybox`], ['LEVEL', '9']]);
    expect(o.secrets).toEqual([{ name: 'token', required: true, location: { ranges: [{ start: { line: 6 }, end: { line: 6 } }] } }]);
    expect(o.ssh.map((x: { name: string }) => x.name)).toEqual(['default']);
    // The RUN that would fail was never run: a subrequest builds nothing.
    expect(Buffer.from(outline.metadata!['result.txt']!).toString()).toContain('LEVEL       9');
    const describe = await askSubrequest(daemon.addr, ctx, { requestid: 'frontend.subrequests.describe' });
    expect(JSON.parse(Buffer.from(describe.metadata!['result.json']!).toString()).map((r: { name: string }) => r.name)).toEqual([
      'frontend.outline',
      'frontend.targets',
      'frontend.subrequests.describe',
    ]);
    const unknown = await askSubrequest(daemon.addr, ctx, { requestid: 'frontend.nope' });
    expect(unknown.error).toBe('unsupported request frontend.nope');
    // docker buildx build --check: nothing to report here; a legacy ENV is.
    const clean = await askSubrequest(daemon.addr, ctx, { requestid: 'frontend.lint' });
    expect(JSON.parse(Buffer.from(clean.metadata!['result.json']!).toString()).warnings).toBeNull();
    expect(Buffer.from(clean.metadata!['result.statuscode']!).toString()).toBe('0');
    // loom's buildctl asks as upstream's does (a gateway build) and prints result.txt.
    const local = ['--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`];
    const printed = await buildctl(daemon.addr, ['build', ...local, '--opt', 'requestid=frontend.outline', '--opt', 'target=build']);
    expect(printed.code, printed.stderr).toBe(0);
    expect(printed.stdout).toBe(
      `TARGET:      build\nDESCRIPTION: compiles it\n\nBUILD ARG   VALUE${' '.repeat(reg.host.length + 6)}DESCRIPTION\n` +
        `BASE        ${reg.host}/busybox   \nLEVEL       3${' '.repeat(reg.host.length + 10)}how hard to try\n\n` +
        'SECRET   REQUIRED\ntoken    true\n\nSSH       REQUIRED\ndefault   \n\n',
    );
    const refused = await buildctl(daemon.addr, ['build', ...local, '--opt', 'requestid=frontend.nope']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('error: failed to solve: unsupported request frontend.nope');
    writeFileSync(join(ctx, 'Legacy.Dockerfile'), `FROM ${reg.host}/busybox\nENV A 1\n`);
    const lint = await buildctl(daemon.addr, ['build', ...local, '--opt', 'filename=Legacy.Dockerfile', '--opt', 'requestid=frontend.lint']);
    expect(lint.code, lint.stderr).toBe(0);
    expect(lint.stdout).toBe(
      '\nWARNING: LegacyKeyValueFormat - https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/\n' +
        '"ENV key=value" should be used instead of legacy "ENV key value" format\n' +
        `Legacy.Dockerfile:2\n--------------------\n   1 |     FROM ${reg.host}/busybox\n   2 | >>> ENV A 1\n   3 |     \n--------------------\n`,
    );
    // The daemon keeps serving builds.
    const r = await buildctl(daemon.addr, ['build', ...local, '--opt', 'target=build']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/secret token: not found|required/);
  });

  it('lists cache mounts in du as exec.cachemount records and prunes them', async () => {
    const ctx = join(work, 'cachemount');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN --mount=type=cache,id=loomcache,target=/c echo kept > /c/f && cat /c/f\n`);
    const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    expect(r.code, r.stderr).toBe(0);
    const du = await buildctl(daemon.addr, ["du", "-v"]);
    expect(du.stdout).toMatch(/Mutable:\s+true[\s\S]*Description:\s+cached mount with id \/?loomcache\n[\s\S]*?Type:\s+exec\.cachemount/);
    const pr = await buildctl(daemon.addr, ['prune', '--all']);
    expect(pr.code, pr.stderr).toBe(0);
    const after = await buildctl(daemon.addr, ['du', '-v']);
    expect(after.stdout).not.toContain('exec.cachemount');
  });

  it('says why each step missed the cache: the changed source, the changed input, --no-cache', async () => {
    const ctx = join(work, 'explain');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'one\n');
    writeFileSync(join(ctx, 'b.txt'), 'unrelated\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n');
    const build = (extra: string[] = []) =>
      buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, ...extra]);
    expect((await build()).code).toBe(0);
    writeFileSync(join(ctx, 'a.txt'), 'two\n');
    const r = await build();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/#(\d+) \[internal\] load build context\n(?:#\1 .*\n)*#\1 cache miss: source content changed \([0-9a-f]{12} -> [0-9a-f]{12}\)/);
    expect(r.stderr).toMatch(/#(\d+) \[2\/2\] COPY b\.txt \/b\.txt\n(?:#\1 .*\n)*#\1 cache miss: input 0 changed: \[1\/2\] COPY a\.txt \/a\.txt/);
    const nc = await build(['--no-cache']);
    expect(nc.code, nc.stderr).toBe(0);
    expect(nc.stderr).toMatch(/cache miss: cache disabled for this (build|step)/);
  });

  it('--no-cache runs every step again, COPY --link and what follows included; no-cache=STAGE runs that stage and what is built on it', async () => {
    const ctx = join(work, 'nocache');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'f'), 'f\n');
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `FROM ${reg.host}/busybox:latest AS b`,
        'RUN cat /proc/sys/kernel/random/uuid > /u',
        `FROM ${reg.host}/busybox:latest`,
        'RUN cat /proc/sys/kernel/random/uuid > /one',
        'COPY --from=b /u /u',
        'COPY --link f /f',
        'RUN cat /u /one > /all',
        '',
      ].join('\n'),
    );
    const out = join(work, 'nocache-out');
    const build = async (extra: string[] = []) => {
      const log = await buildToDir(ctx, out, extra);
      return { log, u: readFileSync(join(out, 'u'), 'utf8'), one: readFileSync(join(out, 'one'), 'utf8'), all: readFileSync(join(out, 'all'), 'utf8') };
    };
    const cachedSteps = (log: string) => [...log.matchAll(/^#(\d+) (\[(?:b|stage-1) \d\/\d\] (?!FROM).*)\n(?:#\1 .*\n)*?#\1 CACHED$/gm)].map((m) => m[2]);
    const first = await build();
    const same = await build();
    expect(same.all).toBe(first.all);
    expect(cachedSteps(same.log).length).toBe(5);

    // Everything runs: new values everywhere, and no step shown as cached.
    const all = await build(['--no-cache']);
    expect(cachedSteps(all.log)).toEqual([]);
    expect(all.u).not.toBe(first.u);
    expect(all.one).not.toBe(first.one);
    expect(all.all).toBe(all.u + all.one);

    // Stage b only: its RUN runs (a new /u), and what copies from it runs on the new /u; the other
    // stage's first RUN stays cached.
    const stage = await build(['--opt', 'no-cache=b']);
    expect(stage.u).not.toBe(all.u);
    expect(stage.one).toBe(all.one);
    expect(stage.all).toBe(stage.u + stage.one);
    expect(cachedSteps(stage.log)).toEqual(['[stage-1 2/5] RUN cat /proc/sys/kernel/random/uuid > /one']);
  });

  it('runs again in every build what is built on a local directory taken whole (FROM a local named context), and keeps a read-only mount of one cached, as upstream keys local sources by session', async () => {
    const ctx = join(work, 'local-base');
    mkdirSync(join(ctx, 'dir'), { recursive: true });
    writeFileSync(join(ctx, 'dir', 'f'), 'f\n');
    writeFileSync(join(ctx, 'extra.txt'), 'x\n');
    writeFileSync(join(ctx, 'Dockerfile'), ['FROM assets', 'COPY extra.txt /extra.txt', `FROM ${reg.host}/busybox:latest`, 'RUN --mount=type=bind,target=/ctx cat /ctx/extra.txt > /e', 'COPY --from=0 /extra.txt /x', ''].join('\n'));
    const out = join(work, 'local-base-out');
    const extra = ['--local', `assets=${join(ctx, 'dir')}`, '--opt', 'context:assets=local:assets'];
    const cached = (log: string) => [...log.matchAll(/^#(\d+) (\[(?:stage-0|stage-1) \d\/\d\] .*)\n(?:#\1 .*\n)*?#\1 CACHED$/gm)].map((m) => m[2]).sort();
    await buildToDir(ctx, out, extra);
    const again = await buildToDir(ctx, out, extra);
    expect(readFileSync(join(out, 'x'), 'utf8')).toBe('x\n');
    // The COPY onto the local directory runs again; the mount of the context is keyed by its
    // content, and the COPY --from of an unchanged file by the file's.
    expect(cached(again)).toEqual(['[stage-1 2/3] RUN --mount=type=bind,target=/ctx cat /ctx/extra.txt > /e', '[stage-1 3/3] COPY --from=0 /extra.txt /x']);
    expect(again).toMatch(/^#(\d+) \[stage-0 1\/2\] COPY extra\.txt \/extra\.txt\n#\1 cache miss: input 0 changed: \[context assets\] load from client/m);
  });

  it('keeps what a --no-cache build made under the usual keys: the next build finds every step, those built on the steps it ran included, as upstream', async () => {
    const ctx = join(work, 'nocache-then');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'f'), 'f\n');
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `FROM ${reg.host}/busybox:latest AS a`,
        'RUN cat /proc/sys/kernel/random/uuid > /x',
        `FROM ${reg.host}/busybox:latest AS b`,
        'RUN cat /proc/sys/kernel/random/uuid > /y',
        'FROM b',
        'COPY --from=a /x /z',
        'COPY --link f /f',
        'RUN cat /z /y > /all',
        '',
      ].join('\n'),
    );
    const out = join(work, 'nocache-then-out');
    const build = async (extra: string[] = []) => ({ log: await buildToDir(ctx, out, extra), all: readFileSync(join(out, 'all'), 'utf8') });
    const cachedSteps = (log: string) => [...log.matchAll(/^#(\d+) (\[(?:a|b|stage-2) \d\/\d\] (?!FROM).*)\n(?:#\1 .*\n)*?#\1 CACHED$/gm)].map((m) => m[2]).sort();
    // Steps no build ran before: only the --no-cache build's results are there to find.
    const nc = await build(['--no-cache']);
    expect(cachedSteps(nc.log)).toEqual([]);
    const next = await build();
    expect(cachedSteps(next.log)).toEqual([
      '[a 2/2] RUN cat /proc/sys/kernel/random/uuid > /x',
      '[b 2/2] RUN cat /proc/sys/kernel/random/uuid > /y',
      '[stage-2 1/3] COPY --from=a /x /z',
      '[stage-2 2/3] COPY --link f /f',
      '[stage-2 3/3] RUN cat /z /y > /all',
    ]);
    expect(next.all).toBe(nc.all);
  });

  it('keys what a step reads from another stage by content too: a stage made again with the same files leaves COPY --from, RUN --mount=from and what follows cached', async () => {
    const ctx = join(work, 'bycontent');
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `FROM ${reg.host}/busybox:latest AS b`,
        'ARG V=1',
        'RUN echo hello > /out.txt && mkdir /d && echo "$V" > /d/v && echo x > /d/x',
        `FROM ${reg.host}/busybox:latest`,
        'COPY --from=b /out.txt /out.txt',
        'RUN cat /proc/sys/kernel/random/uuid > /u1',
        'RUN --mount=from=b,source=/d,target=/m cat /m/x > /x && cat /proc/sys/kernel/random/uuid > /u2',
        'COPY --from=b /d/x* /w/',
        'RUN cat /proc/sys/kernel/random/uuid > /u3',
        '',
      ].join('\n'),
    );
    const out = join(work, 'bycontent-out');
    const build = async (extra: string[] = []) => {
      const log = await buildToDir(ctx, out, extra);
      return { log, u: ['u1', 'u2', 'u3'].map((f) => readFileSync(join(out, f), 'utf8')) };
    };
    const cached = (log: string) =>
      [...log.matchAll(/^#(\d+) (\[(?:b|stage-1) \d\/\d\] (?!FROM).*)\n(?:#\1 .*\n)*?#\1 CACHED$/gm)].map((m) => m[2]!.replace(/ .*/, '')).sort();
    const first = await build();
    const stage1 = ['[stage-1', '[stage-1', '[stage-1', '[stage-1', '[stage-1'];

    // The stage runs again (--no-cache for it) and makes the same files: everything after is found.
    const again = await build(['--opt', 'no-cache=b']);
    expect(again.log).toMatch(/\[b 2\/2\] RUN echo hello[^\n]*\n#\d+ cache miss: cache disabled/);
    expect(cached(again.log)).toEqual(stage1);
    expect(again.u).toEqual(first.u);

    // The stage's RUN changes (another V in its environment) and so does one file of /d, but not
    // /out.txt or /d/x: the COPY of /out.txt and the first RUN stay cached; the mount of all of /d
    // and what follows run.
    const v2 = await build(['--opt', 'build-arg:V=2']);
    expect(v2.log).toMatch(/\[b 2\/2\] RUN echo hello[^\n]*\n#\d+ cache miss: /);
    expect(cached(v2.log)).toEqual(['[stage-1', '[stage-1']);
    expect(v2.u[0]).toBe(first.u[0]);
    expect(v2.u[1]).not.toBe(first.u[1]);

    // Back to V=1: the stage's step and everything after are found under their first keys.
    const back = await build();
    expect(cached(back.log)).toEqual(['[b', ...stage1]);
    expect(back.u).toEqual(first.u);
  });

  it('keys a wildcard COPY --from by what the pattern matches: a change beside the matches keeps it cached, a change to a match does not (as upstream)', async () => {
    const ctx = join(work, 'bycontent-wildcard');
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `FROM ${reg.host}/busybox:latest AS b`,
        'ARG V=1',
        'ARG T=1',
        'RUN mkdir /d && echo a > /d/a.txt && echo "$T" > /d/t.txt && echo "$V" > /d/other.bin',
        `FROM ${reg.host}/busybox:latest`,
        'COPY --from=b /d/*.txt /w/',
        'RUN cat /proc/sys/kernel/random/uuid > /u',
        '',
      ].join('\n'),
    );
    const out = join(work, 'bycontent-wildcard-out');
    const build = async (extra: string[] = []) => {
      const log = await buildToDir(ctx, out, extra);
      return { log, u: readFileSync(join(out, 'u'), 'utf8'), t: readFileSync(join(out, 'w/t.txt'), 'utf8') };
    };
    const first = await build();
    const beside = await build(['--opt', 'build-arg:V=2']);
    expect(beside.log).toMatch(/\[stage-1 2\/3\] COPY --from=b \/d\/\*\.txt \/w\/\n#\d+ CACHED/);
    expect(beside.u).toBe(first.u);
    const match = await build(['--opt', 'build-arg:T=2']);
    expect(match.log).toMatch(/\[stage-1 2\/3\] COPY --from=b \/d\/\*\.txt \/w\/\n#\d+ cache miss: /);
    expect(match.t).toBe('2\n');
    expect(match.u).not.toBe(first.u);
  });

  it('keeps a COPY cached when only other files of the context change, or a file is touched', async () => {
    const ctx = join(work, 'selectors');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'b.txt'), 'b\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY a.txt /a.txt\nCOPY . /all/\n');
    const build = () => buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    expect((await build()).code).toBe(0);
    writeFileSync(join(ctx, 'b.txt'), 'b changed\n');
    const r = await build();
    expect(r.code, r.stderr).toBe(0);
    // The copy of a.txt reads only a.txt: cached. The copy of everything reads b.txt: runs.
    expect(r.stderr).toMatch(/#(\d+) \[1\/2\] COPY a\.txt \/a\.txt\n#\1 CACHED/);
    expect(r.stderr).not.toMatch(/\[2\/2\] COPY \. \/all\/\n#\d+ CACHED/);
    expect(r.stderr).toMatch(/cache miss: input 1 changed: \[internal\] load build context/);
    // Touching a file without changing it changes nothing.
    const now = new Date();
    utimesSync(join(ctx, 'a.txt'), now, now);
    utimesSync(join(ctx, 'b.txt'), now, now);
    const t = await build();
    expect(t.code, t.stderr).toBe(0);
    expect(t.stderr).toMatch(/\[1\/2\] COPY a\.txt \/a\.txt\n#\d+ CACHED/);
    expect(t.stderr).toMatch(/\[2\/2\] COPY \. \/all\/\n#\d+ CACHED/);
  });

  it('keys a wildcard COPY from the context by what it matches, and fails a missing source at key time (as upstream)', async () => {
    const ctx = join(work, 'selectors-wildcard');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'b.md'), 'b\n');
    // The second COPY brings the whole context over, b.md included.
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY *.txt /t/\nCOPY . /all/\n');
    const build = () => buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    expect((await build()).code).toBe(0);
    writeFileSync(join(ctx, 'b.md'), 'b changed\n');
    const beside = await build();
    expect(beside.code, beside.stderr).toBe(0);
    expect(beside.stderr).toMatch(/#(\d+) \[1\/2\] COPY \*\.txt \/t\/\n#\1 CACHED/);
    expect(beside.stderr).not.toMatch(/\[2\/2\] COPY \. \/all\/\n#\d+ CACHED/);
    writeFileSync(join(ctx, 'c.txt'), 'a new match\n');
    const matched = await build();
    expect(matched.code, matched.stderr).toBe(0);
    expect(matched.stderr).not.toMatch(/COPY \*\.txt \/t\/\n#\d+ CACHED/);
    // A literal source missing beside a wildcard one: upstream's checksum error, before anything runs.
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY *.txt gone.json /t/\n');
    const missing = await build();
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/failed to compute cache key: failed to calculate checksum of ref \w+::\w+: "\/gone\.json": not found/);
    // A wildcard whose directory is missing matches nothing at key time (upstream v0.11's
    // wildcard checksum): the copy fails, on the missing directory.
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY nothere/*.txt /t/\n');
    const noBase = await build();
    expect(noBase.code).not.toBe(0);
    expect(noBase.stderr).not.toContain('failed to compute cache key');
    expect(noBase.stderr).toMatch(/error: failed to solve: .*lstat \/nothere: no such file or directory/);
  });

  it('keys a COPY --exclude from the context by what it keeps: an excluded file may change, a kept one may not (as upstream)', async () => {
    const ctx = join(work, 'selectors-exclude');
    mkdirSync(join(ctx, 'app', 'docs'), { recursive: true });
    writeFileSync(join(ctx, 'app', 'main.js'), 'main\n');
    writeFileSync(join(ctx, 'app', 'notes.md'), 'notes\n');
    writeFileSync(join(ctx, 'app', 'docs', 'guide.txt'), 'guide\n');
    // The RUN sends the whole context over (a bind mount of it), so every edit reaches the daemon.
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY --exclude=*.md --exclude=docs app/ /app/\nRUN --mount=type=bind,target=/ctx cat /ctx/app/notes.md > /notes\n`);
    const out = join(work, 'selectors-exclude-out');
    const build = () => buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${out}`]);
    const first = await build();
    expect(first.code, first.stderr).toBe(0);
    expect(readdirSync(join(out, 'app')).sort()).toEqual(['main.js']);
    writeFileSync(join(ctx, 'app', 'notes.md'), 'notes changed\n');
    writeFileSync(join(ctx, 'app', 'docs', 'new.txt'), 'new\n');
    const excluded = await build();
    expect(excluded.code, excluded.stderr).toBe(0);
    expect(excluded.stderr).toMatch(/#(\d+) \[stage-0 2\/3\] COPY --exclude=\*\.md --exclude=docs app\/ \/app\/\n#\1 CACHED/);
    expect(readFileSync(join(out, 'notes'), 'utf8')).toBe('notes changed\n');
    writeFileSync(join(ctx, 'app', 'lib.js'), 'lib\n');
    const kept = await build();
    expect(kept.code, kept.stderr).toBe(0);
    expect(kept.stderr).not.toMatch(/COPY --exclude=\*\.md --exclude=docs app\/ \/app\/\n#\d+ CACHED/);
    expect(readdirSync(join(out, 'app')).sort()).toEqual(['lib.js', 'main.js']);
  });

  it('keys a COPY --from --exclude by the content it keeps: a stage made again that changes only an excluded file leaves it cached', async () => {
    const ctx = join(work, 'selectors-exclude-from');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest AS s\nARG V\nRUN mkdir /d && echo keep > /d/k && echo $V > /d/x.md\nFROM scratch\nCOPY --from=s --exclude=*.md /d /d/\n`);
    const stage = (v: string) => buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', `build-arg:V=${v}`]);
    expect((await stage('1')).code).toBe(0);
    const other = await stage('2');
    expect(other.code, other.stderr).toBe(0);
    expect(other.stderr).toMatch(/#(\d+) \[s 2\/2\] RUN mkdir/);
    expect(other.stderr).not.toMatch(/RUN mkdir .*\n#\d+ CACHED/);
    expect(other.stderr).toMatch(/#(\d+) \[stage-1 1\/1\] COPY --from=s --exclude=\*\.md \/d \/d\/\n#\1 CACHED/);
  });

  it('a bind mount of a path below another mounted path that is not there fails as the step runs, in runc\'s words and with exit code 1, as upstream', async () => {
    const ctx = join(work, 'mount-below');
    mkdirSync(join(ctx, 'data'), { recursive: true });
    writeFileSync(join(ctx, 'data', 'one.json'), '1\n');
    writeFileSync(join(ctx, 'data', 'two.json'), '2\n');
    writeFileSync(join(ctx, '.dockerignore'), 'data/two.json\n');
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN --mount=type=bind,source=data,target=/a --mount=type=bind,source=data/two.json,target=/b cat /a/one.json > /o\n`);
    const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).not.toContain('failed to compute cache key');
    expect(r.stderr).toMatch(/runc run failed: unable to start container process: error during container init: error mounting "\S+\/data\/two\.json" to rootfs at "\/b": stat \S+\/data\/two\.json: no such file or directory/);
    expect(r.stderr).toMatch(/error: failed to solve: process "\/bin\/sh -c cat \/a\/one\.json > \/o" did not complete successfully: exit code: 1\n/);
  });

  it('keys COPY --parents of two paths below one directory by what each reads: cached when nothing read changed, as upstream', async () => {
    const ctx = join(work, 'parents-two');
    mkdirSync(join(ctx, 'src'), { recursive: true });
    writeFileSync(join(ctx, 'src', 'a.go'), 'a\n');
    writeFileSync(join(ctx, 'src', 'b.go'), 'b\n');
    writeFileSync(join(ctx, 'src', 'other.txt'), 'o\n');
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY --parents src/./a.go src/./b.go /d/\nRUN --mount=type=bind,target=/ctx cat /ctx/src/other.txt > /o\n`);
    const build = () => buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    const step = /#(\d+) \[stage-0 2\/3\] COPY --parents src\/\.\/a\.go src\/\.\/b\.go \/d\/\n#\1 CACHED/;
    expect((await build()).code).toBe(0);
    const again = await build();
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(step);
    writeFileSync(join(ctx, 'src', 'other.txt'), 'changed\n');
    const other = await build();
    expect(other.stderr).toMatch(step);
    writeFileSync(join(ctx, 'src', 'b.go'), 'B\n');
    const read = await build();
    expect(read.code, read.stderr).toBe(0);
    expect(read.stderr).not.toMatch(step);
  });

  it('COPY with --exclude or --parents: a source that is not there fails as upstream fails it (the copy for --exclude, the key for a --parents path)', async () => {
    const ctx = join(work, 'patterns-missing');
    mkdirSync(join(ctx, 'src'), { recursive: true });
    writeFileSync(join(ctx, 'src', 'a.go'), 'a\n');
    symlinkSync('src/gone.go', join(ctx, 'dangling'));
    const build = (df: string, from = 'scratch') => {
      writeFileSync(join(ctx, 'Dockerfile'), `FROM ${from === 'scratch' ? 'scratch' : `${reg.host}/busybox:latest`}\n${df}\n`);
      return buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
    };
    // Upstream's checksum with patterns finds nothing and is no error; the copy then fails
    // (upstream v0.24 with --exclude built in: `lstat /src/gone.go: no such file or directory`).
    const excluded = await build('COPY --exclude=*.md dangling /d/');
    expect(excluded.code).not.toBe(0);
    expect(excluded.stderr).not.toContain('failed to compute cache key');
    expect(excluded.stderr).toMatch(/error: failed to solve: .*lstat \/src\/gone\.go: no such file or directory/);
    // A --parents path names a path that must be copied (upstream's required paths).
    const parents = await build('COPY --parents src/nope.go /d/');
    expect(parents.code).not.toBe(0);
    expect(parents.stderr).toMatch(/error: failed to solve: failed to compute cache key: failed to calculate checksum of ref \S+: "\/src\/nope\.go": not found/);
    const fine = await build('COPY --parents src/a.go /d/');
    expect(fine.code, fine.stderr).toBe(0);
  });

  it("sends a cached build's context and session without building a protobuf descriptor in the client (they are made when a command needs them)", async () => {
    // scripts/bundle-cli.mjs makes the bundle's descriptors on first use, and the build path
    // (Solve, Status, the session's health, auth and filesync services, packets) needs none:
    // building them was ~10 ms of every build.
    const ctx = join(work, 'nodesc');
    mkdirSync(join(ctx, 'src'), { recursive: true });
    for (let i = 0; i < 20; i++) writeFileSync(join(ctx, 'src', `f${i}.txt`), `${i}\n`);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nCOPY src/ /src/\nRUN ls /src > /list\n`);
    const env = { ...process.env, LOOM_TRACE_DESCRIPTORS: '1' };
    const args = ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`];
    const first = await buildctl(daemon.addr, args, { env });
    expect(first.code, first.stderr).toBe(0);
    const cached = await buildctl(daemon.addr, args, { env });
    expect(cached.code, cached.stderr).toBe(0);
    expect(cached.stderr).toMatch(/RUN ls \/src > \/list\n#\d+ CACHED/);
    expect(cached.stderr).not.toContain('loom: descriptor');
    // Nor does `debug workers` (what buildx's docker-container driver runs until the daemon answers).
    const workers = await buildctl(daemon.addr, ['debug', 'workers', '-v'], { env });
    expect(workers.code, workers.stderr).toBe(0);
    expect(workers.stdout).toMatch(/GC Policy rule#0:/);
    expect(workers.stderr).not.toContain('loom: descriptor');
    // The trace is live: a command that needs the descriptors (du decodes DiskUsage with them) makes them.
    const du = await buildctl(daemon.addr, ['du'], { env });
    expect(du.code, du.stderr).toBe(0);
    expect(du.stderr).toContain('loom: descriptor file_google_protobuf_descriptor');
  });

  it('copies a touched file with its new time into a step that is not cached (the context is the one this build sent, not an earlier one of the same content)', async () => {
    const ctx = join(work, 'touched');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'f.txt'), 'same\n');
    const build = async (dest: string, out: string) => {
      writeFileSync(join(ctx, 'Dockerfile'), `FROM scratch\nCOPY f.txt ${dest}\n`);
      const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${out}`]);
      expect(r.code, r.stderr).toBe(0);
      return r;
    };
    utimesSync(join(ctx, 'f.txt'), 1_000_000_000, 1_000_000_000);
    await build('/a', join(work, 'touched-1'));
    expect(statSync(join(work, 'touched-1', 'a')).mtimeMs).toBe(1_000_000_000_000);
    // Same content, a new time, another destination: the COPY runs, with the file as it is now.
    utimesSync(join(ctx, 'f.txt'), 1_100_000_000, 1_100_000_000);
    const second = await build('/b', join(work, 'touched-2'));
    expect(statSync(join(work, 'touched-2', 'b')).mtimeMs).toBe(1_100_000_000_000);
    // The context itself is never taken from the cache (upstream keys it by session): DONE, not CACHED.
    expect(second.stderr).toMatch(/#(\d+) \[internal\] load build context\n(?:#\1 .*\n)*#\1 DONE/);
    // Touched again, same destination: the COPY is cached (keyed by content), as upstream's.
    utimesSync(join(ctx, 'f.txt'), 1_200_000_000, 1_200_000_000);
    const third = await build('/b', join(work, 'touched-3'));
    expect(third.stderr).toMatch(/COPY f\.txt \/b\n#\d+ CACHED/);
    expect(statSync(join(work, 'touched-3', 'b')).mtimeMs).toBe(1_100_000_000_000);
  });
});
