import http2, { type ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { H2_SESSION_OPTIONS, widenConnectionWindow } from '../session/tunnel/h2-options.js';
import { ClientCall } from '../session/tunnel/client-call.js';
import { GrpcCode, SessionCallError } from '../session/tunnel/grpc-status.js';
import { metadataToHeaders } from '../session/tunnel/metadata.js';
import type { CallMetadata } from '../session/types.js';
import { CancelledError } from '../util/errors.js';
import type { DaemonAddress, TlsMaterial } from './address.js';

/**
 * One HTTP/2 connection to a daemon, carrying gRPC calls framed by the session tunnel's own
 * ClientCall: what buildctl needs of a gRPC client (unary, server-streaming and bidirectional
 * calls, status and its details, cancellation) without loading grpc-js, whose modules and the
 * builtins they pull in (zlib, dns) were ~10% of every command's start-up. The connection is made
 * by the first call; one that cannot be made fails each call with UNAVAILABLE, worded as grpc-go's
 * dialer words it.
 */
export class GrpcConnection {
  readonly #addr: DaemonAddress;
  readonly #tls: (TlsMaterial & { serverName: string }) | undefined;
  #session: ClientHttp2Session | undefined;
  #dialError: Error | undefined;
  /** The connection ended while calls could still use it (the daemon went away). */
  #lost = false;

  constructor(addr: DaemonAddress, tlsMaterial?: TlsMaterial & { serverName: string }) {
    this.#addr = addr;
    this.#tls = tlsMaterial;
  }

  #connect(): ClientHttp2Session {
    const s = this.#session;
    if (s && !s.destroyed && !s.closed) return s;
    this.#dialError = undefined;
    this.#lost = false;
    let connected = false;
    const addr = this.#addr;
    const t = this.#tls;
    const dial = (): net.Socket => {
      let sock: net.Socket;
      if (addr.kind === 'unix') sock = net.connect(addr.path);
      else if (t) sock = tls.connect({ host: addr.host, port: addr.port, servername: net.isIP(t.serverName) ? undefined : t.serverName, ca: t.ca, cert: t.cert, key: t.key, ALPNProtocols: ['h2'] });
      else sock = net.connect({ host: addr.host, port: addr.port });
      sock.once('error', (err) => {
        if (!connected) this.#dialError ??= err;
      });
      return sock;
    };
    const host = addr.kind === 'unix' ? 'localhost' : (t?.serverName ?? addr.host);
    const authority = `${t ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}`;
    const session = http2.connect(authority, { ...H2_SESSION_OPTIONS, createConnection: dial });
    widenConnectionWindow(session);
    session.once('connect', () => {
      connected = true;
    });
    session.on('error', (err) => {
      if (!connected) this.#dialError ??= err;
    });
    session.once('close', () => {
      if (connected && this.#session === session) this.#lost = true;
    });
    this.#session = session;
    return session;
  }

  /** Opens a call of `path` (`/pkg.Service/Method`). */
  call<Send, Recv>(
    path: string,
    opts: { encode: (m: Send) => Uint8Array; decode: (b: Buffer) => Recv; metadata?: CallMetadata; signal?: AbortSignal },
  ): ClientCall<Send, Recv> {
    const session = this.#connect();
    const h2 = session.request(
      {
        ':method': 'POST',
        ':path': path,
        'content-type': 'application/grpc',
        te: 'trailers',
        ...metadataToHeaders(opts.metadata ?? {}),
      },
      { endStream: false },
    );
    return new ClientCall<Send, Recv>({ h2, method: path, encode: opts.encode, decode: opts.decode, signal: opts.signal });
  }

  /**
   * The error a failed call reports: when the connection itself could not be made, grpc-go's
   * wording (`connection error: desc = "transport: error while dialing: dial unix /x: connect: no
   * such file or directory"`), else the call's own.
   */
  callError(err: unknown, signal?: AbortSignal): unknown {
    const dial = this.#dialError;
    if (!dial) {
      // A call ended by the connection going away (HTTP/2 resets its streams with CANCEL), not by
      // the caller: grpc-go reports that as UNAVAILABLE, `error reading from server: EOF`.
      const s = this.#session;
      const gone = this.#lost || (s !== undefined && (s.destroyed || s.closed));
      if (gone && !signal?.aborted && (err instanceof CancelledError || (err instanceof SessionCallError && err.grpcCode === GrpcCode.UNAVAILABLE))) {
        return new SessionCallError({ grpcCode: GrpcCode.UNAVAILABLE, message: 'error reading from server: EOF', method: err instanceof SessionCallError ? err.method : '', cause: err });
      }
      return err;
    }
    if (err instanceof SessionCallError && err.grpcCode !== GrpcCode.UNAVAILABLE) return err;
    const a = this.#addr;
    const where = a.kind === 'unix' ? `dial unix ${a.path}` : `dial tcp ${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
    const code = (dial as NodeJS.ErrnoException).code;
    const reason = code && code in ERRNO_TEXT ? `connect: ${ERRNO_TEXT[code]}` : dial.message;
    const method = err instanceof SessionCallError ? err.method : '';
    return new SessionCallError({ grpcCode: GrpcCode.UNAVAILABLE, message: `connection error: desc = "transport: error while dialing: ${where}: ${reason}"`, method, cause: dial });
  }

  close(): void {
    const s = this.#session;
    this.#session = undefined;
    if (s && !s.destroyed) s.close();
  }
}

/** Go's text for the errors a dial meets most (syscall.Errno.Error()). */
const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ECONNREFUSED: 'connection refused',
  EACCES: 'permission denied',
  ECONNRESET: 'connection reset by peer',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network is unreachable',
  ENOTSOCK: 'socket operation on non-socket',
};
