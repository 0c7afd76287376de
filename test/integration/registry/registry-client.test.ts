/**
 * The registry client against a real registry (Debian's docker-registry on 127.0.0.1), and against
 * small loopback servers for what a real registry will not do on demand (500s, wrong bytes, stalls,
 * token auth in front of the real registry).
 */
import { createReadStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../../../src/content/store.js';
import { parseIndex, type Descriptor } from '../../../src/content/oci.js';
import { importOciArchive } from '../../../src/exporter/image/archive-reader.js';
import { buildImageConfig } from '../../../src/exporter/image/image-config.js';
import { writeIndex, writeManifest } from '../../../src/exporter/image/manifest.js';
import { RegistryAccess } from '../../../src/ops/source/registry-access.js';
import { RegistryClient } from '../../../src/registry/client.js';
import type { JobContext } from '../../../src/solver/types.js';
import { sha256, type Digest } from '../../../src/util/digest.js';
import { LoomError } from '../../../src/util/errors.js';
import { MediaType } from '../../../src/util/media-types.js';
import { baseImageArchive, freePort, skopeoInspect, startRegistry, type TestRegistry } from '../../helpers/registry.js';

interface Expected {
  index: Descriptor;
  byArch: Record<string, Descriptor>;
}

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  return new Promise((ok) => {
    const server = createServer(handler);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      ok({
        server,
        port,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString();
}

async function errorOf(p: Promise<unknown>): Promise<LoomError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(LoomError);
    return err as LoomError;
  }
  throw new Error('expected the call to fail');
}

async function layerTar(files: Record<string, string>): Promise<{ gz: Buffer; diffId: Digest }> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files)) pack.entry({ name, mtime: new Date(0), mode: 0o644 }, content);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  const raw = Buffer.concat(chunks);
  return { gz: gzipSync(raw), diffId: sha256(raw) };
}

