import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { errorMessage, InvalidArgumentError } from '../util/errors.js';
import { configureLogger } from '../util/log.js';
import { DAEMON_USAGE, parseDaemonFlags, type DaemonFlags } from './buildkitd-flags.js';
import { emptyConfig, loadConfigFile, type DaemonConfig } from './config.js';
import { MODULE, versionInfo } from './version.js';

const DEFAULT_CONFIG = '/etc/buildkit/buildkitd.toml';
export const DEFAULT_ROOT = '/var/lib/buildkit';
export const DEFAULT_ADDR = 'unix:///run/buildkit/buildkitd.sock';

/** Flags win over the config file, which wins over defaults (as upstream's buildkitd). */
export function effectiveSettings(flags: DaemonFlags, cfg: DaemonConfig) {
  const addrs = flags.addr.length ? flags.addr : cfg.grpc.address?.length ? cfg.grpc.address : [DEFAULT_ADDR];
  return {
    root: resolve(flags.root ?? cfg.root ?? DEFAULT_ROOT),
    addrs,
    debug: flags.debug ?? cfg.debug ?? false,
    logFormat: flags.logFormat ?? 'text',
    debugAddr: flags.debugaddr ?? cfg.grpc.debugAddress,
    tls: {
      cert: flags.tlscert ?? cfg.grpc.tls.cert,
      key: flags.tlskey ?? cfg.grpc.tls.key,
      ca: flags.tlscacert ?? cfg.grpc.tls.ca,
    },
    gid: flags.group !== undefined ? groupId(flags.group) : cfg.grpc.gid,
    entitlements: new Set([...(cfg.insecureEntitlements ?? []), ...flags.allowInsecureEntitlement]),
    platforms: flags.ociWorkerPlatform.length ? flags.ociWorkerPlatform : (cfg.worker.oci.platforms ?? []),
    snapshotter: flags.ociWorkerSnapshotter ?? cfg.worker.oci.snapshotter ?? 'auto',
    network: flags.ociWorkerNet ?? cfg.worker.oci.networkMode ?? 'auto',
    labels: {
      ...(cfg.worker.oci.labels ?? {}),
      ...Object.fromEntries(flags.ociWorkerLabels.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])),
    },
    gc: flags.ociWorkerGc ?? cfg.worker.oci.gc ?? true,
    gcKeepStorage: flags.ociWorkerGcKeepstorage !== undefined ? { bytes: flags.ociWorkerGcKeepstorage * 1e6 } : cfg.worker.oci.gckeepstorage,
    gcSpace: { reservedSpace: cfg.worker.oci.reservedSpace, maxUsedSpace: cfg.worker.oci.maxUsedSpace, minFreeSpace: cfg.worker.oci.minFreeSpace },
    gcPolicy: cfg.worker.oci.gcpolicy,
    registry: cfg.registry,
  };
}

export type DaemonSettings = ReturnType<typeof effectiveSettings>;

/** `--group` takes a gid or a group name (looked up in /etc/group), as upstream's. */
function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let text = '';
  try {
    text = readFileSync('/etc/group', 'utf8');
  } catch {
    /* no group database: the name cannot be found */
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new InvalidArgumentError(`--group: unknown group ${JSON.stringify(group)}`);
}

async function main(argv: string[]): Promise<number> {
  let flags: DaemonFlags;
  try {
    flags = parseDaemonFlags(argv);
  } catch (err) {
    process.stderr.write(`${errorMessage(err)}\n`);
    return 2;
  }
  if (flags.help) {
    process.stdout.write(DAEMON_USAGE);
    return 0;
  }
  if (flags.version) {
    const v = versionInfo();
    process.stdout.write(`buildkitd ${MODULE} ${v.version} ${v.revision}\n`);
    return 0;
  }
  const cfgFile = flags.config ?? (existsSync(DEFAULT_CONFIG) ? DEFAULT_CONFIG : undefined);
  const cfg = cfgFile ? loadConfigFile(cfgFile) : emptyConfig();
  const s = effectiveSettings(flags, cfg);
  const log = configureLogger({ level: s.debug ? 'debug' : 'info', format: s.logFormat });
  mkdirSync(s.root, { recursive: true, mode: 0o700 });
  const { startDaemon } = await import('./daemon.js');
  // Signals are handled from before the start: one that comes while the daemon is still starting
  // (its socket may already be there) stops it as soon as it is up, instead of killing it.
  let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let pending: string | undefined;
  let stopping = false;
  const stop = (sig: string) => {
    if (!daemon) {
      if (pending) process.exit(1);
      pending = sig;
      return;
    }
    if (stopping) {
      log.warn({ signal: sig }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal: sig }, 'stopping: cancelling running builds');
    daemon.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err: errorMessage(err) }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  daemon = await startDaemon(s);
  if (pending) stop(pending);
  return -1;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err) => {
    process.stderr.write(`buildkitd: ${errorMessage(err)}\n`);
    process.exit(1);
  },
);
