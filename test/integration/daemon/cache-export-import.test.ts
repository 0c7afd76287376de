/**
 * Cache export and import between daemons (root, runc, real registry, real sockets): a cache
 * exported by one loom is used by another loom with an empty state — the team-shared cache.
 * A step that writes a timestamp proves where a result came from: the same timestamp means the
 * step did not run again.
 */
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { skopeoInspect, startRegistry, type TestRegistry } from '../../helpers/registry.js';

/**
 * The step `cmd` shown CACHED in plain progress: its header, then any of its own status lines (the
 * layers it imports from the cache, fetched on this step), then CACHED, all under one number.
 */
function cachedStep(cmd: string): RegExp {
  const esc = cmd.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return new RegExp(`^(#\\d+) \\[[^\\]]*\\] ${esc}\\n(?:\\1 .*\\n)*\\1 CACHED$`, 'm');
}

const d = describe.runIf(process.getuid?.() === 0);

let reg: TestRegistry;
let work: string;
let config: string;
const daemons: TestDaemon[] = [];

function context(name: string, dockerfile: string, files: Record<string, string> = {}): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Dockerfile'), dockerfile);
  for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
  return dir;
}

async function freshDaemon(): Promise<TestDaemon> {
  const daemon = await startDaemon({ config });
  daemons.push(daemon);
  return daemon;
}

async function build(daemon: TestDaemon, dir: string, extra: string[], out?: string) {
  const args = ['build', '--progress', 'plain', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, ...extra];
  if (out) args.push('--output', `type=local,dest=${out}`);
  const r = await buildctl(daemon.addr, args, { timeoutMs: 120_000 });
  expect(r.code, r.stderr).toBe(0);
  return r.stderr;
}

