import { readFile, writeFile } from 'node:fs/promises';
import { LoomError } from '../../../util/errors.js';
import { chooseSubnet, formatCidr, intToIp, parseCidr, type Cidr } from './ipv4.js';
import { haveCmd, runCmd } from './run-cmd.js';

/** The host side of loom's step network: one Linux bridge with NAT to the host's egress. */
export interface BridgeConfig {
  /** The bridge device (`loom0`). */
  name: string;
  subnet: Cidr;
  /** The bridge's own address: the steps' default gateway. */
  gateway: string;
}

export const DEFAULT_BRIDGE = 'loom0';

/**
 * Private /16s tried in order for a new bridge; the first that overlaps none of the host's
 * routes wins. A bridge that already exists (another loom daemon, an earlier run) keeps its own.
 */
export const SUBNET_CANDIDATES = ['10.213.0.0/16', '10.214.0.0/16', '10.215.0.0/16', '172.29.0.0/16', '172.28.0.0/16'];

const COMMENT = 'loom bridge';
const ROUTE_TYPES = new Set(['unicast', 'local', 'broadcast', 'multicast', 'unreachable', 'blackhole', 'prohibit', 'throw', 'nat', 'anycast']);

/** The destinations of the host's IPv4 routes (every table), minus those on `skipDev`. */
export async function hostRoutes(skipDev: string): Promise<Cidr[]> {
  const out = await runCmd('ip', ['-4', '-o', 'route', 'show', 'table', 'all']);
  const routes: Cidr[] = [];
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (ROUTE_TYPES.has(f[0]!)) f.shift();
    if (!f[0]) continue;
    const dev = f.indexOf('dev');
    if (dev >= 0 && f[dev + 1] === skipDev) continue;
    try {
      routes.push(parseCidr(f[0]));
    } catch {
      /* not an IPv4 destination */
    }
  }
  return routes;
}

/** Why loom cannot run a bridge here, or null when it can try. */
export async function bridgeUnsupportedReason(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'the daemon does not run as root';
  if (!(await haveCmd('ip', ['-V']))) return 'iproute2 (`ip`) was not found on PATH';
  if (!(await haveCmd('iptables', ['-V'])) && !(await haveCmd('nft', ['-v']))) return 'neither iptables nor nft was found on PATH';
  return null;
}

async function bridgeAddress(name: string): Promise<Cidr & { ip: string } | null | undefined> {
  let out: string;
  try {
    out = await runCmd('ip', ['-4', '-o', 'addr', 'show', 'dev', name]);
  } catch (err) {
    if (/does not exist/.test((err as Error).message)) return undefined;
    throw err;
  }
  const m = /\sinet\s+([0-9.]+)\/(\d+)/.exec(out);
  if (!m) return null;
  return { ...parseCidr(`${m[1]}/${m[2]}`), ip: m[1]! };
}

/**
 * Makes (or adopts) the bridge, turns on IPv4 forwarding and installs MASQUERADE for the subnet
 * on every interface but the bridge, plus FORWARD accepts (a host whose FORWARD policy is DROP,
 * as Docker sets it, would otherwise drop the steps' traffic). Idempotent: rules are checked
 * before being added. Throws a LoomError saying which part failed.
 */
export async function setupBridge(opts: { name?: string; candidates?: readonly string[] } = {}): Promise<BridgeConfig> {
  const name = opts.name ?? DEFAULT_BRIDGE;
  let addr = await bridgeAddress(name);
  if (addr === undefined) {
    const subnet = chooseSubnet(opts.candidates ?? SUBNET_CANDIDATES, await hostRoutes(name));
    if (!subnet) throw new LoomError('FAILED_PRECONDITION', `every candidate subnet for the bridge ${name} (${(opts.candidates ?? SUBNET_CANDIDATES).join(', ')}) overlaps a route of the host`);
    try {
      await runCmd('ip', ['link', 'add', name, 'type', 'bridge']);
    } catch (err) {
      // Another daemon made it first: adopt its address below.
      if (!/File exists/.test((err as Error).message)) throw err;
    }
    addr = await bridgeAddress(name);
    if (!addr) {
      const gw = intToIp(subnet.base + 1);
      await runCmd('ip', ['addr', 'add', `${gw}/${subnet.prefix}`, 'dev', name]).catch((err: Error) => {
        if (!/File exists/.test(err.message)) throw err;
      });
      addr = await bridgeAddress(name);
    }
  } else if (addr === null) {
    throw new LoomError('FAILED_PRECONDITION', `the bridge ${name} exists but has no IPv4 address: remove it (ip link del ${name}) or give it one`);
  }
  if (!addr) throw new LoomError('INTERNAL', `the bridge ${name} has no IPv4 address after setup`);
  await runCmd('ip', ['link', 'set', name, 'up']);
  const subnet: Cidr = { base: addr.base, prefix: addr.prefix };
  await enableForwarding();
  await installNat(name, formatCidr(subnet));
  return { name, subnet, gateway: addr.ip };
}

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

async function enableForwarding(): Promise<void> {
  const cur = (await readFile(IP_FORWARD, 'utf8').catch(() => '')).trim();
  if (cur === '1') return;
  try {
    await writeFile(IP_FORWARD, '1');
  } catch (err) {
    throw new LoomError('FAILED_PRECONDITION', `cannot enable IPv4 forwarding (${IP_FORWARD}): ${(err as Error).message}`, { cause: err });
  }
}

async function installNat(bridge: string, subnet: string): Promise<void> {
  if (await haveCmd('iptables', ['-V'])) {
    const rules: [string, string, string[]][] = [
      ['nat', 'POSTROUTING', ['-s', subnet, '!', '-o', bridge, '-m', 'comment', '--comment', COMMENT, '-j', 'MASQUERADE']],
      ['filter', 'FORWARD', ['-i', bridge, '-m', 'comment', '--comment', COMMENT, '-j', 'ACCEPT']],
      ['filter', 'FORWARD', ['-o', bridge, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-m', 'comment', '--comment', COMMENT, '-j', 'ACCEPT']],
    ];
    for (const [table, chain, rule] of rules) {
      const present = await runCmd('iptables', ['-w', '-t', table, '-C', chain, ...rule]).then(
        () => true,
        () => false,
      );
      if (present) continue;
      const verb = chain === 'FORWARD' ? ['-I', chain, '1'] : ['-A', chain];
      await runCmd('iptables', ['-w', '-t', table, ...verb, ...rule]);
    }
    return;
  }
  // nft only: a table of loom's own, replaced as a whole (idempotent by construction).
  const esc = JSON.stringify(bridge);
  await runCmd('nft', ['-f', '-'], [
    'table ip loom {}',
    'delete table ip loom',
    'table ip loom {',
    `  chain postrouting { type nat hook postrouting priority srcnat; policy accept; ip saddr ${subnet} oifname != ${esc} masquerade; }`,
    `  chain forward { type filter hook forward priority filter; policy accept; iifname ${esc} accept; oifname ${esc} ct state established,related accept; }`,
    '}',
    '',
  ].join('\n'));
}
