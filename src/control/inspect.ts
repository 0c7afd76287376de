import { create } from '@bufbuild/protobuf';
import type { sendUnaryData, ServerUnaryCall, UntypedServiceImplementation } from '@grpc/grpc-js';
import { BuildRecordSchema, BuildsResponseSchema, StepRecordSchema, type BuildsRequest } from '../gen/loom/inspect_pb.js';
import { NotFoundError } from '../util/errors.js';
import type { BuildRecordData, BuildRecords } from './build-records.js';
import { toServiceError } from './grpc-status.js';

/** loom.v1.Inspect: the records of recent builds (proto/loom/inspect.proto). */
export function inspectHandlers(records: BuildRecords): UntypedServiceImplementation {
  return {
    builds(call: ServerUnaryCall<BuildsRequest, unknown>, cb: sendUnaryData<unknown>) {
      try {
        const req = call.request;
        let list: BuildRecordData[];
        if (req.ref) {
          const r = records.get(req.ref);
          if (!r) throw new NotFoundError(`no record of build ${req.ref} (the daemon keeps its 200 most recent builds)`);
          list = [r];
        } else {
          list = records.list(req.limit > 0 ? req.limit : 20);
        }
        cb(null, create(BuildsResponseSchema, { builds: list.map(toPb) }));
      } catch (err) {
        cb(toServiceError(err));
      }
    },
  };
}

function toPb(r: BuildRecordData) {
  return create(BuildRecordSchema, {
    ref: r.ref,
    frontend: r.frontend,
    startedAt: BigInt(r.startedAt),
    completedAt: BigInt(r.completedAt),
    error: r.error,
    stepsCached: r.stepsCached,
    stepsRun: r.stepsRun,
    bytesReused: BigInt(r.bytesReused),
    steps: r.steps.map((s) => create(StepRecordSchema, { ...s, durationMs: BigInt(s.durationMs), bytes: BigInt(s.bytes) })),
  });
}
