/**
 * Small pieces of Go's standard library whose exact behaviour shows through in Dockerfile
 * semantics: what counts as white space, how `%q` quotes, how durations print and parse, how
 * `strconv.ParseBool` and `encoding/csv` read. Upstream's messages and history strings are built
 * with these, so loom reproduces them rather than using JavaScript's near equivalents.
 */

// Go's unicode.IsSpace.
const GO_SPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
  0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

export function isSpace(ch: string): boolean {
  return GO_SPACE.has(ch.codePointAt(0)!);
}

/** Go's strings.TrimSpace. */
export function trimSpace(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && GO_SPACE.has(s.charCodeAt(a))) a++;
  while (b > a && GO_SPACE.has(s.charCodeAt(b - 1))) b--;
  return s.slice(a, b);
}

export function trimLeftSpace(s: string): string {
  let a = 0;
  while (a < s.length && GO_SPACE.has(s.charCodeAt(a))) a++;
  return s.slice(a);
}

const LETTER = /^\p{L}$/u;
const DIGIT = /^\p{Nd}$/u;

export function isLetter(ch: string): boolean {
  return LETTER.test(ch);
}

export function isDigit(ch: string): boolean {
  return DIGIT.test(ch);
}

const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]$/u;

/** Go's strconv.Quote. */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += '\\' + ch;
    else if (c === 0xfffd && ch === '\ufffd') out += ch;
    else if (PRINTABLE.test(ch)) out += ch;
    else if (c === 7) out += '\\a';
    else if (c === 8) out += '\\b';
    else if (c === 12) out += '\\f';
    else if (c === 10) out += '\\n';
    else if (c === 13) out += '\\r';
    else if (c === 9) out += '\\t';
    else if (c === 11) out += '\\v';
    else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
    else if (c < 0x10000) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += '\\U' + c.toString(16).padStart(8, '0');
  }
  return out + '"';
}

/** Go's `%q` of an int: a quoted character literal (`'\x03'`), as fmt prints a Retries count. */
export function goQuoteRune(n: number): string {
  if (n === 39) return "'\\''";
  if (n === 92) return "'\\\\'";
  const ch = n >= 0 && n <= 0x10ffff ? String.fromCodePoint(n) : '\ufffd';
  if (n >= 0x20 && n !== 0x7f && PRINTABLE.test(ch)) return `'${ch}'`;
  const named: Record<number, string> = { 7: '\\a', 8: '\\b', 12: '\\f', 10: '\\n', 13: '\\r', 9: '\\t', 11: '\\v' };
  if (named[n]) return `'${named[n]}'`;
  if (n < 0x80) return `'\\x${n.toString(16).padStart(2, '0')}'`;
  if (n < 0x10000) return `'\\u${n.toString(16).padStart(4, '0')}'`;
  return `'\\U${n.toString(16).padStart(8, '0')}'`;
}

/** fmt's `%q` of a []string: `["a" "b"]`. */
export function goQuoteSlice(a: readonly string[]): string {
  return '[' + a.map(goQuote).join(' ') + ']';
}

/** fmt's `%v` of a []string: `[a b]`. */
export function goSlice(a: readonly string[]): string {
  return '[' + a.join(' ') + ']';
}

// Durations are kept as bigint nanoseconds, as Go's time.Duration (an int64).
const NS = 1n;
const US = 1000n * NS;
const MS = 1000n * US;
const SEC = 1000n * MS;
const MIN = 60n * SEC;
const HOUR = 60n * MIN;

function fmtFrac(v: bigint, prec: number): [string, bigint] {
  // Trailing zeros are dropped, and so is the dot when the fraction is zero.
  let s = '';
  let print = false;
  for (let i = 0; i < prec; i++) {
    const digit = v % 10n;
    print ||= digit !== 0n;
    if (print) s = digit.toString() + s;
    v /= 10n;
  }
  return [print ? '.' + s : '', v];
}

/** Go's time.Duration.String: `1h2m3.5s`, `150ms`, `0s`. */
export function formatDuration(d: bigint): string {
  if (d === 0n) return '0s';
  const neg = d < 0n;
  let u = neg ? -d : d;
  let out: string;
  if (u < SEC) {
    let prec: number;
    let unit: string;
    if (u < US) return (neg ? '-' : '') + u.toString() + 'ns';
    if (u < MS) {
      prec = 3;
      unit = 'µs';
    } else {
      prec = 6;
      unit = 'ms';
    }
    const [frac, whole] = fmtFrac(u, prec);
    out = whole.toString() + frac + unit;
  } else {
    const [frac, secs] = fmtFrac(u, 9);
    u = secs;
    out = (u % 60n).toString() + frac + 's';
    u /= 60n;
    if (u > 0n) {
      out = (u % 60n).toString() + 'm' + out;
      u /= 60n;
      if (u > 0n) out = u.toString() + 'h' + out;
    }
  }
  return (neg ? '-' : '') + out;
}

