import { InvalidArgumentError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';
import type { NetMode } from './executor.js';

/**
 * Network providers by step network mode, as upstream's util/network: `none` gets a network
 * namespace of its own with only loopback (runc brings `lo` up); `host` shares the daemon's;
 * the default `sandbox` mode comes from the worker's `--oci-worker-net`.
 *
 * loom has no bridge provider yet: `auto` (and unset, and `host`) give sandboxed steps the host's
 * network, with a warning at start, which is what upstream does when CNI is not configured.
 */
export interface NetworkProviders {
  /** The worker's name for its sandbox network (`host`), for ListWorkers labels. */
  readonly sandboxKind: 'host';
  /** True when a step with this mode runs in a new network namespace. */
  newNamespace(mode: NetMode): boolean;
}

export function createNetworkProviders(opts: { workerNet?: string }): NetworkProviders {
  const w = opts.workerNet || 'auto';
  switch (w) {
    case 'auto':
    case 'host':
      if (w === 'auto') {
        rootLog
          .child({ sub: 'executor' })
          .warn('using host network as the default (no bridge provider available: steps share the daemon\'s network)');
      }
      break;
    case 'bridge':
    case 'cni':
      throw new InvalidArgumentError(`--oci-worker-net ${w} is not supported by loom yet: use auto or host`);
    default:
      throw new InvalidArgumentError(`invalid --oci-worker-net ${JSON.stringify(w)}: expected auto, bridge or host`);
  }
  return {
    sandboxKind: 'host',
    newNamespace: (mode) => mode === 'none',
  };
}
