import { LoomError, codeOf, errorMessage, type ErrorCode } from '../../util/errors.js';
import { decodeRpcStatus } from '../../util/proto-wire.js';

/**
 * gRPC status codes as numbers on the wire, and their mapping to loom's error codes.
 * The tunnel speaks gRPC by hand (no grpc-js), so it owns this mapping for the session only;
 * control/ has its own for the daemon's public API.
 */
export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const toLoom: Record<number, ErrorCode> = {
  1: 'CANCELLED',
  2: 'UNKNOWN',
  3: 'INVALID_ARGUMENT',
  4: 'DEADLINE_EXCEEDED',
  5: 'NOT_FOUND',
  6: 'ALREADY_EXISTS',
  7: 'PERMISSION_DENIED',
  9: 'FAILED_PRECONDITION',
  12: 'UNIMPLEMENTED',
  14: 'UNAVAILABLE',
  16: 'UNAUTHENTICATED',
};

/** Go's names of the gRPC codes (codes.Code.String()), as clients print them. */
export const GRPC_CODE_NAMES: Record<number, string> = {
  1: 'Canceled',
  2: 'Unknown',
  3: 'InvalidArgument',
  4: 'DeadlineExceeded',
  5: 'NotFound',
  6: 'AlreadyExists',
  7: 'PermissionDenied',
  8: 'ResourceExhausted',
  9: 'FailedPrecondition',
  10: 'Aborted',
  11: 'OutOfRange',
  12: 'Unimplemented',
  13: 'Internal',
  14: 'Unavailable',
  15: 'DataLoss',
  16: 'Unauthenticated',
};

/** loom's error code for a gRPC status code (INTERNAL for those loom has no code of its own for). */
export function loomCodeOfGrpc(code: number): ErrorCode {
  return toLoom[code] ?? 'INTERNAL';
}

/**
 * A failed call through the session: the peer's gRPC status as a LoomError. `grpcCode` keeps the
 * exact wire code, since several (UNKNOWN, ABORTED, DATA_LOSS...) have no loom code of their own.
 */
export class SessionCallError extends LoomError {
  readonly grpcCode: number;
  readonly method: string;
  /** grpc-status-details-bin: a google.rpc.Status with the error's details, when the peer sent one. */
  readonly details: Uint8Array | undefined;

  constructor(opts: { grpcCode: number; message: string; method: string; cause?: unknown; details?: Uint8Array }) {
    super(toLoom[opts.grpcCode] ?? 'INTERNAL', opts.message, { cause: opts.cause });
    this.name = 'SessionCallError';
    this.grpcCode = opts.grpcCode;
    this.method = opts.method;
    this.details = opts.details;
  }
}

export function grpcCodeOf(err: unknown): number {
  if (err instanceof SessionCallError) return err.grpcCode;
  const c = codeOf(err);
  return (GrpcCode as Record<string, number>)[c] ?? GrpcCode.UNKNOWN;
}

/** Header values are percent-encoded in grpc-message (gRPC over HTTP/2 spec). */
export function encodeGrpcMessage(msg: string): string {
  return msg.replace(/[^\x20-\x24\x26-\x7e]/gu, (c) =>
    Array.from(Buffer.from(c, 'utf8'))
      .map((b) => '%' + b.toString(16).toUpperCase().padStart(2, '0'))
      .join(''),
  );
}

export function decodeGrpcMessage(msg: string): string {
  try {
    return decodeURIComponent(msg);
  } catch {
    return msg;
  }
}

/** Trailers for a finished call: OK, or the error's code and message. */
export function statusTrailers(err: unknown): Record<string, string> {
  if (err === undefined || err === null) return { 'grpc-status': '0' };
  return { 'grpc-status': String(grpcCodeOf(err)), 'grpc-message': encodeGrpcMessage(errorMessage(err)) };
}

/**
 * Reads grpc-status/grpc-message (and grpc-status-details-bin when the message is empty) from
 * headers or trailers. Returns undefined when no status is present, null for OK.
 */
export function statusFromHeaders(
  h: Record<string, string | string[] | undefined>,
  method: string,
): SessionCallError | null | undefined {
  const raw = first(h['grpc-status']);
  if (raw === undefined) return undefined;
  const code = Number.parseInt(raw, 10);
  if (!Number.isInteger(code)) {
    return new SessionCallError({ grpcCode: GrpcCode.UNKNOWN, message: `invalid grpc-status ${JSON.stringify(raw)}`, method });
  }
  if (code === 0) return null;
  let message = decodeGrpcMessage(first(h['grpc-message']) ?? '');
  const rawDetails = first(h['grpc-status-details-bin']);
  const details = rawDetails ? Buffer.from(rawDetails, 'base64') : undefined;
  if (!message && details) {
    try {
      message = decodeRpcStatus(details).message;
    } catch {
      // A malformed details header must not hide the status code itself.
    }
  }
  return new SessionCallError({ grpcCode: code, message: message || `${method} failed with gRPC status ${code}`, method, details });
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
