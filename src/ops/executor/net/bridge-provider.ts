import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { LoomError } from '../../../util/errors.js';
import { log as rootLog } from '../../../util/log.js';
import type { BridgeConfig } from './bridge.js';
import { IpLeases } from './leases.js';
import { runCmd } from './run-cmd.js';

const log = () => rootLog.child({ sub: 'network' });

/** Where `ip netns` keeps its namespace handles. */
export const NETNS_DIR = '/run/netns';
/** Host-wide state of loom's bridge networks (leases), shared by every loom daemon on the host. */
export const NET_RUN_DIR = '/run/loom/net';

/** A namespace on the bridge: `path` is what the step's spec joins. */
export interface BridgeNamespace {
  /** `loom-<tag>-<12 hex>`: loom's own randomness, never anything from a build. */
  name: string;
  path: string;
  /** The host end of the veth pair (`lm<12 hex>`, the same hex as the namespace's name). */
  veth: string;
  ip: string;
}

/**
 * The daemon's tag in namespace names: a hash of its state root, so that a daemon only ever
 * cleans up its own leftovers, never those of another daemon sharing the host.
 */
export function daemonTag(stateRoot: string): string {
  return createHash('sha256').update(path.resolve(stateRoot)).digest('hex').slice(0, 8);
}

export interface BridgeProviderOptions {
  bridge: BridgeConfig;
  /** The daemon's state root (see daemonTag). */
  stateRoot: string;
  /** Namespaces kept ready (created ahead of steps and reused by sandboxed steps); 0: none. */
  poolSize: number;
}

/**
 * Network namespaces for steps, each with a veth pair into the bridge, an address from the
 * leases and a default route through the bridge: what upstream's CNI bridge plugin sets up, made
 * with `ip` directly. A small pool keeps namespaces ready, so a step usually costs no `ip` call.
 *
 * Contract: `start()` once (it removes this daemon's leftovers first); every `acquire()` is
 * paired with the returned `release`; `close()` removes every namespace still held by the pool.
 */
export class BridgeProvider {
  readonly #o: BridgeProviderOptions;
  readonly #tag: string;
  readonly #leases: IpLeases;
  readonly #idle: BridgeNamespace[] = [];
  #fill: Promise<void> | null = null;
  /** Namespaces of the pool: idle ones plus those lent to sandboxed steps (they come back). */
  #owned = 0;
  #closed = false;

  constructor(opts: BridgeProviderOptions) {
    this.#o = opts;
    this.#tag = daemonTag(opts.stateRoot);
    this.#leases = new IpLeases({ dir: path.join(NET_RUN_DIR, opts.bridge.name, 'leases'), subnet: opts.bridge.subnet });
  }

  get tag(): string {
    return this.#tag;
  }