const UNITS: Record<string, bigint> = { ns: NS, us: US, 'µs': US, 'μs': US, ms: MS, s: SEC, m: MIN, h: HOUR };

/** Go's time.ParseDuration, with its error messages. */
export function parseDuration(s: string): bigint {
  const orig = s;
  const bad = () => new Error(`time: invalid duration ${goQuote(orig)}`);
  let neg = false;
  if (s !== '' && (s[0] === '-' || s[0] === '+')) {
    neg = s[0] === '-';
    s = s.slice(1);
  }
  if (s === '0') return 0n;
  if (s === '') throw bad();
  let total = 0n;
  while (s !== '') {
    const m = /^(\d*)(?:\.(\d*))?/.exec(s)!;
    const intPart = m[1]!;
    const fracPart = m[2];
    if (intPart === '' && (fracPart === undefined || fracPart === '')) throw bad();
    s = s.slice(m[0].length);
    const um = /^[^0-9.]*/.exec(s)!;
    const unitStr = um[0];
    if (unitStr === '') throw new Error(`time: missing unit in duration ${goQuote(orig)}`);
    const unit = UNITS[unitStr];
    if (unit === undefined) throw new Error(`time: unknown unit ${goQuote(unitStr)} in duration ${goQuote(orig)}`);
    s = s.slice(unitStr.length);
    let v = BigInt(intPart || '0') * unit;
    if (fracPart) {
      // Go scales the fraction as a float and truncates.
      const f = Number('0.' + fracPart) * Number(unit);
      v += BigInt(Math.floor(f));
    }
    total += v;
    if (total > 9223372036854775807n) throw bad();
  }
  return neg ? -total : total;
}

/** Go's strconv.ParseBool. */
export function parseGoBool(s: string): boolean | undefined {
  switch (s) {
    case '1':
    case 't':
    case 'T':
    case 'TRUE':
    case 'true':
    case 'True':
      return true;
    case '0':
    case 'f':
    case 'F':
    case 'FALSE':
    case 'false':
    case 'False':
      return false;
    default:
      return undefined;
  }
}

/** Go's strconv.ParseUint(s, base, bits); undefined when invalid or out of range. */
export function parseGoUint(s: string, base: number, bits: number): bigint | undefined {
  if (s === '') return undefined;
  let body = s;
  let b = base;
  if (base === 0) {
    b = 10;
    if (/^0[xX]/.test(s)) {
      b = 16;
      body = s.slice(2);
    } else if (/^0[oO]/.test(s)) {
      b = 8;
      body = s.slice(2);
    } else if (/^0[bB]/.test(s)) {
      b = 2;
      body = s.slice(2);
    } else if (s.startsWith('0') && s.length > 1) {
      b = 8;
      body = s.slice(1);
    }
    body = body.replace(/_/g, '');
  }
  const digits = '0123456789abcdefghijklmnopqrstuvwxyz'.slice(0, b);
  if (body === '') return undefined;
  let v = 0n;
  for (const ch of body.toLowerCase()) {
    const d = digits.indexOf(ch);
    if (d < 0) return undefined;
    v = v * BigInt(b) + BigInt(d);
  }
  if (v >= 1n << BigInt(bits)) return undefined;
  return v;
}

/** Go's strconv.ParseInt(s, 10, bits). */
export function parseGoInt(s: string, bits: number): bigint | undefined {
  let neg = false;
  let body = s;
  if (body.startsWith('+') || body.startsWith('-')) {
    neg = body[0] === '-';
    body = body.slice(1);
  }
  const v = parseGoUint(body, 10, 64);
  if (v === undefined) return undefined;
  const max = 1n << BigInt(bits - 1);
  if (neg ? v > max : v >= max) return undefined;
  return neg ? -v : v;
}

/** Go's strconv.Atoi: a decimal int64 or undefined. */
export function atoi(s: string): number | undefined {
  const v = parseGoInt(s, 64);
  return v === undefined ? undefined : Number(v);
}

/**
 * The first record of Go's encoding/csv Reader (default settings: `,` separator, quotes with `""`
 * escapes, leading/trailing space kept). Errors read as Go's (`parse error on line 1, column 5: ...`).
 */
