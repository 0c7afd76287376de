/**
 * loom's error model. Every failure carries a stable `code` that control/ maps to a gRPC status
 * (see control/grpc-status.ts); nothing below control/ knows about gRPC.
 */

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'UNAUTHENTICATED'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  /**
   * The build's own failure (a step that exits non-zero, a Dockerfile that does not parse):
   * gRPC Unknown, as upstream answers them, and not an unexpected error of the daemon.
   */
  | 'UNKNOWN';

export class LoomError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'LoomError';
  }
}

export class InvalidArgumentError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_ARGUMENT', message, options);
  }
}

export class NotFoundError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NOT_FOUND', message, options);
  }
}

export class PermissionDeniedError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PERMISSION_DENIED', message, options);
  }
}

export class UnauthenticatedError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNAUTHENTICATED', message, options);
  }
}

export class UnavailableError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNAVAILABLE', message, options);
  }
}

export class UnimplementedError extends LoomError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('UNIMPLEMENTED', message, options);
  }
}

export class CancelledError extends LoomError {
  constructor(message = 'context canceled', options?: { cause?: unknown }) {
    super('CANCELLED', message, options);
  }
}

/**
 * A step's cache key could not be computed (a copy source that is not there): the build fails
 * with `failed to compute cache key: <detail>`, and the step's own progress shows the detail
 * alone, as upstream's do.
 */
export class CacheKeyError extends LoomError {
  readonly detail: string;

  constructor(code: ErrorCode, detail: string, options?: { cause?: unknown }) {
    super(code, `failed to compute cache key: ${detail}`, options);
    this.detail = detail;
  }
}

/**
 * A step of the graph failed. The message reads as upstream's: the step's name, then the cause,
 * so `buildctl` prints which vertex failed and why.
 */
export class VertexError extends LoomError {
  readonly digest: string;
  readonly vertexName: string;

  constructor(opts: { digest: string; name: string; cause: unknown }) {
    const inner = errorMessage(opts.cause);
    super(codeOf(opts.cause), inner, { cause: opts.cause });
    this.digest = opts.digest;
    this.vertexName = opts.name;
  }
}

export function codeOf(err: unknown): ErrorCode {
  if (err instanceof LoomError) return err.code;
  if (isAbortError(err)) return 'CANCELLED';
  return 'INTERNAL';
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * An error of a file system call on a path holding U+FFFD that was not found: Node hands out file
 * names as UTF-8 strings, so a name whose bytes are not UTF-8 comes back from a directory listing
 * with U+FFFD in their place and names no file. Such an error says so (loom cannot keep such names
 * yet) instead of reporting a missing file; any other error is returned as it is.
 */
export function clarifyNameError(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException | undefined;
  if (!(err instanceof Error) || (e!.code !== 'ENOENT' && e!.code !== 'ENOTDIR') || typeof e!.path !== 'string' || !e!.path.includes('\uFFFD')) return err;
  return new UnimplementedError(`a file name is not valid UTF-8 (shown with U+FFFD): ${inSnapshot(e!.path)}: loom cannot store such names yet`, { cause: err });
}

/** A path inside a snapshot's tree (`<state>/.../snapshots/<id>/fs/a/b`) as the build sees it (`/a/b`); any other path as it is. */
function inSnapshot(p: string): string {
  const m = /\/snapshots\/[^/]+\/(?:fs|view)(\/.*)?$/.exec(p);
  return m ? (m[1] ?? '/') : p;
}

export function isAbortError(err: unknown): boolean {
  return (
    err instanceof CancelledError ||
    (err instanceof Error && (err.name === 'AbortError' || (err as NodeJS.ErrnoException).code === 'ABORT_ERR'))
  );
}

/** Throws a CancelledError when the signal has fired: the cheap check between units of work. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new CancelledError('context canceled', { cause: signal.reason });
}

/** A span of a build's source file (a Dockerfile) that an error is about; clients print its lines. */
export interface ErrorSource {
  filename: string;
  data: Uint8Array;
  language: string;
  /** Lines are 1-based, as in LLB source maps. */
  ranges: { start: { line: number; character: number }; end: { line: number; character: number } }[];
}

const SOURCES = new WeakMap<object, ErrorSource[]>();

/** Attaches source spans to an error (kept when it is wrapped: see errorSources). */
export function withSources<T>(err: T, sources: readonly ErrorSource[]): T {
  if (typeof err === 'object' && err !== null && sources.length > 0 && !SOURCES.has(err)) SOURCES.set(err, [...sources]);
  return err;
}

/** The source spans of an error or of the first error in its cause chain that has some. */
export function errorSources(err: unknown): ErrorSource[] {
  return inCauseChain(SOURCES, err) ?? [];
}

/** What `map` holds for an error or the first error of its cause chain it knows. */
function inCauseChain<V>(map: WeakMap<object, V>, err: unknown): V | undefined {
  for (let e: unknown = err, depth = 0; typeof e === 'object' && e !== null && depth < 32; e = (e as { cause?: unknown }).cause, depth++) {
    const v = map.get(e);
    if (v) return v;
  }
  return undefined;
}

/** google.rpc.Status details (protobuf Any) an error carries as they came from a peer. */
export interface StatusDetail {
  typeUrl: string;
  value: Uint8Array;
}

const DETAILS = new WeakMap<object, StatusDetail[]>();

/** Keeps a peer's status details on an error, so they reach the client again (the gateway's Return). */
export function withStatusDetails<T>(err: T, details: readonly StatusDetail[]): T {
  if (typeof err === 'object' && err !== null && details.length > 0) DETAILS.set(err, [...details]);
  return err;
}

export function errorStatusDetails(err: unknown): StatusDetail[] {
  return inCauseChain(DETAILS, err) ?? [];
}
