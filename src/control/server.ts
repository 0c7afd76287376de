import { Server, ServerCredentials, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { LLBBridge } from '../gen/buildkit/gateway_pb.js';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Http2SecureServer, Http2Server, Http2Session } from 'node:http2';
import { STREAM_WINDOW, widenConnectionWindow } from '../session/tunnel/h2-options.js';
import { log as rootLog } from '../util/log.js';
import { Control as ControlService } from '../gen/buildkit/control_pb.js';
import { Health } from '../gen/grpc/health_pb.js';
import { Inspect } from '../gen/loom/inspect_pb.js';
import { grpcServiceDef } from '../util/grpc-def.js';
import { InvalidArgumentError, LoomError } from '../util/errors.js';
import { controlHandlers, healthHandlers, type ControlBackend } from './controller.js';

const log = () => rootLog.child({ sub: 'control' });

export interface TlsFiles {
  cert?: string;
  key?: string;
  /** A CA means client certificates are required and verified against it. */
  ca?: string;
}

/** Upstream's limits for one gRPC message (16 MiB each way). */
const MAX_MSG = 16 << 20;

/**
 * The daemon's gRPC server: Control and Health on every address. Unix sockets are created fresh
 * (a stale socket file is removed), owned by `gid` when given; TCP addresses use TLS when a cert
 * is configured.
 */
export class ControlServer {
  readonly #server: Server;
  readonly #sockets: string[] = [];

  constructor(opts: { backend: ControlBackend; gateway: UntypedServiceImplementation; inspect?: UntypedServiceImplementation }) {
    this.#server = new Server({
      'grpc.max_receive_message_length': MAX_MSG,
      'grpc.max_send_message_length': MAX_MSG,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc-node.max_session_memory': 64,
    });
    tuneHttp2Servers(this.#server);
    this.#server.addService(grpcServiceDef(ControlService), controlHandlers(opts.backend));
    this.#server.addService(grpcServiceDef(Health), healthHandlers());
    this.#server.addService(grpcServiceDef(LLBBridge), opts.gateway);
    if (opts.inspect) this.#server.addService(grpcServiceDef(Inspect), opts.inspect);
  }

  async listen(addr: string, opts: { tls?: TlsFiles; gid?: number } = {}): Promise<string> {
    const u = parseAddress(addr);
    if (u.kind === 'unix') {
      mkdirSync(dirname(u.path), { recursive: true });
      if (existsSync(u.path)) {
        if (!statSync(u.path).isSocket()) throw new InvalidArgumentError(`${u.path} exists and is not a socket`);
        rmSync(u.path);
      }
      await this.#bind(`unix://${u.path}`, ServerCredentials.createInsecure());
      this.#sockets.push(u.path);
      chmodSync(u.path, 0o660);
      if (opts.gid !== undefined) chownSync(u.path, 0, opts.gid);
      return `unix://${u.path}`;
    }
    const creds = tlsCredentials(opts.tls);
    const port = await this.#bind(`${u.host}:${u.port}`, creds);
    return `tcp://${u.host}:${port}`;
  }

  #bind(target: string, creds: ServerCredentials): Promise<number> {
    return new Promise((resolve, reject) =>
      this.#server.bindAsync(target, creds, (err, port) => (err ? reject(new LoomError('UNAVAILABLE', `failed to listen on ${target}: ${err.message}`, { cause: err })) : resolve(port))),
    );
  }

  /** Stops accepting calls, gives running ones `graceMs` to finish, then cuts them; removes sockets. */
  async close(graceMs = 5000): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.#server.forceShutdown();
        resolve();
      }, graceMs);
      this.#server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    for (const s of this.#sockets) rmSync(s, { force: true });
  }

  forceClose(): void {
    this.#server.forceShutdown();
    for (const s of this.#sockets) rmSync(s, { force: true });
  }
}

