import { create } from '@bufbuild/protobuf';
import { createHash, randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { Health, HealthCheckResponse_ServingStatus } from '../../../../src/gen/grpc/health_pb.js';
import { Secrets } from '../../../../src/gen/session/secrets_pb.js';
import { BytesMessageSchema, Upload } from '../../../../src/gen/session/upload_pb.js';
import { FileSync } from '../../../../src/gen/session/filesync_pb.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../../src/session/tunnel/caller.js';
import { methodPath } from '../../../../src/session/tunnel/metadata.js';
import { serveSession, typedHandler, unaryHandler, type ServedSession, type SessionServices } from '../../../../src/session/tunnel/server.js';
import { NotFoundError } from '../../../../src/util/errors.js';
import { duplexPair } from './duplex-pair.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup) c();
  cleanup = [];
});

function setup(services: SessionServices): { caller: TunnelSessionCaller; served: ServedSession } {
  const [a, b] = duplexPair();
  const served = serveSession({ duplex: b, services });
  const caller = createSessionCaller({
    id: 'sess1',
    name: 'test',
    sharedKey: 'key',
    methods: Object.keys(services),
    duplex: a,
    healthIntervalMs: 0,
  });
  cleanup.push(() => caller.close(), () => served.close());
  return { caller, served };
}

const echo = typedHandler(Upload.method.pull.input, Upload.method.pull.output, async (stream) => {
  for await (const m of stream.recv()) await stream.send(create(BytesMessageSchema, { data: m.data }));
});

const secrets = unaryHandler(Secrets.method.getSecret, async (req) => {
  if (req.ID === 'known') return { data: Buffer.from('s3cret') };
  throw new NotFoundError(`secret ${req.ID} not found`);
});

const health = unaryHandler(Health.method.check, async () => ({ status: HealthCheckResponse_ServingStatus.SERVING }));