describe('RegistryClient against docker-registry', () => {
  let reg: TestRegistry;
  let root: string;
  let expected: Expected;
  const stores: ContentStore[] = [];
  const clients: RegistryClient[] = [];

  function fresh(opts?: Partial<ConstructorParameters<typeof RegistryClient>[0]>): { store: ContentStore; client: RegistryClient } {
    const store = new ContentStore({ root: mkdtempSync(join(root, 's-')) });
    const client = new RegistryClient({ store, ...opts });
    stores.push(store);
    clients.push(client);
    return { store, client };
  }

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'loom-regtest-'));
    reg = await startRegistry();
    // What the registry holds, from the archive the helper pushed.
    const s = new ContentStore({ root: mkdtempSync(join(root, 'expected-')) });
    const imp = await importOciArchive(s, createReadStream(await baseImageArchive()));
    const index = imp.index.manifests[0]!;
    const list = parseIndex(await s.readAll(index.digest), 'list');
    expected = {
      index: { mediaType: index.mediaType, digest: index.digest, size: index.size },
      byArch: Object.fromEntries(list.manifests.map((m) => [m.platform!.architecture, m])),
    };
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await reg?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it("resolves a tag with a HEAD, as containerd's resolver: a manifest the store holds needs no GET (registries count GETs as pulls), a new one is fetched by digest", async () => {
    const seen: string[] = [];
    const proxy = await listen((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      const up = httpRequest({ host: '127.0.0.1', port: reg.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      req.pipe(up);
    });
    try {
      const host = `127.0.0.1:${proxy.port}`;
      const { client } = fresh({ hosts: { [host]: { http: true } } });
      const platform = { os: 'linux', architecture: 'amd64' };
      const first = await client.resolve(`${host}/busybox:latest`, { platform });
      const manifests = (l: string[]) => l.filter((r) => r.includes('/manifests/'));
      expect(manifests(seen)).toEqual([
        'HEAD /v2/busybox/manifests/latest',
        `GET /v2/busybox/manifests/${expected.index.digest}`,
        `GET /v2/busybox/manifests/${expected.byArch.amd64!.digest}`,
      ]);
      seen.length = 0;
      const again = await client.resolve(`${host}/busybox:latest`, { platform });
      expect(again.digest).toBe(first.digest);
      expect(again.indexDigest).toBe(expected.index.digest);
      expect(manifests(seen)).toEqual(['HEAD /v2/busybox/manifests/latest']);
      // A tag that is not there: the HEAD's not-found, worded as before.
      const e = await errorOf(client.resolve(`${host}/busybox:nope`));
      expect(e.message).toBe(`${host}/busybox:nope: not found`);
    } finally {
      await proxy.close();
    }
  });

  it('pulls busybox:latest for amd64 and arm64, every blob verified', async () => {
    const { store, client } = fresh();
    for (const arch of ['amd64', 'arm64']) {
      const progress = new Map<string, number>();
      const img = await client.pull(`${reg.host}/busybox:latest`, {
        platform: { os: 'linux', architecture: arch },
        onProgress: (d, cur, total) => {
          expect(total).toBe(d.size);
          expect(cur).toBeGreaterThanOrEqual(progress.get(d.digest) ?? 0);
          progress.set(d.digest, cur);
        },
      });
      expect(img.name).toBe(`${reg.host}/busybox:latest`);
      expect(img.indexDigest).toBe(expected.index.digest);
      expect(img.rootDescriptor).toEqual(expected.index);
      expect(img.digest).toBe(expected.byArch[arch]!.digest);
      expect(img.manifestDescriptor.platform).toEqual({ architecture: arch, os: 'linux' });
      expect(img.config.architecture).toBe(arch);
      expect(img.platform).toEqual({ os: 'linux', architecture: arch });
      expect(img.config.rootfs.diff_ids).toHaveLength(img.manifest.layers.length);
      expect(sha256(img.configBytes)).toBe(img.configDescriptor.digest);
      for (const d of [img.rootDescriptor, img.manifestDescriptor, img.configDescriptor, ...img.manifest.layers]) {
        expect(sha256(await store.readAll(d.digest)), d.digest).toBe(d.digest);
      }
      for (const l of img.manifest.layers) expect(progress.get(l.digest)).toBe(l.size);
    }
    // arm64/v8 and aarch64 pick the same manifest as arm64.
    const v8 = await client.resolve(`${reg.host}/busybox`, { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } });
    expect(v8.digest).toBe(expected.byArch.arm64!.digest);
    const aarch64 = await client.resolve(`${reg.host}/busybox`, { platform: { os: 'linux', architecture: 'aarch64' } });
    expect(aarch64.digest).toBe(expected.byArch.arm64!.digest);
    const none = await errorOf(client.resolve(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 's390x' } }));
    expect(none.code).toBe('NOT_FOUND');
    expect(none.message).toBe(`no match for platform in manifest ${expected.index.digest}: not found`);
    // A missing digest is reported by the reference as given, tag included (containerd's resolver).
    const missing = `sha256:${'1'.repeat(64)}`;
    const gone = await errorOf(client.resolve(`${reg.host}/busybox:latest@${missing}`));
    expect(gone.code).toBe('NOT_FOUND');
    expect(gone.message).toBe(`${reg.host}/busybox:latest@${missing}: not found`);
  });

  it('resolves a digest reference to a single manifest', async () => {
    const { client } = fresh();
    const amd64 = expected.byArch.amd64!;
    const img = await client.resolve(`${reg.host}/busybox@${amd64.digest}`, { platform: { os: 'linux', architecture: 'arm64' } });
    // A plain manifest is taken as is, whatever the wanted platform (as upstream).
    expect(img.indexDigest).toBeUndefined();
    expect(img.digest).toBe(amd64.digest);
    expect(img.rootDescriptor.mediaType).toBe(MediaType.OciManifest);
    expect(img.name).toBe(`${reg.host}/busybox@${amd64.digest}`);
  });

  it('resolves a tag again without writing the stored manifests again (every cached build resolves its FROM)', async () => {
    const { store, client } = fresh();
    const first = await client.resolve(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    const index = statSync(store.path(first.rootDescriptor.digest), { bigint: true });
    const again = await client.resolve(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(again.rootDescriptor.digest).toBe(first.rootDescriptor.digest);
    const after = statSync(store.path(first.rootDescriptor.digest), { bigint: true });
    // The same file, not rewritten (a write makes a new file and renames it over the blob).
    expect(after.ino).toBe(index.ino);
    expect(after.mtimeNs).toBe(index.mtimeNs);
  });

  it('reports a missing tag, repository or blob as not found, naming it', async () => {
    const { client } = fresh();
    const tag = await errorOf(client.resolve(`${reg.host}/busybox:nope`));
    expect(tag.code).toBe('NOT_FOUND');
    expect(tag.message).toBe(`${reg.host}/busybox:nope: not found`);
    const repo = await errorOf(client.resolve(`${reg.host}/no/such/repo`));
    expect(repo.message).toBe(`${reg.host}/no/such/repo:latest: not found`);
    const missing = sha256('no such blob');
    const blob = await errorOf(client.fetchBlob(`${reg.host}/busybox`, { mediaType: MediaType.OciLayerGzip, digest: missing, size: 12 }));
    expect(blob.code).toBe('NOT_FOUND');
    expect(blob.message).toBe(`${reg.host}/busybox@${missing}: not found`);
  });

  it('pushes a new image and an index that skopeo reads back', async () => {
    const { store, client } = fresh();
    const base = await client.pull(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    const layer = await layerTar({ 'hello.txt': 'hello from loom\n' });
    const layerDesc = { ...(await store.writeBlob(layer.gz)), mediaType: MediaType.OciLayerGzip };
    const config = buildImageConfig({
      config: base.configBytes,
      layers: [...base.config.rootfs.diff_ids.map((diffId) => ({ diffId })), { diffId: layer.diffId, createdAt: new Date('2024-05-06T07:08:09Z'), description: 'COPY hello.txt /' }],
    });
    const built = await writeManifest(store, { config, layers: [...base.manifest.layers, layerDesc], oci: false });
    const progress: string[] = [];
    const pushed = await client.push(`${reg.host}/pushed/app:v1`, built.descriptor, {
      onProgress: (d, cur, total) => {
        if (cur === total) progress.push(d.digest);
      },
    });
    expect(pushed.digest).toBe(built.descriptor.digest);
    expect(progress).toContain(layerDesc.digest);

    const raw = await skopeoInspect(`${reg.host}/pushed/app:v1`, { raw: true });
    expect(sha256(raw)).toBe(built.descriptor.digest);
    const info = JSON.parse(await skopeoInspect(`${reg.host}/pushed/app:v1`));
    expect(info.Digest).toBe(built.descriptor.digest);
    expect(info.Architecture).toBe('amd64');
    expect(info.Layers).toEqual([...base.manifest.layers, layerDesc].map((l) => l.digest));
    const cfg = await skopeoInspect(`${reg.host}/pushed/app:v1`, { raw: true, config: true });
    expect(sha256(cfg)).toBe(built.config.digest);

    // Read back by loom too, from a fresh store.
    const { client: c2, store: s2 } = fresh();
    const back = await c2.pull(`${reg.host}/pushed/app:v1`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(back.digest).toBe(built.descriptor.digest);
    expect((await s2.readAll(layerDesc.digest)).equals(layer.gz)).toBe(true);

    // Blobs already there are not uploaded again; another repository can mount them.
    expect(await client.pushBlob(`${reg.host}/pushed/app`, layerDesc)).toBe('exists');
    expect(await client.pushBlob(`${reg.host}/other/repo`, layerDesc, { mountFrom: 'pushed/app' })).toBe('mounted');
    const fresher = await layerTar({ 'x.txt': 'x' });
    const fresherDesc = { ...(await store.writeBlob(fresher.gz)), mediaType: MediaType.OciLayerGzip };
    expect(await client.pushBlob(`${reg.host}/other/repo`, fresherDesc)).toBe('uploaded');

    // A multi-platform index (OCI), children pushed by digest first.
    const arm = await client.pull(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'arm64' } });
    const idx = await writeIndex(store, {
      manifests: [
        { ...built.descriptor, platform: { os: 'linux', architecture: 'amd64' } },
        { ...arm.manifestDescriptor, platform: { os: 'linux', architecture: 'arm64' } },
      ],
      oci: true,
    });
    await client.push(`${reg.host}/pushed/multi:v2`, idx.descriptor);
    const rawIdx = await skopeoInspect(`${reg.host}/pushed/multi:v2`, { raw: true });
    expect(sha256(rawIdx)).toBe(idx.descriptor.digest);
    const armInfo = JSON.parse(await skopeoInspect(`${reg.host}/pushed/multi:v2`, { platform: { os: 'linux', arch: 'arm64' } }));
    expect(armInfo.Architecture).toBe('arm64');
    expect(armInfo.Layers).toEqual(arm.manifest.layers.map((l) => l.digest));

    // Pushing what the store lacks names the digest.
    const gone = sha256('never stored');
    const e = await errorOf(client.pushBlob(`${reg.host}/pushed/app`, { mediaType: MediaType.OciLayerGzip, digest: gone, size: 3 }));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toContain(gone);
  });

  it('tries mirrors first and falls back past a dead one', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    // The origin is dead; the mirror (the real registry) serves the pull.
    const viaMirror = fresh({ hosts: { [dead]: { mirrors: [reg.host] } } });
    const a = await viaMirror.client.resolve(`${dead}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(a.digest).toBe(expected.byArch.amd64!.digest);
    // The mirror is dead; the origin serves it.
    const viaOrigin = fresh({ hosts: { [reg.host]: { mirrors: [dead], http: true } } });
    const b = await viaOrigin.client.pull(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'arm64' } });
    expect(b.digest).toBe(expected.byArch.arm64!.digest);
    // Nothing anywhere: the origin's error is reported.
    const none = fresh({ hosts: { [dead]: { mirrors: [`127.0.0.1:${await freePort()}`] } } });
    const e = await errorOf(none.client.resolve(`${dead}/busybox:latest`));
    expect(e.code).toBe('UNAVAILABLE');
    // In Go's words, as upstream's daemon reports it.
    expect(e.message).toMatch(new RegExp(`failed to do request: Head "http://${dead.replace(/\./g, '\\.')}/v2/busybox/manifests/latest": dial tcp ${dead.replace(/\./g, '\\.')}: connect: connection refused$`));
  });

  it("reuses the daemon's connections across builds: only each resolve's HEAD needs one of its own", async () => {
    // A counting TCP relay in front of the real registry: every connection the clients open is seen.
    let connections = 0;
    const relay = createNetServer((down) => {
      connections++;
      const up = connect(reg.port, '127.0.0.1');
      down.pipe(up).pipe(down);
      const end = (): void => {
        down.destroy();
        up.destroy();
      };
      down.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
    });
    await new Promise<void>((ok) => relay.listen(0, '127.0.0.1', ok));
    const host = `127.0.0.1:${(relay.address() as AddressInfo).port}`;
    const access = new RegistryAccess({ store: new ContentStore({ root: mkdtempSync(join(root, 's-')) }), hosts: { [host]: { http: true } } });
    const job = (id: string): JobContext => ({ id, signal: new AbortController().signal, session: () => Promise.reject(new Error('no session')) }) as unknown as JobContext;
    try {
      for (const id of ['build-1', 'build-2', 'build-3']) {
        const img = await access.forJob(job(id)).resolve(`${host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
        expect(img.digest).toBe(expected.byArch.amd64!.digest);
      }
      // Each build's resolve starts with a HEAD of the tag, on a connection undici closes after it
      // (it keeps one open after a HEAD only when the server says keep-alive; Go's do not): 3.
      // The first build's manifest GETs share one pooled connection; later builds need no GET.
      expect(connections).toBe(4);
    } finally {
      await access.close();
      relay.close();
    }
  });
});

