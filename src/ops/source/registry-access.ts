import { create } from '@bufbuild/protobuf';
import { Auth, CredentialsRequestSchema } from '../../gen/session/auth_pb.js';
import type { ContentStore } from '../../content/store.js';
import type { RegistryHostsConfig } from '../../registry/hosts.js';
import { AgentPool } from '../../registry/agents.js';
import { RegistryClient } from '../../registry/client.js';
import type { Credentials } from '../../registry/auth.js';
import type { JobContext } from '../../solver/types.js';
import { log as rootLog } from '../../util/log.js';

const log = () => rootLog.child({ sub: 'registry-auth' });

/**
 * Registry clients per build: credentials belong to the client that asked for the build, so each
 * build gets its own client (and token cache) asking that build's session. Builds without a
 * session, or whose client does not serve Auth, pull anonymously. Connections are not the build's:
 * every client uses the daemon's pools (see agents.ts), closed by close().
 */
export class RegistryAccess {
  readonly #store: ContentStore;
  readonly #hosts: RegistryHostsConfig;
  readonly #clients = new Map<string, { client: RegistryClient; users: number }>();
  readonly #agents = new AgentPool();

  constructor(opts: { store: ContentStore; hosts: RegistryHostsConfig }) {
    this.#store = opts.store;
    this.#hosts = opts.hosts;
  }

  /** The build's client; closed when the build's signal fires or the build ends (`release`). */
  forJob(job: JobContext): RegistryClient {
    let e = this.#clients.get(job.id);
    if (!e) {
      const client = new RegistryClient({
        store: this.#store,
        hosts: this.#hosts,
        agents: this.#agents,
        getCredentials: (host) => credentialsFromSession(job, host),
      });
      e = { client, users: 0 };
      this.#clients.set(job.id, e);
      const drop = () => {
        if (this.#clients.get(job.id)?.client === client) this.#clients.delete(job.id);
        void client.close();
      };
      if (job.signal.aborted) drop();
      else job.signal.addEventListener('abort', drop, { once: true });
      // Builds end without abort too: idle clients are dropped after a while.
      setTimeout(drop, 30 * 60_000).unref();
    }
    return e.client;
  }

  /**
   * A one-off client for a push with `registry.insecure=true`: plain HTTP, or HTTPS without
   * certificate checks, for `domain`. The caller closes it.
   */
  insecureFor(job: JobContext, domain: string): RegistryClient {
    const hosts = { ...this.#hosts, [domain]: { ...(this.#hosts[domain] ?? {}), http: true, insecure: true } };
    return new RegistryClient({ store: this.#store, hosts, agents: this.#agents, getCredentials: (host) => credentialsFromSession(job, host) });
  }

  /** A client with no credentials, for work outside any build. */
  anonymous(): RegistryClient {
    return new RegistryClient({ store: this.#store, hosts: this.#hosts, agents: this.#agents });
  }

  /** Closes the pooled connections (the daemon's stop). */
  async close(): Promise<void> {
    this.#clients.clear();
    await this.#agents.close();
  }
}

async function credentialsFromSession(job: JobContext, host: string): Promise<Credentials | undefined> {
  let session;
  try {
    session = await job.session();
  } catch {
    return undefined;
  }
  if (!session.supports(Auth.method.credentials)) return undefined;
  try {
    const resp = await session.unary(Auth.method.credentials, create(CredentialsRequestSchema, { Host: host }), { signal: job.signal });
    if (!resp.Username && !resp.Secret) return undefined;
    return { username: resp.Username, secret: resp.Secret };
  } catch (err) {
    log().debug({ host, err: (err as Error).message }, 'client gave no credentials');
    return undefined;
  }
}
