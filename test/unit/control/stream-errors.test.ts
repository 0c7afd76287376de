import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ControlServer } from '../../../src/control/server.js';
import type { ControlBackend } from '../../../src/control/controller.js';
import { gatewayHandlers } from '../../../src/control/gateway.js';
import { LoomError } from '../../../src/util/errors.js';

// A streaming call that fails must end with its status, not leave the client waiting: buildx (v0.13
// and later) asks Control.ListenBuildHistory whether the daemon keeps build records and waits for
// the stream's first message or its end before it reports a build done.
const dir = mkdtempSync(join(tmpdir(), 'loom-stream-errors-'));
const sock = join(dir, 'control.sock');
let server: ControlServer;
let client: grpc.Client;

const backend = {
  prune: async () => {
    throw new LoomError('UNAVAILABLE', 'prune refused by the test backend');
  },
} as unknown as ControlBackend;

beforeAll(async () => {
  server = new ControlServer({ backend, gateway: gatewayHandlers({} as never) });
  await server.listen(`unix://${sock}`);
  client = new grpc.Client(`unix://${sock}`, grpc.credentials.createInsecure());
});
afterAll(async () => {
  client.close();
  await server.close(100);
  rmSync(dir, { recursive: true, force: true });
});

const raw = (b: Buffer) => b;

/** The status a call ends with, or 'no status' if none comes within two seconds. */
function statusOf(call: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>): Promise<grpc.StatusObject | 'no status'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      call.cancel();
      resolve('no status');
    }, 2000);
    call.on('data', () => {});
    call.on('error', () => {});
    call.on('status', (s) => {
      clearTimeout(timer);
      resolve(s);
    });
  });
}

describe('server streams that fail end with a status', () => {
  test('ListenBuildHistory answers Unimplemented where the daemon keeps no records (buildx then builds without them)', async () => {
    const call = client.makeServerStreamRequest('/moby.buildkit.v1.Control/ListenBuildHistory', raw, raw, Buffer.alloc(0));
    const st = await statusOf(call);
    expect(st).toMatchObject({ code: grpc.status.UNIMPLEMENTED });
  });

  test('a Prune the backend refuses ends with the backend\'s error', async () => {
    const call = client.makeServerStreamRequest('/moby.buildkit.v1.Control/Prune', raw, raw, Buffer.alloc(0));
    const st = await statusOf(call);
    expect(st).toMatchObject({ code: grpc.status.UNAVAILABLE, details: 'prune refused by the test backend' });
  });

  test('a Session without its id header is refused', async () => {
    const call = client.makeBidiStreamRequest('/moby.buildkit.v1.Control/Session', raw, raw);
    const st = await statusOf(call);
    expect(st).not.toBe('no status');
    expect((st as grpc.StatusObject).code).not.toBe(grpc.status.OK);
  });

  test('the gateway\'s ExecProcess answers Unimplemented', async () => {
    const call = client.makeBidiStreamRequest('/moby.buildkit.v1.frontend.LLBBridge/ExecProcess', raw, raw);
    const st = await statusOf(call);
    expect(st).toMatchObject({ code: grpc.status.UNIMPLEMENTED });
  });
});
