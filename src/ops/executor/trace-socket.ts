import { randomBytes } from 'node:crypto';
import { chmod, rm } from 'node:fs/promises';
import http2 from 'node:http2';

/**
 * What upstream's daemon (v0.11) gives every RUN step for OpenTelemetry: a gRPC socket at
 * /dev/otel-grpc.sock serving the OTLP trace collector (TraceService/Export) and the environment
 * pointing a step's instrumented programs at it, with the step's trace context. loom records no
 * traces: the collector answers every export with success and drops the spans (upstream's keeps
 * them for its build history), so a traced program inside a step behaves as it does upstream
 * rather than failing to connect.
 */
export const TRACE_SOCKET_IN_CONTAINER = '/dev/otel-grpc.sock';

const EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

/** The variables upstream appends to a step's environment, in its order; a new trace context per call. */
export function traceEnv(): string[] {
  // W3C traceparent: version, trace id, parent (span) id, flags (sampled).
  const parent = `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`;
  return [
    'OTEL_TRACES_EXPORTER=otlp',
    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=unix://${TRACE_SOCKET_IN_CONTAINER}`,
    'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc',
    `OTEL_TRACE_PARENT=${parent}`,
    `TRACEPARENT=${parent}`,
  ];
}

/**
 * Listens at `socketPath` (mode 0666, as upstream's, so a step of any user can export) until the
 * process ends; the server does not keep the daemon alive. Resolves once it listens.
 */
export async function startTraceCollector(socketPath: string): Promise<void> {
  await rm(socketPath, { force: true });
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    if (headers[':path'] !== EXPORT_PATH) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': `unknown method ${String(headers[':path'])}` }, { endStream: true });
      return;
    }
    stream.resume();
    stream.on('end', () => {
      if (stream.destroyed) return;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      // An empty ExportTraceServiceResponse: one uncompressed frame of length 0.
      stream.end(Buffer.alloc(5));
    });
  });
  server.on('sessionError', () => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.unref();
  await chmod(socketPath, 0o666);
}
