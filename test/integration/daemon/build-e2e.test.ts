/**
 * Issue 2 end to end, as root with a real docker-registry: loom's daemon driven by loom's buildctl
 * over a real unix socket. The LLB vectors were made by upstream's client; their expected listings
 * are what upstream's daemon produced.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, run, startDaemon, tarListing, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, vectorsDir, vectorsRegistryConfig, type TestRegistry } from '../../helpers/registry.js';

const vectors = vectorsDir();
const isRoot = process.getuid?.() === 0;
const d = describe.runIf(isRoot && vectors !== undefined);

let reg: TestRegistry;
let daemon: TestDaemon;
let work: string;

function vector(name: string): Buffer {
  return readFileSync(join(vectors!, 'llb', `${name}.llb`));
}

function expected(name: string): string {
  return readFileSync(join(vectors!, 'llb', 'expected', `${name}.tar-listing.txt`), 'utf8');
}

d('loom daemon with loom buildctl', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-e2e-'));
    reg = await startRegistry();
    daemon = await startDaemon({ config: vectorsRegistryConfig(reg) });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await reg?.stop();
    if (work) removeDir(work);
    if (daemon) removeDir(daemon.dir);
  });

  it('lists its worker with platforms and labels', async () => {
    const r = await buildctl(daemon.addr, ['debug', 'workers', '-v']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Platforms:\s+linux\/amd64/);
    expect(r.stdout).toContain('org.mobyproject.buildkit.worker.executor:');
    expect(r.stdout).toContain('org.mobyproject.buildkit.worker.snapshotter:');
    expect(r.stdout).toMatch(/GC Policy rule#0:/);
  });

  for (const name of ['file-ops', 'merge-diff']) {
    it(`builds the ${name} vector to exactly upstream's tar listing`, async () => {
      const out = join(work, `${name}.tar`);
      const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--output', `type=tar,dest=${out}`], { stdin: vector(name) });
      expect(r.stderr).not.toMatch(/^error:/m);
      expect(r.code).toBe(0);
      expect(await tarListing(out)).toBe(expected(name));
    });
  }

  it('builds the local-source vector with its include, exclude and follow patterns', async () => {
    const ctx = join(work, 'ctx');
    mkdirSync(join(ctx, 'src', 'sub'), { recursive: true });
    writeFileSync(join(ctx, 'package.json'), '{}\n');
    writeFileSync(join(ctx, 'src', 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'src', 'skip.tmp'), 'no\n');
    writeFileSync(join(ctx, 'src', 'sub', 'b.txt'), 'bb\n');
    writeFileSync(join(ctx, 'README'), 'not included\n');
    const out = join(work, 'local');
    const r = await buildctl(daemon.addr, ['build', '--local', `context=${ctx}`, '--output', `type=local,dest=${out}`], { stdin: vector('local-source') });
    expect(r.code, r.stderr).toBe(0);
    expect(readdirSync(join(out, 'app', 'src')).sort()).toEqual(['a.txt', 'sub']);
    expect(readFileSync(join(out, 'app', 'src', 'sub', 'b.txt'), 'utf8')).toBe('bb\n');
    // The image's own files come along: the copy went onto the busybox image.
    expect(existsSync(join(out, 'bin', 'busybox'))).toBe(true);
  });

  it('says CACHED for steps it has done before, also after a restart', async () => {
    const out = join(work, 'again.tar');
    const first = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--output', `type=tar,dest=${out}`], { stdin: vector('file-ops') });
    expect(first.code).toBe(0);
    expect(first.stderr).toMatch(/#\d+ mkdir \/a\/b.*\n#\d+ CACHED/);
    await daemon.stop();
    daemon = await startDaemon({ config: vectorsRegistryConfig(reg), root: daemon.root, dir: daemon.dir });
    const second = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--output', `type=tar,dest=${out}`], { stdin: vector('file-ops') });
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(/#\d+ mkdir \/a\/b.*\n#\d+ CACHED/);
    expect(await tarListing(out)).toBe(expected('file-ops'));
  });

  it("leaves no-cache to the client, as upstream's daemon: a definition's steps stay cached when the attribute comes along (buildx sends it to the frontend it calls through the gateway)", async () => {
    const out = join(work, 'nocache-attr.tar');
    const args = ['build', '--progress', 'plain', '--output', `type=tar,dest=${out}`];
    expect((await buildctl(daemon.addr, args, { stdin: vector('file-ops') })).code).toBe(0);
    const again = await buildctl(daemon.addr, [...args, '--opt', 'no-cache=final'], { stdin: vector('file-ops') });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/#\d+ mkdir \/a\/b.*\n#\d+ CACHED/);
    // buildctl --no-cache marks the definition's steps itself, which the daemon honours.
    const nc = await buildctl(daemon.addr, [...args, '--no-cache'], { stdin: vector('file-ops') });
    expect(nc.code, nc.stderr).toBe(0);
    expect(nc.stderr).not.toMatch(/#\d+ mkdir \/a\/b.*\n#\d+ CACHED/);
  });

  it('pushes an image to the registry', async () => {
    const name = `${reg.host}/loom/merge-diff:e2e`;
    const r = await buildctl(daemon.addr, ['build', '--output', `type=image,name=${name},push=true,registry.insecure=true`], { stdin: vector('merge-diff') });
    expect(r.code, r.stderr).toBe(0);
    const inspect = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${name}`]);
    expect(inspect.code, inspect.stderr).toBe(0);
    const info = JSON.parse(inspect.stdout) as { Layers: string[]; Architecture: string };
    // busybox's four layers reused as they are, plus the two diffs of the merge.
    expect(info.Layers).toHaveLength(6);
    expect(info.Architecture).toBe('amd64');
  });

  it('exports one build several ways with repeated --output (local, tar and a pushed image), as upstream buildctl v0.13+', async () => {
    const name = `${reg.host}/loom/multi-output:e2e`;
    const dir = join(work, 'multi-local');
    const tarFile = join(work, 'multi.tar');
    const r = await buildctl(
      daemon.addr,
      ['build', '--output', `type=local,dest=${dir}`, '--output', `type=tar,dest=${tarFile}`, '--output', `type=image,name=${name},push=true,registry.insecure=true`],
      { stdin: vector('file-ops') },
    );
    expect(r.code, r.stderr).toBe(0);
    const listing = expected('file-ops');
    expect(await tarListing(tarFile)).toBe(listing);
    // The local copy holds the same tree (owned by whoever ran the client).
    const tree = (await run('find', [dir, '-mindepth', '1', '-printf', '%P\\n'])).stdout.split('\n').filter(Boolean).sort();
    const fromTar = (await run('tar', ['-tf', tarFile])).stdout.split('\n').filter(Boolean).map((p) => p.replace(/\/$/, '')).sort();
    expect(tree).toEqual(fromTar);
    const inspect = await run('skopeo', ['inspect', '--tls-verify=false', `docker://${name}`]);
    expect(inspect.code, inspect.stderr).toBe(0);
    // Two oci or docker exports into directories have one content store to share: refused, naming the rule.
    const two = await buildctl(daemon.addr, ['build', '--output', `type=oci,dest=${join(work, 'l1')},tar=false`, '--output', `type=oci,dest=${join(work, 'l2')},tar=false`], { stdin: vector('file-ops') });
    expect(two.code).not.toBe(0);
    expect(two.stderr).toContain('only one oci or docker export to a directory (tar=false) can be specified');
  });

  it("pushes by digest, and words the push as upstream's: name:tag (latest when none) with the digest, or the name alone", async () => {
    const push = (name: string, extra = '') => buildctl(daemon.addr, ['build', '--progress', 'plain', '--output', `type=image,name=${name},push=true${extra}`], { stdin: vector('merge-diff') });
    const tagless = await push(`${reg.host}/loom/bydigest`);
    expect(tagless.code, tagless.stderr).toBe(0);
    expect(tagless.stderr).toMatch(new RegExp(`pushing manifest for ${reg.host}/loom/bydigest:latest@sha256:[0-9a-f]{64} `));
    const byDigest = await push(`${reg.host}/loom/bydigest`, ',push-by-digest=true');
    expect(byDigest.code, byDigest.stderr).toBe(0);
    expect(byDigest.stderr).toMatch(new RegExp(`pushing manifest for ${reg.host}/loom/bydigest `));
    const tagged = await push(`${reg.host}/loom/bydigest:t1`, ',push-by-digest=true');
    expect(tagged.code).not.toBe(0);
    expect(tagged.stderr).toContain(`failed to push ${reg.host}/loom/bydigest:t1: can't push tagged ref ${reg.host}/loom/bydigest:t1 by digest`);
  });

  it('pushes zstd layers as upstream (only new layers unless force-compression) and builds FROM a zstd image on an empty daemon', async () => {
    const ctx = join(work, 'zstd-ctx');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM localhost:5000/busybox:latest\nRUN echo zstd-content > /z.txt\n');
    const df = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`];
    const layersOf = async (name: string) => {
      const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${name}`]);
      expect(raw.code, raw.stderr).toBe(0);
      return (JSON.parse(raw.stdout) as { layers: { mediaType: string; digest: string }[] }).layers;
    };
    // Without force-compression the base image's gzip blobs stay; the step's layer is zstd.
    const mixed = `${reg.host}/loom/zstd:mixed`;
    const r1 = await buildctl(daemon.addr, [...df, '--output', `type=image,name=${mixed},push=true,compression=zstd`]);
    expect(r1.code, r1.stderr).toBe(0);
    const m1 = await layersOf(mixed);
    expect(m1.map((l) => l.mediaType)).toEqual([
      ...Array(m1.length - 1).fill('application/vnd.docker.image.rootfs.diff.tar.gzip'),
      'application/vnd.docker.image.rootfs.diff.tar.zstd',
    ]);
    // With it, every layer is zstd (here with OCI media types); each blob is a zstd frame.
    const all = `${reg.host}/loom/zstd:all`;
    const r2 = await buildctl(daemon.addr, [...df, '--output', `type=image,name=${all},push=true,compression=zstd,force-compression=true,oci-mediatypes=true`]);
    expect(r2.code, r2.stderr).toBe(0);
    const m2 = await layersOf(all);
    expect(new Set(m2.map((l) => l.mediaType))).toEqual(new Set(['application/vnd.oci.image.layer.v1.tar+zstd']));
    const blob = await fetch(`http://${reg.host}/v2/loom/zstd/blobs/${m2[0]!.digest}`);
    expect([...new Uint8Array(await blob.arrayBuffer()).subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);

    // A daemon that has none of these layers unpacks them.
    const fresh = await startDaemon({ config: vectorsRegistryConfig(reg) });
    try {
      const ctx2 = join(work, 'zstd-from');
      mkdirSync(ctx2, { recursive: true });
      writeFileSync(join(ctx2, 'Dockerfile'), `FROM ${all}\nRUN cat /z.txt > /out && ls /bin/sh >> /out\n`);
      const out = join(work, 'zstd-out');
      const r3 = await buildctl(fresh.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx2}`, '--local', `dockerfile=${ctx2}`, '--output', `type=local,dest=${out}`]);
      expect(r3.code, r3.stderr).toBe(0);
      expect(readFileSync(join(out, 'out'), 'utf8')).toBe('zstd-content\n/bin/sh\n');
    } finally {
      await fresh.stop();
      removeDir(fresh.dir);
    }
  }, 120_000);

  it("puts exporter annotations where upstream's do (manifest, its descriptor, index, index descriptor; per platform)", async () => {
    const ctx = join(work, 'annotations-ctx');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM localhost:5000/busybox:latest\nENV A=1\n');
    const df = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`];
    const out = join(work, 'annotations.tar');
    const json = async (member: string) => JSON.parse((await run('tar', ['-xOf', out, member])).stdout);
    // Two platforms (no RUN: nothing runs under QEMU). Expected values: what upstream v0.11.6 wrote for the same attributes.
    const attrs = 'annotation[linux/arm64].x=y,annotation.a=b,annotation-index.i=1,annotation-index-descriptor.id=2,annotation-manifest-descriptor[linux/amd64].d=3';
    const r = await buildctl(daemon.addr, [...df, '--opt', 'platform=linux/amd64,linux/arm64', '--output', `type=oci,dest=${out},${attrs}`]);
    expect(r.code, r.stderr).toBe(0);
    const index = await json('index.json');
    const { 'org.opencontainers.image.created': created, ...indexDesc } = index.manifests[0].annotations;
    expect(created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(indexDesc).toEqual({ id: '2' });
    const top = await json(`blobs/sha256/${index.manifests[0].digest.slice(7)}`);
    expect(top.annotations).toEqual({ i: '1' });
    const byArch = new Map<string, { desc: unknown; manifest: unknown }>();
    for (const m of top.manifests) byArch.set(m.platform.architecture, { desc: m.annotations, manifest: (await json(`blobs/sha256/${m.digest.slice(7)}`)).annotations });
    expect(byArch.get('amd64')).toEqual({ desc: { d: '3' }, manifest: { a: 'b' } });
    expect(byArch.get('arm64')).toEqual({ desc: undefined, manifest: { a: 'b', x: 'y' } });

    // One platform: a Docker manifest keeps its annotations; a descriptor annotation turns on OCI types.
    const name = `${reg.host}/loom/annotated:1`;
    const push = async (a: string) => {
      const p = await buildctl(daemon.addr, [...df, '--output', `type=image,name=${name},push=true,${a}`]);
      expect(p.code, p.stderr).toBe(0);
      return JSON.parse((await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${name}`])).stdout) as { mediaType: string; annotations?: unknown };
    };
    expect(await push('annotation.a=b')).toMatchObject({ mediaType: 'application/vnd.docker.distribution.manifest.v2+json', annotations: { a: 'b' } });
    expect((await push('annotation-manifest-descriptor.a=b')).mediaType).toBe('application/vnd.oci.image.manifest.v1+json');

    // Upstream's refusals, word for word.
    const fail = async (a: string, extra: string[] = []) => {
      const f = await buildctl(daemon.addr, [...df, ...extra, '--output', `type=oci,dest=${out},${a}`]);
      expect(f.code).not.toBe(0);
      return f.stderr;
    };
    expect(await fail('annotation-bogus.x=y')).toContain('unrecognized annotation type bogus');
    expect(await fail('annotation-index.i=1')).toContain('index annotations not supported for single platform export');
    expect(await fail('annotation[linux/riscv64].x=y', ['--opt', 'platform=linux/amd64,linux/arm64'])).toContain('invalid annotation: no platform linux/riscv64 found in source');
  }, 120_000);

  it("writes each layer's origin into the history of an image built from LLB, as upstream's image writer", async () => {
    const started = Date.now();
    const out = join(work, 'exec-basic-oci.tar');
    const r = await buildctl(daemon.addr, ['build', '--output', `type=oci,dest=${out}`], { stdin: vector('exec-basic') });
    expect(r.code, r.stderr).toBe(0);
    const blob = async (digest: string) => JSON.parse((await run('tar', ['-xOf', out, `blobs/sha256/${digest.slice(7)}`])).stdout);
    const index = JSON.parse((await run('tar', ['-xOf', out, 'index.json'])).stdout);
    const config = await blob((await blob(index.manifests[0].digest)).config.digest);
    // The base image's layers by the image and the digest its tag resolved to, the step's by its command.
    const raw = (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/busybox:latest`])).stdout;
    const pulled = `pulled from localhost:5000/busybox:latest@sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const history: { created: string; created_by: string; comment: string }[] = config.history;
    expect(history.map((h) => h.created_by)).toEqual([pulled, pulled, pulled, pulled, 'mount / from exec sh -c echo $GREETING > /srv/app/out.txt']);
    expect(new Set(history.map((h) => h.comment))).toEqual(new Set(['buildkit.exporter.image.v0']));
    // When each layer was made: the pulls no later than the step, the step during this build.
    const ms = history.map((h) => Date.parse(h.created));
    expect(ms.every((t) => Number.isFinite(t) && t <= ms[4]!)).toBe(true);
    expect(ms[4]).toBeGreaterThanOrEqual(started - 1000);
    expect(ms[4]).toBeLessThanOrEqual(Date.now());
    expect(config.created).toBe(history[4]!.created);
  });

  for (const type of ['oci', 'docker'] as const) {
    it(`writes a valid ${type} archive, with the descriptor and build info in the response as upstream's`, async () => {
      const out = join(work, `img-${type}.tar`);
      const md = join(work, `img-${type}.json`);
      const r = await buildctl(daemon.addr, ['build', '--metadata-file', md, '--output', `type=${type},name=example.com/app:v1,dest=${out}`], { stdin: vector('file-ops') });
      expect(r.code, r.stderr).toBe(0);
      const transport = type === 'oci' ? 'oci-archive' : 'docker-archive';
      const inspect = await run('skopeo', ['inspect', `${transport}:${out}`]);
      expect(inspect.code, inspect.stderr).toBe(0);
      expect((JSON.parse(inspect.stdout) as { Layers: string[] }).Layers).toHaveLength(1);
      const names = (await run('tar', ['-tf', out])).stdout.split('\n');
      expect(names).toContain('index.json');
      // Both variants of a single-platform image carry manifest.json (docker load reads it); only
      // the docker variant names the image there.
      expect(names).toContain('manifest.json');
      const manifestJson = JSON.parse((await run('tar', ['-xOf', out, 'manifest.json'])).stdout) as { RepoTags: string[] | null }[];
      expect(manifestJson[0]!.RepoTags).toEqual(type === 'docker' ? ['example.com/app:v1'] : null);
      // The image's platform (the LLB has no config, so the daemon's) is on its index.json entry
      // and on the descriptor in the response.
      const platform = { architecture: 'amd64', os: 'linux' };
      const index = JSON.parse((await run('tar', ['-xOf', out, 'index.json'])).stdout) as { manifests: { platform?: unknown }[] };
      expect(index.manifests[0]!.platform).toEqual(platform);
      const meta = JSON.parse(readFileSync(md, 'utf8')) as Record<string, { platform?: unknown; annotations?: Record<string, string> } & Record<string, unknown>>;
      expect(meta['containerimage.descriptor']!.platform).toEqual(platform);
      expect(meta['containerimage.descriptor']!.annotations!['org.opencontainers.image.created']).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      // Build info: the image the LLB names, pinned to the digest its tag resolved to (the
      // multi-platform index's), no frontend and no options.
      const raw = (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/busybox:latest`])).stdout;
      expect((JSON.parse(raw) as { manifests?: unknown[] }).manifests?.length).toBeGreaterThan(1);
      const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
      expect(meta['containerimage.buildinfo']).toEqual({ sources: [{ type: 'docker-image', ref: 'localhost:5000/busybox:latest', pin: digest }] });
    });
  }

  it('writes an image into an OCI layout directory with tar=false, tagged in its index.json by name (upstream client and daemon do the same)', async () => {
    const ctx = join(work, 'layout-ctx');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'f.txt'), 'layout\n');
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM localhost:5000/busybox:latest\nCOPY f.txt /f.txt\n');
    const dir = join(work, 'layout');
    const build = (name: string) =>
      buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--opt', 'platform=linux/amd64,linux/arm64', '--output', `type=oci,dest=${dir},tar=false,name=${name}`]);
    for (const name of ['example.com/app:1', 'example.com/app:2']) {
      const r = await build(name);
      expect(r.code, r.stderr).toBe(0);
    }
    // Both tags in one index.json (a second export adds to the directory), each naming a
    // multi-platform index whose blobs are all there: skopeo reads the arm64 image by tag.
    const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: { mediaType: string; annotations: Record<string, string> }[] };
    expect(index.manifests.map((m) => m.annotations['org.opencontainers.image.ref.name']).sort()).toEqual(['example.com/app:1', 'example.com/app:2']);
    expect(index.manifests[0]!.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    const inspect = await run('skopeo', ['inspect', '--override-arch', 'arm64', `oci:${dir}:example.com/app:2`]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect((JSON.parse(inspect.stdout) as { Architecture: string }).Architecture).toBe('arm64');
  });

  it('answers du and prunes everything with prune --all', async () => {
    const du = await buildctl(daemon.addr, ['du']);
    expect(du.code).toBe(0);
    expect(du.stdout).toMatch(/Total:\s+[1-9]/);
    // As upstream's: each pulled layer is a record of its own, its parent the layer below,
    // described by the image it came from.
    const verbose = await buildctl(daemon.addr, ['du', '-v']);
    const records = verbose.stdout.split(/\n\n+/).map((block) => Object.fromEntries([...block.matchAll(/^(\w[\w ]*):\s+(.*)$/gm)].map((m) => [m[1]!, m[2]!.trim()])));
    const pulled = records.filter((r) => r.Description?.startsWith('pulled from ') && r.Description.includes('busybox'));
    // Builds above pulled busybox for amd64 and for arm64 (one description, as upstream's names
    // the reference, not the platform): two chains of 4 layers, each with its own root.
    expect(pulled.length).toBe(8);
    const ids = new Set(pulled.map((r) => r.ID));
    expect(ids.size).toBe(8);
    expect(pulled.filter((r) => !r.Parents)).toHaveLength(2);
    for (const r of pulled) if (r.Parents) expect(ids.has(r.Parents)).toBe(true);
    expect(pulled.every((r) => !/@sha256:\w+@/.test(r.Description!))).toBe(true);
    const pr = await buildctl(daemon.addr, ['prune', '--all']);
    expect(pr.code, pr.stderr).toBe(0);
    const after = await buildctl(daemon.addr, ['du']);
    expect(after.stdout).toMatch(/Total:\s+0B/);
    // Nothing left on disk either: no blob, no snapshot, no mirrored local directory.
    const state = readdirSync(daemon.root).filter((n) => n.startsWith('runc-'));
    expect(state.length).toBe(1);
    const leftovers = await run('find', [join(daemon.root, state[0]!), '(', '-path', '*/content/blobs/sha256/*', '-o', '-path', '*/snapshots/*', '-o', '-path', '*/local-mirrors/*', ')', '-print']);
    expect(leftovers.stdout).toBe('');
  });

  it('refuses a second daemon on the same root', async () => {
    const r = await run(process.execPath, ['bin/buildkitd.js', '--root', daemon.root, '--addr', `unix://${join(daemon.dir, 'second.sock')}`], { timeoutMs: 20_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/another buildkitd is running with root/);
    const w = await buildctl(daemon.addr, ['debug', 'workers']);
    expect(w.code).toBe(0);
  });
});
