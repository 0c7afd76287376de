import * as grpc from '@grpc/grpc-js';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, chmod, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../src/client/control-client.js';
import { openSession, type ClientSession } from '../../../src/client/session.js';
import { Control } from '../../../src/gen/buildkit/control_pb.js';
import { Content, WriteAction } from '../../../src/gen/containerd/content_pb.js';
import { contentStoreService } from '../../../src/session/client/content-store.js';
import { healthService } from '../../../src/session/client/health.js';
import { SessionContentStore } from '../../../src/session/content/session-store.js';
import { localCacheStoreId, STORE_ID_HEADER } from '../../../src/session/content/store-id.js';
import { bytesDuplex, type BytesMessageStream } from '../../../src/session/tunnel/bytes-duplex.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../src/session/tunnel/caller.js';
import { parseSessionMetadata } from '../../../src/session/tunnel/metadata.js';
import { LoomError } from '../../../src/util/errors.js';
import { grpcServiceDef } from '../../../src/util/grpc-def.js';

const digestOf = (b: Uint8Array): `sha256:${string}` => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hexOf = (d: string): string => d.slice('sha256:'.length);

/**
 * The session content store end to end: loom's client serves two directories with
 * contentStoreService on a real Control.Session (grpc-js over a unix socket, the tunnel on top),
 * and the daemon end drives them with SessionContentStore.
 */
