import { renameSync, statSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { readTextOrEmpty } from '../../util/read-text.js';

/**
 * The /etc/resolv.conf steps see: the host's, minus localhost nameservers (a step in its own
 * network namespace cannot reach them), with Google's public servers when none is left, as
 * upstream (libnetwork's FilterResolvDNS with IPv6 on). A host using systemd-resolved's stub
 * (only 127.0.0.53) is read from /run/systemd/resolve/resolv.conf instead.
 */
export function filterResolvConf(content: string): string {
  let out = content.replace(/^nameserver\s+((127\.([0-9]{1,3}\.){2}[0-9]{1,3})|(::1)$)\s*\n*/gm, '');
  if (nameservers(out).length === 0) {
    out += '\n' + ['nameserver 8.8.8.8', 'nameserver 8.8.4.4', 'nameserver 2001:4860:4860::8888', 'nameserver 2001:4860:4860::8844'].join('\n');
  }
  return out;
}

/** The nameserver addresses of a resolv.conf, comments stripped, invalid addresses skipped. */
export function nameservers(content: string): string[] {
  const out: string[] = [];
  for (const raw of content.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const f = line.split(/\s+/);
    if (f[0] === 'nameserver' && f[1] && isIP(f[1].split('%')[0]!)) out.push(f[1]);
  }
  return out;
}

const HOST_RESOLV = '/etc/resolv.conf';
const SYSTEMD_RESOLV = '/run/systemd/resolve/resolv.conf';

function hostResolvPath(): string {
  const text = readTextOrEmpty(HOST_RESOLV);
  const ns = nameservers(text);
  return ns.length === 1 && ns[0] === '127.0.0.53' ? SYSTEMD_RESOLV : HOST_RESOLV;
}

/**
 * Keeps `<stateDir>/resolv.conf` up to date with the host's (regenerated when the host's file is
 * newer) and returns its path.
 */
export class ResolvConf {
  readonly #file: string;
  #generated = false;

  constructor(opts: { stateDir: string }) {
    this.#file = path.join(opts.stateDir, 'resolv.conf');
  }

  /**
   * Checked at every step's start: two stats and a small read, made synchronously (cheaper than
   * thread-pool round trips for files this size).
   */
  async get(): Promise<string> {
    const src = hostResolvPath();
    if (this.#generated) {
      const mine = statSync(this.#file, { throwIfNoEntry: false });
      const host = statSync(src, { throwIfNoEntry: false });
      if (mine && (!host || host.mtimeMs <= mine.mtimeMs)) return this.#file;
    }
    const tmp = this.#file + '.tmp';
    writeFileSync(tmp, filterResolvConf(readTextOrEmpty(src)), { mode: 0o644 });
    renameSync(tmp, this.#file);
    this.#generated = true;
    return this.#file;
  }
}
