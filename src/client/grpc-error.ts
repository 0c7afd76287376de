import { GRPC_CODE_NAMES, GrpcCode, loomCodeOfGrpc, SessionCallError } from '../session/tunnel/grpc-status.js';
import { CancelledError, LoomError, withSources, type ErrorSource } from '../util/errors.js';
import { detailsSources } from './error-source.js';

/** A failed call to the daemon, its message formatted as upstream's client does. */
export class DaemonCallError extends LoomError {
  readonly grpcCode: number;
  constructor(opts: { grpcCode: number; message: string; cause?: unknown }) {
    super(loomCodeOfGrpc(opts.grpcCode), opts.message, { cause: opts.cause });
    this.name = 'DaemonCallError';
    this.grpcCode = opts.grpcCode;
  }
}

/**
 * `<prefix>: <Code>: <message>` as upstream's grpcerrors prints a status (no code for UNKNOWN,
 * which is what build failures carry). Non-gRPC errors keep their message.
 */
export function fromGrpcError(err: unknown, prefix?: string): Error {
  const pre = prefix ? `${prefix}: ` : '';
  const status = (code: number, msg: string, sources: ErrorSource[]): Error => {
    const text = code === 2 || code === 0 ? msg : `${GRPC_CODE_NAMES[code] ?? `Code(${code})`}: ${msg}`;
    return withSources(new DaemonCallError({ grpcCode: code, message: pre + text, cause: err }), sources);
  };
  // A call's status (loom's own client), as grpc-go's client reports it.
  if (err instanceof SessionCallError) return status(err.grpcCode, err.message, err.details ? detailsSources(err.details) : []);
  if (err instanceof CancelledError) return status(GrpcCode.CANCELLED, 'context canceled', []);
  if (err instanceof LoomError) {
    if (!prefix) return err;
    return new LoomError(err.code, pre + err.message, { cause: err });
  }
  const e = err instanceof Error ? err : new Error(String(err));
  if (!prefix) return e;
  return new LoomError('INTERNAL', pre + e.message, { cause: e });
}
