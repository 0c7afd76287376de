/**
 * Sources the vectors cannot exercise here (https://, git://) against loopback servers, and a
 * build driven through the gateway API (as upstream buildctl and buildx do) returning a
 * multi-platform result that exports as an index. Root, real sockets.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../src/client/control-client.js';
import { openSession } from '../../../src/client/session.js';
import { LLBBridge, ReturnRequestSchema, ResultSchema, RefMapSchema, RefSchema, SolveRequestSchema as GwSolveRequestSchema } from '../../../src/gen/buildkit/gateway_pb.js';
import { DefinitionSchema } from '../../../src/gen/buildkit/ops_pb.js';
import { image, mkfile, marshal, scratch, source } from '../../../src/llb/builder.js';
import { clientSessionServices } from '../../../src/session/client/index.js';
import type { SessionServices } from '../../../src/session/tunnel/server.js';
import { grpcServiceDef } from '../../../src/util/grpc-def.js';
import { buildctl, removeDir, run, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { freePort } from '../../helpers/registry.js';
import { spawn } from 'node:child_process';

const d = describe.runIf(process.getuid?.() === 0);

let daemon: TestDaemon;
let work: string;
let http: Server;
let httpPort: number;
let stopGitDaemon = () => {};
const payload = Buffer.from('hello from a loopback web server\n');
/** A file whose server sends ETags and answers If-None-Match; the requests it saw. */
const tagged = { version: 1, requests: [] as string[] };
/** The same, from a server that refuses HEAD. */
const nohead = { version: 1, requests: [] as string[] };

function def(state: ReturnType<typeof scratch>): Buffer {
  return Buffer.from(toBinary(DefinitionSchema, marshal(state)));
}

/**
 * Builds the loopback server's /files/`name` as an http source into `out` with plain progress (it
 * must succeed): the progress and the file's text.
 */
async function buildServedFile(name: string, out: string): Promise<{ log: string; text: string }> {
  const st = source(`http://127.0.0.1:${httpPort}/files/${name}`);
  const r = await buildctl(daemon.addr, ['build', '--progress', 'plain', '--output', `type=local,dest=${out}`], { stdin: def(st) });
  expect(r.code, r.stderr).toBe(0);
  return { log: r.stderr, text: readFileSync(join(out, name), 'utf8') };
}

