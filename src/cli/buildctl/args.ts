import { InvalidArgumentError } from '../../util/errors.js';

/** A flag as urfave/cli declares it: names (first is canonical), kind, default. */
export interface FlagSpec {
  names: string[];
  kind: 'string' | 'bool' | 'slice' | 'int' | 'float' | 'duration';
  default?: string | number | boolean;
}

export type FlagValues = Record<string, string | boolean | string[] | number | undefined>;

/** A usage error: upstream prints `Incorrect Usage: ...` and exits 1 (3 for unknown commands). */
export class UsageError extends InvalidArgumentError {
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}

/**
 * Parses flags as Go's flag package (which urfave/cli v1 uses): `-f`, `--f`, `--f=v`, `--f v`;
 * bool flags take no separate value; parsing stops at the first non-flag argument or `--`.
 * Returns the values under each flag's canonical name and the remaining arguments.
 */
export function parseFlags(args: string[], specs: FlagSpec[]): { values: FlagValues; rest: string[] } {
  const byName = new Map<string, FlagSpec>();
  for (const s of specs) for (const n of s.names) byName.set(n, s);
  const values: FlagValues = {};
  for (const s of specs) {
    const k = s.names[0]!;
    if (s.kind === 'slice') values[k] = [];
    else if (s.default !== undefined) values[k] = s.default;
    else if (s.kind === 'bool') values[k] = false;
  }
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    const body = a.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    const spec = byName.get(name);
    if (!spec) throw new UsageError(`flag provided but not defined: -${name}`);
    const key = spec.names[0]!;
    if (spec.kind === 'bool') {
      if (eq >= 0) {
        const v = body.slice(eq + 1);
        if (!/^(1|0|t|f|true|false|TRUE|FALSE|True|False|T|F)$/.test(v)) throw new UsageError(`invalid boolean value ${JSON.stringify(v)} for -${name}`);
        values[key] = /^(1|t|true|TRUE|True|T)$/.test(v);
      } else {
        values[key] = true;
      }
      continue;
    }
    let v: string;
    if (eq >= 0) v = body.slice(eq + 1);
    else {
      if (i + 1 >= args.length) throw new UsageError(`flag needs an argument: -${name}`);
      v = args[++i]!;
    }
    switch (spec.kind) {
      case 'slice':
        (values[key] as string[]).push(v);
        break;
      case 'int':
        if (!/^[+-]?\d+$/.test(v)) throw new UsageError(`invalid value ${JSON.stringify(v)} for flag -${name}: parse error`);
        values[key] = Number(v);
        break;
      case 'float':
        if (!Number.isFinite(Number(v)) || v.trim() === '') throw new UsageError(`invalid value ${JSON.stringify(v)} for flag -${name}: parse error`);
        values[key] = Number(v);
        break;
      case 'duration':
        values[key] = parseGoDuration(v, name);
        break;
      default:
        values[key] = v;
    }
  }
  return { values, rest: args.slice(i) };
}

/** Go's time.ParseDuration, in nanoseconds as a number (`72h`, `1h30m`, `90s`, `500ms`, `0`). */
export function parseGoDuration(s: string, flag = 'duration'): number {
  const bad = (): UsageError => new UsageError(`invalid value ${JSON.stringify(s)} for flag -${flag}: parse error`);
  if (s === '0') return 0;
  let rest = s;
  let sign = 1;
  if (rest.startsWith('-') || rest.startsWith('+')) {
    if (rest[0] === '-') sign = -1;
    rest = rest.slice(1);
  }
  if (!rest) throw bad();
  const units: Record<string, number> = { ns: 1, us: 1e3, 'µs': 1e3, 'μs': 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
  let total = 0;
  const re = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)/;
  while (rest) {
    const m = re.exec(rest);
    if (!m) throw bad();
    total += Number(m[1]) * units[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return sign * total;
}

/** Go's Duration.String(): `72h0m0s`, `1m30s`, `1.5s`, `500ms`, `0s`. */
export function formatGoDuration(ns: number): string {
  if (ns === 0) return '0s';
  const neg = ns < 0;
  let n = Math.abs(ns);
  let out: string;
  if (n < 1e9) {
    if (n < 1e3) out = `${n}ns`;
    else if (n < 1e6) out = `${trim(n / 1e3)}µs`;
    else out = `${trim(n / 1e6)}ms`;
  } else {
    const h = Math.floor(n / 3600e9);
    n -= h * 3600e9;
    const m = Math.floor(n / 60e9);
    n -= m * 60e9;
    const s = trim(n / 1e9);
    out = h > 0 ? `${h}h${m}m${s}s` : m > 0 ? `${m}m${s}s` : `${s}s`;
  }
  return (neg ? '-' : '') + out;
}

function trim(v: number): string {
  return String(Number(v.toFixed(9)));
}