describe('RegistryClient with basic auth (htpasswd docker-registry)', () => {
  let reg: TestRegistry;
  let root: string;
  const creds = { username: 'loom', password: 's3cret-pw' };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'loom-regauth-'));
    reg = await startRegistry({ htpasswd: creds });
  });
  afterAll(async () => {
    await reg?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('refuses without credentials with a clear unauthenticated error', async () => {
    const client = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'a-')) }) });
    const e = await errorOf(client.resolve(`${reg.host}/busybox:latest`));
    expect(e.code).toBe('UNAUTHENTICATED');
    expect(e.message).toBe(
      `failed to authorize: ${reg.host}/busybox: the registry requires basic auth credentials and none were given (401 Unauthorized)`,
    );
    await client.close();
  });

  it('refuses wrong credentials, naming the user', async () => {
    const client = new RegistryClient({
      store: new ContentStore({ root: mkdtempSync(join(root, 'b-')) }),
      getCredentials: async () => ({ username: 'loom', secret: 'wrong' }),
    });
    const e = await errorOf(client.resolve(`${reg.host}/busybox:latest`));
    expect(e.code).toBe('UNAUTHENTICATED');
    expect(e.message).toBe(
      `failed to authorize: ${reg.host}/busybox: basic auth credentials for user "loom" were rejected (401 Unauthorized): unauthorized: authentication required`,
    );
    await client.close();
  });

  it('pulls and pushes with the right credentials, asking for them by host', async () => {
    const asked: string[] = [];
    const store = new ContentStore({ root: mkdtempSync(join(root, 'c-')) });
    const client = new RegistryClient({
      store,
      getCredentials: async (host) => {
        asked.push(host);
        return host === reg.host ? { username: creds.username, secret: creds.password } : undefined;
      },
    });
    const img = await client.pull(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(img.manifest.layers.length).toBe(4);
    await client.push(`${reg.host}/copied/busybox:amd64`, img.manifestDescriptor);
    const raw = await skopeoInspect(`${reg.host}/copied/busybox:amd64`, { raw: true, creds });
    expect(sha256(raw)).toBe(img.digest);
    expect(new Set(asked)).toEqual(new Set([reg.host]));
    await client.close();

    // A client that has sent nothing to the registry yet pushes: its first requests (a HEAD for
    // each layer, at once) all go without credentials and are challenged. Each retries with them;
    // none may take another's retry for a refusal of its own (it did: "basic auth credentials for
    // user ... were rejected" for every push of a multi-layer image through buildx or buildctl).
    const fresh = new RegistryClient({ store, getCredentials: async () => ({ username: creds.username, secret: creds.password }) });
    await fresh.push(`${reg.host}/fresh/busybox:amd64`, img.manifestDescriptor);
    expect(sha256(await skopeoInspect(`${reg.host}/fresh/busybox:amd64`, { raw: true, creds }))).toBe(img.digest);
    await fresh.close();
  });
});