describe('session tunnel', () => {
  it('makes unary calls and maps error statuses to loom codes', async () => {
    const { caller } = setup({ [methodPath(Secrets.method.getSecret)]: secrets, [methodPath(Health.method.check)]: health });
    expect(caller.supports(Secrets.method.getSecret)).toBe(true);
    expect(caller.supports(Upload.method.pull)).toBe(false);
    const res = await caller.unary(Secrets.method.getSecret, { ID: 'known' });
    expect(Buffer.from(res.data).toString()).toBe('s3cret');
    const h = await caller.unary(Health.method.check, {});
    expect(h.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    await expect(caller.unary(Secrets.method.getSecret, { ID: 'nope' })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      grpcCode: 5,
      message: 'secret nope not found',
    });
  });

  it('answers UNIMPLEMENTED for a method it does not serve', async () => {
    const { caller } = setup({});
    await expect(caller.unary(Secrets.method.getSecret, { ID: 'x' })).rejects.toMatchObject({
      code: 'UNIMPLEMENTED',
      grpcCode: 12,
    });
    const s = await caller.stream(FileSync.method.diffCopy);
    await expect(async () => {
      for await (const _ of s.recv()) void _;
    }).rejects.toMatchObject({ code: 'UNIMPLEMENTED' });
  });

  it('runs many streams at once without mixing their messages', async () => {
    const { caller } = setup({ [methodPath(Upload.method.pull)]: echo });
    const one = async (i: number): Promise<string[]> => {
      const s = await caller.stream(Upload.method.pull);
      const got: string[] = [];
      const reader = (async () => {
        for await (const m of s.recv()) got.push(Buffer.from(m.data).toString());
      })();
      for (let j = 0; j < 40; j++) await s.send({ data: Buffer.from(`${i}:${j}`) });
      s.end();
      await reader;
      return got;
    };
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => one(i)));
    results.forEach((got, i) => expect(got).toEqual(Array.from({ length: 40 }, (_, j) => `${i}:${j}`)));
  });

  it('keeps order when batches (sendMany) and single sends mix, on both ends of a call', async () => {
    // The handler answers each batch of three as one sendMany, the caller sends batches and singles.
    const batcher = typedHandler(Upload.method.pull.input, Upload.method.pull.output, async (stream) => {
      let pending: { data: Uint8Array }[] = [];
      for await (const m of stream.recv()) {
        pending.push({ data: m.data });
        if (pending.length === 3) {
          await stream.sendMany!(pending.map((p) => create(BytesMessageSchema, p)));
          pending = [];
        }
      }
      for (const p of pending) await stream.send(create(BytesMessageSchema, p));
    });
    const { caller } = setup({ [methodPath(Upload.method.pull)]: batcher });
    const s = await caller.stream(Upload.method.pull);
    const got: string[] = [];
    const reader = (async () => {
      for await (const m of s.recv()) got.push(Buffer.from(m.data).toString());
    })();
    const want = Array.from({ length: 500 }, (_, i) => `m${i}`);
    for (let i = 0; i < want.length; ) {
      if (i % 7 === 0) await s.send({ data: Buffer.from(want[i++]!) });
      const batch = want.slice(i, i + 1 + (i % 50));
      i += batch.length;
      await s.sendMany!(batch.map((w) => create(BytesMessageSchema, { data: Buffer.from(w) })));
    }
    s.end();
    await reader;
    expect(got).toEqual(want);
  });

  it('carries messages of several MiB both ways intact', async () => {
    const { caller } = setup({ [methodPath(Upload.method.pull)]: echo });
    const s = await caller.stream(Upload.method.pull);
    const blobs = [randomBytes(6 * 1024 * 1024), randomBytes(3 * 1024 * 1024 + 7), randomBytes(1)];
    const got: string[] = [];
    const reader = (async () => {
      for await (const m of s.recv()) got.push(sha(m.data));
    })();
    for (const b of blobs) await s.send({ data: b });
    s.end();
    await reader;
    expect(got).toEqual(blobs.map(sha));
  }, 30_000);

  it('passes repeated metadata values to the handler', async () => {
    let seen: Record<string, string[]> = {};
    const { caller } = setup({
      [methodPath(Upload.method.pull)]: async (stream) => {
        seen = stream.metadata;
      },
    });
    const s = await caller.stream(Upload.method.pull, {
      metadata: { 'include-patterns': ['a/*', 'b'], 'dir-name': ['context'] },
    });
    s.end();
    for await (const _ of s.recv()) void _;
    expect(seen['include-patterns']).toEqual(['a/*', 'b']);
    expect(seen['dir-name']).toEqual(['context']);
  });

  it('cancels a call when the caller aborts: the handler sees its signal fire', async () => {
    let handlerSaw: string | undefined;
    let handlerStarted!: () => void;
    const started = new Promise<void>((r) => (handlerStarted = r));
    const { caller } = setup({
      [methodPath(Upload.method.pull)]: async (_stream, ctx) => {
        handlerStarted();
        await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve()));
        handlerSaw = (ctx.signal.reason as Error).message;
      },
    });
    const ac = new AbortController();
    const s = await caller.stream(Upload.method.pull, { signal: ac.signal });
    await s.send({ data: Buffer.from('x') });
    await started;
    ac.abort();
    await expect(async () => {
      for await (const _ of s.recv()) void _;
    }).rejects.toMatchObject({ code: 'CANCELLED' });
    await expect.poll(() => handlerSaw).toMatch(/canceled/);
  });

  it('reports a handler error after some messages as the trailing status', async () => {
    const { caller } = setup({
      [methodPath(Upload.method.pull)]: typedHandler(BytesMessageSchema, BytesMessageSchema, async (stream) => {
        await stream.send(create(BytesMessageSchema, { data: Buffer.from('first') }));
        throw new NotFoundError('dir "ctx" not found');
      }),
    });
    const s = await caller.stream(Upload.method.pull);
    s.end();
    const got: string[] = [];
    await expect(async () => {
      for await (const m of s.recv()) got.push(Buffer.from(m.data).toString());
    }).rejects.toMatchObject({ code: 'NOT_FOUND', message: 'dir "ctx" not found' });
    expect(got).toEqual(['first']);
  });

  it('resolves closed and fails calls in flight when the tunnel goes away', async () => {
    let started!: () => void;
    const isStarted = new Promise<void>((r) => (started = r));
    const { caller, served } = setup({
      [methodPath(Upload.method.pull)]: async (_s, ctx) => {
        started();
        await new Promise((r) => ctx.signal.addEventListener('abort', r));
      },
    });
    const s = await caller.stream(Upload.method.pull);
    await s.send({ data: Buffer.from('x') });
    await isStarted;
    served.close();
    await expect(async () => {
      for await (const _ of s.recv()) void _;
    }).rejects.toThrow();
    await caller.closed;
    await served.closed;
    await expect(caller.unary(Secrets.method.getSecret, { ID: 'x' })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});
