import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Control, ListWorkersResponseSchema, SolveResponseSchema, type SolveRequest } from '../../../src/gen/buildkit/control_pb.js';
import { Content, WriteAction } from '../../../src/gen/containerd/content_pb.js';
import { readOciIndexTag, updateOciIndex } from '../../../src/session/client/oci-index.js';
import { SessionContentStore } from '../../../src/session/content/session-store.js';
import { localCacheStoreId, STORE_ID_HEADER } from '../../../src/session/content/store-id.js';
import { bytesDuplex, type BytesMessageStream } from '../../../src/session/tunnel/bytes-duplex.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../src/session/tunnel/caller.js';
import { parseSessionMetadata } from '../../../src/session/tunnel/metadata.js';
import { LoomError } from '../../../src/util/errors.js';
import { grpcServiceDef } from '../../../src/util/grpc-def.js';

const digestOf = (b: Uint8Array): `sha256:${string}` => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const INDEX_MT = 'application/vnd.oci.image.index.v1+json';

/**
 * The daemon end (SessionContentStore) against upstream's client end: upstream buildctl serves
 * containerd's content server over containerd's local store for `--export-cache type=local` and
 * `--import-cache type=local`, and a stand-in Control server plays the daemon. Proves the wire
 * (header, Info, Read, Write STAT/WRITE/COMMIT, ALREADY_EXISTS, Status, Abort) and that upstream's
 * client finds our `cache.manifest` in index.json where loom's updateOciIndex puts it, byte for
 * byte. Needs an upstream buildctl binary ($LOOM_UPSTREAM_BUILDCTL or /opt/upstream/bin/buildctl,
 * never part of loom); skipped without.
 */
const BUILDCTL = process.env.LOOM_UPSTREAM_BUILDCTL ?? '/opt/upstream/bin/buildctl';

