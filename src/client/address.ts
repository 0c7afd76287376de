import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { InvalidArgumentError } from '../util/errors.js';

/** Where buildkitd listens unless told otherwise (upstream's appdefaults.Address on Linux). */
export const DEFAULT_ADDRESS = 'unix:///run/buildkit/buildkitd.sock';

/** The address buildctl uses without --addr: $BUILDKIT_HOST, else the default socket. */
export function defaultAddress(env: NodeJS.ProcessEnv = process.env): string {
  return env.BUILDKIT_HOST || DEFAULT_ADDRESS;
}

export type DaemonAddress =
  | { kind: 'unix'; path: string; address: string }
  | { kind: 'tcp'; host: string; port: number; address: string };

/** Parses `unix:///path` or `tcp://host:port`; anything else is refused with the address named. */
export function parseAddress(address: string): DaemonAddress {
  const m = /^([a-z0-9+.-]+):\/\/(.*)$/i.exec(address);
  if (!m) throw new InvalidArgumentError(`invalid address ${address}`);
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;
  if (scheme === 'unix') {
    if (!rest) throw new InvalidArgumentError(`invalid address ${address}: no socket path`);
    return { kind: 'unix', path: rest, address };
  }
  if (scheme === 'tcp') {
    let u: URL;
    try {
      u = new URL(`tcp://${rest}`);
    } catch {
      throw new InvalidArgumentError(`invalid address ${address}`);
    }
    const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
    if (!host || !u.port) throw new InvalidArgumentError(`invalid address ${address}: expected tcp://host:port`);
    return { kind: 'tcp', host, port: Number(u.port), address };
  }
  throw new InvalidArgumentError(`invalid address ${address}: unsupported scheme ${scheme}:// (loom's buildctl speaks unix:// and tcp://)`);
}

export interface TlsFiles {
  /** CA certificate to verify the daemon with. */
  caCert?: string;
  /** Client certificate and key, for mutual TLS. */
  cert?: string;
  key?: string;
  /** Name to verify the daemon's certificate against; default: the address's host. */
  serverName?: string;
}

export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName?: string;
}

/** Reads the TLS files, naming the one that cannot be read. A cert without a key (or the reverse) is refused. */
export function loadTls(t: TlsFiles): TlsMaterial | undefined {
  if (!t.caCert && !t.cert && !t.key) return undefined;
  if (Boolean(t.cert) !== Boolean(t.key)) {
    throw new InvalidArgumentError('--tlscert and --tlskey must be given together');
  }
  const read = (what: string, p: string | undefined): Buffer | undefined => {
    if (!p) return undefined;
    try {
      return readFileSync(p);
    } catch (err) {
      throw new InvalidArgumentError(`could not read ${what} ${p}: ${(err as Error).message}`, { cause: err });
    }
  };
  return { ca: read('CA certificate', t.caCert) ?? deferredRoots(), cert: read('certificate', t.cert), key: read('key', t.key), serverName: t.serverName };
}

/**
 * The CA certificates Node would have trusted by default had bin/buildctl not moved
 * NODE_EXTRA_CA_CERTS to LOOM_EXTRA_CA_CERTS (Node reads that file at start-up, which cost every
 * command ~80 ms): Node's bundled roots and the file's. Undefined when nothing was moved, and then
 * Node's own default store applies. An unreadable file is skipped with Node's warning.
 */
export function deferredRoots(env: NodeJS.ProcessEnv = process.env): Buffer | undefined {
  const file = env.LOOM_EXTRA_CA_CERTS;
  if (!file) return undefined;
  let extra: string;
  try {
    extra = readFileSync(file, 'utf8');
  } catch (err) {
    process.emitWarning(`Ignoring extra certs from \`${file}\`, load failed: ${(err as Error).message}`);
    return undefined;
  }
  return Buffer.from(`${tls.rootCertificates.join('\n')}\n${extra}`);
}
