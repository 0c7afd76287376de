/**
 * loom's client connection (src/client/grpc-conn.ts) against a daemon that misbehaves at the
 * HTTP/2 level, on a real unix socket: what a user reads when the daemon goes away mid-call, when
 * the caller cancels, and when the daemon answers with a status. The daemon here is a bare HTTP/2
 * server so that each case is exact; the real daemon's calls are covered by every build test.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import http2, { type ServerHttp2Stream } from 'node:http2';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../src/client/control-client.js';
import { proxyFor } from '../../../src/client/grpc-conn.js';
import { ListWorkersResponseSchema } from '../../../src/gen/buildkit/control_pb.js';
import { encodeFrame } from '../../../src/util/grpc-frame.js';

const hasIpv6Loopback = Object.values(networkInterfaces()).some((addrs) => addrs?.some((a) => a.address === '::1'));
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

async function fakeDaemon(onStream: (s: ServerHttp2Stream, session: http2.Http2Session, sockets: Set<Socket>) => void): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'loom-conn-'));
  const sock = join(dir, 'd.sock');
  const server = http2.createServer();
  const sockets = new Set<Socket>();
  server.on('connection', (c: Socket) => sockets.add(c));
  server.on('stream', (s) => onStream(s, s.session!, sockets));
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  cleanups.push(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return `unix://${sock}`;
}

/** Answers a ListWorkers call with one worker and status OK (headers, message, trailers). */
function answerWorkers(s: ServerHttp2Stream, id: string): void {
  s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  s.on('wantTrailers', () => s.sendTrailers({ 'grpc-status': '0' }));
  s.end(encodeFrame(toBinary(ListWorkersResponseSchema, create(ListWorkersResponseSchema, { record: [{ ID: id }] }))));
}

describe('loom client connection', () => {
  it('reports a daemon that goes away mid-call as grpc-go does (Unavailable, EOF), not as a cancel', async () => {
    const address = await fakeDaemon((s, _session, sockets) => {
      s.respond({ ':status': 200, 'content-type': 'application/grpc' });
      // The daemon's process dies: its end of the connection closes with no GOAWAY.
      setTimeout(() => {
        for (const c of sockets) c.destroy();
      }, 50);
    });
    const client = new ControlClient({ address });
    try {
      await expect(client.listWorkers()).rejects.toThrow('failed to list workers: Unavailable: error reading from server: EOF');
    } finally {
      client.close();
    }
  });

  it('reports a call the caller cancels as context canceled', async () => {
    const address = await fakeDaemon((s) => {
      s.respond({ ':status': 200, 'content-type': 'application/grpc' });
    });
    const client = new ControlClient({ address });
    try {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 50);
      await expect(client.listWorkers([], ac.signal)).rejects.toThrow('failed to list workers: Canceled: context canceled');
    } finally {
      client.close();
    }
  });

  // Skipped where the loopback interface has no IPv6 address.
  it.skipIf(!hasIpv6Loopback)('connects to an IPv6 address (tcp://[::1]:port)', async () => {
    const server = http2.createServer();
    server.on('stream', (s) => answerWorkers(s, 'v6'));
    await new Promise<void>((resolve) => server.listen(0, '::1', resolve));
    cleanups.push(() => server.close());
    const port = (server.address() as AddressInfo).port;
    const client = new ControlClient({ address: `tcp://[::1]:${port}` });
    try {
      expect((await client.listWorkers()).record.map((r) => r.ID)).toEqual(['v6']);
    } finally {
      client.close();
    }
  });

  it('reaches a tcp:// daemon through HTTPS_PROXY with CONNECT, as grpc-go does; a refused CONNECT is a dial error', async () => {
    const daemon = http2.createServer();
    daemon.on('stream', (s) => answerWorkers(s, 'proxied'));
    await new Promise<void>((resolve) => daemon.listen(0, '127.0.0.1', resolve));
    const daemonPort = (daemon.address() as AddressInfo).port;
    const asked: string[] = [];
    const proxy = createHttpServer();
    proxy.on('connect', (req: IncomingMessage, client: Socket) => {
      asked.push(`${req.url} ${req.headers['proxy-authorization'] ?? ''}`);
      if (req.url !== `daemon.test:${daemonPort}`) {
        client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
        return;
      }
      const up = connect(daemonPort, '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection established\r\n\r\n');
        up.pipe(client);
        client.pipe(up);
      });
      up.on('error', () => client.destroy());
      client.on('error', () => up.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const proxyPort = (proxy.address() as AddressInfo).port;
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, NO_PROXY: process.env.NO_PROXY };
    process.env.HTTPS_PROXY = `http://user:p%40ss@127.0.0.1:${proxyPort}`;
    delete process.env.NO_PROXY;
    cleanups.push(() => {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
      daemon.close();
      proxy.close();
    });
    const client = new ControlClient({ address: `tcp://daemon.test:${daemonPort}` });
    try {
      expect((await client.listWorkers()).record.map((r) => r.ID)).toEqual(['proxied']);
    } finally {
      client.close();
    }
    expect(asked).toEqual([`daemon.test:${daemonPort} Basic ${Buffer.from('user:p@ss').toString('base64')}`]);
    const refused = new ControlClient({ address: `tcp://other.test:${daemonPort}` });
    try {
      await expect(refused.listWorkers()).rejects.toThrow(`failed to list workers: Unavailable: connection error: desc = "transport: error while dialing: dial tcp other.test:${daemonPort}: proxy 127.0.0.1:${proxyPort}: CONNECT other.test:${daemonPort}: HTTP/1.1 403 Forbidden"`);
    } finally {
      refused.close();
    }
  });

  it('takes the proxy only for hosts that are not loopback and not in NO_PROXY', () => {
    const env = { HTTPS_PROXY: 'proxy.example:3128', NO_PROXY: 'internal.example, .corp.example,10.0.0.5:1234' };
    expect(proxyFor('build.example', 1234, env)?.href).toBe('http://proxy.example:3128/');
    for (const h of ['localhost', '127.0.0.1', '::1', 'internal.example', 'a.internal.example', 'b.corp.example']) expect(proxyFor(h, 1234, env), h).toBeUndefined();
    expect(proxyFor('10.0.0.5', 1234, env)).toBeUndefined();
    expect(proxyFor('10.0.0.5', 9999, env)).toBeDefined();
    expect(proxyFor('build.example', 1234, { ...env, NO_PROXY: '*' })).toBeUndefined();
    expect(proxyFor('build.example', 1234, {})).toBeUndefined();
  });

  it('reads a response and an error status, with the status message as upstream prints it', async () => {
    let n = 0;
    const address = await fakeDaemon((s) => {
      if (n++ === 0) {
        answerWorkers(s, 'w1');
        return;
      }
      s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'no such thing %E2%9C%93' }, { endStream: true });
    });
    const client = new ControlClient({ address });
    try {
      expect((await client.listWorkers()).record.map((r) => r.ID)).toEqual(['w1']);
      await expect(client.listWorkers()).rejects.toThrow('failed to list workers: NotFound: no such thing \u2713');
    } finally {
      client.close();
    }
  });
});
