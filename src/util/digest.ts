import { createHash } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';

/** An OCI digest string, `sha256:<64 hex>`. */
export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

export function sha256(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function isDigest(s: string): s is Digest {
  return DIGEST_RE.test(s);
}

export function parseDigest(s: string, what = 'digest'): Digest {
  if (!isDigest(s)) throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(s)}`);
  return s;
}

export function digestHex(d: Digest): string {
  return d.slice('sha256:'.length);
}