d('cache export and import', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-remote-cache-'));
    reg = await startRegistry();
    config = `[registry."${reg.host}"]\n  http = true\n`;
  }, 120_000);

  afterAll(async () => {
    for (const dm of daemons) {
      await dm.stop().catch(() => {});
      removeDir(dm.dir);
    }
    await reg?.stop();
    if (work) removeDir(work);
  });

  const df = () => `FROM ${reg.host}/busybox:latest\nRUN date +%s%N > /stamp\nCOPY a.txt /a.txt\nRUN cat /a.txt /stamp > /both\n`;

  it('registry cache (mode=max) exported by one daemon is used by another with an empty state', async () => {
    const dir = context('reg', df(), { 'a.txt': 'hello\n' });
    const a = await freshDaemon();
    await build(a, dir, ['--export-cache', `type=registry,ref=${reg.host}/cache:main,mode=max`], join(work, 'reg-a'));
    const b = await freshDaemon();
    const log = await build(b, dir, ['--import-cache', `type=registry,ref=${reg.host}/cache:main`], join(work, 'reg-b'));
    expect(log).toContain(`importing cache manifest from ${reg.host}/cache:main`);
    expect(log).toMatch(cachedStep('RUN cat /a.txt /stamp > /both'));
    expect(readFileSync(join(work, 'reg-b', 'both'), 'utf8')).toBe(readFileSync(join(work, 'reg-a', 'both'), 'utf8'));

    // The frontend's own option (upstream's older API: --opt cache-from=REF, registry refs) imports too.
    const o = await freshDaemon();
    const optLog = await build(o, dir, ['--opt', `cache-from=${reg.host}/cache:main`], join(work, 'reg-opt'));
    expect(optLog).toContain(`importing cache manifest from ${reg.host}/cache:main`);
    expect(readFileSync(join(work, 'reg-opt', 'both'), 'utf8')).toBe(readFileSync(join(work, 'reg-a', 'both'), 'utf8'));

    // mode=max kept the intermediate steps: a changed COPY source re-runs only what follows it.
    writeFileSync(join(dir, 'a.txt'), 'changed\n');
    const c = await freshDaemon();
    await build(c, dir, ['--import-cache', `type=registry,ref=${reg.host}/cache:main`], join(work, 'reg-c'));
    expect(readFileSync(join(work, 'reg-c', 'stamp'), 'utf8')).toBe(readFileSync(join(work, 'reg-a', 'stamp'), 'utf8'));
    expect(readFileSync(join(work, 'reg-c', 'both'), 'utf8')).toMatch(/^changed\n/);
  }, 240_000);

  it('mode=max exported from a fully cached build still holds every step', async () => {
    const dir = context('max-cached', df(), { 'a.txt': 'cached first\n' });
    const a = await freshDaemon();
    await build(a, dir, [], join(work, 'maxc-a'));
    // Everything comes from the cache now: the final step hits, the steps below it are not visited.
    await build(a, dir, ['--export-cache', `type=registry,ref=${reg.host}/cache:maxcached,mode=max`]);
    writeFileSync(join(dir, 'a.txt'), 'changed after export\n');
    const b = await freshDaemon();
    await build(b, dir, ['--import-cache', `type=registry,ref=${reg.host}/cache:maxcached`], join(work, 'maxc-b'));
    // The RUN before the COPY came from the exported cache.
    expect(readFileSync(join(work, 'maxc-b', 'stamp'), 'utf8')).toBe(readFileSync(join(work, 'maxc-a', 'stamp'), 'utf8'));
  }, 240_000);

  it('a build that exports nothing fetches no imported layer; a step that runs on an imported output fetches that one', async () => {
    const dir = context('lazy', df(), { 'a.txt': 'lazy\n' });
    const a = await freshDaemon();
    await build(a, dir, ['--export-cache', `type=registry,ref=${reg.host}/cache:lazy,mode=max`], join(work, 'lazy-a'));
    const b = await freshDaemon();
    const imp = ['--import-cache', `type=registry,ref=${reg.host}/cache:lazy`];
    const first = await build(b, dir, imp);
    expect(first).toMatch(cachedStep('RUN cat /a.txt /stamp > /both'));
    // The steps under it show as cached too, as upstream's (their outputs are in the import).
    expect(first).toMatch(cachedStep('RUN date +%s%N > /stamp'));
    expect(first).toMatch(cachedStep('COPY a.txt /a.txt'));
    expect(first).not.toContain('importing layer');
    // Nor the base image: nothing runs on it (the daemon pulls a FROM early only without imports).
    expect(first).not.toMatch(/^#\d+ (extracting )?sha256:[0-9a-f]{64}/m);

    // The COPY's source changed: the COPY runs on the imported output of the RUN before it,
    // which is fetched now (its layers' progress on the COPY's vertex).
    writeFileSync(join(dir, 'a.txt'), 'lazy changed\n');
    const second = await build(b, dir, imp);
    const copy = /#(\d+) \[3\/4\] COPY a.txt \/a.txt/.exec(second);
    expect(copy, second).not.toBeNull();
    expect(second).toMatch(new RegExp(`#${copy![1]} importing layer sha256:[0-9a-f]{64} from ${reg.host}/cache:lazy`));
    // It is in b's own cache now: without the import, the RUN is cached with a's output.
    const third = await build(b, dir, [], join(work, 'lazy-b'));
    expect(third).toMatch(cachedStep('RUN date +%s%N > /stamp'));
    expect(readFileSync(join(work, 'lazy-b', 'stamp'), 'utf8')).toBe(readFileSync(join(work, 'lazy-a', 'stamp'), 'utf8'));
    expect(readFileSync(join(work, 'lazy-b', 'both'), 'utf8')).toMatch(/^lazy changed\n/);
  }, 240_000);

  it('a cache exported with zstd layers is imported and unpacked by another daemon', async () => {
    const dir = context('zstd', df(), { 'a.txt': 'zstd\n' });
    const a = await freshDaemon();
    await build(a, dir, ['--export-cache', `type=registry,ref=${reg.host}/cache:zstd,mode=max,compression=zstd,force-compression=true`], join(work, 'zstd-a'));
    const index = (await (await fetch(`http://${reg.host}/v2/cache/manifests/zstd`, { headers: { accept: 'application/vnd.oci.image.index.v1+json' } })).json()) as { manifests: { mediaType: string }[] };
    const layers = index.manifests.filter((m) => m.mediaType !== 'application/vnd.buildkit.cacheconfig.v0');
    expect(layers.length).toBeGreaterThan(0);
    expect(new Set(layers.map((m) => m.mediaType))).toEqual(new Set(['application/vnd.oci.image.layer.v1.tar+zstd']));
    // An exporter needs the imported outputs: their zstd layers are fetched and unpacked.
    const b = await freshDaemon();
    const log = await build(b, dir, ['--import-cache', `type=registry,ref=${reg.host}/cache:zstd`], join(work, 'zstd-b'));
    expect(log).toMatch(cachedStep('RUN cat /a.txt /stamp > /both'));
    expect(readFileSync(join(work, 'zstd-b', 'both'), 'utf8')).toBe(readFileSync(join(work, 'zstd-a', 'both'), 'utf8'));
  }, 240_000);

  it('local cache (an OCI layout on the client) exported and imported through the session', async () => {
    const dir = context('local', df(), { 'a.txt': 'local\n' });
    const dest = join(work, 'local-cache');
    const a = await freshDaemon();
    await build(a, dir, ['--export-cache', `type=local,dest=${dest},mode=max`], join(work, 'loc-a'));
    // The client tagged the cache manifest in its index.json; every blob sits under its digest.
    const index = JSON.parse(readFileSync(join(dest, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations: Record<string, string> }[] };
    expect(index.manifests[0]!.annotations['org.opencontainers.image.ref.name']).toBe('latest');
    const list = JSON.parse(readFileSync(join(dest, 'blobs', 'sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { manifests: { mediaType: string }[] };
    expect(list.manifests.some((m) => m.mediaType === 'application/vnd.buildkit.cacheconfig.v0')).toBe(true);

    const b = await freshDaemon();
    const log = await build(b, dir, ['--import-cache', `type=local,src=${dest}`], join(work, 'loc-b'));
    expect(log).toMatch(cachedStep('RUN cat /a.txt /stamp > /both'));
    expect(readFileSync(join(work, 'loc-b', 'both'), 'utf8')).toBe(readFileSync(join(work, 'loc-a', 'both'), 'utf8'));
  }, 240_000);

  it('an export adds to an existing cache instead of dropping what another build put there', async () => {
    // Dockerfiles of different sizes: the client's directories share one mirror on the daemon
    // (same name, no shared key), and a file of equal size and mtime is not sent again, as upstream.
    const one = context('merge-1', `FROM ${reg.host}/busybox:latest\nRUN date +%s%N > /one\n`);
    const two = context('merge-2', `FROM ${reg.host}/busybox:latest\nRUN date +%s%N > /second\n`);
    const a = await freshDaemon();
    await build(a, one, ['--export-cache', `type=registry,ref=${reg.host}/cache:shared`], join(work, 'm1-a'));
    await build(a, two, ['--export-cache', `type=registry,ref=${reg.host}/cache:shared`], join(work, 'm2-a'));
    const b = await freshDaemon();
    const imp = ['--import-cache', `type=registry,ref=${reg.host}/cache:shared`];
    await build(b, one, imp, join(work, 'm1-b'));
    await build(b, two, imp, join(work, 'm2-b'));
    expect(readFileSync(join(work, 'm1-b', 'one'), 'utf8')).toBe(readFileSync(join(work, 'm1-a', 'one'), 'utf8'));
    expect(readFileSync(join(work, 'm2-b', 'second'), 'utf8')).toBe(readFileSync(join(work, 'm2-a', 'second'), 'utf8'));
  }, 240_000);

  it('inline cache travels in the pushed image and is imported from it', async () => {
    const dir = context('inline', df(), { 'a.txt': 'inline\n' });
    const a = await freshDaemon();
    await build(a, dir, ['--export-cache', 'type=inline', '--output', `type=image,name=${reg.host}/app:inline,push=true`]);
    // The image config carries the cache config.
    const cfg = JSON.parse(await skopeoInspect(`${reg.host}/app:inline`, { raw: true, config: true })) as Record<string, unknown>;
    expect(typeof cfg['moby.buildkit.cache.v0']).toBe('string');
    // Upstream's inline shape: a list of records alone, each result naming the top one of the
    // image's own layers by index (BuildKit's importer reads the field as []CacheRecord).
    const inline = JSON.parse(Buffer.from(cfg['moby.buildkit.cache.v0'] as string, 'base64').toString()) as { digest: string; layers?: { layer: number }[] }[];
    expect(Array.isArray(inline)).toBe(true);
    const layerCount = (cfg['rootfs'] as { diff_ids: string[] }).diff_ids.length;
    const tops = inline.flatMap((r) => r.layers ?? []).map((l) => l.layer);
    expect(tops.length).toBeGreaterThan(0);
    expect(tops.every((t) => Number.isInteger(t) && t >= 0 && t < layerCount)).toBe(true);
    expect(tops).toContain(layerCount - 1);

    await build(a, dir, [], join(work, 'inl-a'));
    const b = await freshDaemon();
    const log = await build(b, dir, ['--import-cache', `type=registry,ref=${reg.host}/app:inline`], join(work, 'inl-b'));
    expect(log).toMatch(cachedStep('RUN cat /a.txt /stamp > /both'));
    expect(readFileSync(join(work, 'inl-b', 'both'), 'utf8')).toBe(readFileSync(join(work, 'inl-a', 'both'), 'utf8'));
  }, 240_000);

  it('an inline (mode=min) cache of a multi-stage build leaves the stage a COPY --from reads cached on another daemon, as upstream', async () => {
    const dir = context(
      'inline-stages',
      [
        `FROM ${reg.host}/busybox:latest AS build`,
        'RUN date +%s%N > /built',
        `FROM ${reg.host}/busybox:latest`,
        'COPY --from=build /built /built',
        'RUN date +%s%N > /stamp',
        '',
      ].join('\n'),
    );
    const a = await freshDaemon();
    const ref = `${reg.host}/app:inline-stages`;
    await build(a, dir, ['--export-cache', 'type=inline', '--output', `type=image,name=${ref},push=true`]);
    await build(a, dir, [], join(work, 'is-a'));
    const b = await freshDaemon();
    const log = await build(b, dir, ['--import-cache', `type=registry,ref=${ref}`], join(work, 'is-b'));
    expect(log).toMatch(cachedStep('RUN date +%s%N > /built'));
    expect(log).toMatch(cachedStep('COPY --from=build /built /built'));
    expect(log).toMatch(cachedStep('RUN date +%s%N > /stamp'));
    // (The two run are the context and the Dockerfile, new to this daemon.)
    expect(log).toMatch(/cache summary: 3 steps cached, 2 run/);
    for (const f of ['built', 'stamp']) expect(readFileSync(join(work, 'is-b', f), 'utf8')).toBe(readFileSync(join(work, 'is-a', f), 'utf8'));
  }, 240_000);

  it("reads the inline cache of every platform's image of a multi-platform push, as upstream's importer", async () => {
    const dir = context('inline-platforms', `FROM ${reg.host}/busybox:latest\nARG TARGETARCH\nCOPY a.txt /a-\${TARGETARCH}.txt\n`, { 'a.txt': 'a\n' });
    const ref = `${reg.host}/app:inline-platforms`;
    const platforms = ['--opt', 'platform=linux/amd64,linux/arm64'];
    await build(await freshDaemon(), dir, [...platforms, '--export-cache', 'type=inline', '--output', `type=image,name=${ref},push=true`]);
    const log = await build(await freshDaemon(), dir, [...platforms, '--import-cache', `type=registry,ref=${ref}`]);
    for (const p of ['amd64', 'arm64']) expect(log).toMatch(cachedStep(`COPY a.txt /a-${p}.txt`));
    // (What runs is the context, the Dockerfile and .dockerignore, new to this daemon.)
    expect(log).toMatch(/cache summary: 2 steps cached, 3 run/);
  }, 240_000);

  it("carries the steps' content keys: another daemon importing the cache finds a COPY --from whose stage was made again with the same files, as upstream", async () => {
    const dir = context(
      'content-keys',
      [
        `FROM ${reg.host}/busybox:latest AS b`,
        'ARG V=1',
        'RUN mkdir /d && echo a > /d/a.txt && echo "$V" > /d/other.bin',
        `FROM ${reg.host}/busybox:latest`,
        'COPY --from=b /d/*.txt /out/',
        'RUN date +%s%N > /stamp',
        '',
      ].join('\n'),
    );
    const a = await freshDaemon();
    await build(a, dir, []);
    // Exported from a fully cached rebuild: the content keys come from daemon a's own cache.
    const ref = `${reg.host}/cache:content-keys`;
    await build(a, dir, ['--export-cache', `type=registry,ref=${ref},mode=max`], join(work, 'ck-a'));
    const b = await freshDaemon();
    // Another V makes stage b's RUN miss; the file the COPY reads is the same.
    const log = await build(b, dir, ['--opt', 'build-arg:V=2', '--import-cache', `type=registry,ref=${ref}`], join(work, 'ck-b'));
    expect(log).toMatch(/\[b 2\/2\] RUN mkdir \/d[^\n]*\n(?:#\d+ .*\n)*?#\d+ DONE/);
    expect(log).toMatch(cachedStep('COPY --from=b /d/*.txt /out/'));
    expect(log).toMatch(cachedStep('RUN date +%s%N > /stamp'));
    expect(readFileSync(join(work, 'ck-b', 'stamp'), 'utf8')).toBe(readFileSync(join(work, 'ck-a', 'stamp'), 'utf8'));
  });

  it('a missing cache is reported on its vertex and the build goes on; bad options are refused by name', async () => {
    const dir = context('missing', `FROM ${reg.host}/busybox:latest\nRUN echo ok > /ok\n`);
    const a = await freshDaemon();
    const log = await build(a, dir, ['--import-cache', `type=registry,ref=${reg.host}/nothing:here`], join(work, 'missing-out'));
    expect(log).toMatch(/importing cache manifest from [^\n]*nothing:here\n#\d+ ERROR: [^\n]*not found/);
    expect(readFileSync(join(work, 'missing-out', 'ok'), 'utf8')).toBe('ok\n');

    const bad = await buildctl(a.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, '--export-cache', `type=registry,ref=${reg.host}/c:1,mode=maximal`]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('invalid cache export mode "maximal"');
    const s3 = await buildctl(a.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, '--export-cache', 'type=s3,region=x,bucket=y']);
    expect(s3.code).not.toBe(0);
    expect(s3.stderr).toContain('cache exporter s3 is not supported by loom');
  }, 120_000);
});
