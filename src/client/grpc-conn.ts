import http2, { type ClientHttp2Session } from 'node:http2';
import net from 'node:net';
import { Duplex } from 'node:stream';
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
    // Through a proxy, the connection is made when the CONNECT tunnel is up, not when HTTP/2 starts.
    let tunnelPending = false;
    const addr = this.#addr;
    const t = this.#tls;
    const tlsOptions = (): tls.ConnectionOptions | undefined =>
      t && { servername: net.isIP(t.serverName) ? undefined : t.serverName, ca: t.ca, cert: t.cert, key: t.key, ALPNProtocols: ['h2'] };
    const dial = (): Duplex => {
      let sock: Duplex;
      const proxy = addr.kind === 'tcp' ? proxyFor(addr.host, addr.port) : undefined;
      if (addr.kind === 'unix') sock = net.connect(addr.path);
      else if (proxy) {
        tunnelPending = true;
        sock = throughProxy(proxy, addr.host, addr.port, tlsOptions());
        sock.once('tunnel', () => {
          tunnelPending = false;
          connected = true;
        });
      }
      else if (t) sock = tls.connect({ host: addr.host, port: addr.port, ...tlsOptions() });
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
      if (!tunnelPending) connected = true;
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

/**
 * The HTTP proxy grpc-go would dial a tcp:// daemon through: HTTPS_PROXY (or https_proxy), unless
 * the host is a loopback name or address or matches NO_PROXY (or no_proxy): `*`, a host, a domain
 * suffix (`.example.com` or `example.com`), optionally with `:port`, comma separated.
 */
export function proxyFor(host: string, port: number, env: NodeJS.ProcessEnv = process.env): URL | undefined {
  const raw = env.HTTPS_PROXY || env.https_proxy;
  if (!raw) return undefined;
  const h = host.toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\./.test(h)) return undefined;
  for (const entry of (env.NO_PROXY || env.no_proxy || '').split(',')) {
    let e = entry.trim().toLowerCase();
    if (!e) continue;
    if (e === '*') return undefined;
    const m = /^(.*):(\d+)$/.exec(e);
    if (m && !e.endsWith(']')) {
      if (Number(m[2]) !== port) continue;
      e = m[1]!;
    }
    e = e.replace(/^\[(.*)\]$/, '$1');
    if (h === e || h.endsWith(e.startsWith('.') ? e : `.${e}`)) return undefined;
  }
  try {
    return new URL(raw.includes('://') ? raw : `http://${raw}`);
  } catch {
    return undefined;
  }
}

/**
 * A connection to host:port through an HTTP proxy's CONNECT (TLS on top when `tlsOptions`), as
 * one Duplex from the start: HTTP/2 writes its preface into it at once, and those bytes wait until
 * the tunnel is up. A refused CONNECT fails the stream with the proxy's status line.
 */
function throughProxy(proxy: URL, host: string, port: number, tlsOptions: tls.ConnectionOptions | undefined): Duplex {
  let target: Duplex | undefined;
  const pending: { chunk: Buffer; cb: (err?: Error | null) => void }[] = [];
  const d = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      if (target) target.write(chunk, cb);
      else pending.push({ chunk, cb });
    },
    read() {
      target?.resume();
    },
    final(cb) {
      if (target) target.end(cb);
      else cb();
    },
    destroy(err, cb) {
      raw.destroy();
      target?.destroy();
      cb(err);
    },
  });
  const authority = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const raw = net.connect({ host: proxy.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(proxy.port) || (proxy.protocol === 'https:' ? 443 : 80) });
  raw.once('error', (err) => d.destroy(err));
  raw.once('connect', () => {
    const auth = proxy.username ? `Proxy-Authorization: Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString('base64')}\r\n` : '';
    raw.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth}\r\n`);
  });
  let head = Buffer.alloc(0);
  const onHead = (chunk: Buffer): void => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) {
      if (head.length > 16 * 1024) d.destroy(new Error(`proxy ${proxy.host}: CONNECT response too long`));
      return;
    }
    raw.off('data', onHead);
    raw.pause();
    const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
    if (!/^HTTP\/1\.[01] 200\b/.test(status)) {
      d.destroy(new Error(`proxy ${proxy.host}: CONNECT ${authority}: ${status}`));
      return;
    }
    const rest = head.subarray(end + 4);
    if (rest.length > 0) raw.unshift(rest);
    const sock: Duplex = tlsOptions ? tls.connect({ socket: raw, ...tlsOptions }) : raw;
    sock.on('error', (err) => d.destroy(err));
    sock.on('data', (c: Buffer) => {
      if (!d.push(c)) sock.pause();
    });
    sock.on('end', () => d.push(null));
    target = sock;
    for (const p of pending.splice(0)) sock.write(p.chunk, p.cb);
    sock.resume();
    d.emit('tunnel');
  };
  raw.on('data', onHead);
  return d;
}
