import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../../src/client/control-client.js';
import { openSession } from '../../../../src/client/session.js';
import { Control } from '../../../../src/gen/buildkit/control_pb.js';
import { BytesMessageSchema, Upload } from '../../../../src/gen/session/upload_pb.js';
import { healthService } from '../../../../src/session/client/health.js';
import { bytesDuplex, type BytesMessageStream } from '../../../../src/session/tunnel/bytes-duplex.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../../src/session/tunnel/caller.js';
import { methodPath, parseSessionMetadata } from '../../../../src/session/tunnel/metadata.js';
import { typedHandler } from '../../../../src/session/tunnel/server.js';
import { grpcServiceDef } from '../../../../src/util/grpc-def.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The tunnel over a real Control.Session call: grpc-js on both ends of a loopback unix socket. */
describe('session over grpc-js Control.Session', () => {
  let dir: string;
  let server: grpc.Server;
  let client: ControlClient;
  let arrived!: (c: TunnelSessionCaller) => void;
  let next = new Promise<TunnelSessionCaller>((r) => (arrived = r));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loom-grpcsess-'));
    const sock = join(dir, 's.sock');
    server = new grpc.Server();
    server.addService(grpcServiceDef(Control), {
      session: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const id = parseSessionMetadata(call.metadata);
        arrived(createSessionCaller({ ...id, duplex: bytesDuplex(call as unknown as BytesMessageStream), healthIntervalMs: 200 }));
      },
    });
    await new Promise<void>((res, rej) => server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
    client = new ControlClient({ address: `unix://${sock}` });
  });

  afterAll(async () => {
    client?.close();
    server?.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  it('carries the identity, health checks and 2x8 MiB of echo through the session', async () => {
    const echo = typedHandler(BytesMessageSchema, BytesMessageSchema, async (stream) => {
      for await (const m of stream.recv()) await stream.send(create(BytesMessageSchema, { data: m.data }));
    });
    const sess = openSession({ control: client, services: { ...healthService(), [methodPath(Upload.method.pull)]: echo }, name: 'proj', sharedKey: 'k1' });
    const caller = await next;
    next = new Promise((r) => (arrived = r));
    expect(caller.id).toBe(sess.id);
    expect(caller.name).toBe('proj');
    expect(caller.sharedKey).toBe('k1');
    expect(caller.supports(Upload.method.pull)).toBe(true);

    const s = await caller.stream(Upload.method.pull);
    const sent = [randomBytes(8 * 1024 * 1024), randomBytes(8 * 1024 * 1024)];
    const got: string[] = [];
    const reader = (async () => {
      for await (const m of s.recv()) got.push(sha(m.data));
    })();
    for (const b of sent) await s.send({ data: b });
    s.end();
    await reader;
    expect(got).toEqual(sent.map(sha));

    // The health loop runs every 200 ms here; the session must stay up across several rounds.
    await new Promise((r) => setTimeout(r, 700));
    let closed = false;
    void caller.closed.then(() => (closed = true));
    expect(closed).toBe(false);

    sess.close();
    await caller.closed;
    await sess.closed;
  }, 30_000);
});
