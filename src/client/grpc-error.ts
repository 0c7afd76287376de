import type { ServiceError } from '@grpc/grpc-js';
import { LoomError, withSources, type ErrorCode } from '../util/errors.js';
import { statusSources } from './error-source.js';

/** Go's names for gRPC codes, which upstream's client puts before a status message. */
const GO_CODE_NAMES = [
  'OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists',
  'PermissionDenied', 'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange',
  'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated',
];

const LOOM_CODES: Record<number, ErrorCode> = {
  1: 'CANCELLED', 3: 'INVALID_ARGUMENT', 4: 'DEADLINE_EXCEEDED', 5: 'NOT_FOUND', 6: 'ALREADY_EXISTS',
  7: 'PERMISSION_DENIED', 9: 'FAILED_PRECONDITION', 12: 'UNIMPLEMENTED', 14: 'UNAVAILABLE', 16: 'UNAUTHENTICATED',
};

/** A failed call to the daemon, its message formatted as upstream's client does. */
export class DaemonCallError extends LoomError {
  readonly grpcCode: number;
  constructor(opts: { grpcCode: number; message: string; cause?: unknown }) {
    super(LOOM_CODES[opts.grpcCode] ?? 'INTERNAL', opts.message, { cause: opts.cause });
    this.name = 'DaemonCallError';
    this.grpcCode = opts.grpcCode;
  }
}

export function isServiceError(err: unknown): err is ServiceError {
  return typeof err === 'object' && err !== null && typeof (err as ServiceError).code === 'number' && 'details' in err;
}

/**
 * `<prefix>: <Code>: <message>` as upstream's grpcerrors prints a status (no code for UNKNOWN,
 * which is what build failures carry). Non-gRPC errors keep their message.
 */
export function fromGrpcError(err: unknown, prefix?: string): Error {
  const pre = prefix ? `${prefix}: ` : '';
  if (isServiceError(err)) {
    const code = err.code;
    const msg = err.details || err.message;
    const text = code === 2 || code === 0 ? msg : `${GO_CODE_NAMES[code] ?? `Code(${code})`}: ${msg}`;
    return withSources(new DaemonCallError({ grpcCode: code, message: pre + text, cause: err }), statusSources(err));
  }
  if (err instanceof LoomError) {
    if (!prefix) return err;
    return new LoomError(err.code, pre + err.message, { cause: err });
  }
  const e = err instanceof Error ? err : new Error(String(err));
  if (!prefix) return e;
  return new LoomError('INTERNAL', pre + e.message, { cause: e });
}
