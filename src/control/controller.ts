import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type {
  sendUnaryData,
  ServerDuplexStream,
  ServerUnaryCall,
  ServerWritableStream,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  DiskUsageResponseSchema,
  InfoResponseSchema,
  ListWorkersResponseSchema,
  StatusResponseSchema,
  UsageRecordSchema,
  VertexLogSchema,
  VertexSchema,
  VertexStatusSchema,
  VertexWarningSchema,
  SolveResponseSchema,
  type BytesMessage,
  type DiskUsageRequest,
  type InfoRequest,
  type ListWorkersRequest,
  type PruneRequest,
  type SolveRequest,
  type StatusRequest,
  type StatusResponse,
} from '../gen/buildkit/control_pb.js';
import { ProgressGroupSchema } from '../gen/buildkit/ops_pb.js';
import { BuildkitVersionSchema, GCPolicySchema, WorkerRecordSchema } from '../gen/buildkit/worker_pb.js';
import { HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from '../gen/grpc/health_pb.js';
import type { SessionManager } from '../session/manager.js';
import { bytesDuplex } from '../session/tunnel/bytes-duplex.js';
import { createSessionCaller } from '../session/tunnel/caller.js';
import { parseSessionMetadata } from '../session/tunnel/metadata.js';
import { CancelledError, UnimplementedError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import type { ProgressBus, ProgressEvent } from '../util/progress.js';
import { failStream, toServiceError } from './grpc-status.js';
import { StatusPacer } from './status-pacer.js';
import type { PruneOptions, UsageInfo, VersionInfo, WorkerInfo } from './types.js';

const log = () => rootLog.child({ sub: 'control' });

/** What the gRPC layer needs of the daemon. */
export interface ControlBackend {
  version: VersionInfo;
  sessions: SessionManager;
  workers(): WorkerInfo[];
  /** The progress stream of build `ref`, created on first use by either Solve or Status. */
  progress(ref: string): ProgressBus;
  solve(req: SolveRequest, signal: AbortSignal): Promise<Record<string, string>>;
  diskUsage(filters: string[]): Promise<UsageInfo[]>;
  prune(opts: PruneOptions, onRecord: (u: UsageInfo) => void, signal: AbortSignal): Promise<void>;
}

/** The moby.buildkit.v1.Control handlers: protobuf in, backend calls, protobuf out. */
export function controlHandlers(b: ControlBackend): UntypedServiceImplementation {
  return {
    listWorkers(call: ServerUnaryCall<ListWorkersRequest, unknown>, cb: sendUnaryData<unknown>) {
      cb(null, create(ListWorkersResponseSchema, { record: b.workers().map((w) => workerRecord(w, b.version)) }));
    },

    info(_call: ServerUnaryCall<InfoRequest, unknown>, cb: sendUnaryData<unknown>) {
      cb(null, create(InfoResponseSchema, { buildkitVersion: create(BuildkitVersionSchema, b.version) }));
    },

    solve(call: ServerUnaryCall<SolveRequest, unknown>, cb: sendUnaryData<unknown>) {
      const ac = abortOnCancel(call);
      b.solve(call.request, ac.signal).then(
        (resp) => cb(null, create(SolveResponseSchema, { ExporterResponse: resp })),
        (err) => cb(toServiceError(err, { build: true }) as never, null),
      );
    },

    status(call: ServerWritableStream<StatusRequest, unknown>) {
      const bus = b.progress(call.request.Ref);
      const pacer = new StatusPacer({ write: (events) => call.write(statusResponse(events)), end: () => call.end() });
      const unsubscribe = bus.subscribe((batch) => {
        if (batch === null) pacer.end();
        else pacer.push(batch);
      });
      const stop = () => {
        pacer.close();
        unsubscribe();
      };
      call.on('cancelled', stop);
      call.on('close', stop);
    },

    session(call: ServerDuplexStream<BytesMessage, BytesMessage>) {
      let id: ReturnType<typeof parseSessionMetadata>;
      try {
        id = parseSessionMetadata(call.metadata.getMap() as Record<string, string>);
        // One header per method; HTTP/2 may hand repeated headers over joined with ", ".
        id.methods = call.metadata
          .get('x-docker-expose-session-grpc-method')
          .flatMap((v) => String(v).split(','))
          .map((m) => m.trim())
          .filter(Boolean);
      } catch (err) {
        failStream(call, err);
        return;
      }
      const caller = createSessionCaller({ ...id, duplex: bytesDuplex(call as unknown as Parameters<typeof bytesDuplex>[0]) });
      try {
        b.sessions.add(caller);
      } catch (err) {
        caller.close();
        failStream(call, err);
        return;
      }
      log().debug({ session: id.id, name: id.name, methods: id.methods.length }, 'session started');
      void caller.closed.then(() => log().debug({ session: id.id }, 'session finished'));
    },

    diskUsage(call: ServerUnaryCall<DiskUsageRequest, unknown>, cb: sendUnaryData<unknown>) {
      b.diskUsage(call.request.filter).then(
        (recs) => cb(null, create(DiskUsageResponseSchema, { record: recs.map(usageRecord) })),
        (err) => cb(toServiceError(err) as never, null),
      );
    },

    prune(call: ServerWritableStream<PruneRequest, unknown>) {
      const ac = abortOnCancel(call);
      const r = call.request;
      b.prune(
        {
          filters: r.filter,
          all: r.all,
          keepDurationMs: Number(r.keepDuration / 1_000_000n),
          keepBytes: Number(r.reservedSpace),
        },
        (u) => call.write(usageRecord(u)),
        ac.signal,
      ).then(
        () => call.end(),
        (err) => failStream(call, err),
      );
    },

    listenBuildHistory(call: ServerWritableStream<unknown, unknown>) {
      failStream(call, new UnimplementedError('build history is not implemented yet'));
    },

    updateBuildHistory(_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) {
      cb(toServiceError(new UnimplementedError('build history is not implemented yet')) as never, null);
    },
  };
}

export function healthHandlers(): UntypedServiceImplementation {
  return {
    check(_call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) {
      cb(null, create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVING }));
    },
    watch(call: ServerWritableStream<unknown, unknown>) {
      call.write(create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVING }));
    },
  };
}

