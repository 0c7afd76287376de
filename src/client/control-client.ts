import { create, type MessageInitShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
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
import { grpcServiceDef } from '../util/grpc-def.js';
import { BuildsRequestSchema, Inspect, type BuildsResponse } from '../gen/loom/inspect_pb.js';
import { defaultAddress, loadTls, parseAddress, type TlsFiles } from './address.js';
import { fromGrpcError } from './grpc-error.js';

/** What upstream's client allows per message (containerd's defaults.DefaultMaxRecvMsgSize). */
const MAX_MESSAGE = 16 * 1024 * 1024;

export interface ConnectOptions {
  /** `unix:///path` or `tcp://host:port`; default $BUILDKIT_HOST or unix:///run/buildkit/buildkitd.sock. */
  address?: string;
  tls?: TlsFiles;
}

type Unary<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientUnaryCall;
type ServerStream<Req> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
type Bidi = (md: grpc.Metadata, opts: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, unknown>;

interface RawControl extends grpc.Client {
  diskUsage: Unary<unknown, DiskUsageResponse>;
  prune: ServerStream<unknown>;
  solve: Unary<unknown, SolveResponse>;
  status: ServerStream<unknown>;
  session: Bidi;
  listWorkers: Unary<unknown, ListWorkersResponse>;
  info: Unary<unknown, InfoResponse>;
}

let ControlCtor: grpc.ServiceClientConstructor | undefined;
let InspectCtor: grpc.ServiceClientConstructor | undefined;

/**
 * A connection to a BuildKit daemon's Control service (loom's or upstream's). Methods reject with
 * errors worded as upstream's client words them (`failed to list workers: Unavailable: ...`).
 * The connection is made lazily by the first call; `close()` ends it.
 */
export class ControlClient {
  readonly address: string;
  readonly #raw: RawControl;

  constructor(opts: ConnectOptions = {}) {
    this.address = opts.address || defaultAddress();
    const addr = parseAddress(this.address);
    const tls = opts.tls ? loadTls(opts.tls) : undefined;
    const serverName = tls?.serverName || (addr.kind === 'tcp' ? addr.host : 'localhost');
    const target = addr.kind === 'unix' ? `unix:${addr.path}` : `${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
    const creds = tls ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : grpc.credentials.createInsecure();
    const options: grpc.ChannelOptions = {
      'grpc.max_receive_message_length': MAX_MESSAGE,
      'grpc.max_send_message_length': MAX_MESSAGE,
      // One connection per client, as grpc-go's: buildctl makes a handful of calls and exits.
      'grpc.enable_retries': 0,
    };
    if (tls) {
      options['grpc.ssl_target_name_override'] = serverName;
      options['grpc.default_authority'] = serverName;
    } else if (addr.kind === 'unix') {
      options['grpc.default_authority'] = 'localhost';
    }
    ControlCtor ??= grpc.makeGenericClientConstructor(grpcServiceDef(ControlService), 'Control');
    this.#raw = new ControlCtor(target, creds, options) as unknown as RawControl;
    this.#target = target;
    this.#creds = creds;
  }

  readonly #target: string;
  readonly #creds: grpc.ChannelCredentials;
  #inspect: (grpc.Client & { builds: Unary<unknown, BuildsResponse> }) | undefined;

  /** loom's Inspect service (build records), on the same connection. Not a BuildKit API. */
  builds(req: { ref?: string; limit?: number }, signal?: AbortSignal): Promise<BuildsResponse> {
    InspectCtor ??= grpc.makeGenericClientConstructor(grpcServiceDef(Inspect), 'Inspect');
    this.#inspect ??= new InspectCtor(this.#target, this.#creds, { channelOverride: this.#raw.getChannel() }) as unknown as grpc.Client & { builds: Unary<unknown, BuildsResponse> };
    return this.#unaryOn(this.#inspect, this.#inspect.builds, create(BuildsRequestSchema, req), 'failed to inspect builds', signal);
  }

  close(): void {
    this.#raw.close();
  }

  #unary<Res>(fn: Unary<unknown, Res>, req: unknown, what: string, signal?: AbortSignal): Promise<Res> {
    return this.#unaryOn(this.#raw, fn, req, what, signal);
  }

  #unaryOn<Res>(client: grpc.Client, fn: Unary<unknown, Res>, req: unknown, what: string, signal?: AbortSignal): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const call = fn.call(client, req, new grpc.Metadata(), {}, (err, res) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(fromGrpcError(err, what));
        else resolve(res!);
      });
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  listWorkers(filter: string[] = [], signal?: AbortSignal): Promise<ListWorkersResponse> {
    return this.#unary(this.#raw.listWorkers, create(ListWorkersRequestSchema, { filter }), 'failed to list workers', signal);
  }

  diskUsage(filter: string[] = [], signal?: AbortSignal): Promise<DiskUsageResponse> {
    return this.#unary(this.#raw.diskUsage, create(DiskUsageRequestSchema, { filter }), 'failed to call diskusage', signal);
  }

  info(signal?: AbortSignal): Promise<InfoResponse> {
    return this.#unary(this.#raw.info, create(InfoRequestSchema, {}), 'failed to call info', signal);
  }

  solve(req: MessageInitShape<typeof SolveRequestSchema>, signal?: AbortSignal): Promise<SolveResponse> {
    return this.#unary(this.#raw.solve, create(SolveRequestSchema, req), 'failed to solve', signal);
  }

  /** Streams the records the daemon removed; rejects as upstream's `failed to call prune: ...`. */
  async prune(req: MessageInitShape<typeof PruneRequestSchema>, onRecord: (r: UsageRecord) => void, signal?: AbortSignal): Promise<void> {
    const call = this.#raw.prune(create(PruneRequestSchema, req), new grpc.Metadata(), {});
    await drain(call, (m) => onRecord(m as UsageRecord), 'failed to call prune', signal);
  }

  /** The build's progress; ends when the build is done. */
  async status(ref: string, onStatus: (s: StatusResponse) => void, signal?: AbortSignal): Promise<void> {
    const call = this.#raw.status(create(StatusRequestSchema, { Ref: ref }), new grpc.Metadata(), {});
    await drain(call, (m) => onStatus(m as StatusResponse), 'failed to receive status', signal);
  }

  /** Opens Control.Session with the given metadata; the caller owns the returned stream. */
  session(metadata: Record<string, string[]>): grpc.ClientDuplexStream<unknown, unknown> {
    const md = new grpc.Metadata();
    for (const [k, vs] of Object.entries(metadata)) for (const v of vs) md.add(k, v);
    return this.#raw.session(md, {});
  }
}

function drain(call: grpc.ClientReadableStream<unknown>, onMsg: (m: unknown) => void, what: string, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => call.cancel();
    signal?.addEventListener('abort', onAbort, { once: true });
    call.on('data', (m) => {
      try {
        onMsg(m);
      } catch (err) {
        call.cancel();
        reject(err);
      }
    });
    call.on('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      reject(fromGrpcError(err, what));
    });
    call.on('end', () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}
