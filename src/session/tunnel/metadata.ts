import type { DescMethod } from '@bufbuild/protobuf';
import { InvalidArgumentError } from '../../util/errors.js';
import type { CallMetadata } from '../types.js';

/** The headers of a Control.Session call that tell the daemon who the session is and what it serves. */
export const SESSION_HEADER = {
  id: 'x-docker-expose-session-uuid',
  name: 'x-docker-expose-session-name',
  sharedKey: 'x-docker-expose-session-sharedkey',
  method: 'x-docker-expose-session-grpc-method',
} as const;

export interface SessionIdentity {
  id: string;
  name: string;
  sharedKey: string;
  /** Full method paths, as the client sent them. */
  methods: string[];
}

/** `/pkg.Service/Method`, the path gRPC puts in `:path`. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** The metadata a client sends when it opens Control.Session (keys lower case, as grpc-go's dialer sends them). */
export function sessionMetadata(s: SessionIdentity): CallMetadata {
  return {
    [SESSION_HEADER.id]: [s.id],
    [SESSION_HEADER.name]: [s.name],
    [SESSION_HEADER.sharedKey]: [s.sharedKey],
    [SESSION_HEADER.method]: [...s.methods],
  };
}

type MetadataValue = string | Buffer;
/** grpc-js's Metadata (its `get` keeps every value of a repeated key) or a plain record. */
export type MetadataSource =
  | { get(key: string): MetadataValue[] }
  | Record<string, MetadataValue | MetadataValue[] | undefined>;

/**
 * Reads the session's identity from Control.Session's request metadata (keys in any case).
 * Pass grpc-js's `call.metadata` itself: its getMap() joins repeated keys into one
 * `", "`-separated string, which this also undoes for the method list (paths hold no ", ").
 * A session without an id cannot be found by Solve, so that is refused here.
 */
export function parseSessionMetadata(md: MetadataSource): SessionIdentity {
  const get = (k: string): string[] => {
    let arr: MetadataValue[] = [];
    if (typeof (md as { get?: unknown }).get === 'function' && !(k in md)) {
      arr = (md as { get(key: string): MetadataValue[] }).get(k);
    } else {
      for (const [key, v] of Object.entries(md as Record<string, MetadataValue | MetadataValue[] | undefined>)) {
        if (key.toLowerCase() !== k || v === undefined) continue;
        arr = Array.isArray(v) ? v : [v];
        break;
      }
    }
    return arr.map((x) => (Buffer.isBuffer(x) ? x.toString('utf8') : String(x)));
  };
  const id = get(SESSION_HEADER.id)[0] ?? '';
  if (!id) throw new InvalidArgumentError(`session metadata has no ${SESSION_HEADER.id} header`);
  return {
    id,
    name: get(SESSION_HEADER.name)[0] ?? '',
    sharedKey: get(SESSION_HEADER.sharedKey)[0] ?? '',
    methods: get(SESSION_HEADER.method).flatMap((v) => v.split(', ')).filter((v) => v !== ''),
  };
}

/**
 * HTTP/2 headers for call metadata. Pseudo-headers and the ones gRPC itself owns are refused,
 * so a caller cannot break the framing by accident.
 */
export function metadataToHeaders(md: CallMetadata | undefined): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  if (!md) return out;
  for (const [k, v] of Object.entries(md)) {
    const key = k.toLowerCase();
    if (key.startsWith(':') || key.startsWith('grpc-') || RESERVED.has(key)) {
      throw new InvalidArgumentError(`metadata key ${JSON.stringify(k)} is reserved by gRPC`);
    }
    if (!/^[0-9a-z_.-]+$/.test(key)) throw new InvalidArgumentError(`invalid metadata key ${JSON.stringify(k)}`);
    out[key] = [...v];
  }
  return out;
}

const RESERVED = new Set(['content-type', 'te', 'user-agent', 'host', 'connection']);

/** Metadata from Node's flat raw header list (keeps every value of a repeated key, unlike the joined object). */
export function rawHeadersToMetadata(raw: string[]): CallMetadata {
  const out: CallMetadata = {};
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (k.startsWith(':')) continue;
    (out[k] ??= []).push(raw[i + 1]!);
  }
  return out;
}

/** Metadata from a Node header object (values of repeated keys may arrive joined; used for response headers). */
export function headersToMetadata(h: Record<string, string | string[] | number | undefined>): CallMetadata {
  const out: CallMetadata = {};
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith(':') || v === undefined) continue;
    out[k.toLowerCase()] = Array.isArray(v) ? v.map(String) : [String(v)];
  }
  return out;
}

/** grpc-timeout (`<digits><unit>`, unit H M S m u n) in milliseconds; undefined when absent or malformed. */
export function parseGrpcTimeout(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return undefined;
  const n = Number(m[1]);
  const scale: Record<string, number> = { H: 3600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };
  return n * scale[m[2]!]!;
}
