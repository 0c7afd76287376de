import { InvalidArgumentError } from '../util/errors.js';

export interface DaemonFlags {
  config?: string;
  debug?: boolean;
  root?: string;
  addr: string[];
  group?: string;
  debugaddr?: string;
  tlscert?: string;
  tlskey?: string;
  tlscacert?: string;
  allowInsecureEntitlement: string[];
  logFormat?: 'text' | 'json';
  ociWorker?: string;
  ociWorkerPlatform: string[];
  ociWorkerSnapshotter?: string;
  ociWorkerNet?: string;
  ociWorkerLabels: string[];
  ociWorkerGc?: boolean;
  ociWorkerGcKeepstorage?: number;
  version?: boolean;
  help?: boolean;
}

/** A flag without `key` is accepted and ignored. */
type Spec = { kind: 'string' | 'list' | 'bool' | 'number'; key?: keyof DaemonFlags };

/** Upstream buildkitd's flags (urfave/cli: `--x v`, `--x=v`, `-x v`); loom keeps their names and meaning. */
const SPECS: Record<string, Spec> = {
  config: { kind: 'string', key: 'config' },
  debug: { kind: 'bool', key: 'debug' },
  root: { kind: 'string', key: 'root' },
  addr: { kind: 'list', key: 'addr' },
  group: { kind: 'string', key: 'group' },
  debugaddr: { kind: 'string', key: 'debugaddr' },
  tlscert: { kind: 'string', key: 'tlscert' },
  tlskey: { kind: 'string', key: 'tlskey' },
  tlscacert: { kind: 'string', key: 'tlscacert' },
  'allow-insecure-entitlement': { kind: 'list', key: 'allowInsecureEntitlement' },
  'log-format': { kind: 'string', key: 'logFormat' },
  'oci-worker': { kind: 'string', key: 'ociWorker' },
  'oci-worker-platform': { kind: 'list', key: 'ociWorkerPlatform' },
  'oci-worker-snapshotter': { kind: 'string', key: 'ociWorkerSnapshotter' },
  'oci-worker-net': { kind: 'string', key: 'ociWorkerNet' },
  'oci-worker-labels': { kind: 'list', key: 'ociWorkerLabels' },
  'oci-worker-gc': { kind: 'bool', key: 'ociWorkerGc' },
  'oci-worker-gc-keepstorage': { kind: 'number', key: 'ociWorkerGcKeepstorage' },
  // Accepted for compatibility with scripts written for upstream; they do not change loom.
  'oci-worker-binary': { kind: 'string' },
  'containerd-worker': { kind: 'string' },
  version: { kind: 'bool', key: 'version' },
  v: { kind: 'bool', key: 'version' },
  help: { kind: 'bool', key: 'help' },
  h: { kind: 'bool', key: 'help' },
};

export function parseDaemonFlags(argv: readonly string[]): DaemonFlags {
  const f: DaemonFlags = { addr: [], allowInsecureEntitlement: [], ociWorkerPlatform: [], ociWorkerLabels: [] };
  const rec = f as unknown as Record<string, unknown>;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-')) throw new InvalidArgumentError(`unexpected argument ${JSON.stringify(arg)}`);
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    let value: string | undefined = eq >= 0 ? body.slice(eq + 1) : undefined;
    const spec = SPECS[name];
    if (!spec) throw new InvalidArgumentError(`flag provided but not defined: -${name}`);
    if (spec.kind === 'bool') {
      if (value !== undefined && !/^(true|false|1|0)$/.test(value)) throw new InvalidArgumentError(`invalid boolean value ${JSON.stringify(value)} for -${name}`);
      if (spec.key) rec[spec.key] = value === undefined ? true : value === 'true' || value === '1';
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new InvalidArgumentError(`flag needs an argument: -${name}`);
    }
    if (!spec.key) continue;
    if (spec.kind === 'list') (rec[spec.key] as string[]).push(value);
    else if (spec.kind === 'number') {
      const n = Number(value);
      if (!Number.isFinite(n)) throw new InvalidArgumentError(`invalid value ${JSON.stringify(value)} for -${name}`);
      rec[spec.key] = n;
    } else rec[spec.key] = value;
  }
  if (f.logFormat && f.logFormat !== 'text' && f.logFormat !== 'json') {
    throw new InvalidArgumentError(`invalid --log-format ${JSON.stringify(f.logFormat)}: expected text or json`);
  }
  return f;
}

export const DAEMON_USAGE = `NAME:
   buildkitd - loom, a BuildKit-compatible build daemon

USAGE:
   buildkitd [global options]

GLOBAL OPTIONS:
   --config value                      path to config file (default: "/etc/buildkit/buildkitd.toml")
   --debug                             enable debug output in logs
   --root value                        path to state directory (default: "/var/lib/buildkit")
   --addr value                        listening address (socket or tcp) (default: "unix:///run/buildkit/buildkitd.sock")
   --group value                       group (name or gid) which will own all Unix socket listening addresses
   --debugaddr value                   debugging address (eg. 127.0.0.1:6060)
   --tlscert value                     certificate file to use
   --tlskey value                      key file to use
   --tlscacert value                   ca certificate to verify clients
   --allow-insecure-entitlement value  allows insecure entitlements e.g. network.host, security.insecure
   --log-format value                  log formatter: json or text (default: "text")
   --oci-worker-platform value         override supported platforms for worker
   --oci-worker-snapshotter value      name of snapshotter (overlayfs, native, auto) (default: "auto")
   --oci-worker-net value              worker network type (auto, bridge or host) (default: "auto")
   --oci-worker-labels value           user-specific annotation labels (com.example.foo=bar)
   --oci-worker-gc                     enable automatic garbage collection on worker (default: true)
   --oci-worker-gc-keepstorage value   amount of storage GC keep locally (MB)
   --help, -h                          show help
   --version, -v                       print the version
`;