describe('RegistryClient with token auth (realm/service/scope) in front of docker-registry', () => {
  let reg: TestRegistry;
  let root: string;
  let tokenSrv: Awaited<ReturnType<typeof listen>>;
  let proxy: Awaited<ReturnType<typeof listen>>;
  const issued = new Set<string>();
  const tokenRequests: Array<{ method: string; scope: string[]; service: string | null; basicUser?: string; form?: URLSearchParams }> = [];
  let postEnabled = true;
  const users: Record<string, string> = { tok: 'tokpw' };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'loom-regtoken-'));
    reg = await startRegistry();
    tokenSrv = await listen((req, res) => {
      void (async () => {
        const url = new URL(req.url!, 'http://x');
        const grant = (user: string | undefined) => {
          const token = `tok-${issued.size}-${user ?? 'anon'}`;
          issued.add(token);
          return token;
        };
        if (req.method === 'POST') {
          const form = new URLSearchParams(await body(req));
          tokenRequests.push({ method: 'POST', scope: (form.get('scope') ?? '').split(' '), service: form.get('service'), form });
          if (!postEnabled) return res.writeHead(404).end('not here');
          const u = form.get('username') ?? '';
          if (form.get('grant_type') !== 'password' || users[u] !== form.get('password')) return res.writeHead(401).end('bad creds');
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: grant(u), expires_in: 300 }));
          return;
        }
        const auth = req.headers.authorization;
        let user: string | undefined;
        if (auth?.startsWith('Basic ')) {
          const [u, p] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
          if (users[u!] !== p) {
            tokenRequests.push({ method: 'GET', scope: url.searchParams.getAll('scope'), service: url.searchParams.get('service'), basicUser: u });
            return res.writeHead(401).end('bad creds');
          }
          user = u;
        }
        tokenRequests.push({ method: 'GET', scope: url.searchParams.getAll('scope'), service: url.searchParams.get('service'), basicUser: user });
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: grant(user) }));
      })();
    });
    // The registry endpoint: checks the bearer token, then forwards to the real registry.
    proxy = await listen((req, res) => {
      const auth = req.headers.authorization ?? '';
      if (!auth.startsWith('Bearer ') || !issued.has(auth.slice(7))) {
        const repo = /^\/v2\/(.+?)\/(manifests|blobs)\//.exec(req.url ?? '')?.[1] ?? 'busybox';
        const action = req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'pull,push';
        res.writeHead(401, {
          'www-authenticate': `Bearer realm="http://127.0.0.1:${tokenSrv.port}/token",service="loom-test",scope="repository:${repo}:${action}"`,
          'content-type': 'application/json',
        });
        res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
        return;
      }
      const headers = { ...req.headers };
      delete headers.authorization;
      const up = httpRequest({ host: '127.0.0.1', port: reg.port, method: req.method, path: req.url, headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.writeHead(502).end());
      req.pipe(up);
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await tokenSrv?.close();
    await reg?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('fetches an anonymous token for the challenged scope and reuses it', async () => {
    tokenRequests.length = 0;
    const host = `127.0.0.1:${proxy.port}`;
    const client = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'a-')) }), hosts: { [host]: { http: true } } });
    const img = await client.pull(`${host}/busybox:latest`, { platform: { os: 'linux', architecture: 'arm64' } });
    await client.resolve(`${host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(img.manifest.layers).toHaveLength(4);
    expect(tokenRequests).toEqual([{ method: 'GET', scope: ['repository:busybox:pull'], service: 'loom-test', basicUser: undefined }]);
    await client.close();
  });

  it('uses the OAuth password grant with credentials, and GET with basic when POST is unsupported', async () => {
    const host = `127.0.0.1:${proxy.port}`;
    const getCredentials = async (h: string) => (h === host ? { username: 'tok', secret: 'tokpw' } : undefined);
    tokenRequests.length = 0;
    postEnabled = true;
    const c1 = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'b-')) }), hosts: { [host]: { http: true } }, getCredentials });
    await c1.resolve(`${host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(tokenRequests).toHaveLength(1);
    expect(tokenRequests[0]!.method).toBe('POST');
    expect(Object.fromEntries(tokenRequests[0]!.form!)).toEqual({
      scope: 'repository:busybox:pull',
      service: 'loom-test',
      client_id: 'buildkit-client',
      grant_type: 'password',
      username: 'tok',
      password: 'tokpw',
    });
    await c1.close();

    tokenRequests.length = 0;
    postEnabled = false;
    const store = new ContentStore({ root: mkdtempSync(join(root, 'c-')) });
    const c2 = new RegistryClient({ store, hosts: { [host]: { http: true } }, getCredentials });
    const img = await c2.pull(`${host}/busybox:latest`, { platform: { os: 'linux', architecture: 'amd64' } });
    expect(tokenRequests.map((r) => [r.method, r.basicUser])).toEqual([
      ['POST', undefined],
      ['GET', 'tok'],
    ]);
    // Push asks for a pull,push token.
    tokenRequests.length = 0;
    await c2.push(`${host}/tokentest:v1`, img.manifestDescriptor);
    expect(tokenRequests.map((r) => r.scope)).toContainEqual(['repository:tokentest:pull,push']);
    expect(sha256(await skopeoInspect(`${reg.host}/tokentest:v1`, { raw: true }))).toBe(img.digest);
    await c2.close();
    postEnabled = true;
  });

  it('reports a refused token request as unauthenticated', async () => {
    const host = `127.0.0.1:${proxy.port}`;
    postEnabled = false;
    const client = new RegistryClient({
      store: new ContentStore({ root: mkdtempSync(join(root, 'd-')) }),
      hosts: { [host]: { http: true } },
      getCredentials: async () => ({ username: 'tok', secret: 'wrong' }),
    });
    const e = await errorOf(client.resolve(`${host}/busybox:latest`));
    postEnabled = true;
    expect(e.code).toBe('UNAUTHENTICATED');
    expect(e.message).toContain(`failed to authorize: ${host}/busybox: failed to fetch token: unexpected status from GET request to http://127.0.0.1:${tokenSrv.port}/token: 401`);
    await client.close();
  });
});

