import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Metadata } from '@grpc/grpc-js';
import type {
  sendUnaryData,
  ServerDuplexStream,
  ServerUnaryCall,
  ServerWritableStream,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  BuildHistoryEventSchema,
  BuildHistoryEventType,
  BuildHistoryRecordSchema,
  ExporterSchema,
  UpdateBuildHistoryResponseSchema,
  type BuildHistoryRecord,
  type BuildHistoryRequest,
  type UpdateBuildHistoryRequest,
  DiskUsageResponseSchema,
  InfoResponseSchema,
  ListWorkersResponseSchema,
  UsageRecordSchema,
  SolveResponseSchema,
  type BytesMessage,
  type DiskUsageRequest,
  type InfoRequest,
  type ListWorkersRequest,
  type PruneRequest,
  type SolveRequest,
  type StatusRequest,
} from '../gen/buildkit/control_pb.js';
import { BuildkitVersionSchema, GCPolicySchema, WorkerRecordSchema } from '../gen/buildkit/worker_pb.js';
import { HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from '../gen/grpc/health_pb.js';
import type { SessionManager } from '../session/manager.js';
import { bytesDuplex } from '../session/tunnel/bytes-duplex.js';
import { createSessionCaller } from '../session/tunnel/caller.js';
import { parseSessionMetadata } from '../session/tunnel/metadata.js';
import { CancelledError, NotFoundError, UnimplementedError, type ErrorCode } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import type { ProgressBus } from '../util/progress.js';
import { buildStatusCode, failStream, toServiceError } from './grpc-status.js';
import type { BuildRecordData, BuildRecordEvent, BuildRecords } from './build-records.js';
import { StatusSchema } from '../gen/google/rpc/status_pb.js';
import { StatusPacer } from './status-pacer.js';
import { statusResponse } from './status-codec.js';
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
  /** The records of builds (absent: the history API answers Unimplemented). */
  history?: Pick<BuildRecords, 'active' | 'list' | 'get' | 'subscribe' | 'update'>;
}

const EVENT_TYPES: Record<BuildRecordEvent['type'], BuildHistoryEventType> = {
  started: BuildHistoryEventType.STARTED,
  complete: BuildHistoryEventType.COMPLETE,
  deleted: BuildHistoryEventType.DELETED,
};

/**
 * A build's record as BuildKit's history API gives it. Step counts are upstream's (every vertex
 * the build's progress told of, `docker buildx history inspect`'s "Build Steps"); records of a
 * running build, and those older loom kept, count loom's steps instead.
 */
export function historyRecord(r: BuildRecordData): BuildHistoryRecord {
  const steps = r.stepsCached + r.stepsRun;
  const v = r.vertices ?? { total: steps, cached: r.stepsCached, completed: steps };
  return create(BuildHistoryRecordSchema, {
    Ref: r.ref,
    Frontend: r.frontend,
    FrontendAttrs: r.frontendAttrs ?? {},
    Exporters: (r.exporters ?? []).map((e) => create(ExporterSchema, { Type: e.type, Attrs: e.attrs })),
    error: r.error ? create(StatusSchema, { code: buildStatusCode((r.errorCode ?? 'UNKNOWN') as ErrorCode), message: r.error }) : undefined,
    CreatedAt: timestampFromDate(new Date(r.startedAt)),
    CompletedAt: r.completedAt ? timestampFromDate(new Date(r.completedAt)) : undefined,
    ExporterResponse: r.exporterResponse ?? {},
    pinned: r.pinned ?? false,
    numCachedSteps: v.cached,
    numTotalSteps: v.total,
    numCompletedSteps: v.completed,
  });
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
          maxUsedSpace: Number(r.maxUsedSpace),
          minFreeSpace: Number(r.minFreeSpace),
        },
        (u) => call.write(usageRecord(u)),
        ac.signal,
      ).then(
        () => call.end(),
        (err) => failStream(call, err),
      );
    },

    // As upstream's: the builds running now (STARTED), then unless ActiveOnly the completed records,
    // newest first and at most Limit of them (COMPLETE); then with EarlyExit the stream ends, else
    // it goes on with every build that starts or completes and every record deleted. Ref narrows
    // all of it to one build. A header carries the daemon's time (buildx shows ages by it).
    listenBuildHistory(call: ServerWritableStream<BuildHistoryRequest, unknown>) {
      const h = b.history;
      if (!h) {
        failStream(call, new UnimplementedError('this daemon keeps no build history'));
        return;
      }
      const req = call.request;
      const wanted = (r: BuildRecordData) => !req.Ref || r.ref === req.Ref;
      const send = (type: BuildHistoryEventType, r: BuildRecordData) => call.write(create(BuildHistoryEventSchema, { type, record: historyRecord(r) }));
      const md = new Metadata();
      md.set('buildkit-current-timestamp', new Date().toISOString());
      call.sendMetadata(md);
      try {
        for (const r of h.active()) if (wanted(r)) send(BuildHistoryEventType.STARTED, r);
        if (!req.ActiveOnly) {
          const done = req.Ref ? [h.get(req.Ref)].filter((r): r is BuildRecordData => r !== undefined) : h.list(req.Limit > 0 ? req.Limit : Number.MAX_SAFE_INTEGER);
          for (const r of done) send(BuildHistoryEventType.COMPLETE, r);
        }
      } catch (err) {
        failStream(call, err);
        return;
      }
      if (req.EarlyExit) {
        call.end();
        return;
      }
      // Subscribed in the same turn as the snapshot was taken: no event falls between the two.
      const unsubscribe = h.subscribe((ev) => {
        if (wanted(ev.record)) send(EVENT_TYPES[ev.type], ev.record);
      });
      call.on('cancelled', unsubscribe);
      call.on('close', unsubscribe);
    },

    updateBuildHistory(call: ServerUnaryCall<UpdateBuildHistoryRequest, unknown>, cb: sendUnaryData<unknown>) {
      const h = b.history;
      if (!h) {
        cb(toServiceError(new UnimplementedError('this daemon keeps no build history')) as never, null);
        return;
      }
      const req = call.request;
      // Finalize alone: records here are complete when the build ends.
      if (!req.Delete && req.Finalize) {
        cb(null, create(UpdateBuildHistoryResponseSchema, {}));
        return;
      }
      if (!h.update(req.Ref, req.Delete ? { delete: true } : { pinned: req.Pinned })) {
        cb(toServiceError(new NotFoundError(`build record ${req.Ref} not found`)) as never, null);
        return;
      }
      cb(null, create(UpdateBuildHistoryResponseSchema, {}));
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
        maxUsedSpace: BigInt(p.maxUsedSpace ?? 0),
        minFreeSpace: BigInt(p.minFreeSpace ?? 0),
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