describe.skipIf(!existsSync(BUILDCTL))('session content store against upstream buildctl (integration)', () => {
  let dir: string;
  let sock: string;
  let server: grpc.Server;
  const sessions = new Map<string, TunnelSessionCaller>();
  const waiters = new Map<string, (c: TunnelSessionCaller) => void>();
  /** What the current build's Solve does with the session; set by each test. */
  let onSolve: (caller: TunnelSessionCaller, req: SolveRequest) => Promise<Record<string, string>>;
  let solveDone: () => void = () => undefined;
  let solveFinished: Promise<void> = Promise.resolve();

  const getSession = (id: string): Promise<TunnelSessionCaller> =>
    sessions.has(id) ? Promise.resolve(sessions.get(id)!) : new Promise((r) => waiters.set(id, r));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loom-cstore-go-'));
    sock = join(dir, 'd.sock');
    server = new grpc.Server();
    server.addService(grpcServiceDef(Control), {
      listWorkers: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, create(ListWorkersResponseSchema, { record: [{ ID: 'w0', platforms: [{ OS: 'linux', Architecture: 'amd64' }] }] })),
      session: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const id = parseSessionMetadata(call.metadata);
        const caller = createSessionCaller({ ...id, duplex: bytesDuplex(call as unknown as BytesMessageStream), healthIntervalMs: 0 });
        sessions.set(id.id, caller);
        waiters.get(id.id)?.(caller);
      },
      status: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        void solveFinished.then(() => call.end());
      },
      solve: (call: grpc.ServerUnaryCall<SolveRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        void (async () => {
          const s = await getSession(call.request.Session);
          const res = await onSolve(s, call.request);
          cb(null, create(SolveResponseSchema, { ExporterResponse: res }));
        })()
          .catch((err: Error) => cb({ code: grpc.status.INTERNAL, details: `stand-in daemon: ${err.stack ?? err.message}` }))
          .finally(() => solveDone());
      },
    });
    // buildctl build runs through the gateway API: an empty PongResponse (default caps) and empty
    // SolveResponses let its build function finish, so buildctl completes and updates index.json.
    const raw = (path: string): grpc.MethodDefinition<Buffer, Buffer> => ({
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    });
    server.addService(
      { ping: raw('/moby.buildkit.v1.frontend.LLBBridge/Ping'), solve: raw('/moby.buildkit.v1.frontend.LLBBridge/Solve') },
      {
        ping: (_c: unknown, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.alloc(0)),
        solve: (_c: unknown, cb: grpc.sendUnaryData<Buffer>) => {
          void solveFinished.then(() => cb(null, Buffer.alloc(0)));
        },
      },
    );
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  });

  afterAll(async () => {
    for (const s of sessions.values()) s.close();
    server?.forceShutdown();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // A frontend build, which the stand-in answers with nothing to build: only the cache moves.
  // Once the build succeeded buildctl updates index.json from the response, as upstream's client does.
  const buildctl = async (args: string[]): Promise<{ code: number | null; stderr: string }> => {
    solveFinished = new Promise<void>((r) => (solveDone = r));
    const proc = spawn(BUILDCTL, ['--addr', `unix://${sock}`, 'build', '--frontend', 'dockerfile.v0', '--progress', 'plain', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += String(d)));
    const code = await new Promise<number | null>((r) => proc.once('exit', r));
    return { code, stderr };
  };

  const layer = randomBytes(3 * 1024 * 1024 + 777);
  const config = Buffer.from('{"layers":[],"records":[]}');
  const cacheManifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: INDEX_MT,
      manifests: [
        { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digestOf(layer), size: layer.length },
        { mediaType: 'application/vnd.buildkit.cacheconfig.v0', digest: digestOf(config), size: config.length },
      ],
    }),
  );
  const manifestDesc = { mediaType: INDEX_MT, digest: digestOf(cacheManifest), size: cacheManifest.length };

  it('writes a cache export into buildctl\'s local store; buildctl records cache.manifest in index.json', async () => {
    const cacheDir = join(dir, 'cache');
    const observed: Record<string, unknown> = {};
    onSolve = async (caller, req) => {
      const dest = req.Cache!.Exports[0]!.Attrs.dest!;
      observed.storeId = localCacheStoreId(dest);
      const store = new SessionContentStore({ caller, storeId: localCacheStoreId(dest) });
      observed.missing = await store.info(manifestDesc.digest);
      await store.write({ digest: digestOf(layer), size: layer.length }, Readable.from([layer.subarray(0, 1000), layer.subarray(1000)]));
      await store.write({ digest: digestOf(config), size: config.length }, config);
      await store.write(manifestDesc, cacheManifest);
      // Already present: upstream's server answers the opening STAT with ALREADY_EXISTS.
      await store.write({ digest: digestOf(layer), size: layer.length }, {
        [Symbol.asyncIterator]() {
          throw new Error('must not be read');
        },
      });
      observed.info = await store.info(digestOf(layer));
      observed.readBack = (await store.readAll({ digest: digestOf(layer), size: layer.length })).equals(layer);

      const md = { metadata: { [STORE_ID_HEADER]: [localCacheStoreId(dest)] } };
      // A commit whose digest differs is refused by containerd, with the message loom's store uses.
      const bad = Buffer.from('bytes that are not what is claimed');
      const claimed = digestOf(Buffer.from('claimed'));
      const s = await caller.stream(Content.method.write, md);
      const it = s.recv()[Symbol.asyncIterator]();
      await s.send({ action: WriteAction.STAT, ref: 'bad-1', total: BigInt(bad.length), expected: claimed });
      const st = (await it.next()).value;
      observed.stat = { action: st.action, offset: st.offset, total: st.total };
      await s.send({ action: WriteAction.WRITE, offset: 0n, data: bad });
      observed.writeOffset = (await it.next()).value.offset;
      await s.send({ action: WriteAction.COMMIT, offset: BigInt(bad.length), total: BigInt(bad.length), expected: claimed });
      const err = (await it.next().catch((e: unknown) => e)) as LoomError;
      observed.commitErr = { code: err.code, message: err.message };
      observed.expectedCommitMessage = `unexpected commit digest ${digestOf(bad)}, expected ${claimed}`;
      // containerd keeps a failed ingest (for resuming); Abort drops it, as SessionContentStore does after a failure.
      await caller.unary(Content.method.abort, { ref: 'bad-1' }, md);

      // Status of an open ingest, then Abort, as loom's client store answers them.
      const s2 = await caller.stream(Content.method.write, md);
      const it2 = s2.recv()[Symbol.asyncIterator]();
      await s2.send({ action: WriteAction.STAT, ref: 'partial-1', total: 100n });
      await it2.next();
      await s2.send({ action: WriteAction.WRITE, offset: 0n, data: Buffer.alloc(40, 1) });
      await it2.next();
      const status = await caller.unary(Content.method.status, { ref: 'partial-1' }, md);
      observed.status = { ref: status.status.ref, offset: status.status.offset, total: status.status.total };
      s2.close();
      // Wait for the server to release the ref's lock, then drop the ingest.
      await new Promise((r) => setTimeout(r, 200));
      await caller.unary(Content.method.abort, { ref: 'partial-1' }, md);
      const e2 = (await caller.unary(Content.method.status, { ref: 'partial-1' }, md).catch((e: unknown) => e)) as LoomError;
      observed.statusAfterAbort = e2.code;

      const unknown = new SessionContentStore({ caller, storeId: 'local:/not/shared' });
      const e3 = (await unknown.info(manifestDesc.digest).catch((e: unknown) => e)) as LoomError;
      observed.unknownStore = { code: e3.code, message: e3.message };
      return { 'cache.manifest': JSON.stringify(manifestDesc) };
    };
    const { code, stderr } = await buildctl(['--export-cache', `type=local,dest=${cacheDir}`]);
    expect(code, stderr).toBe(0);
    expect(observed.storeId).toBe(`local:${cacheDir}`);
    expect(observed.missing).toBeUndefined();
    expect(observed.info).toEqual({ digest: digestOf(layer), size: layer.length });
    expect(observed.readBack).toBe(true);
    expect(observed.stat).toEqual({ action: WriteAction.STAT, offset: 0n, total: 34n });
    expect(observed.writeOffset).toBe(34n);
    expect(observed.commitErr).toEqual({ code: 'FAILED_PRECONDITION', message: expect.stringContaining(observed.expectedCommitMessage as string) });
    expect(observed.status).toEqual({ ref: 'partial-1', offset: 40n, total: 100n });
    expect(observed.statusAfterAbort).toBe('NOT_FOUND');
    expect(observed.unknownStore).toEqual({ code: 'NOT_FOUND', message: expect.stringContaining('unknown store local:/not/shared') });

    for (const b of [layer, config, cacheManifest]) {
      expect((await readFile(join(cacheDir, 'blobs', 'sha256', digestOf(b).slice(7)))).equals(b)).toBe(true);
    }
    expect(await readOciIndexTag(cacheDir, 'latest')).toEqual({ ...manifestDesc, annotations: { 'org.opencontainers.image.ref.name': 'latest' } });
    // loom's updateOciIndex writes the same bytes as upstream's client for the same descriptor.
    const mine = join(dir, 'mine');
    await updateOciIndex(mine, 'latest', manifestDesc);
    expect(await readFile(join(mine, 'index.json'), 'utf8')).toBe(await readFile(join(cacheDir, 'index.json'), 'utf8'));
    expect(await readdir(join(cacheDir, 'ingest'))).toEqual([]);
  }, 60_000);

  it('reads a cache import from buildctl\'s local store by the digest buildctl found in index.json', async () => {
    const cacheDir = join(dir, 'cache');
    const observed: Record<string, unknown> = {};
    onSolve = async (caller, req) => {
      const im = req.Cache!.Imports[0]!;
      observed.attrs = { ...im.Attrs };
      const store = new SessionContentStore({ caller, storeId: localCacheStoreId(im.Attrs.src!) });
      const info = await store.info(im.Attrs.digest!);
      const idx = JSON.parse((await store.readAll({ digest: im.Attrs.digest!, size: info!.size })).toString()) as {
        manifests: { digest: string; size: number }[];
      };
      observed.blobs = [];
      for (const m of idx.manifests) (observed.blobs as string[]).push(digestOf(await store.readAll(m)));
      // A descriptor that lies about the size is refused, naming the blob.
      const err = (await store.readAll({ digest: digestOf(config), size: config.length - 1 }).catch((e: unknown) => e)) as LoomError;
      observed.lie = err.message;
      return {};
    };
    const { code, stderr } = await buildctl(['--import-cache', `type=local,src=${cacheDir}`]);
    expect(code, stderr).toBe(0);
    expect(observed.attrs).toMatchObject({ src: cacheDir, digest: manifestDesc.digest });
    expect(observed.blobs).toEqual([digestOf(layer), digestOf(config)]);
    expect(observed.lie).toContain(`blob ${digestOf(config)}: more than the expected ${config.length - 1} bytes`);
  }, 60_000);
});
