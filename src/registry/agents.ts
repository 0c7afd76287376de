/**
 * Connection pools for registry traffic, one per set of TLS settings and timeouts. A connection
 * carries no credentials (each request has its own Authorization header), so the daemon's pools
 * are shared by every build, as containerd's resolver shares one HTTP transport: a build that
 * resolves `FROM` again reuses the open connection instead of paying a DNS lookup, a connect and,
 * for a TLS registry, a handshake on every build.
 */
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { Agent } from 'undici';
import { InvalidArgumentError } from '../util/errors.js';

export interface AgentSettings {
  /** HTTPS without certificate checks (`insecure = true` for the host). */
  insecure: boolean;
  /** Extra CA files, added to the system roots. */
  ca: readonly string[];
  /** Milliseconds to connect and to wait for response headers. */
  timeoutMs: number;
  /** Milliseconds a response body may stay idle. */
  bodyTimeoutMs: number;
}

export class AgentPool {
  readonly #agents = new Map<string, Agent>();

  /** The pool for `s`, made on first use. A CA file that cannot be read is an InvalidArgumentError naming it. */
  get(s: AgentSettings): Agent {
    const key = `${s.insecure ? 1 : 0}|${s.timeoutMs}|${s.bodyTimeoutMs}|${s.ca.join('\n')}`;
    let a = this.#agents.get(key);
    if (!a) {
      const pems = s.ca.map((file) => {
        try {
          return readFileSync(file, 'utf8');
        } catch (err) {
          throw new InvalidArgumentError(`registry CA file ${file}: ${(err as Error).message}`, { cause: err });
        }
      });
      a = new Agent({
        connect: {
          timeout: s.timeoutMs,
          rejectUnauthorized: !s.insecure,
          ...(pems.length ? { ca: [...rootCertificates, ...pems] } : {}),
        },
        headersTimeout: s.timeoutMs,
        bodyTimeout: s.bodyTimeoutMs,
      });
      this.#agents.set(key, a);
    }
    return a;
  }

  /** Closes every pooled connection (requests in flight finish first). */
  async close(): Promise<void> {
    const agents = [...this.#agents.values()];
    this.#agents.clear();
    await Promise.all(agents.map((a) => a.close()));
  }
}
