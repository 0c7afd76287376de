import type { DescMethod, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { Duplex } from 'node:stream';
import type {
  DiskUsageResponse,
  InfoResponse,
  ListWorkersResponse,
  PruneRequestSchema,
  SolveRequestSchema,
  SolveResponse,
  StatusResponse,
  UsageRecord,
} from '../gen/buildkit/control_pb.js';
import type { BuildsResponse } from '../gen/loom/inspect_pb.js';
import type { BytesMessageStream } from '../session/tunnel/bytes-duplex.js';
import type { ClientCall } from '../session/tunnel/client-call.js';
import { decodeMessage, encodeMessage } from '../session/tunnel/codecs.js';
import { GrpcCode, SessionCallError } from '../session/tunnel/grpc-status.js';
import { methodPath } from '../session/tunnel/metadata.js';
import { decodeBytesOnly, encodeBytesOnly } from '../util/grpc-def.js';
import { defaultAddress, loadTls, parseAddress, type TlsFiles } from './address.js';
import {
  decodeListWorkersResponse,
  decodeSolveResponse,
  decodeStatusResponse,
  encodeListWorkersRequest,
  encodeSolveRequest,
  encodeStatusRequest,
  isFastSolveRequest,
} from './control-codec.js';
import { GrpcConnection } from './grpc-conn.js';
import { fromGrpcError } from './grpc-error.js';

// A build (and `debug workers`) calls these with the codecs of control-codec.ts; the generated descriptors of
// control.proto are loaded (on first use) only by the other calls, see control-codec.ts.
const CONTROL = '/moby.buildkit.v1.Control/';
/** The header naming the build a gateway call belongs to. */
const BUILD_ID_HEADER = 'buildkit-controlapi-buildid';
const control = () => import('../gen/buildkit/control_pb.js');

interface Codec<Req, Res> {
  encode(m: Req): Uint8Array;
  decode(b: Uint8Array): Res;
}

function reflective<M extends DescMethod>(method: M): Codec<MessageShape<M['input']>, MessageShape<M['output']>> {
  return { encode: (m) => encodeMessage(method.input, m), decode: (b) => decodeMessage(method.output, b) as MessageShape<M['output']> };
}

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
  async builds(req: { ref?: string; limit?: number }, signal?: AbortSignal): Promise<BuildsResponse> {
    const { create } = await import('@bufbuild/protobuf');
    const { BuildsRequestSchema, Inspect } = await import('../gen/loom/inspect_pb.js');
    return this.#unary(methodPath(Inspect.method.builds), reflective(Inspect.method.builds), create(BuildsRequestSchema, req), 'failed to inspect builds', signal);
  }

  close(): void {
    this.#conn.close();
  }

  async #unary<Req, Res>(path: string, codec: Codec<Req, Res>, req: Req, what: string, signal?: AbortSignal, metadata?: Record<string, string[]>): Promise<Res> {
    let res: Res | undefined;
    await this.#stream(path, codec, req, (m) => (res = m), what, signal, metadata);
    if (res === undefined) throw fromGrpcError(new SessionCallError({ grpcCode: GrpcCode.INTERNAL, message: 'server closed the stream without sending a response', method: path }), what);
    return res;
  }

  /** One request, then every response to `onMsg` until the call ends; rejects with the call's status. */
  async #stream<Req, Res>(
    path: string,
    codec: Codec<Req, Res>,
    req: Req,
    onMsg: (m: Res) => void,
    what: string,
    signal?: AbortSignal,
    metadata?: Record<string, string[]>,
  ): Promise<void> {
    const call = this.#conn.call<Req, Res>(path, { encode: codec.encode, decode: codec.decode, signal, metadata });
    try {
      await call.send(req);
      call.end();
      for await (const m of call.recv()) onMsg(m);
    } catch (err) {
      call.close();
      throw fromGrpcError(this.#conn.callError(err, signal), what);
    }
  }

  async listWorkers(filter: string[] = [], signal?: AbortSignal): Promise<ListWorkersResponse> {
    return this.#unary(CONTROL + 'ListWorkers', { encode: encodeListWorkersRequest, decode: decodeListWorkersResponse }, filter, 'failed to list workers', signal);
  }

  async diskUsage(filter: string[] = [], signal?: AbortSignal): Promise<DiskUsageResponse> {
    const [{ create }, { Control, DiskUsageRequestSchema }] = await Promise.all([import('@bufbuild/protobuf'), control()]);
    return this.#unary(CONTROL + 'DiskUsage', reflective(Control.method.diskUsage), create(DiskUsageRequestSchema, { filter }), 'failed to call diskusage', signal);
  }

  async info(signal?: AbortSignal): Promise<InfoResponse> {
    const [{ create }, { Control, InfoRequestSchema }] = await Promise.all([import('@bufbuild/protobuf'), control()]);
    return this.#unary(CONTROL + 'Info', reflective(Control.method.info), create(InfoRequestSchema, {}), 'failed to call info', signal);
  }

  async solve(req: MessageInitShape<typeof SolveRequestSchema>, signal?: AbortSignal): Promise<SolveResponse> {
    const what = 'failed to solve';
    if (isFastSolveRequest(req)) return this.#unary(CONTROL + 'Solve', { encode: encodeSolveRequest, decode: decodeSolveResponse }, req, what, signal);
    // An LLB definition (or another field the hand codec does not write): protobuf-es.
    const [{ create }, { Control, SolveRequestSchema }] = await Promise.all([import('@bufbuild/protobuf'), control()]);
    return this.#unary(CONTROL + 'Solve', reflective(Control.method.solve), create(SolveRequestSchema, req), what, signal);
  }

  /**
   * The client side of a gateway build (upstream's client.Build): asks build `buildId`'s frontend
   * gateway to solve (here: a frontend with options) and returns the result's metadata.
   */
  async gatewaySolve(buildId: string, frontend: string, frontendOpt: Record<string, string>, signal?: AbortSignal): Promise<Record<string, Uint8Array>> {
    const [{ create }, { LLBBridge, SolveRequestSchema }] = await Promise.all([import('@bufbuild/protobuf'), import('../gen/buildkit/gateway_pb.js')]);
    const req = create(SolveRequestSchema, { Frontend: frontend, FrontendOpt: frontendOpt, allowResultReturn: true, allowResultArrayRef: true });
    // No prefix: a failure goes back to the daemon (gatewayReturn) as the status it was.
    const res = await this.#unary(methodPath(LLBBridge.method.solve), reflective(LLBBridge.method.solve), req, '', signal, { [BUILD_ID_HEADER]: [buildId] });
    return res.result?.metadata ?? {};
  }

  /** Ends build `buildId`'s gateway side: an empty result, or the error (a gRPC status) the build fails with. */
  async gatewayReturn(buildId: string, error?: { code: number; message: string }, signal?: AbortSignal): Promise<void> {
    const [{ create }, { LLBBridge, ReturnRequestSchema, ResultSchema }] = await Promise.all([import('@bufbuild/protobuf'), import('../gen/buildkit/gateway_pb.js')]);
    const { StatusSchema } = await import('../gen/google/rpc/status_pb.js');
    const req = create(ReturnRequestSchema, error ? { error: create(StatusSchema, error) } : { result: create(ResultSchema, {}) });
    await this.#unary(methodPath(LLBBridge.method.return), reflective(LLBBridge.method.return), req, 'failed to return', signal, { [BUILD_ID_HEADER]: [buildId] });
  }

  /** Streams the records the daemon removed; rejects as upstream's `failed to call prune: ...`. */
  async prune(req: MessageInitShape<typeof PruneRequestSchema>, onRecord: (r: UsageRecord) => void, signal?: AbortSignal): Promise<void> {
    const [{ create }, { Control, PruneRequestSchema }] = await Promise.all([import('@bufbuild/protobuf'), control()]);
    return this.#stream(CONTROL + 'Prune', reflective(Control.method.prune), create(PruneRequestSchema, req), onRecord, 'failed to call prune', signal);
  }

  /** The build's progress; ends when the build is done. */
  status(ref: string, onStatus: (s: StatusResponse) => void, signal?: AbortSignal): Promise<void> {
    return this.#stream(CONTROL + 'Status', { encode: encodeStatusRequest, decode: decodeStatusResponse }, ref, onStatus, 'failed to receive status', signal);
  }

  /**
   * Opens Control.Session with the given metadata: an object stream of BytesMessage (`{ data }`)
   * both ways, as the tunnel's bytesDuplex takes it. The caller owns the returned stream;
   * destroying it cancels the call.
   */
  session(metadata: Record<string, string[]>): BytesMessageStream {
    const call = this.#conn.call<{ data: Uint8Array }, { data: Uint8Array }>(CONTROL + 'Session', {
      encode: (m) => encodeBytesOnly(m.data),
      decode: (b) => ({ data: decodeBytesOnly(b, 'moby.buildkit.v1.BytesMessage') }),
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