d('sources and gateway', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-src-'));
    daemon = await startDaemon();
    http = createServer((req, res) => {
      if (req.url === '/files/tagged.txt' || req.url === '/files/nohead.txt') {
        const t = req.url === '/files/tagged.txt' ? tagged : nohead;
        t.requests.push(`${req.method} ${req.headers['if-none-match'] ?? ''}`);
        if (t === nohead && req.method === 'HEAD') {
          res.writeHead(405);
          res.end();
          return;
        }
        const etag = `"v${t.version}"`;
        if (req.headers['if-none-match']?.split(/,\s*/).includes(etag)) {
          res.writeHead(304, { etag });
          res.end();
          return;
        }
        res.writeHead(200, { etag, 'content-type': 'text/plain' });
        res.end(req.method === 'HEAD' ? undefined : `version ${t.version}\n`);
      } else if (req.url === '/files/data.txt') {
        res.writeHead(200, { 'content-type': 'text/plain', 'last-modified': 'Wed, 21 Oct 2015 07:28:00 GMT' });
        res.end(payload);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    httpPort = (http.address() as { port: number }).port;
  }, 120_000);

  afterAll(async () => {
    stopGitDaemon();
    await daemon?.stop();
    http?.close();
    if (daemon) removeDir(daemon.dir);
    if (work) removeDir(work);
  });

  it('fetches an https?:// source with checksum, filename, mode and owner', async () => {
    const sum = `sha256:${createHash('sha256').update(payload).digest('hex')}`;
    const url = `http://127.0.0.1:${httpPort}/files/data.txt`;
    const st = source(url, { attrs: { 'http.checksum': sum, 'http.filename': 'renamed.txt', 'http.perm': '0640', 'http.uid': '1000', 'http.gid': '1001' } });
    const out = join(work, 'http');
    const r = await buildctl(daemon.addr, ['build', '--output', `type=local,dest=${out}`], { stdin: def(st) });
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'renamed.txt'))).toEqual(payload);
    const s = statSync(join(out, 'renamed.txt'));
    expect(s.mode & 0o777).toBe(0o640);
    expect(s.mtime.toISOString()).toBe('2015-10-21T07:28:00.000Z');
    const tar = join(work, 'http.tar');
    await buildctl(daemon.addr, ['build', '--output', `type=tar,dest=${tar}`], { stdin: def(st) });
    expect((await run('tar', ['-tvf', tar, '--numeric-owner'])).stdout).toMatch(/-rw-r----- 1000\/1001 +33 .*renamed\.txt/);
  });

  it("revalidates an https?:// source by its ETag, as upstream: an unchanged file is cached without downloading it, a changed one downloads", async () => {
    const build = (out: string) => buildServedFile('tagged.txt', out);
    const first = await build(join(work, 'etag-1'));
    expect(first.text).toBe('version 1\n');
    expect(tagged.requests).toEqual(['GET ']);
    const again = await build(join(work, 'etag-2'));
    expect(again.text).toBe('version 1\n');
    // One HEAD naming the ETag it had, no body fetched; the step is cached.
    expect(tagged.requests).toEqual(['GET ', 'HEAD "v1"']);
    expect(again.log).toMatch(/^#\d+ CACHED$/m);
    expect(again.log).not.toMatch(/downloading/);
    tagged.version = 2;
    const changed = await build(join(work, 'etag-3'));
    expect(changed.text).toBe('version 2\n');
    // (The GET names the ETag too, as upstream's; the server's 200 brings the new file.)
    expect(tagged.requests).toEqual(['GET ', 'HEAD "v1"', 'HEAD "v1"', 'GET "v1"']);
  });

  it('revalidates with a conditional GET when the server refuses the HEAD, as upstream', async () => {
    const build = (out: string) => buildServedFile('nohead.txt', out);
    expect((await build(join(work, 'nohead-1'))).text).toBe('version 1\n');
    const again = await build(join(work, 'nohead-2'));
    expect(again.text).toBe('version 1\n');
    // The HEAD is refused; the GET names the ETag and gets a 304: nothing downloaded, cached.
    expect(nohead.requests).toEqual(['GET ', 'HEAD "v1"', 'GET "v1"']);
    expect(again.log).toMatch(/^#\d+ CACHED$/m);
    expect(again.log).not.toMatch(/downloading/);
    nohead.version = 2;
    expect((await build(join(work, 'nohead-3'))).text).toBe('version 2\n');
    // A pruned earlier download is fetched again, unconditionally, when the 304 finds no result.
    nohead.version = 1;
    expect((await buildctl(daemon.addr, ['prune', '--all'])).code).toBe(0);
    expect((await build(join(work, 'nohead-4'))).text).toBe('version 1\n');
    expect(nohead.requests.slice(-3)).toEqual(['HEAD "v2", "v1"', 'GET "v2", "v1"', 'GET ']);
  });

  it('fails an https?:// source whose content does not match its checksum', async () => {
    const st = source(`http://127.0.0.1:${httpPort}/files/data.txt`, { attrs: { 'http.checksum': `sha256:${'0'.repeat(64)}` } });
    const r = await buildctl(daemon.addr, ['build'], { stdin: def(st) });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/digest mismatch sha256:[0-9a-f]{64}: sha256:0{64}/);
  });

  it('checks out a git source at a ref, keeping .git only when asked', async () => {
    const repo = join(work, 'repo');
    mkdirSync(repo);
    const git = (...a: string[]) => run('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'init.defaultBranch=main', ...a], { cwd: repo });
    await git('init', '-q');
    writeFileSync(join(repo, 'a.txt'), 'v1\n');
    await git('add', '.');
    await git('commit', '-qm', 'one');
    await git('tag', 'v1');
    await git('tag', '-a', 'v1a', '-m', 'annotated');
    writeFileSync(join(repo, 'a.txt'), 'v2\n');
    await git('commit', '-qam', 'two');
    // A real git transport on loopback: git daemon serving the work dir.
    const port = await freePort();
    const gd = spawn('git', ['daemon', `--base-path=${work}`, '--export-all', '--reuseaddr', '--listen=127.0.0.1', `--port=${port}`, work], { stdio: 'ignore' });
    stopGitDaemon = () => gd.kill();
    for (let i = 0; i < 50 && (await run('git', ['ls-remote', `git://127.0.0.1:${port}/repo`])).code !== 0; i++) await new Promise((r) => setTimeout(r, 100));
    const gitSrc = (ref: string, keep: boolean) =>
      source(`git://127.0.0.1:${port}/repo#${ref}`, { attrs: { 'git.fullurl': `git://127.0.0.1:${port}/repo`, ...(keep ? { 'git.keepgitdir': 'true' } : {}) } });
    const out1 = join(work, 'git1');
    const r1 = await buildctl(daemon.addr, ['build', '--output', `type=local,dest=${out1}`], { stdin: def(gitSrc('v1', false)) });
    expect(r1.code, r1.stderr).toBe(0);
    expect(readFileSync(join(out1, 'a.txt'), 'utf8')).toBe('v1\n');
    expect(() => statSync(join(out1, '.git'))).toThrow();
    const out2 = join(work, 'git2');
    const r2 = await buildctl(daemon.addr, ['build', '--output', `type=local,dest=${out2}`], { stdin: def(gitSrc('main', true)) });
    expect(r2.code, r2.stderr).toBe(0);
    expect(readFileSync(join(out2, 'a.txt'), 'utf8')).toBe('v2\n');
    expect(statSync(join(out2, '.git')).isDirectory()).toBe(true);
    // The kept .git is as upstream leaves it: the ref under its name (and as a tag, as upstream's
    // own copy of the remote holds every ref), HEAD detached at the commit, no remote-tracking
    // refs, an empty reflog, no FETCH_HEAD.
    const head = (await git('rev-parse', 'main')).stdout.trim();
    const refs = (dir: string) => {
      const top = join(dir, '.git', 'refs');
      return (readdirSync(top, { recursive: true }) as string[]).filter((p) => statSync(join(top, p)).isFile()).sort();
    };
    expect(refs(out2)).toEqual(['heads/main', 'tags/main']);
    expect(readFileSync(join(out2, '.git', 'HEAD'), 'utf8')).toBe(`${head}\n`);
    expect(readFileSync(join(out2, '.git', 'logs', 'HEAD'), 'utf8')).toBe('');
    expect(existsSync(join(out2, '.git', 'FETCH_HEAD'))).toBe(false);
    // An annotated tag is fetched as a tag (refs/tags/v1a names the tag object); HEAD is its commit.
    const out3 = join(work, 'git3');
    const r3 = await buildctl(daemon.addr, ['build', '--output', `type=local,dest=${out3}`], { stdin: def(gitSrc('v1a', true)) });
    expect(r3.code, r3.stderr).toBe(0);
    expect(readFileSync(join(out3, 'a.txt'), 'utf8')).toBe('v1\n');
    expect(refs(out3)).toEqual(['tags/v1a']);
    expect(readFileSync(join(out3, '.git', 'refs', 'tags', 'v1a'), 'utf8')).toBe((await git('rev-parse', 'v1a')).stdout);
    expect(readFileSync(join(out3, '.git', 'HEAD'), 'utf8')).toBe((await git('rev-parse', 'v1')).stdout);
    const bad = await buildctl(daemon.addr, ['build'], { stdin: def(gitSrc('--upload-pack=touch /tmp/pwned', false)) });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/must not start with '-'/);
    // A remote on the daemon's own disk is refused: builds must not read the host.
    const local = await buildctl(daemon.addr, ['build'], { stdin: def(source('git://x/repo#main', { attrs: { 'git.fullurl': `file://${repo}` } })) });
    expect(local.code).not.toBe(0);
    expect(local.stderr).toMatch(/only http, https, git and ssh remotes are allowed/);
  });

  it('exports a multi-platform result returned through the gateway as an OCI index', async () => {
    const out = join(work, 'multi.tar');
    const sink = createWriteStream(out);
    await withGateway(clientSessionServices({ exportTarget: { kind: 'file', open: () => sink } }), async ({ control, sessionId, ref, call }) => {
      const solving = control.solve({ Ref: ref, Session: sessionId, Exporter: 'oci', ExporterAttrs: { name: 'example.com/multi:1' } });
      const ids: Record<string, string> = {};
      for (const [p, text] of [['linux/amd64', 'amd64\n'], ['linux/arm64', 'arm64\n']] as const) {
        const res = await call<{ ref: string }>('solve', create(GwSolveRequestSchema, { Definition: marshal(scratch().file(mkfile('/platform', 0o644, text))), allowResultReturn: true }));
        ids[p] = res.ref;
      }
      const platforms = JSON.stringify({
        Platforms: [
          { ID: 'linux/amd64', Platform: { architecture: 'amd64', os: 'linux' } },
          { ID: 'linux/arm64', Platform: { architecture: 'arm64', os: 'linux' } },
        ],
      });
      await call('return', create(ReturnRequestSchema, {
        result: create(ResultSchema, {
          result: { case: 'refs', value: create(RefMapSchema, { refs: Object.fromEntries(Object.entries(ids).map(([p, id]) => [p, create(RefSchema, { id })])) }) },
          metadata: { 'refs.platforms': Buffer.from(platforms) },
        }),
      }));
      const resp = await solving;
      expect(resp.ExporterResponse['containerimage.digest']).toMatch(/^sha256:/);
      if (!sink.closed) await new Promise((r) => sink.on('close', r));
      const inspect = await run('skopeo', ['inspect', '--raw', `oci-archive:${out}`]);
      expect(inspect.code, inspect.stderr).toBe(0);
      const index = JSON.parse(inspect.stdout) as { mediaType: string; manifests: { platform: { architecture: string } }[] };
      expect(index.mediaType).toBe('application/vnd.oci.image.index.v1+json');
      expect(index.manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    });
  });

  it('answers a frontend Solve whose platforms are all empty with a map holding no refs, as upstream (its client cannot Return an id-less ref)', async () => {
    const ctx = join(work, 'gw-empty');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch AS empty\nENV A=1\nFROM scratch AS other\nCOPY Dockerfile /\n');
    await withGateway(clientSessionServices({ locals: { context: ctx, dockerfile: ctx } }), async ({ control, sessionId, ref, call }) => {
      const solving = control.solve({ Ref: ref, Session: sessionId }).catch((err: Error) => err);
      const solve = (opts: Record<string, string>) =>
        call<{ result?: { result: { case: string; value: { refs: Record<string, { id: string }> } } } }>(
          'solve',
          create(GwSolveRequestSchema, { Frontend: 'dockerfile.v0', FrontendOpt: { platform: 'linux/arm64,linux/amd64', ...opts }, allowResultReturn: true, allowResultArrayRef: true }),
        );
      const empty = await solve({ target: 'empty' });
      expect(empty.result?.result.case).toBe('refs');
      expect(empty.result?.result.value.refs).toEqual({});
      // A stage with content: one ref per platform.
      const full = await solve({ target: 'other' });
      expect(Object.keys(full.result?.result.value.refs ?? {}).sort()).toEqual(['linux/amd64', 'linux/arm64']);
      expect(Object.values(full.result?.result.value.refs ?? {}).every((r) => r.id !== '')).toBe(true);
      await call('return', create(ReturnRequestSchema, { result: create(ResultSchema, {}) }));
      expect(await solving).not.toBeInstanceOf(Error);
    });
  });

  it('sends each of several outputs where the request put it (buildkit-attachable-exporter-id), as buildctl v0.13 and later ask', async () => {
    const control = new ControlClient({ address: daemon.addr });
    const dir = join(work, 'multi-out-dir');
    const tarPath = join(work, 'multi-out.tar');
    const sink = createWriteStream(tarPath);
    const session = openSession({ control, services: clientSessionServices({ exportTarget: [{ kind: 'dir', dir }, { kind: 'file', open: () => sink }] }) });
    try {
      const solving = control.solve({
        Ref: `multi-out-${Date.now()}`,
        Definition: marshal(scratch().file(mkfile('/hello', 0o644, 'hi\n'))),
        Session: session.id,
        Exporters: [
          { Type: 'local', Attrs: {} },
          { Type: 'tar', Attrs: {} },
        ],
      });
      // Before, both went to the first output and the build never ended.
      const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('the export did not finish')), 20_000));
      await Promise.race([solving, timeout]);
      expect(readFileSync(join(dir, 'hello'), 'utf8')).toBe('hi\n');
      if (!sink.closed) await new Promise((r) => sink.on('close', r));
      const list = await run('tar', ['-tf', tarPath]);
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout.split('\n')).toContain('hello');
    } finally {
      session.close();
      control.close();
    }
  }, 60_000);

  it('says so when a gateway solve names cache imports the build itself does not (loom imports for the whole build)', async () => {
    await withGateway(clientSessionServices({}), async ({ control, sessionId, ref, call }) => {
      const warnings: string[] = [];
      const statusDone = control.status(ref, (s) => warnings.push(...s.warnings.map((w) => Buffer.from(w.short).toString())));
      const solving = control.solve({ Ref: ref, Session: sessionId, Cache: { Imports: [{ Type: 'registry', Attrs: { ref: '127.0.0.1:1/known:cache' } }] } }).catch((err: Error) => err);
      // The build's own import, repeated as buildctl and buildx do: nothing to say.
      await call('solve', create(GwSolveRequestSchema, { CacheImports: [{ Type: 'registry', Attrs: { ref: '127.0.0.1:1/known:cache' } }] }));
      await call('solve', create(GwSolveRequestSchema, { CacheImports: [{ Type: 'registry', Attrs: { ref: '127.0.0.1:1/other:cache' } }] }));
      await call('return', create(ReturnRequestSchema, { result: create(ResultSchema, {}) }));
      expect(await solving).not.toBeInstanceOf(Error);
      await statusDone;
      expect(warnings).toEqual([
        'cache imports named only in a gateway solve are not used by loom (127.0.0.1:1/other:cache); name them in the build request (--import-cache, --cache-from)',
      ]);
    });
  });

  it("answers a failed gateway Solve as upstream's gateway does: the message, with no gRPC code of loom's own", async () => {
    await withGateway(clientSessionServices({}), async ({ control, sessionId, ref, call }) => {
      const solving = control.solve({ Ref: ref, Session: sessionId }).catch((err: Error) => err);
      // An image from a registry nobody listens on: loom's registry client calls that Unavailable.
      const err = await call('solve', create(GwSolveRequestSchema, { Definition: marshal(image('127.0.0.1:1/nope:latest')) })).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err, 'the solve should fail').toBeDefined();
      expect(err!.code).toBe(grpc.status.UNKNOWN);
      expect(err!.details).toMatch(/127\.0\.0\.1:1/);
      // The daemon keeps serving the build: the frontend can still return a result.
      await call('return', create(ReturnRequestSchema, { result: create(ResultSchema, {}) }));
      expect(await solving).not.toBeInstanceOf(Error);
    });
  });
});