describe('session content store over a real session (integration, loopback)', () => {
  let dir: string;
  let cacheDir: string;
  let otherDir: string;
  let server: grpc.Server;
  let client: ControlClient;
  let session: ClientSession;
  let caller: TunnelSessionCaller;
  let store: SessionContentStore;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loom-cstore-'));
    cacheDir = join(dir, 'cache');
    otherDir = join(dir, 'other');
    const sock = join(dir, 's.sock');
    let arrived!: (c: TunnelSessionCaller) => void;
    const next = new Promise<TunnelSessionCaller>((r) => (arrived = r));
    server = new grpc.Server();
    server.addService(grpcServiceDef(Control), {
      session: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const id = parseSessionMetadata(call.metadata);
        arrived(createSessionCaller({ ...id, duplex: bytesDuplex(call as unknown as BytesMessageStream), healthIntervalMs: 0 }));
      },
    });
    await new Promise<void>((res, rej) => server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
    client = new ControlClient({ address: `unix://${sock}` });
    session = openSession({
      control: client,
      services: {
        ...healthService(),
        ...contentStoreService({ stores: { [localCacheStoreId(cacheDir)]: cacheDir, 'oci:other': otherDir } }),
      },
      name: 'cstore',
    });
    caller = await next;
    store = new SessionContentStore({ caller, storeId: localCacheStoreId(cacheDir) });
  });

  afterAll(async () => {
    session?.close();
    caller?.close();
    client?.close();
    server?.forceShutdown();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const ingestLeft = async (root: string): Promise<string[]> => readdir(join(root, 'ingest')).catch(() => []);

  it('writes blobs into DIR/blobs/sha256 and reads them back verified', async () => {
    const small = Buffer.from('{"schemaVersion":2}');
    const big = randomBytes(3 * 1024 * 1024 + 12345);
    const empty = Buffer.alloc(0);
    const ds = { small: digestOf(small), big: digestOf(big), empty: digestOf(empty) };

    await store.write({ digest: ds.small, size: small.length, mediaType: 'application/vnd.oci.image.index.v1+json' }, small);
    // A Readable in odd-sized pieces: the store regroups them into 1 MiB messages.
    const pieces: Buffer[] = [];
    for (let i = 0; i < big.length; i += 70_001) pieces.push(big.subarray(i, i + 70_001));
    await store.write({ digest: ds.big, size: big.length }, Readable.from(pieces));
    await store.write({ digest: ds.empty, size: 0 }, empty);

    for (const [d, b] of [
      [ds.small, small],
      [ds.big, big],
      [ds.empty, empty],
    ] as const) {
      const file = join(cacheDir, 'blobs', 'sha256', hexOf(d));
      expect((await readFile(file)).equals(b)).toBe(true);
      expect((await stat(file)).mode & 0o777).toBe(0o444);
      expect(await store.info(d)).toEqual({ digest: d, size: b.length });
      expect((await store.readAll({ digest: d, size: b.length })).equals(b)).toBe(true);
    }
    // Without a size, read() asks Info first.
    const chunks: Buffer[] = [];
    for await (const c of store.read({ digest: ds.big })) chunks.push(c);
    expect(chunks.length).toBeGreaterThan(1);
    expect(Buffer.concat(chunks).equals(big)).toBe(true);
    expect(await ingestLeft(cacheDir)).toEqual([]);
  });

  it('answers info/read of a missing blob as not found, naming the store and digest', async () => {
    const d = digestOf(Buffer.from('never written'));
    expect(await store.info(d)).toBeUndefined();
    expect(await store.has(d)).toBe(false);
    const err = await store.readAll({ digest: d, size: 13 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LoomError);
    expect((err as LoomError).code).toBe('NOT_FOUND');
    expect((err as LoomError).message).toContain(`content store local:${cacheDir}`);
    expect((err as LoomError).message).toContain(d);
    await expect(store.info('sha256:nothex')).rejects.toThrow(/invalid digest "sha256:nothex"/);
  });

  it('skips a blob the store already has without reading the source', async () => {
    const b = Buffer.from('present already');
    const d = digestOf(b);
    await store.write({ digest: d, size: b.length }, b);
    const untouchable: AsyncIterable<Uint8Array> = {
      [Symbol.asyncIterator]() {
        throw new Error('source must not be read');
      },
    };
    await store.write({ digest: d, size: b.length }, untouchable);
    const src = Readable.from([b]);
    await store.write({ digest: d, size: b.length }, src);
    expect(src.destroyed).toBe(true);
  });

  it('refuses data that does not match the descriptor, leaving nothing behind', async () => {
    const b = Buffer.from('the real bytes');
    const wrong = digestOf(Buffer.from('other bytes'));
    // A whole buffer is checked before anything is sent.
    const e1 = await store.write({ digest: wrong, size: b.length }, b).catch((e: unknown) => e);
    expect((e1 as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((e1 as LoomError).message).toContain(wrong);
    // A stream is checked as it goes: the commit is never asked for.
    const e2 = await store.write({ digest: wrong, size: b.length }, Readable.from([b])).catch((e: unknown) => e);
    expect((e2 as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((e2 as LoomError).message).toMatch(/data has digest sha256:[0-9a-f]{64}/);
    const e3 = await store.write({ digest: digestOf(b), size: b.length + 5 }, Readable.from([b])).catch((e: unknown) => e);
    expect((e3 as LoomError).message).toContain(`data has ${b.length} bytes, descriptor says ${b.length + 5}`);
    expect(await store.has(wrong)).toBe(false);
    expect(await store.has(digestOf(b))).toBe(false);
    expect(await ingestLeft(cacheDir)).toEqual([]);
  });

  it('has the client store refuse a commit whose digest or size differs (raw Write stream)', async () => {
    const b = Buffer.from('bytes sent by a confused daemon');
    const wrong = digestOf(Buffer.from('what it claimed'));
    const md = { metadata: { [STORE_ID_HEADER]: [localCacheStoreId(cacheDir)] } };
    const s = await caller.stream(Content.method.write, md);
    const it = s.recv()[Symbol.asyncIterator]();
    await s.send({ action: WriteAction.STAT, ref: 'raw-1', total: BigInt(b.length), expected: wrong });
    const st = (await it.next()).value;
    expect(st.action).toBe(WriteAction.STAT);
    expect(st.offset).toBe(0n);
    expect(st.total).toBe(BigInt(b.length));
    await s.send({ action: WriteAction.WRITE, offset: 0n, data: b });
    expect((await it.next()).value.offset).toBe(BigInt(b.length));
    await s.send({ action: WriteAction.COMMIT, offset: BigInt(b.length), total: BigInt(b.length), expected: wrong });
    const err = await it.next().catch((e: unknown) => e);
    expect((err as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((err as LoomError).message).toContain(`unexpected commit digest ${digestOf(b)}, expected ${wrong}`);

    const s2 = await caller.stream(Content.method.write, md);
    const it2 = s2.recv()[Symbol.asyncIterator]();
    await s2.send({ action: WriteAction.WRITE, ref: 'raw-2', offset: 0n, data: b });
    expect((await it2.next()).value.offset).toBe(BigInt(b.length));
    await s2.send({ action: WriteAction.COMMIT, offset: BigInt(b.length), total: BigInt(b.length + 1) });
    const err2 = await it2.next().catch((e: unknown) => e);
    expect((err2 as LoomError).message).toContain(`unexpected commit size ${b.length}, expected ${b.length + 1}`);

    // A write at an offset the ingest is not at is refused with OUT_OF_RANGE.
    const s3 = await caller.stream(Content.method.write, md);
    const it3 = s3.recv()[Symbol.asyncIterator]();
    await s3.send({ action: WriteAction.WRITE, ref: 'raw-3', offset: 5n, data: b });
    const err3 = await it3.next().catch((e: unknown) => e);
    expect((err3 as { grpcCode?: number }).grpcCode).toBe(11);
    expect((err3 as Error).message).toContain('write @5 must occur at current offset 0');

    expect(await store.has(wrong)).toBe(false);
    expect(await store.has(digestOf(b))).toBe(false);
    expect(await ingestLeft(cacheDir)).toEqual([]);
  });

  it('refuses bytes on disk that do not match the digest when reading', async () => {
    const b = Buffer.from('original content of the blob');
    const d = digestOf(b);
    await store.write({ digest: d, size: b.length }, b);
    const file = join(cacheDir, 'blobs', 'sha256', hexOf(d));
    await chmod(file, 0o644);
    await writeFile(file, Buffer.from('tampered content of the blob'));
    const seen: Buffer[] = [];
    const err = await (async () => {
      for await (const c of store.read({ digest: d, size: b.length })) seen.push(c);
    })().catch((e: unknown) => e);
    expect((err as LoomError).code).toBe('FAILED_PRECONDITION');
    expect((err as LoomError).message).toContain(`blob ${d}: content has digest ${digestOf(Buffer.from('tampered content of the blob'))}`);
    // The completing chunk is held back until verified: a reader never sees the bad bytes whole.
    expect(Buffer.concat(seen).length).toBeLessThan(b.length);
    // A descriptor that says fewer bytes than the blob has is refused too.
    await expect(store.readAll({ digest: d, size: 3 })).rejects.toThrow(`blob ${d}: more than the expected 3 bytes`);
  });

  it('serves reads at an offset and size as containerd does', async () => {
    const b = Buffer.from('0123456789');
    const d = digestOf(b);
    await store.write({ digest: d, size: b.length }, b);
    const md = { metadata: { [STORE_ID_HEADER]: [localCacheStoreId(cacheDir)] } };
    const read = async (offset: bigint, size: bigint): Promise<{ offsets: bigint[]; data: string }> => {
      const s = await caller.stream(Content.method.read, md);
      await s.send({ digest: d, offset, size });
      s.end();
      const offsets: bigint[] = [];
      let data = '';
      for await (const m of s.recv()) {
        offsets.push(m.offset);
        data += Buffer.from(m.data).toString();
      }
      return { offsets, data };
    };
    expect(await read(2n, 3n)).toEqual({ offsets: [0n], data: '234' });
    expect(await read(7n, 100n)).toEqual({ offsets: [0n], data: '789' });
    expect(await read(10n, 0n)).toEqual({ offsets: [], data: '' });
    const err = await read(11n, 0n).catch((e: unknown) => e);
    expect((err as { grpcCode?: number }).grpcCode).toBe(11);
    expect((err as Error).message).toContain('read past object length 10 bytes');
  });

  it('picks the store by header and refuses unknown or missing store ids', async () => {
    const other = new SessionContentStore({ caller, storeId: 'oci:other' });
    const b = Buffer.from('in the other store');
    const d = digestOf(b);
    await other.write({ digest: d, size: b.length }, b);
    expect((await readFile(join(otherDir, 'blobs', 'sha256', hexOf(d)))).toString()).toBe('in the other store');
    expect(await store.has(d)).toBe(false);

    const unknown = new SessionContentStore({ caller, storeId: 'local:/nowhere' });
    // Both a missing blob and an unknown store are NOT_FOUND on the wire: info() tells them apart.
    const e1 = await unknown.info(d).catch((e: unknown) => e);
    expect((e1 as LoomError).code).toBe('NOT_FOUND');
    expect((e1 as LoomError).message).toContain('unknown store local:/nowhere');
    const e2 = await unknown.write({ digest: d, size: b.length }, b).catch((e: unknown) => e);
    expect((e2 as LoomError).code).toBe('NOT_FOUND');
    expect((e2 as LoomError).message).toContain('content store local:/nowhere: write');
    expect((e2 as LoomError).message).toContain('unknown store local:/nowhere');

    const e3 = await caller.unary(Content.method.info, { digest: d }).catch((e: unknown) => e);
    expect((e3 as LoomError).code).toBe('INVALID_ARGUMENT');
    expect((e3 as LoomError).message).toContain(`request lacks metadata "${STORE_ID_HEADER}"`);
  });

  it('lets concurrent writers of one blob share the ref lock and both succeed', async () => {
    const b = randomBytes(2 * 1024 * 1024);
    const d = digestOf(b);
    const slow = async function* (): AsyncGenerator<Buffer> {
      for (let i = 0; i < b.length; i += 256 * 1024) {
        await new Promise((r) => setTimeout(r, 5));
        yield b.subarray(i, i + 256 * 1024);
      }
    };
    await Promise.all([store.write({ digest: d, size: b.length }, slow()), store.write({ digest: d, size: b.length }, slow())]);
    expect((await readFile(join(cacheDir, 'blobs', 'sha256', hexOf(d)))).equals(b)).toBe(true);
    expect(await ingestLeft(cacheDir)).toEqual([]);
  });

  it('reports an ingest in Status/ListStatuses and drops it on Abort', async () => {
    const md = { metadata: { [STORE_ID_HEADER]: [localCacheStoreId(cacheDir)] } };
    const s = await caller.stream(Content.method.write, md);
    const it = s.recv()[Symbol.asyncIterator]();
    await s.send({ action: WriteAction.STAT, ref: 'abort-me', total: 100n });
    await it.next();
    await s.send({ action: WriteAction.WRITE, offset: 0n, data: Buffer.alloc(40, 1) });
    await it.next();
    const st = await caller.unary(Content.method.status, { ref: 'abort-me' }, md);
    expect(st.status.ref).toBe('abort-me');
    expect(st.status.offset).toBe(40n);
    expect(st.status.total).toBe(100n);
    const list = await caller.unary(Content.method.listStatuses, {}, md);
    expect(list.statuses.map((x: { ref: string }) => x.ref)).toContain('abort-me');
    expect(await ingestLeft(cacheDir)).toHaveLength(1);
    await caller.unary(Content.method.abort, { ref: 'abort-me' }, md);
    expect(await ingestLeft(cacheDir)).toEqual([]);
    await s.send({ action: WriteAction.WRITE, offset: 40n, data: Buffer.alloc(10, 1) }).catch(() => undefined);
    const err = await it.next().catch((e: unknown) => e);
    expect((err as LoomError).code).toBe('CANCELLED');
    const e2 = await caller.unary(Content.method.status, { ref: 'abort-me' }, md).catch((e: unknown) => e);
    expect((e2 as LoomError).code).toBe('NOT_FOUND');
    expect(await ingestLeft(cacheDir)).toEqual([]);
  });

  it('lists committed blobs', async () => {
    const s = await caller.stream(Content.method.list, { metadata: { [STORE_ID_HEADER]: ['oci:other'] } });
    await s.send({});
    s.end();
    const infos: { digest: string; size: bigint }[] = [];
    for await (const m of s.recv()) infos.push(...m.info);
    expect(infos).toHaveLength(1);
    expect(infos[0]!.digest).toBe(digestOf(Buffer.from('in the other store')));
    expect(infos[0]!.size).toBe(18n);
  });
});
