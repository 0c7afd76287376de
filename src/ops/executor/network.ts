import { InvalidArgumentError, LoomError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import type { NetMode } from './executor.js';
import { bridgeUnsupportedReason, setupBridge, type BridgeConfig } from './net/bridge.js';
import { BridgeProvider } from './net/bridge-provider.js';

/**
 * Network providers by step network mode, as upstream's util/network: `none` gets a network
 * namespace of its own with only loopback (runc makes it and brings `lo` up); `host` shares the
 * daemon's; the default `sandbox` mode comes from the worker's `--oci-worker-net`:
 *
 * - `bridge`: a namespace per step on loom's bridge with NAT (net/), as upstream's CNI bridge;
 * - `host`: the host's network;
 * - `auto` (the default): `bridge` when loom can set it up here, else `host` with one warning at
 *   start, which is what upstream does when CNI is not configured.
 */
export interface NetworkProviders {
  /** The worker's name for its sandbox network, for ListWorkers labels (`bridge` or `host`). */
  readonly sandboxKind: 'host' | 'bridge';
  /** The bridge in use, when `sandboxKind` is `bridge`. */
  readonly bridge?: BridgeConfig;
  /** The network a step with this mode runs in; a `netns` answer must be released after the step. */
  acquire(mode: NetMode, opts: { reusable: boolean }): Promise<StepNetwork>;
  /** Removes every namespace the provider still holds (its pool). */
  close(): Promise<void>;
}

/**
 * - `host`: no network namespace of its own;
 * - `new`: runc creates an empty one (loopback only);
 * - `netns`: join the namespace at `path` (on the bridge, address `ip`).
 */
export type StepNetwork =
  | { kind: 'host' }
  | { kind: 'new' }
  | { kind: 'netns'; path: string; ip: string; release(): Promise<void> };

const log = () => rootLog.child({ sub: 'network' });

function checkWorkerNet(w: string): 'auto' | 'bridge' | 'host' {
  switch (w) {
    case 'auto':
    case 'bridge':
    case 'host':
      return w;
    case 'cni':
      throw new InvalidArgumentError('--oci-worker-net cni is not supported by loom (it has no CNI plugins): use bridge, which sets up the same kind of network, or auto');
    default:
      throw new InvalidArgumentError(`invalid --oci-worker-net ${JSON.stringify(w)}: expected auto, bridge or host`);
  }
}

function hostProviders(): NetworkProviders {
  return {
    sandboxKind: 'host',
    acquire: async (mode) => (mode === 'none' ? { kind: 'new' } : { kind: 'host' }),
    close: async () => {},
  };
}

/**
 * Host networking for sandboxed steps, with no setup: for tools and tests that do not want the
 * bridge. `auto` logs the same warning as a daemon that found no bridge; `bridge` needs
 * openNetworkProviders.
 */
export function createNetworkProviders(opts: { workerNet?: string }): NetworkProviders {
  const w = checkWorkerNet(opts.workerNet || 'auto');
  if (w === 'bridge') throw new InvalidArgumentError('--oci-worker-net bridge needs the worker\'s network setup (openNetworkProviders)');
  if (w === 'auto') log().warn('using host network as the default (no bridge network set up: steps share the daemon\'s network)');
  return hostProviders();
}

export interface OpenNetworkOptions {
  /** --oci-worker-net: auto (default), bridge or host. */
  workerNet?: string;
  /** The daemon's state root: names this daemon's namespaces, so only its own leftovers are removed. */
  stateRoot: string;
  /** Namespaces kept ready ahead of steps (default 4; 0 makes one per step). */
  poolSize?: number;
  /** The bridge device (default `loom0`); tests use their own. */
  bridgeName?: string;
  /** Subnets to choose from for a new bridge (default SUBNET_CANDIDATES). */
  subnets?: readonly string[];
}

export const DEFAULT_NETNS_POOL_SIZE = 4;

/**
 * The worker's providers, set up at daemon start: with `bridge` (or `auto` where it works) this
 * makes the bridge and NAT, removes namespaces a crashed run of this daemon left and starts
 * filling the pool. `bridge` where it cannot work is an error naming the reason; `auto` then
 * falls back to host networking with one warning.
 */
export async function openNetworkProviders(opts: OpenNetworkOptions): Promise<NetworkProviders> {
  const w = checkWorkerNet(opts.workerNet || 'auto');
  if (w === 'host') return hostProviders();
  let bridge: BridgeConfig;
  let provider: BridgeProvider;
  try {
    const reason = await bridgeUnsupportedReason();
    if (reason) throw new LoomError('FAILED_PRECONDITION', reason);
    bridge = await setupBridge({ name: opts.bridgeName, candidates: opts.subnets });
    provider = new BridgeProvider({ bridge, stateRoot: opts.stateRoot, poolSize: opts.poolSize ?? DEFAULT_NETNS_POOL_SIZE });
    await provider.start();
  } catch (err) {
    const why = (err as Error).message;
    if (w === 'bridge') {
      throw new LoomError('FAILED_PRECONDITION', `--oci-worker-net bridge: cannot set up the bridge network: ${why}`, { cause: err });
    }
    log().warn({ reason: why }, 'using host network as the default (the bridge network cannot be set up here: steps share the daemon\'s network)');
    return hostProviders();
  }
  log().debug({ bridge: bridge.name, gateway: bridge.gateway, prefix: bridge.subnet.prefix }, 'bridge network ready');
  return {
    sandboxKind: 'bridge',
    bridge,
    acquire: async (mode, o) => {
      if (mode === 'host') return { kind: 'host' };
      if (mode === 'none') return { kind: 'new' };
      const ns = await provider.acquire(o);
      return { kind: 'netns', path: ns.path, ip: ns.ip, release: ns.release };
    },
    close: () => provider.close(),
  };
}