function abortOnCancel(call: { on(ev: 'cancelled', fn: () => void): unknown }): AbortController {
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort(new CancelledError('client cancelled the call')));
  return ac;
}

export function workerRecord(w: WorkerInfo, version: VersionInfo) {
  return create(WorkerRecordSchema, {
    ID: w.id,
    Labels: w.labels,
    platforms: w.platforms,
    GCPolicy: w.gcPolicy.map((p) =>
      create(GCPolicySchema, {
        all: p.all,
        keepDuration: BigInt(p.keepDuration) * 1_000_000_000n,
        reservedSpace: BigInt(p.keepBytes),
        filters: p.filters,
      }),
    ),
    BuildkitVersion: create(BuildkitVersionSchema, version),
  });
}

function usageRecord(u: UsageInfo) {
  return create(UsageRecordSchema, {
    ID: u.id,
    Mutable: u.mutable,
    InUse: u.inUse,
    Size: BigInt(u.size),
    Parent: u.parents[0] ?? '',
    Parents: u.parents,
    CreatedAt: timestampFromDate(u.createdAt),
    LastUsedAt: u.lastUsedAt ? timestampFromDate(u.lastUsedAt) : undefined,
    UsageCount: BigInt(u.usageCount),
    Description: u.description,
    RecordType: u.recordType,
    Shared: u.shared,
  });
}

export function statusResponse(batch: ProgressEvent[]): StatusResponse {
  const resp = create(StatusResponseSchema, {});
  const ts = (d: Date | undefined) => (d ? timestampFromDate(d) : undefined);
  for (const ev of batch) {
    switch (ev.kind) {
      case 'vertex': {
        const v = ev.vertex;
        resp.vertexes.push(
          create(VertexSchema, {
            digest: v.digest,
            inputs: v.inputs,
            name: v.name,
            cached: v.cached ?? false,
            started: ts(v.started),
            completed: ts(v.completed),
            error: v.error ?? '',
            progressGroup: v.progressGroup ? create(ProgressGroupSchema, v.progressGroup) : undefined,
          }),
        );
        break;
      }
      case 'status': {
        const s = ev.status;
        resp.statuses.push(
          create(VertexStatusSchema, {
            ID: s.id,
            vertex: s.vertex,
            name: s.name,
            current: BigInt(Math.round(s.current)),
            total: BigInt(Math.round(s.total)),
            timestamp: ts(s.timestamp),
            started: ts(s.started),
            completed: ts(s.completed),
          }),
        );
        break;
      }
      case 'log':
        resp.logs.push(
          create(VertexLogSchema, {
            vertex: ev.log.vertex,
            timestamp: ts(ev.log.timestamp),
            stream: BigInt(ev.log.stream),
            msg: ev.log.data,
          }),
        );
        break;
      case 'warning':
        resp.warnings.push(
          create(VertexWarningSchema, {
            vertex: ev.warning.vertex,
            level: BigInt(ev.warning.level),
            short: Buffer.from(ev.warning.short),
            detail: ev.warning.detail.map((d) => Buffer.from(d)),
            url: ev.warning.url ?? '',
          }),
        );
        break;
    }
  }
  return resp;
}
