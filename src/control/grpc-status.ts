import { status, type ServiceError } from '@grpc/grpc-js';
import { Metadata } from '@grpc/grpc-js';
import { create, toBinary } from '@bufbuild/protobuf';
import { AnySchema } from '@bufbuild/protobuf/wkt';
import { StatusSchema } from '../gen/google/rpc/status_pb.js';
import { clarifyNameError, codeOf, errorMessage, errorSources, errorStatusDetails, type ErrorCode, type ErrorSource } from '../util/errors.js';
import { log } from '../util/log.js';
import { goRangesJSON } from '../content/go-json.js';

/**
 * How BuildKit registers errdefs.Source with typeurl (github.com/moby/buildkit + errdefs.Source+json);
 * the value is the Go struct as encoding/json writes it (zero fields left out), not protobuf.
 */
const SOURCE_TYPE_URL = 'github.com/moby/buildkit/errdefs.Source+json';
const SOURCE_TYPE_SUFFIX = 'errdefs.Source+json';

const CODES: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  CANCELLED: status.CANCELLED,
  UNIMPLEMENTED: status.UNIMPLEMENTED,
  INTERNAL: status.UNKNOWN,
  UNKNOWN: status.UNKNOWN,
};

/**
 * Codes a failed build keeps: upstream's build errors are plain (gRPC Unknown, which clients print
 * with no code in front: `failed to solve: localhost:5000/nope:latest: not found`) except a
 * cancelled build's; loom adds Unimplemented for what it does not support.
 */
const BUILD_ERROR_CODES: ReadonlySet<ErrorCode> = new Set(['CANCELLED', 'DEADLINE_EXCEEDED', 'UNIMPLEMENTED', 'INTERNAL']);

/** The gRPC code a build ending with an error of `code` answers (as toServiceError with `build`). */
export function buildStatusCode(code: ErrorCode): status {
  return CODES[BUILD_ERROR_CODES.has(code) ? code : 'UNKNOWN'];
}

/**
 * The one place an error becomes a gRPC status. Unexpected errors are logged with their stack.
 * `build`: the error ends a build (Solve), and carries only the codes upstream's would.
 */
export function toServiceError(caught: unknown, opts: { build?: boolean } = {}): Partial<ServiceError> {
  const err = clarifyNameError(caught);
  let code = codeOf(err);
  if (code === 'INTERNAL') log.child({ sub: 'control' }).error({ err }, 'unexpected error');
  if (opts.build && !BUILD_ERROR_CODES.has(code)) code = 'UNKNOWN';
  const metadata = new Metadata();
  // As upstream's grpcerrors: the status again in the trailer with typed details. errdefs.Source
  // makes clients print the Dockerfile lines an error is about; details a peer sent (a client's
  // Return) go back as they came.
  const raw = errorStatusDetails(err);
  const details = raw.map((d) => create(AnySchema, { typeUrl: d.typeUrl, value: d.value }));
  if (!raw.some((d) => d.typeUrl.endsWith(SOURCE_TYPE_SUFFIX))) {
    for (const src of errorSources(err)) {
      details.push(create(AnySchema, { typeUrl: SOURCE_TYPE_URL, value: Buffer.from(JSON.stringify(sourceJson(src))) }));
    }
  }
  if (details.length > 0) {
    const st = create(StatusSchema, { code: CODES[code], message: errorMessage(err), details });
    metadata.set('grpc-status-details-bin', Buffer.from(toBinary(StatusSchema, st)));
  }
  return { code: CODES[code], details: errorMessage(err), metadata };
}

/** errdefs.Source as Go's encoding/json writes the generated struct. */
function sourceJson(src: ErrorSource): Record<string, unknown> {
  const info: Record<string, unknown> = {};
  if (src.filename) info.filename = src.filename;
  if (src.data.length) info.data = Buffer.from(src.data).toString('base64');
  const out: Record<string, unknown> = { info };
  if (src.ranges.length) out.ranges = goRangesJSON(src.ranges);
  return out;
}

/**
 * Ends a server-streaming or bidirectional call with `caught`'s status. grpc-js sends a stream's
 * status when its writable side finishes, and its 'error' handler does that; `destroy(err)` would
 * close the stream without any status, leaving the client waiting for one.
 */
export function failStream(call: { emit(event: 'error', err: Error): boolean; writableEnded: boolean }, caught: unknown): void {
  if (call.writableEnded) return;
  call.emit('error', Object.assign(new Error(errorMessage(clarifyNameError(caught))), toServiceError(caught)));
}
