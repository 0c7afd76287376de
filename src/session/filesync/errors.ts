import { LoomError, type ErrorCode } from '../../util/errors.js';

/**
 * A failed file transfer. `path` names the entry (relative to the transferred root) that was
 * being handled when it failed, when there was one.
 */
export class FileSyncError extends LoomError {
  readonly path: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { path?: string; cause?: unknown }) {
    super(code, message, options);
    this.name = 'FileSyncError';
    this.path = options?.path;
  }
}

/** The peer broke the protocol (bad path, order, id or packet): never retried. */
export function protocolError(message: string, path?: string): FileSyncError {
  return new FileSyncError('INVALID_ARGUMENT', message, { path });
}
