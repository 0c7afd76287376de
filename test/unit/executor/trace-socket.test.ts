import http2 from 'node:http2';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startTraceCollector, traceEnv } from '../../../src/ops/executor/trace-socket.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** One gRPC call over the socket: the response body's bytes (hex) and grpc-status. */
function call(socket: string, path: string, body: Buffer): Promise<{ data: string; status: string | undefined }> {
  return new Promise((resolve, reject) => {
    const c = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
    c.on('error', reject);
    const s = c.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
    let data = '';
    let status: string | undefined;
    s.on('response', (h) => (status = h['grpc-status'] as string | undefined));
    s.on('data', (d: Buffer) => (data += d.toString('hex')));
    s.on('trailers', (t) => (status = t['grpc-status'] as string));
    s.on('close', () => {
      c.close();
      resolve({ data, status });
    });
    s.on('error', reject);
    s.end(body);
  });
}

describe('trace collector socket (what upstream binds at /dev/otel-grpc.sock)', () => {
  it('accepts an OTLP trace export and answers success with an empty response; other methods are unimplemented', async () => {
    const socket = join(dir, 'otel-grpc.sock');
    await startTraceCollector(socket);
    expect(statSync(socket).mode & 0o777).toBe(0o666);
    // A frame holding a small ExportTraceServiceRequest (its content is not read).
    const ok = await call(socket, '/opentelemetry.proto.collector.trace.v1.TraceService/Export', Buffer.from([0, 0, 0, 0, 3, 10, 1, 65]));
    expect(ok).toEqual({ data: '0000000000', status: '0' });
    const other = await call(socket, '/opentelemetry.proto.collector.metrics.v1.MetricsService/Export', Buffer.alloc(5));
    expect(other.status).toBe('12');
  });

  it("gives a step upstream's variables, in upstream's order, with one trace context in both parent variables", () => {
    const env = traceEnv();
    expect(env.slice(0, 3)).toEqual([
      'OTEL_TRACES_EXPORTER=otlp',
      'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=unix:///dev/otel-grpc.sock',
      'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc',
    ]);
    const parent = /^OTEL_TRACE_PARENT=(00-[0-9a-f]{32}-[0-9a-f]{16}-01)$/.exec(env[3]!)?.[1];
    expect(parent).toBeDefined();
    expect(env[4]).toBe(`TRACEPARENT=${parent}`);
    expect(traceEnv()[3]).not.toBe(env[3]);
  });
});
