import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fromBinary } from '@bufbuild/protobuf';
import { OpSchema, type Definition } from '../../../src/gen/buildkit/ops_pb.js';
import { DockerfileFrontend, isOfficialDockerfileFrontend } from '../../../src/frontend/dockerfile/frontend.js';
import { LoomError, NotFoundError, UnimplementedError } from '../../../src/util/errors.js';
import { cannedResolver } from './base-image.js';
import { REQUESTS } from '../../../fixtures/subrequests/record.js';
import { errorStatusDetails } from '../../../src/util/errors.js';
import { tabwrite } from '../../../src/util/tabwriter.js';
import { caseDir, fakeDaemon, roots } from './fake-daemon.js';

function contextSource(def: Definition) {
  for (const b of def.def) {
    const op = fromBinary(OpSchema, b);
    if (op.op.case === 'source' && op.op.value.identifier === 'local://context') return op.op.value;
  }
  return undefined;
}

describe('DockerfileFrontend', () => {
  it('loads the Dockerfile and its own .dockerignore, and returns the image config', async () => {
    const dir = caseDir({
      name: 'x',
      dockerfile: '',
      files: {
        'build/app.Dockerfile': 'FROM localhost:5000/busybox\nCOPY . /src\nLABEL x=$X\n',
        'build/app.Dockerfile.dockerignore': 'secret.txt\n',
        '.dockerignore': 'other\n',
      },
    });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, { filename: 'build/app.Dockerfile', 'label:org.a': 'b' });
    const res = await new DockerfileFrontend().solve(d.ctx);
    expect(res.multiPlatform).toBe(false);
    expect(res.refs).toHaveLength(1);
    expect(res.refs[0]!.platformId).toBe(`linux/${res.refs[0]!.platform.architecture}`);
    const cfg = JSON.parse(Buffer.from(res.metadata['containerimage.config']!).toString());
    expect(cfg.config.Labels).toEqual({ 'org.a': 'b', x: '' });
    expect(JSON.parse(Buffer.from(res.metadata['refs.platforms']!).toString())).toEqual({
      Platforms: [{ ID: res.refs[0]!.platformId, Platform: { architecture: res.refs[0]!.platform.architecture, os: 'linux' } }],
    });
    const ctxSrc = contextSource(res.refs[0]!.definition)!;
    expect(ctxSrc.attrs['local.excludepatterns']).toBe('["secret.txt"]');
    expect(d.resolved).toEqual(['localhost:5000/busybox:latest [internal] load metadata for localhost:5000/busybox:latest']);
    expect(d.solved).toHaveLength(1);
  });

  it('falls back to a lower-case dockerfile and uses the context .dockerignore', async () => {
    const dir = caseDir({ name: 'x', dockerfile: '', files: { dockerfile: 'FROM scratch\nCOPY a /\n', '.dockerignore': '# comment\n*.tmp\n!keep.tmp\n' } });
    rmSync(join(dir, 'Dockerfile'));
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {});
    const res = await new DockerfileFrontend().solve(d.ctx);
    const src = contextSource(res.refs[0]!.definition)!;
    expect(src.attrs['local.excludepatterns']).toBe('["*.tmp","!keep.tmp"]');
    expect(src.attrs['local.followpaths']).toBe('["a"]');
  });

  it('reports a missing Dockerfile', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-df-'));
    roots.push(dir);
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {});
    await expect(new DockerfileFrontend().solve(d.ctx)).rejects.toThrow(/^failed to read dockerfile: open Dockerfile: no such file or directory$/);
  });

  it('builds one image per platform with platform-keyed metadata', async () => {
    const dir = caseDir({ name: 'x', dockerfile: 'FROM localhost:5000/busybox\nARG TARGETARCH\nRUN echo $TARGETARCH\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, { platform: 'linux/amd64,linux/arm64/v8' });
    const res = await new DockerfileFrontend().solve(d.ctx);
    expect(res.multiPlatform).toBe(true);
    expect(res.refs.map((r) => r.platformId)).toEqual(['linux/amd64', 'linux/arm64']);
    expect(Object.keys(res.metadata).sort()).toEqual(['containerimage.config/linux/amd64', 'containerimage.config/linux/arm64', 'refs.platforms']);
    const arm = JSON.parse(Buffer.from(res.metadata['containerimage.config/linux/arm64']!).toString());
    expect([arm.architecture, arm.history.at(-1).created_by]).toEqual(['arm64', 'RUN |1 TARGETARCH=arm64 /bin/sh -c echo $TARGETARCH # buildkit']);
    expect(d.resolved.sort()).toEqual([
      'localhost:5000/busybox:latest [linux/amd64 internal] load metadata for localhost:5000/busybox:latest',
      'localhost:5000/busybox:latest [linux/arm64 internal] load metadata for localhost:5000/busybox:latest',
    ]);
    expect(Buffer.from(res.metadata['refs.platforms']!).toString()).toBe(
      '{"Platforms":[{"ID":"linux/amd64","Platform":{"architecture":"amd64","os":"linux"}},{"ID":"linux/arm64","Platform":{"architecture":"arm64","os":"linux"}}]}',
    );
  });

  it('serves the official syntax with a warning and refuses other frontends', async () => {
    const ok = caseDir({ name: 'x', dockerfile: '# syntax=docker/dockerfile:1.4\nFROM scratch\n' });
    const d1 = fakeDaemon({ context: ok, dockerfile: ok }, {});
    await new DockerfileFrontend().solve(d1.ctx);
    expect(d1.warnings.map((w) => w.short)).toEqual([
      "syntax docker/dockerfile:1.4 is served by loom's built-in Dockerfile frontend (compatible with docker/dockerfile:1 as of BuildKit v0.11)",
    ]);
    expect(d1.warnings[0]!.location?.[0]!.start.line).toBe(1);

    const bad = caseDir({ name: 'x', dockerfile: '# syntax=example.com/my/frontend:2\nFROM scratch\n' });
    const d2 = fakeDaemon({ context: bad, dockerfile: bad }, {});
    const err = await new DockerfileFrontend().solve(d2.ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnimplementedError);
    expect((err as Error).message).toContain('frontend image example.com/my/frontend:2');
    expect(d2.solved).toHaveLength(0);
  });

  it('recognises the official frontend names', () => {
    for (const r of ['docker/dockerfile:1', 'docker/dockerfile:1.4', 'docker/dockerfile:labs', 'docker.io/docker/dockerfile:1-labs', 'docker/dockerfile', 'docker/dockerfile-upstream:master']) {
      expect(isOfficialDockerfileFrontend(r), r).toBe(true);
    }
    for (const r of ['tonistiigi/dockerfile:1', 'example.com/docker/dockerfile:1', 'docker/dockerfiles:1', 'not a ref']) {
      expect(isOfficialDockerfileFrontend(r), r).toBe(false);
    }
  });

  it('warns about options it does not support', async () => {
    const dir = caseDir({ name: 'x', dockerfile: 'FROM scratch\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, { 'attest:sbom': '', 'cache-from': 'x', 'some-new-option': '1' });
    await new DockerfileFrontend().solve(d.ctx);
    expect(d.warnings.map((w) => w.short)).toEqual([
      'attestations (sbom) are not supported by loom yet; the image is built without them',
      'frontend option "some-new-option" is not supported by loom\'s Dockerfile frontend and was ignored',
    ]);
  });

  it('uses docker-image and local named contexts', async () => {
    const dir = caseDir({ name: 'x', dockerfile: 'FROM alpine\nCOPY --from=assets / /assets\n' });
    const assets = caseDir({ name: 'y', dockerfile: 'unused', files: { '.dockerignore': 'Dockerfile\n' } });
    const d = fakeDaemon({ context: dir, dockerfile: dir, assetsdir: assets }, {
      'context:alpine': 'docker-image://localhost:5000/busybox',
      'context:assets': 'local:assetsdir',
    });
    const res = await new DockerfileFrontend().solve(d.ctx);
    const def = res.refs[0]!.definition;
    const sources = def.def.map((b) => fromBinary(OpSchema, b)).flatMap((o) => (o.op.case === 'source' ? [o.op.value] : []));
    expect(sources.map((s) => s.identifier).sort()).toEqual(['docker-image://localhost:5000/busybox:latest', 'local://assetsdir']);
    expect(sources.find((s) => s.identifier === 'local://assetsdir')!.attrs['local.excludepatterns']).toBe('["Dockerfile"]');
    expect(d.resolved).toEqual(['localhost:5000/busybox:latest [context alpine] load metadata for localhost:5000/busybox']);
  });

  it('rejects bad frontend options with upstream messages', async () => {
    const dir = caseDir({ name: 'x', dockerfile: 'FROM scratch\n' });
    const cases: [Record<string, string>, string][] = [
      [{ 'image-resolve-mode': 'sometimes' }, 'invalid image-resolve-mode: sometimes'],
      [{ platform: 'linux/x/y/z' }, 'failed to parse target platform linux/x/y/z: "linux/x/y/z": cannot parse platform specifier: invalid argument'],
      [{ 'add-hosts': 'db=not-an-ip' }, 'failed to parse additional hosts: failed to parse IP not-an-ip'],
      [{ 'force-network-mode': 'bridge' }, 'invalid netmode bridge'],
      [{ 'multi-platform': 'false', platform: 'linux/amd64,linux/arm64' }, 'returning multiple target platforms is not allowed'],
      [{ target: 'missing' }, 'target stage missing could not be found'],
    ];
    const bad = caseDir({ name: 'x', dockerfile: 'FROM scratch\nRUN --mount=type=bogus true\n' });
    const err = await new DockerfileFrontend().solve(fakeDaemon({ context: bad, dockerfile: bad }, {}).ctx).catch((e: unknown) => e);
    expect((err as Error).message).toBe('unsupported mount type "bogus"');
    expect(err).toMatchObject({ location: [{ start: { line: 2 } }], source: { filename: 'Dockerfile' } });
    for (const [attrs, msg] of cases) {
      const d = fakeDaemon({ context: dir, dockerfile: dir }, attrs);
      const err = await new DockerfileFrontend().solve(d.ctx).catch((e: unknown) => e);
      expect(err, msg).toBeInstanceOf(LoomError);
      expect((err as Error).message).toBe(msg);
    }
  });
});

const SUBREQUEST_CASES = join(__dirname, '../../../fixtures/subrequests');

describe('subrequests (buildx --print / --call)', () => {
  // The fixtures' Dockerfiles name the base image as the registry they were recorded with.
  const canned = cannedResolver();
  const resolver = (ref: string, opts: Parameters<typeof canned>[1]) => canned(ref.replace('127.0.0.1:5055/', 'localhost:5000/'), opts);
  const cases = readdirSync(SUBREQUEST_CASES).filter((n) => existsSync(join(SUBREQUEST_CASES, n, 'Dockerfile')));

  it('has recorded cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(2);
  });

  for (const c of cases) {
    for (const [name, attrs] of Object.entries(REQUESTS)) {
      it(`answers ${name} for ${c} as upstream's v0.11 frontend did, byte for byte`, async () => {
        const dir = join(SUBREQUEST_CASES, c);
        const expected = join(dir, 'expected', name);
        const d = fakeDaemon({ context: dir, dockerfile: dir }, attrs, resolver);
        if (existsSync(`${expected}.err`)) {
          const err = await new DockerfileFrontend().solve(d.ctx).then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toBeInstanceOf(LoomError);
          expect((err as Error).message).toBe(readFileSync(`${expected}.err`, 'utf8').trimEnd());
          return;
        }
        const res = await new DockerfileFrontend().solve(d.ctx);
        expect(res.subrequest).toBe(true);
        expect(res.refs).toEqual([]);
        expect(d.solved, 'a subrequest builds nothing').toEqual([]);
        expect(Buffer.from(res.metadata['result.json']!).toString()).toBe(readFileSync(`${expected}.json`, 'utf8'));
        expect(Buffer.from(res.metadata['result.txt']!).toString()).toBe(readFileSync(`${expected}.txt`, 'utf8'));
        expect(Buffer.from(res.metadata.version!).toString()).toBe('1.0.0');
      });
    }
  }

  it('names an unknown request in a typed detail, as errdefs.Subrequest, so buildx can fall back', async () => {
    const dir = join(SUBREQUEST_CASES, cases[0]!);
    const d = fakeDaemon({ context: dir, dockerfile: dir }, { requestid: 'frontend.nope' });
    const err = await new DockerfileFrontend().solve(d.ctx).catch((e: unknown) => e);
    expect((err as LoomError).code).toBe('UNKNOWN');
    const details = errorStatusDetails(err);
    expect(details.map((x) => [x.typeUrl, Buffer.from(x.value).toString()])).toEqual([
      ['github.com/moby/buildkit/errdefs.Subrequest+json', '{"name":"frontend.nope"}'],
    ]);
  });

  it('aligns columns as Go text/tabwriter does with spaces (outputs of Go 1.19 text/tabwriter)', () => {
    const tw = (text: string, padding: number) => tabwrite(text, { minwidth: 0, tabwidth: 0, padding, padchar: ' ' });
    expect(tw('A\tBB\tC\nAAA\tB\t\n', 1)).toBe('A   BB C\nAAA B  \n');
    // A line of one cell ends a block: the lines after it are aligned on their own.
    expect(tw('X\tY\n\nLONGER\tZ\n', 2)).toBe('X  Y\n\nLONGER  Z\n');
    // Widths count code points, not bytes.
    expect(tw('é\t1\nab\t2\n', 1)).toBe('é  1\nab 2\n');
    // A column exists only on the lines that have a cell there.
    expect(tw('a\tb\tc\nlong\td\nx\ty\tz\n', 1)).toBe('a    b c\nlong d\nx    y z\n');
  });
});

describe('resolving the stages images', () => {
  it('resolves an image named by several stages once, and cancels the others when one fails (upstream errgroup)', async () => {
    const calls: string[] = [];
    let slowAborted = false;
    const canned = cannedResolver();
    const resolver = async (ref: string, opts: Parameters<typeof canned>[1]) => {
      calls.push(ref);
      if (ref === 'localhost:5000/slow:latest') {
        // Never answers: only the build's failure elsewhere ends it.
        await new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
        slowAborted = true;
        throw new LoomError('CANCELLED', 'context canceled');
      }
      if (ref === 'localhost:5000/nope:latest') {
        await new Promise((r) => setTimeout(r, 20));
        throw new NotFoundError('localhost:5000/nope:latest: not found');
      }
      return canned(ref, opts);
    };
    const dir = caseDir({
      name: 'x',
      dockerfile: '',
      files: {
        Dockerfile: [
          'FROM localhost:5000/busybox AS a',
          'FROM localhost:5000/busybox AS b',
          'FROM localhost:5000/slow AS c',
          'FROM localhost:5000/nope',
          'COPY --from=a / /a',
          'COPY --from=b / /b',
          'COPY --from=c / /c',
          '',
        ].join('\n'),
      },
    });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {}, resolver);
    const err = await new DockerfileFrontend().solve(d.ctx).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/nope:latest: not found/);
    expect(slowAborted, 'the slow resolve was cancelled').toBe(true);
    expect(calls.filter((c) => c === 'localhost:5000/busybox:latest'), 'busybox resolved once for two stages').toHaveLength(1);
  });
});
