import { create, type MessageInitShape } from '@bufbuild/protobuf';
import type { DescMethod, MessageShape } from '@bufbuild/protobuf';
import { Duplex } from 'node:stream';
import {
  Control as ControlService,
  DiskUsageRequestSchema,
  ListWorkersRequestSchema,
  PruneRequestSchema,
  SolveRequestSchema,
  StatusRequestSchema,
  InfoRequestSchema,
  type DiskUsageResponse,
  type InfoResponse,
  type ListWorkersResponse,
  type SolveResponse,
  type StatusResponse,
  type UsageRecord,
} from '../gen/buildkit/control_pb.js';
import { BytesMessageSchema } from '../gen/buildkit/control_pb.js';
import { BuildsRequestSchema, Inspect, type BuildsResponse } from '../gen/loom/inspect_pb.js';
import type { BytesMessageStream } from '../session/tunnel/bytes-duplex.js';
import type { ClientCall } from '../session/tunnel/client-call.js';
import { decodeMessage, encodeMessage } from '../session/tunnel/codecs.js';
import { GrpcCode, SessionCallError } from '../session/tunnel/grpc-status.js';
import { methodPath } from '../session/tunnel/metadata.js';
import { decodeBytesOnly, encodeBytesOnly } from '../util/grpc-def.js';
import { defaultAddress, loadTls, parseAddress, type TlsFiles } from './address.js';
import { GrpcConnection } from './grpc-conn.js';
import { fromGrpcError } from './grpc-error.js';

export interface ConnectOptions {
  /** `unix:///path` or `tcp://host:port`; default $BUILDKIT_HOST or unix:///run/buildkit/buildkitd.sock. */
  address?: string;
  tls?: TlsFiles;
}

/**
 * A connection to a BuildKit daemon's Control service (loom's or upstream's). Methods reject with
 * errors worded as upstream's client words them (`failed to list workers: Unavailable: ...`).
 * The connection is made lazily by the first call; `close()` ends it.
 */
export class ControlClient {
  readonly address: string;
  readonly #conn: GrpcConnection;

  constructor(opts: ConnectOptions = {}) {
    this.address = opts.address || defaultAddress();
    const addr = parseAddress(this.address);
    const tls = opts.tls ? loadTls(opts.tls) : undefined;
    const serverName = tls?.serverName || (addr.kind === 'tcp' ? addr.host : 'localhost');
    this.#conn = new GrpcConnection(addr, tls ? { ...tls, serverName } : undefined);
  }

  /** loom's Inspect service (build records), on the same connection. Not a BuildKit API. */
  builds(req: { ref?: string; limit?: number }, signal?: AbortSignal): Promise<BuildsResponse> {
    return this.#unary(Inspect.method.builds, create(BuildsRequestSchema, req), 'failed to inspect builds', signal);
  }

  close(): void {
    this.#conn.close();
  }

