import { status, type ServiceError } from '@grpc/grpc-js';
import { Metadata } from '@grpc/grpc-js';
import { codeOf, errorMessage, type ErrorCode } from '../util/errors.js';
import { log } from '../util/log.js';

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
};

/** The one place an error becomes a gRPC status. Unexpected errors are logged with their stack. */
export function toServiceError(err: unknown): Partial<ServiceError> {
  const code = codeOf(err);
  if (code === 'INTERNAL') log.child({ sub: 'control' }).error({ err }, 'unexpected error');
  return { code: CODES[code], details: errorMessage(err), metadata: new Metadata() };
}
