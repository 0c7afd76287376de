/**
 * Number formatting as upstream's progress output prints it (Go's fmt and tonistiigi/units):
 * decimals rounded half to even on the exact value, sizes in decimal units.
 */

/** `%.<digits>f` as Go prints it (ties to even; JS's toFixed rounds ties up). */
export function fixed(v: number, digits: number): string {
  const scale = 10 ** digits;
  const s = v * scale;
  const fl = Math.floor(s);
  let n: number;
  if (s - fl === 0.5) n = fl % 2 === 0 ? fl : fl + 1;
  else n = Math.round(s);
  return (n / scale).toFixed(digits);
}

const UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB'];

/** units.Bytes with `%.2f`: `123B` below 1 kB (whole bytes), else `1.23kB`, `45.67MB`. */
export function bytes(n: number | bigint): string {
  const v = Number(n);
  const neg = v < 0;
  let abs = Math.abs(v);
  if (abs < 1000) return `${Math.trunc(v)}B`;
  let i = 0;
  while (abs >= 1000 && i < UNITS.length - 1) {
    abs /= 1000;
    i++;
  }
  return `${neg ? '-' : ''}${fixed(abs, 2)}${UNITS[i]}`;
}

/** units.Bytes with `%g` (shortest form): `512MB`, `1.5GB`, `100B`. */
export function bytesShort(n: number | bigint): string {
  const v = Number(n);
  let abs = Math.abs(v);
  if (abs < 1000) return `${Math.trunc(v)}B`;
  let i = 0;
  while (abs >= 1000 && i < UNITS.length - 1) {
    abs /= 1000;
    i++;
  }
  return `${v < 0 ? '-' : ''}${String(abs)}${UNITS[i]}`;
}