  /** Removes what a crashed run of this daemon left (namespaces, veths, leases), then fills the pool in the background. */
  async start(): Promise<{ removed: string[] }> {
    const removed = await cleanupStaleNamespaces({ tag: this.#tag, leases: this.#leases });
    // Daemons that died without a restart on the same root (a test's temporary root) are found
    // by the pid each daemon records: their namespaces go too.
    const owners = path.join(NET_RUN_DIR, 'daemons');
    await mkdir(owners, { recursive: true, mode: 0o700 });
    for (const tag of await readdir(owners).catch(() => [] as string[])) {
      if (tag === this.#tag || !/^[0-9a-f]{8}$/.test(tag)) continue;
      const pid = Number((await readFile(path.join(owners, tag), 'utf8').catch(() => '')).trim());
      if (pid > 0 && alive(pid)) continue;
      removed.push(...(await cleanupStaleNamespaces({ tag, leases: this.#leases })));
      await unlink(path.join(owners, tag)).catch(() => {});
    }
    await writeFile(path.join(owners, this.#tag), String(process.pid));
    if (removed.length) log().info({ namespaces: removed }, 'removed network namespaces left by an earlier run');
    this.#refill();
    return { removed };
  }

  /**
   * A namespace for one step. `reusable`: the step cannot change the namespace's configuration
   * (no CAP_NET_ADMIN), so it may go back to the pool afterwards; insecure steps get a fresh one
   * that is destroyed after them.
   */
  async acquire(opts: { reusable: boolean }): Promise<BridgeNamespace & { release(): Promise<void> }> {
    if (this.#closed) throw new LoomError('UNAVAILABLE', 'the bridge network is closed');
    // A pooled namespace is as good as new for any step: sandboxed steps cannot change one.
    let ns = this.#idle.pop();
    if (!ns) {
      ns = await this.#create();
      this.#owned++;
    }
    // An insecure step's namespace leaves the pool for good.
    if (!opts.reusable) this.#owned--;
    this.#refill();
    let released = false;
    const taken = ns;
    return {
      ...taken,
      release: async () => {
        if (released) return;
        released = true;
        if (opts.reusable && !this.#closed && this.#owned <= this.#o.poolSize) {
          this.#idle.push(taken);
          return;
        }
        if (opts.reusable) this.#owned--;
        await this.#destroy(taken);
      },
    };
  }

  /** Destroys the pool's namespaces; namespaces released later are destroyed, not pooled. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#fill;
    const idle = this.#idle.splice(0);
    this.#owned -= idle.length;
    for (const ns of idle) await this.#destroy(ns);
    await unlink(path.join(NET_RUN_DIR, 'daemons', this.#tag)).catch(() => {});
  }

  #refill(): void {
    if (this.#fill || this.#closed || this.#owned >= this.#o.poolSize) return;
    this.#fill = (async () => {
      while (!this.#closed && this.#owned < this.#o.poolSize) {
        try {
          this.#owned++;
          this.#idle.push(await this.#create());
        } catch (err) {
          this.#owned--;
          log().warn({ err: (err as Error).message }, 'failed to create a network namespace for the pool');
          return;
        }
      }
    })().finally(() => (this.#fill = null));
  }

  async #create(): Promise<BridgeNamespace> {
    const hex = randomBytes(6).toString('hex');
    const name = `loom-${this.#tag}-${hex}`;
    const ns: BridgeNamespace = { name, path: path.join(NETNS_DIR, name), veth: `lm${hex}`, ip: '' };
    ns.ip = await this.#leases.allocate(name);
    const b = this.#o.bridge;
    try {
      await runCmd('ip', ['-b', '-'], [
        `netns add ${name}`,
        `link add ${ns.veth} type veth peer name eth0 netns ${name}`,
        `link set ${ns.veth} master ${b.name} up`,
        '',
      ].join('\n'));
      await runCmd('ip', ['-n', name, '-b', '-'], [
        'link set lo up',
        `addr add ${ns.ip}/${b.subnet.prefix} dev eth0`,
        'link set eth0 up',
        `route add default via ${b.gateway} dev eth0`,
        '',
      ].join('\n'));
    } catch (err) {
      await this.#destroy(ns);
      throw new LoomError('INTERNAL', `failed to set up network namespace ${name}: ${(err as Error).message}`, { cause: err });
    }
    return ns;
  }

  async #destroy(ns: BridgeNamespace): Promise<void> {
    await removeNamespaces([ns.name]);
    await this.#leases.release(ns.ip);
  }
}

/**
 * Deletes namespaces and their host-side veths in one `ip` call (`-force` goes on after an
 * error, e.g. a veth that went with its namespace). The veth goes first: deleting it is
 * synchronous, while a namespace's own teardown is deferred by the kernel.
 */
async function removeNamespaces(names: string[]): Promise<void> {
  if (!names.length) return;
  const lines: string[] = [];
  for (const n of names) {
    const hex = /-([0-9a-f]{12})$/.exec(n)?.[1];
    if (hex && existsSync(`/sys/class/net/lm${hex}`)) lines.push(`link del lm${hex}`);
    if (existsSync(path.join(NETNS_DIR, n))) lines.push(`netns del ${n}`);
  }
  if (!lines.length) return;
  await runCmd('ip', ['-force', '-b', '-'], lines.join('\n') + '\n').catch((err: Error) =>
    log().warn({ err: err.message }, 'failed to remove some network namespaces'),
  );
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

const NETNS_NAME_RE = /^loom-[0-9a-f]{8}-[0-9a-f]{12}$/;

/** Leases of other daemons are taken as stale when their namespace is gone and they are this old. */
const FOREIGN_LEASE_GRACE_MS = 60_000;

/**
 * Removes the namespaces (and veths) named for `tag` and this daemon's leases, plus leases of
 * other daemons whose namespace no longer exists. Call before the daemon creates any namespace.
 */
export async function cleanupStaleNamespaces(opts: { tag: string; leases: IpLeases }): Promise<string[]> {
  const re = new RegExp(`^loom-${opts.tag}-[0-9a-f]{12}$`);
  const names = (await readdir(NETNS_DIR).catch(() => [] as string[])).filter((n) => re.test(n));
  await removeNamespaces(names);
  await opts.leases.sweep(
    (owner, ageMs) =>
      owner.startsWith(`loom-${opts.tag}-`) ||
      (ageMs > FOREIGN_LEASE_GRACE_MS && (!NETNS_NAME_RE.test(owner) || !existsSync(path.join(NETNS_DIR, owner)))),
  );
  return names;
}
