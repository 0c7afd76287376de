/**
 * Registry failures as LoomErrors that name what failed (host, repository, reference or digest):
 * statuses as containerd words them (`<ref>: not found`, `unexpected status from GET request to
 * <url>: 500 Internal Server Error`), transport errors as unavailable, timeouts as deadline exceeded.
 */
import { STATUS_CODES } from 'node:http';
import { goUrlError } from '../util/go-net-error.js';
import type { Dispatcher } from 'undici';
import {
  CancelledError,
  InvalidArgumentError,
  isAbortError,
  LoomError,
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
} from '../util/errors.js';

/** A request that got no HTTP response at all (refused, reset, TLS failure, connect timeout). */
export class RegistryTransportError extends UnavailableError {
  readonly url: string;
  constructor(message: string, url: string, options?: { cause?: unknown }) {
    super(message, options);
    this.url = url;
  }
}

export function statusLine(status: number): string {
  return `${status} ${STATUS_CODES[status] ?? ''}`.trim();
}

/** The URL without its query (upload state and tokens stay out of messages and logs). */
export function redactURL(url: string): string {
  try {
    const u = new URL(url);
    u.search = '';
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return url;
  }
}

/** The first `errors[].code: message` of a distribution error body, if it has one. */
async function registryMessage(res: Dispatcher.ResponseData): Promise<string> {
  let text = '';
  try {
    text = await res.body.text();
  } catch {
    return '';
  }
  try {
    const v = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string; detail?: unknown }> };
    const e = v.errors?.[0];
    if (e) return [e.code?.toLowerCase(), e.message].filter(Boolean).join(': ');
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.trim().slice(0, 200);
}

/**
 * The error for a response with a status the caller did not expect. Consumes the body.
 * `notFoundName` is what a 404 reports as missing (`127.0.0.1:5000/busybox:nope`).
 */
export async function statusError(
  res: Dispatcher.ResponseData,
  req: { method: string; url: string },
  ctx: { what: string; notFoundName?: string },
): Promise<LoomError> {
  const status = res.statusCode;
  const msg = await registryMessage(res);
  const detail = msg ? `: ${msg}` : '';
  const where = `unexpected status from ${req.method} request to ${redactURL(req.url)}: ${statusLine(status)}${detail}`;
  if (status === 404) return new NotFoundError(`${ctx.notFoundName ?? ctx.what}: not found`);
  if (status === 401) return new UnauthenticatedError(`failed to authorize: ${ctx.what}: ${statusLine(status)}${detail}`);
  if (status === 403) return new PermissionDeniedError(`${ctx.what}: access denied: ${where}`);
  if (status === 429 || status >= 500) return new UnavailableError(`${ctx.what}: ${where}`);
  if (status === 400) return new InvalidArgumentError(`${ctx.what}: ${where}`);
  return new LoomError('FAILED_PRECONDITION', `${ctx.what}: ${where}`);
}

/** Wraps an error thrown by undici before any response arrived. */
export function transportError(err: unknown, req: { method: string; url: string }, signal?: AbortSignal): LoomError {
  if (err instanceof LoomError) return err;
  if (signal?.aborted || isAbortError(err)) return new CancelledError('context canceled', { cause: err });
  const e = err as NodeJS.ErrnoException & { code?: string };
  const url = redactURL(req.url);
  if (e?.code === 'UND_ERR_HEADERS_TIMEOUT' || e?.code === 'UND_ERR_CONNECT_TIMEOUT' || e?.code === 'UND_ERR_BODY_TIMEOUT') {
    return new LoomError('DEADLINE_EXCEEDED', `${req.method} ${url}: timeout: ${e.message}`, { cause: err });
  }
  // Go's url.Error, as upstream's daemon reports it: `Get "https://host/v2/...": dial tcp ...`.
  return new RegistryTransportError(`failed to do request: ${goUrlError(req.method, url, err)}`, req.url, { cause: err });
}
