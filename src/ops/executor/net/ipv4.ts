/** Small IPv4 arithmetic for the bridge network: addresses as unsigned 32-bit numbers. */

export interface Cidr {
  /** The network address (host bits cleared). */
  base: number;
  prefix: number;
}

export function ipToInt(ip: string): number {
  const p = ip.split('.');
  if (p.length !== 4 || p.some((x) => !/^\d{1,3}$/.test(x) || Number(x) > 255)) throw new Error(`invalid IPv4 address ${JSON.stringify(ip)}`);
  return p.reduce((n, x) => n * 256 + Number(x), 0);
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function mask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** `10.1.2.3/16` (or a bare address: /32; `default`: 0.0.0.0/0). */
export function parseCidr(s: string): Cidr {
  if (s === 'default') return { base: 0, prefix: 0 };
  const [ip, pre] = s.split('/');
  const prefix = pre === undefined ? 32 : Number(pre);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new Error(`invalid IPv4 prefix in ${JSON.stringify(s)}`);
  return { base: (ipToInt(ip!) & mask(prefix)) >>> 0, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  const p = Math.min(a.prefix, b.prefix);
  return ((a.base & mask(p)) >>> 0) === ((b.base & mask(p)) >>> 0);
}

/** The usable host addresses of a subnet: [first, last] (network and broadcast excluded). */
export function hostRange(c: Cidr): [number, number] {
  const size = 2 ** (32 - c.prefix);
  return [c.base + 1, c.base + size - 2];
}

/**
 * The first candidate that overlaps none of the host's routes. The default route (0/0) overlaps
 * everything and is ignored: what matters are the networks the host already reaches directly or
 * through a specific route.
 */
export function chooseSubnet(candidates: readonly string[], routes: readonly Cidr[]): Cidr | null {
  for (const c of candidates.map(parseCidr)) {
    if (!routes.some((r) => r.prefix > 0 && overlaps(r, c))) return c;
  }
  return null;
}