export function parseAddress(addr: string): { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } {
  if (addr.startsWith('unix://')) {
    const path = addr.slice('unix://'.length);
    if (!path.startsWith('/')) throw new InvalidArgumentError(`invalid address ${addr}: unix socket path must be absolute`);
    return { kind: 'unix', path };
  }
  if (addr.startsWith('tcp://')) {
    const rest = addr.slice('tcp://'.length);
    const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(rest);
    if (!m) throw new InvalidArgumentError(`invalid address ${addr}: expected tcp://host:port`);
    return { kind: 'tcp', host: m[1] || '0.0.0.0', port: Number(m[2]) };
  }
  throw new InvalidArgumentError(`invalid address ${addr}: only unix:// and tcp:// are supported`);
}

function tlsCredentials(tls: TlsFiles | undefined): ServerCredentials {
  if (!tls?.cert && !tls?.key) {
    if (tls?.ca) throw new InvalidArgumentError('--tlscacert needs --tlscert and --tlskey');
    return ServerCredentials.createInsecure();
  }
  if (!tls.cert || !tls.key) throw new InvalidArgumentError('TLS needs both --tlscert and --tlskey');
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f);
    } catch (err) {
      throw new InvalidArgumentError(`failed to read ${what} ${f}: ${(err as Error).message}`, { cause: err });
    }
  };
  const ca = tls.ca ? read(tls.ca, 'CA certificate') : null;
  return ServerCredentials.createSsl(ca, [{ cert_chain: read(tls.cert, 'certificate'), private_key: read(tls.key, 'key') }], ca !== null);
}

/**
 * Two changes to the HTTP/2 servers grpc-js makes, through its internals (grpc-js takes no option
 * for either):
 *
 * - Flow-control windows as the session tunnel's own (see session/tunnel/h2-options.ts). With
 *   Node's defaults (64 KiB per stream and per connection) a client sending a build context
 *   through Control.Session waits for a WINDOW_UPDATE every 32 KiB: a 16 MiB file took ~0.9 s
 *   here, where upstream's daemon (grpc-go, windows grown by BDP estimation) takes ~0.1 s. The
 *   stream window goes into the settings the servers are created with; the connection window is
 *   raised as each session starts.
 * - TLS connections that negotiated no protocol are served as HTTP/2 (see acceptTlsWithoutAlpn).
 *
 * Without those internals (another grpc-js) the daemon still serves, slower, and only to TLS
 * clients that offer ALPN h2.
 */
function tuneHttp2Servers(server: Server): void {
  const internals = server as unknown as {
    commonServerOptions?: { settings?: Record<string, unknown> };
    createHttp2Server?: (...args: unknown[]) => Http2Server | Http2SecureServer;
  };
  const common = internals.commonServerOptions;
  const create = internals.createHttp2Server;
  if (!common || typeof create !== 'function') {
    log().warn('grpc-js internals not found: HTTP/2 default flow-control windows, and TLS clients must offer ALPN h2 (buildx remote driver cannot connect)');
    return;
  }
  common.settings = { ...common.settings, initialWindowSize: STREAM_WINDOW };
  internals.createHttp2Server = function (this: unknown, ...args: unknown[]) {
    const h2 = create.apply(this, args);
    h2.on('session', (session: Http2Session) => widenConnectionWindow(session));
    if (h2 instanceof TlsServer) h2.prependListener('secureConnection', acceptTlsWithoutAlpn);
    return h2;
  };
}

/**
 * buildx's remote driver makes its TLS connection itself (a Go tls.Client with no NextProtos)
 * and then speaks HTTP/2 with prior knowledge over it; upstream's grpc-go server serves that.
 * Node's HTTP/2 server drops a connection whose ALPN is not h2, so one that negotiated nothing is
 * marked h2 before the server looks. A client that asked for another protocol is still refused.
 */
function acceptTlsWithoutAlpn(socket: TLSSocket): void {
  if (socket.alpnProtocol === false) (socket as { alpnProtocol: string | false }).alpnProtocol = 'h2';
}
