import { randomBytes } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { InvalidArgumentError } from '../../util/errors.js';

export const DEFAULT_HOSTNAME = 'buildkitsandbox';

/** /etc/hosts as upstream writes it: localhost lines naming the hostname, then each extra host. */
export function hostsContent(hostname: string, extraHosts: readonly { host: string; ip: string }[]): string {
  let s = `127.0.0.1\tlocalhost ${hostname || DEFAULT_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`;
  for (const h of extraHosts) s += `${h.ip}\t${h.host}\n`;
  return s;
}

/** Validates LLB extra hosts (upstream's ParseExtraHosts): the IP must parse. */
export function parseExtraHosts(hosts: readonly { Host: string; IP: string }[]): { host: string; ip: string }[] {
  return hosts.map((h) => {
    const ip = h.IP.trim();
    if (!isIP(ip)) throw new InvalidArgumentError(`failed to parse IP ${ip}`);
    return { host: h.Host, ip: normalizeIp(ip) };
  });
}

/** Go's net.IP.String() for the common forms: IPv4 as is, IPv6 lower case. */
function normalizeIp(ip: string): string {
  return isIP(ip) === 6 ? ip.toLowerCase() : ip;
}

/**
 * The hosts file for one step: the shared `<stateDir>/hosts` for the default hostname and no
 * extra hosts, else a file of the step's own (removed by the returned function).
 */
export class HostsFiles {
  readonly #dir: string;
  #shared: Promise<string> | null = null;

  constructor(opts: { stateDir: string }) {
    this.#dir = opts.stateDir;
  }

  async get(hostname: string, extraHosts: readonly { host: string; ip: string }[]): Promise<{ path: string; release: () => Promise<void> }> {
    const h = hostname || DEFAULT_HOSTNAME;
    if (extraHosts.length === 0 && h === DEFAULT_HOSTNAME) {
      this.#shared ??= this.#write(path.join(this.#dir, 'hosts'), hostsContent(h, []));
      return { path: await this.#shared, release: async () => {} };
    }
    const p = path.join(this.#dir, `hosts.${randomBytes(12).toString('hex')}`);
    await this.#write(p, hostsContent(h, extraHosts));
    return { path: p, release: () => rm(p, { force: true }) };
  }

  async #write(p: string, content: string): Promise<string> {
    const tmp = p + '.tmp';
    await writeFile(tmp, content, { mode: 0o644 });
    await rename(tmp, p);
    return p;
  }
}
