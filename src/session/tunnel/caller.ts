import type { DescMessage, DescMethod } from '@bufbuild/protobuf';
import { create } from '@bufbuild/protobuf';
import http2, { type ClientHttp2Session } from 'node:http2';
import type { Duplex } from 'node:stream';
import { HealthCheckRequestSchema, Health } from '../../gen/grpc/health_pb.js';
import { log as rootLog } from '../../util/log.js';
import { CancelledError, LoomError, UnavailableError } from '../../util/errors.js';
import type { CallMetadata, MessageStream, SessionCaller } from '../types.js';
import { ClientCall } from './client-call.js';
import { decodeMessage, encodeMessage, framesEncoder } from './codecs.js';
import { metadataToHeaders, methodPath } from './metadata.js';
import { H2_SESSION_OPTIONS, widenConnectionWindow } from './h2-options.js';

const log = rootLog.child({ sub: 'session-tunnel' });

export interface SessionCallerOptions {
  id: string;
  name: string;
  sharedKey: string;
  /** Full method paths the client announced in x-docker-expose-session-grpc-method. */
  methods: Iterable<string>;
  /** The Control.Session byte stream (see bytesDuplex); the caller owns it from here on. */
  duplex: Duplex;
  /**
   * Health-check period in ms, as upstream's daemon does (grpc.health.v1.Health/Check every 5s,
   * closing the session after two failures in a row). 0 disables it.
   */
  healthIntervalMs?: number;
  /** Per-check timeout floor in ms (upstream: 30s, or 1.5x the last check's duration if longer). */
  healthTimeoutMs?: number;
}

/**
 * Extra per-call options beyond SessionCaller's: `input`/`output` override the message types,
 * for calls whose bytes are not what the method declares (upstream sends fsutil Packets over
 * FileSend/DiffCopy, declared as BytesMessage, when exporting a directory).
 */
export interface StreamCallOptions {
  metadata?: CallMetadata;
  signal?: AbortSignal;
  input?: DescMessage;
  output?: DescMessage;
}

export interface TunnelSessionCaller extends SessionCaller {
  stream<M extends DescMethod>(method: M, opts?: StreamCallOptions): Promise<MessageStream<any, any>>;
  /** Ends the session: every call in flight fails, `closed` resolves. */
  close(): void;
}

/**
 * The daemon's end of a session: an HTTP/2 client over the Control.Session bytes, calling the
 * gRPC services the client serves. The daemon speaks the HTTP/2 client preface (upstream's daemon
 * dials the hijacked stream with a grpc-go client; the client runs an HTTP/2 server on it).
 */
export function createSessionCaller(opts: SessionCallerOptions): TunnelSessionCaller {
  const methods = new Set<string>(opts.methods);
  const lower = new Set<string>([...methods].map((m) => m.toLowerCase()));
  const duplex = opts.duplex;

  const h2: ClientHttp2Session = http2.connect('http://localhost', {
    ...H2_SESSION_OPTIONS,
    createConnection: () => duplex,
  });
  widenConnectionWindow(h2);

  let closedResolve!: () => void;
  const closed = new Promise<void>((r) => (closedResolve = r));
  let isClosed = false;
  const onGone = (why: string): void => {
    if (isClosed) return;
    isClosed = true;
    log.debug({ session: opts.id, why }, 'session closed');
    clearInterval(healthTimer);
    if (!h2.destroyed) h2.destroy();
    if (!duplex.destroyed) duplex.destroy();
    closedResolve();
  };
  h2.on('error', (err) => log.debug({ session: opts.id, err: err.message }, 'session HTTP/2 error'));
  h2.on('goaway', () => onGone('goaway'));
  h2.on('close', () => onGone('http2 close'));
  duplex.on('close', () => onGone('stream close'));
  duplex.on('error', () => onGone('stream error'));

  const startCall = <Send, Recv>(method: DescMethod, o: StreamCallOptions = {}): ClientCall<Send, Recv> => {
    if (isClosed || h2.destroyed || h2.closed) {
      throw new UnavailableError(`session ${opts.id} is closed; cannot call ${methodPath(method)}`);
    }
    if (o.signal?.aborted) throw new CancelledError(`${methodPath(method)}: context canceled`, { cause: o.signal.reason });
    const input = o.input ?? method.input;
    const output = o.output ?? method.output;
    const path = methodPath(method);
    const req = h2.request(
      {
        ':method': 'POST',
        ':path': path,
        ':scheme': 'http',
        'content-type': 'application/grpc',
        te: 'trailers',
        ...metadataToHeaders(o.metadata),
      },
      { endStream: false },
    );
    return new ClientCall<Send, Recv>({
      h2: req,
      method: path,
      encode: (m) => encodeMessage(input, m),
      encodeFrames: framesEncoder(input),
      decode: (b) => decodeMessage(output, b) as Recv,
      signal: o.signal,
    });
  };

  const caller: TunnelSessionCaller = {
    id: opts.id,
    name: opts.name,
    sharedKey: opts.sharedKey,
    methods,
    closed,
    supports(method: DescMethod): boolean {
      return lower.has(methodPath(method).toLowerCase());
    },
    async unary(method, req, o) {
      const call = startCall<unknown, unknown>(method, o);
      try {
        await call.send(req);
        call.end();
        let res: unknown;
        let n = 0;
        for await (const m of call.recv()) {
          res = m;
          n++;
        }
        if (n !== 1) {
          throw new LoomError('INTERNAL', `${methodPath(method)}: expected one response message, got ${n}`);
        }
        return res;
      } catch (err) {
        call.close();
        throw err;
      }
    },
    async stream(method, o) {
      // Not waiting for response headers: grpc-go sends them only with the first message or the
      // status, and on some calls (FileSend, ForwardAgent) the daemon must speak first.
      const call = startCall<unknown, unknown>(method, o);
      return call;
    },
    close() {
      onGone('closed by daemon');
    },
  };

  // Health loop, as upstream's monitorHealth: one failure is tolerated, two in a row end the session.
  const interval = opts.healthIntervalMs ?? 5000;
  const floor = opts.healthTimeoutMs ?? 30_000;
  let failedBefore = false;
  let okInRow = 0;
  let lastMs = 0;
  let checking = false;
  const healthTimer = setInterval(() => {
    if (checking || interval <= 0) return;
    checking = true;
    const started = Date.now();
    const signal = AbortSignal.timeout(Math.max(floor, lastMs * 1.5));
    const check = healthMethod();
    caller
      .unary(check, create(HealthCheckRequestSchema, {}), { signal })
      .then(
        () => {
          okInRow++;
          if (okInRow >= 5) failedBefore = false;
        },
        (err: unknown) => {
          if (isClosed) return;
          okInRow = 0;
          if (failedBefore) {
            log.error({ session: opts.id }, 'healthcheck failed fatally');
            onGone('health check failed');
            return;
          }
          failedBefore = true;
          log.warn({ session: opts.id, err: (err as Error).message }, 'healthcheck failed');
        },
      )
      .finally(() => {
        lastMs = Date.now() - started;
        checking = false;
      });
  }, interval > 0 ? interval : 1 << 30);
  healthTimer.unref();
  if (interval <= 0) clearInterval(healthTimer);

  return caller;
}

function healthMethod(): DescMethod {
  return Health.method.check;
}
