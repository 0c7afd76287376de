import type { DescMessage, DescMethod, MessageShape } from '@bufbuild/protobuf';
import { create } from '@bufbuild/protobuf';
import http2, { type Http2Session, type ServerHttp2Stream } from 'node:http2';
import type { Duplex } from 'node:stream';
import { errorMessage, LoomError, UnimplementedError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import type { CallMetadata, MessageStream } from '../types.js';
import { H2_SESSION_OPTIONS, widenConnectionWindow } from './h2-options.js';
import { methodPath, parseGrpcTimeout, rawHeadersToMetadata } from './metadata.js';
import { decodeMessage, encodeMessage, framesEncoder } from './codecs.js';
import { ServerCall } from './server-call.js';

const log = rootLog.child({ sub: 'session-server' });

/** What a handler learns about its call besides the stream: the method and when to give up. */
export interface CallContext {
  method: string;
  metadata: CallMetadata;
  /** Fires when the caller cancels, the call's deadline passes, or the session ends. */
  signal: AbortSignal;
}

/**
 * Serves one method. The stream carries the raw message payloads; `typedHandler`/`unaryHandler`
 * wrap a typed function. Returning finishes the call with OK; throwing finishes it with the error's
 * status (a LoomError's code, e.g. NOT_FOUND). A unary call is a stream of one message each way.
 */
export type SessionHandler = (stream: MessageStream<Uint8Array, Uint8Array>, ctx: CallContext) => Promise<void>;

/** Full method paths (`/moby.filesync.v1.FileSync/DiffCopy`) to handlers. */
export type SessionServices = Record<string, SessionHandler>;

export interface ServedSession {
  /** Resolves when the tunnel is gone. */
  readonly closed: Promise<void>;
  /** Ends the session: calls in flight are cancelled and the byte stream is ended. */
  close(): void;
}

/**
 * The client's end of a session: an HTTP/2 server (the daemon sends the client preface) on the
 * Control.Session bytes, dispatching each call by its :path. Unknown methods get UNIMPLEMENTED,
 * as grpc-go answers them.
 */
export function serveSession(opts: { duplex: Duplex; services: SessionServices }): ServedSession {
  const { duplex, services } = opts;
  const server = http2.createServer({ ...H2_SESSION_OPTIONS });
  let session: Http2Session | undefined;
  let closedResolve!: () => void;
  const closed = new Promise<void>((r) => (closedResolve = r));
  let isClosed = false;
  const calls = new Set<ServerCall<Uint8Array, Uint8Array>>();

  const gone = (): void => {
    if (isClosed) return;
    isClosed = true;
    for (const c of calls) c.close();
    if (session && !session.destroyed) session.destroy();
    if (!duplex.destroyed) duplex.destroy();
    server.close();
    closedResolve();
  };

  server.on('session', (s: Http2Session) => {
    session = s;
    widenConnectionWindow(s);
    s.on('error', (err) => log.debug({ err: err.message }, 'session HTTP/2 error'));
    s.on('close', gone);
    s.on('goaway', () => {
      // The daemon is done with this session: finish what is running, then let the close above end it.
    });
  });
  server.on('stream', (h2: ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
    const path = String(headers[':path'] ?? '');
    const handler = Object.hasOwn(services, path) ? services[path] : undefined;
    const ct = String(headers['content-type'] ?? '');
    if (headers[':method'] !== 'POST' || !ct.startsWith('application/grpc')) {
      h2.respond({ ':status': 415 }, { endStream: true });
      return;
    }
    const call = new ServerCall<Uint8Array, Uint8Array>({
      h2,
      method: path,
      metadata: rawHeadersToMetadata(rawHeaders ?? []),
      encode: (m) => m,
      decode: (b) => b,
      timeoutMs: parseGrpcTimeout(headers['grpc-timeout'] as string | undefined),
    });
    if (!handler) {
      call.close(new UnimplementedError(`unknown method ${path}`));
      return;
    }
    calls.add(call);
    const ctx: CallContext = { method: path, metadata: call.metadata, signal: call.signal };
    handler(call, ctx).then(
      () => call.end(),
      (err: unknown) => {
        if (!call.signal.aborted) log.debug({ method: path, err: errorMessage(err) }, 'session call failed');
        call.close(err instanceof Error ? err : new LoomError('INTERNAL', errorMessage(err)));
      },
    ).finally(() => calls.delete(call));
  });
  server.on('error', (err) => log.debug({ err: err.message }, 'session server error'));

  duplex.on('close', gone);
  duplex.on('error', gone);
  server.emit('connection', duplex);

  return {
    closed,
    close: gone,
  };
}

/** A handler over typed messages: payloads are decoded with `input` and responses encoded with `output`. */
export function typedHandler<I extends DescMessage, O extends DescMessage>(
  input: I,
  output: O,
  fn: (stream: MessageStream<MessageShape<O>, MessageShape<I>>, ctx: CallContext) => Promise<void>,
): SessionHandler {
  return (raw, ctx) => fn(typedStream(raw, input, output), ctx);
}

/** The typed view of a raw stream (for handlers that pick the message type from the call's metadata). */
export function typedStream<I extends DescMessage, O extends DescMessage>(
  raw: MessageStream<Uint8Array, Uint8Array>,
  input: I,
  output: O,
): MessageStream<MessageShape<O>, MessageShape<I>> {
  const frames = raw.sendFrames ? framesEncoder(output) : undefined;
  return {
    metadata: raw.metadata,
    send: (m) => raw.send(encodeMessage(output, m)),
    sendMany: frames
      ? (ms) => raw.sendFrames!(frames(ms))
      : raw.sendMany
        ? (ms) => raw.sendMany!(ms.map((m) => encodeMessage(output, m)))
        : undefined,
    end: () => raw.end(),
    close: (err) => raw.close(err),
    recv: () => mapAsync(raw.recv(), (b) => decodeMessage(input, b)),
  };
}

/**
 * A unary method: one request in, one response out. `method` may be a function giving it, called
 * on the first call: a service map made with literal paths then reads no descriptor until the
 * method is used (in the client's bundle, reading one builds them; see scripts/bundle-cli.mjs).
 */
export function unaryHandler<M extends DescMethod>(
  method: M | (() => M),
  fn: (req: MessageShape<M['input']>, ctx: CallContext) => Promise<MessageShape<M['output']> | Omit<MessageShape<M['output']>, '$typeName'>>,
): SessionHandler {
  let handler: SessionHandler | undefined;
  return (raw, ctx) => {
    if (!handler) {
      const m = typeof method === 'function' ? method() : method;
      handler = typedHandler(m.input, m.output, async (stream, ctx) => {
        let req: MessageShape<M['input']> | undefined;
        for await (const msg of stream.recv()) {
          if (req !== undefined) throw new LoomError('INVALID_ARGUMENT', `${ctx.method}: more than one request message in a unary call`);
          req = msg as MessageShape<M['input']>;
        }
        if (req === undefined) throw new LoomError('INVALID_ARGUMENT', `${ctx.method}: no request message`);
        const res = await fn(req, ctx);
        await stream.send(create(m.output, res as never) as never);
      });
    }
    return handler(raw, ctx);
  };
}

/** `methodPath` again, for building service maps: `{ [path(FileSync.method.diffCopy)]: handler }`. */
export const path = methodPath;

async function* mapAsync<A, B>(src: AsyncIterable<A>, fn: (a: A) => B): AsyncGenerator<B> {
  for await (const a of src) yield fn(a);
}