let gatewayBuilds = 0;

/**
 * A build driven through the gateway, as upstream buildctl and buildx drive one: a Control client,
 * a session serving `services`, a new build ref and an LLBBridge client's calls for it (the
 * frontend side); all closed once `fn` is done.
 */
async function withGateway(
  services: SessionServices,
  fn: (g: { control: ControlClient; sessionId: string; ref: string; call: <T>(m: string, req: unknown) => Promise<T> }) => Promise<void>,
): Promise<void> {
  const control = new ControlClient({ address: daemon.addr });
  const session = openSession({ control, services });
  const ref = `gw-${Date.now()}-${gatewayBuilds++}`;
  const Bridge = grpc.makeGenericClientConstructor(grpcServiceDef(LLBBridge), 'LLBBridge');
  const bridge = new Bridge(`unix://${daemon.addr.slice('unix://'.length)}`, grpc.credentials.createInsecure()) as unknown as Record<string, Function>;
  const md = new grpc.Metadata();
  md.set('buildkit-controlapi-buildid', ref);
  const call = <T>(m: string, req: unknown) => new Promise<T>((resolve, reject) => bridge[m]!.call(bridge, req, md, (err: Error | null, res: T) => (err ? reject(err) : resolve(res))));
  try {
    await fn({ control, sessionId: session.id, ref, call });
  } finally {
    session.close();
    control.close();
    (bridge as unknown as grpc.Client).close();
  }
}
