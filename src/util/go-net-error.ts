import { readFileSync } from 'node:fs';
import { maskPassword } from './mask-password.js';

/**
 * Failures of an HTTP request in the words of Go's net/http and net packages, which is how
 * upstream's daemon reports them: `Get "http://host/path": dial tcp 127.0.0.1:1: connect:
 * connection refused`.
 */
export function goUrlError(method: string, url: string, err: unknown): string {
  const m = method.charAt(0) + method.slice(1).toLowerCase();
  // net/http's stripPassword: the password shows as ***.
  return `${m} ${JSON.stringify(maskPassword(url, '***'))}: ${goNetError(err) ?? errorText(err)}`;
}

function errorText(err: unknown): string {
  const e = err as { message?: string; cause?: { message?: string } } | undefined;
  return [e?.message, e?.cause?.message].filter((s) => s && s !== 'fetch failed').join(': ') || String(err);
}

/**
 * A connection failure as Go's net package words it, for the system errors that have a wording
 * (connection refused, no route, unreachable network, unknown host); undefined for the others.
 */
export function goNetError(err: unknown): string | undefined {
  const sys = [err, (err as { cause?: unknown } | undefined)?.cause].find((x) => typeof (x as NodeJS.ErrnoException | undefined)?.code === 'string') as
    | (NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string })
    | undefined;
  if (!sys) return undefined;
  const addr = sys.address !== undefined ? `${sys.address.includes(':') ? `[${sys.address}]` : sys.address}:${sys.port ?? ''}` : undefined;
  switch (sys.code) {
    case 'ECONNREFUSED':
      return addr ? `dial tcp ${addr}: connect: connection refused` : undefined;
    case 'EHOSTUNREACH':
      return addr ? `dial tcp ${addr}: connect: no route to host` : undefined;
    case 'ENETUNREACH':
      return addr ? `dial tcp ${addr}: connect: network is unreachable` : undefined;
    case 'ENOTFOUND': {
      if (!sys.hostname) return undefined;
      const ns = firstNameserver();
      return `dial tcp: lookup ${sys.hostname}${ns ? ` on ${ns}` : ''}: no such host`;
    }
    default:
      return undefined;
  }
}

/** The first nameserver of /etc/resolv.conf with Go's port, as its resolver names the server it asked. */
function firstNameserver(): string | undefined {
  try {
    const m = /^\s*nameserver\s+(\S+)/m.exec(readFileSync('/etc/resolv.conf', 'utf8'));
    if (!m) return undefined;
    return m[1]!.includes(':') ? `[${m[1]}]:53` : `${m[1]}:53`;
  } catch {
    return undefined;
  }
}
