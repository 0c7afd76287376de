import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';

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

async function hostResolvPath(): Promise<string> {
  const text = await readFile(HOST_RESOLV, 'utf8').catch(() => '');
  const ns = nameservers(text);
  return ns.length === 1 && ns[0] === '127.0.0.53' ? SYSTEMD_RESOLV : HOST_RESOLV;
}

/**
 * Keeps `<stateDir>/resolv.conf` up to date with the host's (regenerated when the host's file is
 * newer) and returns its path. Concurrent callers share one refresh.
 */
export class ResolvConf {
  readonly #file: string;
  #pending: Promise<string> | null = null;
  #generated = false;

  constructor(opts: { stateDir: string }) {
    this.#file = path.join(opts.stateDir, 'resolv.conf');
  }

  get(): Promise<string> {
    if (!this.#pending) this.#pending = this.#refresh().finally(() => (this.#pending = null));
    return this.#pending;
  }

  async #refresh(): Promise<string> {
    const src = await hostResolvPath();
    if (this.#generated) {
      const [mine, host] = await Promise.all([stat(this.#file).catch(() => null), stat(src).catch(() => null)]);
      if (mine && (!host || host.mtimeMs <= mine.mtimeMs)) return this.#file;
    }
    const text = await readFile(src, 'utf8').catch(() => '');
    const tmp = this.#file + '.tmp';
    await writeFile(tmp, filterResolvConf(text), { mode: 0o644 });
    await rename(tmp, this.#file);
    this.#generated = true;
    return this.#file;
  }
}