describe('RegistryClient over TLS (docker-registry with a self-signed certificate)', () => {
  let reg: TestRegistry;
  let root: string;
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'loom-regtls-'));
    reg = await startRegistry({ tls: true });
  });
  afterAll(async () => {
    await reg?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  const make = (hosts: ConstructorParameters<typeof RegistryClient>[0]['hosts']) =>
    new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'c-')) }), hosts });

  it('trusts the certificate given as ca, or skips verification when insecure', async () => {
    for (const cfg of [{ ca: [reg.caFile!] }, { insecure: true }]) {
      const client = make({ [reg.host]: cfg });
      try {
        const img = await client.pull(`${reg.host}/busybox:latest`, { platform: { os: 'linux', architecture: 'arm64' } });
        expect(img.manifest.layers).toHaveLength(4);
      } finally {
        await client.close();
      }
    }
  });

  it('refuses an untrusted certificate, saying so', async () => {
    const strict = make({ [reg.host]: { http: false } });
    const e = await errorOf(strict.resolve(`${reg.host}/busybox:latest`));
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.message).toContain(`failed to do request: Head "https://${reg.host}/v2/busybox/manifests/latest"`);
    expect(e.message).toMatch(/self-signed certificate/);
    await strict.close();
    // Unconfigured loopback: HTTPS fails verification, HTTP is refused by the TLS server; both reasons are given.
    const dflt = make({});
    const e2 = await errorOf(dflt.resolve(`${reg.host}/busybox:latest`));
    expect(e2.message).toContain(`pulling from host ${reg.host} failed with status code [manifests latest]: 400 Bad Request`);
    expect(e2.message).toMatch(/over https: .*self-signed certificate/);
    await dflt.close();
  });
});