  async #unary<M extends DescMethod>(method: M, req: MessageShape<M['input']>, what: string, signal?: AbortSignal): Promise<MessageShape<M['output']>> {
    let res: MessageShape<M['output']> | undefined;
    await this.#stream(method, req, (m) => (res = m), what, signal);
    if (res === undefined) throw fromGrpcError(new SessionCallError({ grpcCode: GrpcCode.INTERNAL, message: 'server closed the stream without sending a response', method: methodPath(method) }), what);
    return res;
  }

  /** One request, then every response to `onMsg` until the call ends; rejects with the call's status. */
  async #stream<M extends DescMethod>(method: M, req: MessageShape<M['input']>, onMsg: (m: MessageShape<M['output']>) => void, what: string, signal?: AbortSignal): Promise<void> {
    const call = this.#conn.call<MessageShape<M['input']>, MessageShape<M['output']>>(methodPath(method), {
      encode: (m) => encodeMessage(method.input, m),
      decode: (b) => decodeMessage(method.output, b) as MessageShape<M['output']>,
      signal,
    });
    try {
      await call.send(req);
      call.end();
      for await (const m of call.recv()) onMsg(m);
    } catch (err) {
      call.close();
      throw fromGrpcError(this.#conn.callError(err, signal), what);
    }
  }

  listWorkers(filter: string[] = [], signal?: AbortSignal): Promise<ListWorkersResponse> {
    return this.#unary(ControlService.method.listWorkers, create(ListWorkersRequestSchema, { filter }), 'failed to list workers', signal);
  }

  diskUsage(filter: string[] = [], signal?: AbortSignal): Promise<DiskUsageResponse> {
    return this.#unary(ControlService.method.diskUsage, create(DiskUsageRequestSchema, { filter }), 'failed to call diskusage', signal);
  }

  info(signal?: AbortSignal): Promise<InfoResponse> {
    return this.#unary(ControlService.method.info, create(InfoRequestSchema, {}), 'failed to call info', signal);
  }

  solve(req: MessageInitShape<typeof SolveRequestSchema>, signal?: AbortSignal): Promise<SolveResponse> {
    return this.#unary(ControlService.method.solve, create(SolveRequestSchema, req), 'failed to solve', signal);
  }

  /** Streams the records the daemon removed; rejects as upstream's `failed to call prune: ...`. */
  prune(req: MessageInitShape<typeof PruneRequestSchema>, onRecord: (r: UsageRecord) => void, signal?: AbortSignal): Promise<void> {
    return this.#stream(ControlService.method.prune, create(PruneRequestSchema, req), onRecord, 'failed to call prune', signal);
  }

  /** The build's progress; ends when the build is done. */
  status(ref: string, onStatus: (s: StatusResponse) => void, signal?: AbortSignal): Promise<void> {
    return this.#stream(ControlService.method.status, create(StatusRequestSchema, { Ref: ref }), onStatus, 'failed to receive status', signal);
  }

  /**
   * Opens Control.Session with the given metadata: an object stream of BytesMessage (`{ data }`)
   * both ways, as the tunnel's bytesDuplex takes it. The caller owns the returned stream;
   * destroying it cancels the call.
   */
  session(metadata: Record<string, string[]>): BytesMessageStream {
    const call = this.#conn.call<{ data: Uint8Array }, { data: Uint8Array }>(methodPath(ControlService.method.session), {
      encode: (m) => encodeBytesOnly(m.data),
      decode: (b) => ({ data: decodeBytesOnly(b, BytesMessageSchema.typeName) }),
      metadata,
    });
    return callStream(call);
  }
}

/**
 * A bidirectional call as an object-mode Duplex: writes are sent in order (the call frames them
 * and HTTP/2 flow control holds what the peer has not taken), reads follow the call's receive
 * queue, which pauses the HTTP/2 stream while this side is not read. Ending the writable side
 * half-closes the call; destroying the stream before the call ended cancels it.
 */
function callStream<Send, Recv>(call: ClientCall<Send, Recv>): Duplex & { cancel(): void } {
  let wantMore: (() => void) | undefined;
  let finished = false;
  const d = new Duplex({
    objectMode: true,
    allowHalfOpen: true,
    write(m: Send, _enc, cb) {
      call.send(m).then(() => cb(), cb);
    },
    final(cb) {
      call.end();
      cb();
    },
    read() {
      const w = wantMore;
      wantMore = undefined;
      w?.();
    },
    destroy(err, cb) {
      if (!finished) call.close(err ?? undefined);
      cb(err);
    },
  });
  void (async () => {
    try {
      for await (const m of call.recv()) {
        if (!d.push(m)) await new Promise<void>((r) => (wantMore = r));
      }
      finished = true;
      d.push(null);
    } catch (err) {
      finished = true;
      d.destroy(err as Error);
    }
  })();
  return Object.assign(d, { cancel: () => d.destroy() });
}
