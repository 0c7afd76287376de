/**
 * Which endpoints serve a registry host, from buildkitd.toml's `[registry."host"]` sections:
 * mirrors first (pulls only), then the host itself; plain HTTP and skipped TLS verification as
 * configured. A loopback host without an explicit `http` setting is tried over HTTPS, then HTTP.
 */
import { isIP } from 'node:net';
import { DEFAULT_DOMAIN } from './reference.js';

/** One `[registry."host"]` section of buildkitd.toml. */
export interface RegistryHostConfig {
  /** Use plain HTTP. Unset: HTTPS, except loopback hosts, which fall back to HTTP. */
  http?: boolean;
  /** HTTPS without verifying the server's certificate. */
  insecure?: boolean;
  /** Hosts (optionally `host/path-prefix`) tried before this one for pulls. */
  mirrors?: string[];
  /** PEM files of extra certificate authorities to trust for this host. */
  ca?: string[];
}

export type RegistryHostsConfig = Record<string, RegistryHostConfig>;

export interface Endpoint {
  /** The host:port requests go to (and credentials are asked for). */
  host: string;
  scheme: 'http' | 'https';
  /** URL path before `/<repo>/...`: `/v2`, or `/v2/<prefix>` for a mirror with a path. */
  pathPrefix: string;
  /** Skip certificate verification (https only). */
  insecureTLS: boolean;
  ca: string[];
  /** A mirror of the requested host rather than the host itself. */
  mirror: boolean;
  /**
   * Set on the HTTPS endpoint of a loopback host whose scheme was not configured: when it fails at
   * the connection level the HTTP endpoint after it is tried.
   */
  tryNextOnConnectError: boolean;
}

/** The API host that serves a reference's domain: Docker Hub's domain is not its API host. */
export function apiHost(domain: string): string {
  return domain === DEFAULT_DOMAIN ? 'registry-1.docker.io' : domain;
}

/** containerd's MatchLocalhost: `localhost`, `::1` or any 127.x address, with or without a port. */
export function isLoopbackHost(host: string): boolean {
  let h = host;
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    h = end > 0 ? h.slice(1, end) : h;
  } else if (isIP(h) !== 6) {
    const colon = h.lastIndexOf(':');
    if (colon >= 0) h = h.slice(0, colon);
  }
  if (h === 'localhost') return true;
  if (h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

function endpointsOfHost(host: string, cfg: RegistryHostConfig | undefined, pathPrefix: string, mirror: boolean): Endpoint[] {
  const base = { host, pathPrefix, ca: cfg?.ca ?? [], mirror };
  const out: Endpoint[] = [];
  if (cfg?.http === true) out.push({ ...base, scheme: 'http', insecureTLS: false, tryNextOnConnectError: false });
  if (cfg?.insecure === true) out.push({ ...base, scheme: 'https', insecureTLS: true, tryNextOnConnectError: false });
  if (out.length === 0) {
    if (cfg?.http === undefined && isLoopbackHost(host)) {
      out.push({ ...base, scheme: 'https', insecureTLS: false, tryNextOnConnectError: true });
      out.push({ ...base, scheme: 'http', insecureTLS: false, tryNextOnConnectError: false });
    } else {
      out.push({ ...base, scheme: 'https', insecureTLS: false, tryNextOnConnectError: false });
    }
  }
  return out;
}

/**
 * The endpoints to try, in order, for a reference's domain. Pushes never go to mirrors. A mirror's own
 * section (keyed by the mirror's host) decides its scheme and TLS, as upstream does.
 */
export function endpointsFor(domain: string, hosts: RegistryHostsConfig, purpose: 'pull' | 'push'): Endpoint[] {
  const cfg = hosts[domain] ?? (domain === DEFAULT_DOMAIN ? hosts['registry-1.docker.io'] : undefined);
  const out: Endpoint[] = [];
  if (purpose === 'pull') {
    for (const m of cfg?.mirrors ?? []) {
      const trimmed = m.replace(/^[a-z]+:\/\//i, '').replace(/\/+$/, '');
      if (!trimmed) continue;
      const slash = trimmed.indexOf('/');
      const mhost = slash === -1 ? trimmed : trimmed.slice(0, slash);
      const mpath = slash === -1 ? '' : trimmed.slice(slash + 1);
      out.push(...endpointsOfHost(mhost, hosts[mhost], mpath ? `/v2/${mpath}` : '/v2', true));
    }
  }
  out.push(...endpointsOfHost(apiHost(domain), cfg, '/v2', false));
  return out;
}

export function endpointURL(ep: Endpoint, path: string): string {
  return `${ep.scheme}://${ep.host}${ep.pathPrefix}${path}`;
}