describe('RegistryClient failure modes against loopback servers', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'loom-regfail-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("turns a 500 into an unavailable error with the status, in containerd's resolver's words (upstream v0.11.6 prints the same)", async () => {
    const srv = await listen((_req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNKNOWN","message":"storage exploded"}]}');
    });
    const client = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'a-')) }) });
    try {
      const e = await errorOf(client.resolve(`127.0.0.1:${srv.port}/app:latest`));
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toBe(
        `pulling from host 127.0.0.1:${srv.port} failed with status code [manifests latest]: 500 Internal Server Error`,
      );
    } finally {
      await client.close();
      await srv.close();
    }
  });

  it('rejects a blob whose bytes do not match its digest, naming the digest, and stores nothing', async () => {
    const claimed = sha256('the real content');
    const srv = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' }).end('the fake content');
    });
    const store = new ContentStore({ root: mkdtempSync(join(root, 'b-')) });
    const client = new RegistryClient({ store, hosts: { [`127.0.0.1:${srv.port}`]: { http: true } } });
    try {
      const e = await errorOf(client.fetchBlob(`127.0.0.1:${srv.port}/app`, { mediaType: MediaType.OciLayerGzip, digest: claimed, size: 16 }));
      expect(e.code).toBe('FAILED_PRECONDITION');
      expect(e.message).toContain(`failed to fetch ${claimed} from 127.0.0.1:${srv.port}/app`);
      expect(e.message).toContain(`expected ${claimed}, got ${sha256('the fake content')}`);
      expect(await store.list()).toEqual([]);
    } finally {
      await client.close();
      await srv.close();
    }
  });

  it('times out a stalled registry and honours an AbortSignal', async () => {
    const pending: ServerResponse[] = [];
    const srv = await listen((_req, res) => {
      pending.push(res); // never answers
    });
    const host = `127.0.0.1:${srv.port}`;
    const client = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'c-')) }), hosts: { [host]: { http: true } }, timeoutMs: 300 });
    const slow = new RegistryClient({ store: new ContentStore({ root: mkdtempSync(join(root, 'd-')) }), hosts: { [host]: { http: true } }, timeoutMs: 60_000 });
    try {
      const t0 = Date.now();
      const e = await errorOf(client.resolve(`${host}/app:latest`));
      expect(e.code).toBe('DEADLINE_EXCEEDED');
      expect(e.message).toContain(`http://${host}/v2/app/manifests/latest`);
      expect(Date.now() - t0).toBeLessThan(5000);

      const ac = new AbortController();
      setTimeout(() => ac.abort(), 200);
      const c = await errorOf(slow.resolve(`${host}/app:latest`, { signal: ac.signal }));
      expect(c.code).toBe('CANCELLED');
    } finally {
      for (const r of pending) r.destroy();
      await client.close();
      await slow.close();
      await srv.close();
    }
  });
});