export function readCSVRecord(line: string): string[] {
  // csv.Reader reads a record that may span lines inside quotes; callers pass a single value.
  const fields: string[] = [];
  let i = 0;
  const n = line.length;
  const lineNo = 1;
  // A trailing \r\n or \n ends the record.
  let text = line;
  if (text.endsWith('\r\n')) text = text.slice(0, -2);
  else if (text.endsWith('\n')) text = text.slice(0, -1);
  void n;
  for (;;) {
    if (i < text.length && text[i] === '"') {
      // Quoted field.
      const start = i;
      i++;
      let field = '';
      for (;;) {
        const q = text.indexOf('"', i);
        if (q < 0) {
          throw new Error(`parse error on line ${lineNo}, column ${text.length + 1}: extraneous or missing " in quoted-field`);
        }
        field += text.slice(i, q);
        i = q + 1;
        if (text[i] === '"') {
          field += '"';
          i++;
          continue;
        }
        if (i >= text.length || text[i] === ',') break;
        void start;
        throw new Error(`parse error on line ${lineNo}, column ${i + 1}: extraneous or missing " in quoted-field`);
      }
      fields.push(field);
    } else {
      const c = text.indexOf(',', i);
      const field = c < 0 ? text.slice(i) : text.slice(i, c);
      const q = field.indexOf('"');
      if (q >= 0) throw new Error(`parse error on line ${lineNo}, column ${i + q + 1}: bare " in non-quoted-field`);
      fields.push(field);
      i = c < 0 ? text.length : c;
    }
    if (i >= text.length) break;
    i++; // the comma
    if (i >= text.length) {
      fields.push('');
      break;
    }
  }
  return fields;
}

/** agext/levenshtein.Distance with unit costs, on code points. */
export function levenshtein(a: string, b: string): number {
  const s = Array.from(a);
  const t = Array.from(b);
  let prev = Array.from({ length: t.length + 1 }, (_, j) => j);
  for (let i = 1; i <= s.length; i++) {
    const cur = [i];
    for (let j = 1; j <= t.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (s[i - 1] === t[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[t.length]!;
}

/**
 * BuildKit's suggest.WrapError: appends ` (did you mean X?)` when one option is within edit
 * distance 2 of `value`; the message is returned unchanged when `value` is itself an option.
 */
export function suggest(message: string, value: string, options: readonly string[], caseSensitive: boolean): string {
  const match = suggestSearch(value, options, caseSensitive);
  return match ? `${message} (did you mean ${match}?)` : message;
}

/** BuildKit's suggest.Search: the closest option within edit distance 2, '' when none or when `value` is one. */
export function suggestSearch(value: string, options: readonly string[], caseSensitive: boolean): string {
  const v = caseSensitive ? value : value.toLowerCase();
  let match = '';
  let min = 3;
  for (const o of options) {
    const opt = caseSensitive ? o : o.toLowerCase();
    if (opt === v) return '';
    const d = levenshtein(v, opt);
    if (d < min) {
      min = d;
      if (caseSensitive) match = opt;
      else if (value === value.toLowerCase()) match = opt.toLowerCase();
      else if (value === value.toUpperCase()) match = opt.toUpperCase();
      else match = opt;
    }
  }
  return match;
}

/** go-units RAMInBytes: `64m`, `1g`, `512`, `1.5GiB`... binary multiples. */
export function ramInBytes(sizeStr: string): number {
  const bad = () => new Error(`invalid size: '${sizeStr}'`);
  let sep = -1;
  for (let i = sizeStr.length - 1; i >= 0; i--) {
    if ('01234567890. '.includes(sizeStr[i]!)) {
      sep = i;
      break;
    }
  }
  if (sep === -1) throw bad();
  let num: string;
  let sfx: string;
  if (sizeStr[sep] !== ' ') {
    num = sizeStr.slice(0, sep + 1);
    sfx = sizeStr.slice(sep + 1);
  } else {
    num = sizeStr.slice(0, sep);
    sfx = sizeStr.slice(sep + 1);
  }
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(num)) {
    throw new Error(`strconv.ParseFloat: parsing ${goQuote(num)}: invalid syntax`);
  }
  let size = Number(num);
  if (size < 0) throw bad();
  if (sfx.length === 0) return Math.trunc(size);
  if (sfx.length > 3) throw new Error(`invalid suffix: '${sfx}'`);
  const lower = sfx.toLowerCase();
  const badSuffix = () => new Error(`invalid suffix: '${lower}'`);
  if (lower[0] === 'b') {
    if (lower.length > 1) throw badSuffix();
    return Math.trunc(size);
  }
  const mul: Record<string, number> = { k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 };
  const m = mul[lower[0]!];
  if (m === undefined) throw badSuffix();
  size *= m;
  // A suffix of two or three letters must be "b" or "ib" after the unit.
  if (lower.length === 2 && lower[1] !== 'b') throw badSuffix();
  if (lower.length === 3 && lower.slice(1) !== 'ib') throw badSuffix();
  return Math.trunc(size);
}
