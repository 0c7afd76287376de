/**
 * Errors of the Dockerfile frontend. The message reads as upstream's; `location` holds the
 * Dockerfile lines concerned (1-based, one range per line, as BuildKit's parser.Range) so the
 * daemon can attach the source snippet clients print (`Dockerfile:3 ... >>> RUN false`).
 */
import { InvalidArgumentError, LoomError, type ErrorCode } from '../../util/errors.js';

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

export class DockerfileError extends InvalidArgumentError {
  /** Lines of the Dockerfile this error is about; empty when it concerns no line. */
  location: Range[];

  constructor(message: string, opts: { location?: Range[]; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    // A Dockerfile that does not parse or convert is the build's failure, answered with gRPC
    // Unknown as upstream's frontend errors are (clients print no code before the message).
    (this as { code: string }).code = 'UNKNOWN';
    this.name = 'DockerfileError';
    this.location = opts.location ?? [];
  }
}

/**
 * Attaches `location` to an error raised while handling an instruction, keeping an inner location
 * (as upstream's WithLocation keeps the first one set). LoomErrors of another kind (a failed image
 * resolution, a cancelled build) keep their class and code.
 */
export function withLocation(err: unknown, location: Range[]): LoomError {
  if (err instanceof DockerfileError) {
    if (err.location.length === 0) err.location = location;
    return err;
  }
  if (err instanceof LoomError) {
    const e = err as LoomError & { location?: Range[] };
    if (!e.location?.length) e.location = location;
    return e;
  }
  return new DockerfileError(err instanceof Error ? err.message : String(err), { location, cause: err });
}

/** A LoomError with a specific code that also carries a Dockerfile location. */
export class LocatedError extends LoomError {
  location: Range[];
  constructor(code: ErrorCode, message: string, opts: { location?: Range[]; cause?: unknown } = {}) {
    super(code, message, { cause: opts.cause });
    this.location = opts.location ?? [];
  }
}
