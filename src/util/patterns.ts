import { InvalidArgumentError } from './errors.js';

/**
 * Path patterns with the semantics BuildKit clients and daemons agree on (moby/patternmatcher as
 * vendored by BuildKit v0.11, Linux separator): `.dockerignore`, `includepatterns`,
 * `excludepatterns` and `followpaths`.
 *
 * The rules, as upstream applies them:
 * - every pattern is trimmed (Go's Unicode white space) and cleaned as Go's `path.Clean`
 *   (`./a//b/` is `a/b`); empty patterns are dropped; a leading `!` (after cleaning) marks an
 *   exception; a bare `!` is an error. A leading `/` is *not* removed here (upstream keeps it, so
 *   `/a` never matches a relative path): `parseDockerignore` removes it, as upstream's reader does.
 * - `*` is any run of non-`/`, `?` one non-`/` character, `[...]` a class, `\x` escapes `x`,
 *   `**` any number of path elements (a leading `**/` may match none, a trailing `/**` anything
 *   below), and upstream's literal-prefix/suffix shortcuts are kept, quirks included.
 * - a pattern that matches a directory matches everything under it; later patterns override
 *   earlier ones, so `!` exceptions re-include.
 *
 * Matching is done on cleaned, relative, slash-separated paths.
 */

// ---------------------------------------------------------------------------------------------
// Go string helpers the pattern rules depend on.

// Go's unicode.IsSpace: JavaScript's trim() differs (it strips U+FEFF and keeps U+0085).
const GO_SPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
  0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

/** Go's `strings.TrimSpace`. */
export function goTrimSpace(s: string): string {
  const cps = Array.from(s);
  let a = 0;
  let b = cps.length;
  while (a < b && GO_SPACE.has(cps[a]!.codePointAt(0)!)) a++;
  while (b > a && GO_SPACE.has(cps[b - 1]!.codePointAt(0)!)) b--;
  return cps.slice(a, b).join('');
}

const UNCLEAN = /(?:^|\/)\.\.?(?:\/|$)|\/\/|.\/$/;

/**
 * Go's `path.Clean` (and `filepath.Clean` on Linux): the shortest equivalent path, no `.`
 * elements, `..` resolved lexically (kept at the start of a relative path, dropped at the root),
 * no trailing or doubled slashes; `""` becomes `"."`.
 */
export function cleanPath(p: string): string {
  if (p === '') return '.';
  // Most paths are clean already (every path of a listing is checked with this): no `.` or `..`
  // element, no doubled or trailing slash.
  if (!UNCLEAN.test(p)) return p;
  const rooted = p.startsWith('/');
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!rooted) out.push('..');
      continue;
    }
    out.push(part);
  }
  const s = (rooted ? '/' : '') + out.join('/');
  return s === '' ? '.' : s;
}

// ---------------------------------------------------------------------------------------------
// Go's filepath.Match (Go 1.19, non-Windows): used for the wildcard step of followpaths and to
// reject malformed patterns the way upstream's constructor does.

class BadPatternError extends Error {}

function isSep(cp: number | undefined): boolean {
  return cp === 0x2f;
}

/** Splits off the next chunk: optional leading stars, then up to the next unbracketed `*`. */
function scanChunk(p: number[]): { star: boolean; chunk: number[]; rest: number[] } {
  let i = 0;
  let star = false;
  while (i < p.length && p[i] === 0x2a) {
    i++;
    star = true;
  }
  const start = i;
  let inrange = false;
  for (; i < p.length; i++) {
    const c = p[i];
    if (c === 0x5c) {
      if (i + 1 < p.length) i++;
    } else if (c === 0x5b) inrange = true;
    else if (c === 0x5d) inrange = false;
    else if (c === 0x2a && !inrange) break;
  }
  return { star, chunk: p.slice(start, i), rest: p.slice(i) };
}

function getEsc(chunk: number[], at: number): { r: number; next: number } {
  if (at >= chunk.length || chunk[at] === 0x2d || chunk[at] === 0x5d) throw new BadPatternError();
  if (chunk[at] === 0x5c) {
    at++;
    if (at >= chunk.length) throw new BadPatternError();
  }
  const r = chunk[at]!;
  const next = at + 1;
  if (next >= chunk.length) throw new BadPatternError();
  return { r, next };
}

/** Matches `chunk` at the start of `s`; returns the rest of `s`, or null. Throws on bad syntax. */
function matchChunk(chunk: number[], s: number[]): number[] | null {
  let failed = false;
  let ci = 0;
  let si = 0;
  while (ci < chunk.length) {
    if (!failed && si >= s.length) failed = true;
    const c = chunk[ci]!;
    if (c === 0x5b) {
      let r = -1;
      if (!failed) r = s[si++]!;
      ci++;
      let negated = false;
      if (ci < chunk.length && chunk[ci] === 0x5e) {
        negated = true;
        ci++;
      }
      let match = false;
      let nrange = 0;
      for (;;) {
        if (ci < chunk.length && chunk[ci] === 0x5d && nrange > 0) {
          ci++;
          break;
        }
        const lo = getEsc(chunk, ci);
        ci = lo.next;
        let hi = lo.r;
        if (chunk[ci] === 0x2d) {
          const h = getEsc(chunk, ci + 1);
          hi = h.r;
          ci = h.next;
        }
        if (lo.r <= r && r <= hi) match = true;
        nrange++;
      }
      if (match === negated) failed = true;
    } else if (c === 0x3f) {
      if (!failed) {
        if (isSep(s[si])) failed = true;
        si++;
      }
      ci++;
    } else {
      if (c === 0x5c) {
        ci++;
        if (ci >= chunk.length) throw new BadPatternError();
      }
      if (!failed) {
        if (chunk[ci] !== s[si]) failed = true;
        si++;
      }
      ci++;
    }
  }
  return failed ? null : s.slice(si);
}

function goMatchCps(pattern: number[], name: number[]): boolean {
  let p = pattern;
  let n = name;
  outer: while (p.length > 0) {
    const { star, chunk, rest } = scanChunk(p);
    p = rest;
    if (star && chunk.length === 0) return !n.includes(0x2f);
    const t = matchChunk(chunk, n);
    if (t !== null && (t.length === 0 || p.length > 0)) {
      n = t;
      continue;
    }
    if (star) {
      for (let i = 0; i < n.length && !isSep(n[i]); i++) {
        const t2 = matchChunk(chunk, n.slice(i + 1));
        if (t2 !== null) {
          if (p.length === 0 && t2.length > 0) continue;
          n = t2;
          continue outer;
        }
      }
    }
    return false;
  }
  return n.length === 0;
}

function codePoints(s: string): number[] {
  return Array.from(s, (c) => c.codePointAt(0)!);
}

/**
 * Go's `filepath.Match` (Go 1.19, `/` separator): shell-style match of a whole name.
 * Throws InvalidArgumentError for a malformed pattern (as Go's ErrBadPattern), which, as in Go,
 * may go unnoticed when the match fails before reaching the malformed part.
 */
export function globMatch(pattern: string, name: string): boolean {
  try {
    return goMatchCps(codePoints(pattern), codePoints(name));
  } catch (err) {
    if (err instanceof BadPatternError) throw new InvalidArgumentError(`syntax error in pattern ${JSON.stringify(pattern)}`);
    throw err;
  }
}

/** True when a path element has glob syntax (`*`, `?`, `[`), escapes aside: fsutil's containsWildcards. */
export function containsWildcards(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const ch = name[i];
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Pattern compilation: upstream turns a pattern into a Go (RE2) regular expression string. We build
// the same string and then translate RE2 syntax into an equivalent JavaScript RegExp, so that odd
// inputs (a `*` inside brackets, POSIX classes, escaped letters) behave as they do upstream.

// Characters upstream escapes because they are special in a regexp but not in a glob.
const REGEX_ESCAPED = new Set(['.', '+', '(', ')', '|', '{', '}', '$']);

type MatchType = 'exact' | 'prefix' | 'suffix' | 'regexp';

function goRegexFor(pattern: string): { type: MatchType; regex: string } {
  let re = '^';
  let type: MatchType = 'exact';
  const cps = Array.from(pattern);
  let pos = 0;
  const peek = (): string | undefined => cps[pos];
  for (let i = 0; pos < cps.length; i++) {
    const ch = cps[pos++]!;
    if (ch === '*') {
      if (peek() === '*') {
        pos++;
        if (peek() === '/') pos++;
        if (peek() === undefined) {
          if (type === 'exact') type = 'prefix';
          else {
            re += '.*';
            type = 'regexp';
          }
        } else {
          re += '(.*/)?';
          type = 'regexp';
        }
        if (i === 0) type = 'suffix';
      } else {
        re += '[^/]*';
        type = 'regexp';
      }
    } else if (ch === '?') {
      re += '[^/]';
      type = 'regexp';
    } else if (REGEX_ESCAPED.has(ch)) {
      re += '\\' + ch;
    } else if (ch === '\\') {
      if (peek() !== undefined) {
        re += '\\' + cps[pos++]!;
        type = 'regexp';
      } else {
        re += '\\';
      }
    } else if (ch === '[' || ch === ']') {
      re += ch;
      type = 'regexp';
    } else {
      re += ch;
    }
  }
  return { type, regex: re + '$' };
}

type Range = [number, number];

const R = (a: string, b = a): Range => [a.codePointAt(0)!, b.codePointAt(0)!];
const POSIX_CLASSES: Record<string, Range[]> = {
  alnum: [R('0', '9'), R('A', 'Z'), R('a', 'z')],
  alpha: [R('A', 'Z'), R('a', 'z')],
  ascii: [[0, 0x7f]],
  blank: [[0x09, 0x09], [0x20, 0x20]],
  cntrl: [[0, 0x1f], [0x7f, 0x7f]],
  digit: [R('0', '9')],
  graph: [[0x21, 0x7e]],
  lower: [R('a', 'z')],
  print: [[0x20, 0x7e]],
  punct: [[0x21, 0x2f], [0x3a, 0x40], [0x5b, 0x60], [0x7b, 0x7e]],
  space: [[0x09, 0x0d], [0x20, 0x20]],
  upper: [R('A', 'Z')],
  word: [R('0', '9'), R('A', 'Z'), R('a', 'z'), R('_')],
  xdigit: [R('0', '9'), R('A', 'F'), R('a', 'f')],
};
// RE2's Perl classes are ASCII-only; \s is narrower than JavaScript's.
const PERL_CLASSES: Record<string, Range[]> = {
  d: POSIX_CLASSES.digit!,
  s: [[0x09, 0x0a], [0x0c, 0x0d], [0x20, 0x20]],
  w: POSIX_CLASSES.word!,
};

function complement(ranges: Range[]): Range[] {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: Range[] = [];
  let next = 0;
  for (const [lo, hi] of sorted) {
    if (lo > next) out.push([next, lo - 1]);
    next = Math.max(next, hi + 1);
  }
  if (next <= 0x10ffff) out.push([next, 0x10ffff]);
  return out;
}

function jsChar(cp: number): string {
  return `\\u{${cp.toString(16)}}`;
}

function jsClass(ranges: Range[], negated = false): string {
  const body = ranges.map(([lo, hi]) => (lo === hi ? jsChar(lo) : `${jsChar(lo)}-${jsChar(hi)}`)).join('');
  return `[${negated ? '^' : ''}${body}]`;
}

class RegexSyntaxError extends Error {}

/** RE2's single-character escapes (after the backslash); returns the code point and next index. */
function parseEscape(cps: string[], at: number): { cp: number; next: number } {
  const c = cps[at];
  if (c === undefined) throw new RegexSyntaxError('trailing backslash');
  const cp = c.codePointAt(0)!;
  if (cp < 0x80 && !/[0-9A-Za-z]/.test(c)) return { cp, next: at + 1 };
  const isOct = (x: string | undefined): boolean => x !== undefined && x >= '0' && x <= '7';
  if ((c >= '1' && c <= '7' && isOct(cps[at + 1])) || c === '0') {
    let v = 0;
    let i = at;
    for (let n = 0; n < 3 && isOct(cps[i]); n++, i++) v = v * 8 + Number(cps[i]);
    return { cp: v, next: i };
  }
  if (c === 'x') {
    if (cps[at + 1] === '{') {
      const end = cps.indexOf('}', at + 2);
      const hex = end < 0 ? '' : cps.slice(at + 2, end).join('');
      if (!/^[0-9A-Fa-f]+$/.test(hex) || parseInt(hex, 16) > 0x10ffff) throw new RegexSyntaxError('invalid escape \\x{...}');
      return { cp: parseInt(hex, 16), next: end + 1 };
    }
    const hex = cps.slice(at + 1, at + 3).join('');
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new RegexSyntaxError('invalid escape \\x');
    return { cp: parseInt(hex, 16), next: at + 3 };
  }
  const ctl: Record<string, number> = { a: 7, f: 12, n: 10, r: 13, t: 9, v: 11 };
  if (c in ctl) return { cp: ctl[c]!, next: at + 1 };
  throw new RegexSyntaxError(`unsupported escape \\${c}`);
}

/** Translates one RE2 character class starting at `cps[at] === '['`. */
function translateClass(cps: string[], at: number): { js: string; next: number } {
  let i = at + 1;
  let negated = false;
  if (cps[i] === '^') {
    negated = true;
    i++;
  }
  const ranges: Range[] = [];
  let first = true;
  for (;;) {
    if (i >= cps.length) throw new RegexSyntaxError('missing closing ]');
    if (cps[i] === ']' && !first) {
      i++;
      break;
    }
    first = false;
    if (cps[i] === '[' && cps[i + 1] === ':') {
      let end = -1;
      for (let j = i + 2; j + 1 < cps.length; j++) {
        if (cps[j] === ':' && cps[j + 1] === ']') {
          end = j;
          break;
        }
      }
      if (end >= 0) {
        let name = cps.slice(i + 2, end).join('');
        const neg = name.startsWith('^');
        if (neg) name = name.slice(1);
        const cls = POSIX_CLASSES[name];
        if (!cls) throw new RegexSyntaxError(`invalid character class [:${name}:]`);
        ranges.push(...(neg ? complement(cls) : cls));
        i = end + 2;
        continue;
      }
    }
    if (cps[i] === '\\' && cps[i + 1] !== undefined && /^[dDsSwW]$/.test(cps[i + 1]!)) {
      const k = cps[i + 1]!;
      const cls = PERL_CLASSES[k.toLowerCase()]!;
      ranges.push(...(k === k.toUpperCase() ? complement(cls) : cls));
      i += 2;
      continue;
    }
    if (cps[i] === '\\' && (cps[i + 1] === 'p' || cps[i + 1] === 'P')) {
      throw new RegexSyntaxError('unicode classes (\\p) are not supported');
    }
    const classChar = (): number => {
      if (cps[i] === '\\') {
        const e = parseEscape(cps, i + 1);
        i = e.next;
        return e.cp;
      }
      return cps[i++]!.codePointAt(0)!;
    };
    const lo = classChar();
    let hi = lo;
    if (cps[i] === '-' && cps[i + 1] !== undefined && cps[i + 1] !== ']') {
      i++;
      hi = classChar();
      if (hi < lo) throw new RegexSyntaxError('invalid character class range');
    }
    ranges.push([lo, hi]);
  }
  // An empty JavaScript class would match nothing / anything; RE2 cannot produce one here.
  return { js: ranges.length === 0 ? (negated ? '[^]' : '[]') : jsClass(ranges, negated), next: i };
}

/** Translates the RE2 regexp built by goRegexFor into JavaScript (`u` flag) syntax. */
function translateRegex(re: string): string {
  const cps = Array.from(re);
  let out = '';
  let i = 0;
  while (i < cps.length) {
    const c = cps[i]!;
    if (c === '[') {
      const cls = translateClass(cps, i);
      out += cls.js;
      i = cls.next;
    } else if (c === '\\') {
      const k = cps[i + 1];
      if (k !== undefined && /^[dDsSwW]$/.test(k)) {
        const cls = PERL_CLASSES[k.toLowerCase()]!;
        out += jsClass(cls, k === k.toUpperCase());
        i += 2;
      } else if (k === 'A') {
        out += '^';
        i += 2;
      } else if (k === 'z') {
        out += '$';
        i += 2;
      } else if (k === 'b' || k === 'B') {
        out += '\\' + k;
        i += 2;
      } else if (k === 'Q') {
        let j = i + 2;
        while (j < cps.length && !(cps[j] === '\\' && cps[j + 1] === 'E')) out += jsChar(cps[j++]!.codePointAt(0)!);
        i = j < cps.length ? j + 2 : j;
      } else if (k === 'p' || k === 'P' || k === 'C') {
        throw new RegexSyntaxError(`unsupported escape \\${k}`);
      } else {
        const e = parseEscape(cps, i + 1);
        out += jsChar(e.cp);
        i = e.next;
      }
    } else if (c === '.') {
      // RE2's `.` excludes only \n; JavaScript's also excludes \r, U+2028 and U+2029.
      out += '[^\\n]';
      i++;
    } else if (c === ']' || c === '-' || c === '/') {
      out += jsChar(c.codePointAt(0)!);
      i++;
    } else {
      // Only upstream's own constructs remain: ^ $ ( ) * ? and plain characters.
      out += '()*?^$'.includes(c) ? c : jsChar(c.codePointAt(0)!);
      i++;
    }
  }
  return out;
}

/** One cleaned pattern of a PatternMatcher. */
export class Pattern {
  /** The cleaned pattern without its `!`. */
  readonly cleaned: string;
  readonly exclusion: boolean;
  /** Number of path elements, as upstream's `dirs` (used by the legacy parent rule). */
  readonly depth: number;
  readonly #type: MatchType;
  readonly #regex: RegExp | undefined;

  constructor(cleaned: string, exclusion: boolean, source: string) {
    this.cleaned = cleaned;
    this.exclusion = exclusion;
    this.depth = cleaned.split('/').length;
    const { type, regex } = goRegexFor(cleaned);
    this.#type = type;
    if (type === 'regexp') {
      try {
        this.#regex = new RegExp(translateRegex(regex), 'u');
      } catch (err) {
        throw new InvalidArgumentError(`invalid pattern ${JSON.stringify(source)}: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  toString(): string {
    return this.cleaned;
  }

  /** Whether this pattern alone matches `path` (a cleaned, slash-separated relative path). */
  match(path: string): boolean {
    switch (this.#type) {
      case 'exact':
        return path === this.cleaned;
      case 'prefix':
        return path.startsWith(this.cleaned.slice(0, -2));
      case 'suffix': {
        const suffix = this.cleaned.slice(2);
        if (path.endsWith(suffix)) return true;
        return suffix.startsWith('/') && path === suffix.slice(1);
      }
      case 'regexp':
        return this.#regex!.test(path);
    }
  }

  /** The pattern with one trailing `/**` or `/*` removed: the literal directory it is about. */
  withoutTrailingGlob(): string {
    let s = this.cleaned;
    if (s.endsWith('/**')) s = s.slice(0, -3);
    if (s.endsWith('/*')) s = s.slice(0, -2);
    return s;
  }
}

/**
 * Per-directory match state handed from a directory to its children, so each path is matched
 * against its own name only (upstream's MatchInfo). Opaque to callers.
 */
export interface MatchInfo {
  readonly parentMatched: readonly boolean[];
}

/** An ordered list of patterns with `!` exceptions; later patterns win. */
export class PatternMatcher {
  readonly patterns: readonly Pattern[];
  /** Whether any pattern is a `!` exception. */
  readonly hasExclusions: boolean;

  constructor(patterns: readonly string[]) {
    const out: Pattern[] = [];
    let exclusions = false;
    for (const raw of patterns) {
      let p = goTrimSpace(raw);
      if (p === '') continue;
      p = cleanPath(p);
      let exclusion = false;
      if (p.startsWith('!')) {
        if (p.length === 1) throw new InvalidArgumentError('illegal exclusion pattern: "!"');
        exclusion = true;
        exclusions = true;
        p = p.slice(1);
      }
      // Upstream checks syntax by matching against "." (with Go 1.19's lenient early exit), and
      // says only filepath.ErrBadPattern's words.
      try {
        globMatch(p, '.');
      } catch (err) {
        if (err instanceof InvalidArgumentError) throw new InvalidArgumentError('syntax error in pattern', { cause: err });
        throw err;
      }
      out.push(new Pattern(p, exclusion, raw));
    }
    this.patterns = out;
    this.hasExclusions = exclusions;
  }

  /**
   * Whether `path` is matched: some pattern matches it or one of its parent directories, and no
   * later exception undoes that (upstream's MatchesOrParentMatches).
   */
  matches(path: string): boolean {
    const file = cleanPath(path);
    if (file === '.') return false;
    return this.matchesUsingParentResults(file).matched;
  }

  /**
   * Match one walked path using the state of its parent directory (upstream's
   * MatchesUsingParentResults). Without `parent`, parent directories are checked by name.
   */
  matchesUsingParentResults(path: string, parent?: MatchInfo): { matched: boolean; info: MatchInfo } {
    const parentMatched = parent?.parentMatched ?? [];
    if (parentMatched.length !== 0 && parentMatched.length !== this.patterns.length) {
      throw new InvalidArgumentError('wrong number of values in parentMatched');
    }
    // Without exceptions nothing undoes a match: below a matched directory every path is matched,
    // and the parent's state serves as the entry's own (the loop below could only add matches to
    // it, which change no verdict). A walk of a directory named in full takes this path per entry.
    if (!this.hasExclusions && parentMatched.includes(true)) return { matched: true, info: parent! };
    let matched = false;
    const info: boolean[] = new Array<boolean>(this.patterns.length).fill(false);
    let parentDirs: string[] | undefined;
    this.patterns.forEach((pattern, i) => {
      let match = parentMatched.length !== 0 ? parentMatched[i]! : false;
      if (!match) {
        // An inclusion cannot change an already matched path, nor an exception an unmatched one.
        if (pattern.exclusion !== matched) return;
        match = pattern.match(path);
        if (!match && parentMatched.length === 0) {
          const slash = path.lastIndexOf('/');
          if (slash > 0) {
            parentDirs ??= path.slice(0, slash).split('/');
            for (let j = 0; j < parentDirs.length && !match; j++) {
              match = pattern.match(parentDirs.slice(0, j + 1).join('/'));
            }
          }
        }
      }
      info[i] = match;
      if (match) matched = !pattern.exclusion;
    });
    return { matched, info: { parentMatched: info } };
  }
}

// ---------------------------------------------------------------------------------------------
// Include/exclude filtering for a directory walk (fsutil's walker rules).

/** Opaque per-directory state of a PathFilter, passed from a directory to its entries. */
export interface FilterState {
  readonly include?: MatchInfo;
  readonly exclude?: MatchInfo;
}

/**
 * The filter's verdict on one walked path:
 * - `include`: emit it (a directory is descended);
 * - `exclude`: do not emit it, but a directory must still be descended because something below
 *   may be included (an include pattern under it, or an exception to an exclude); when something
 *   below is emitted, the walker emits this directory first;
 * - `prune`: a directory whose whole subtree is left out: do not descend.
 */
export type FilterVerdict = 'include' | 'exclude' | 'prune';

const PATTERN_CHARS = /[*[\]?^\\]/;

/**
 * The matcher for a transfer's or a copy's include or exclude patterns (null for none), failing in
 * upstream's words: `invalid excludepatterns: [a [b]: syntax error in pattern` (Go's %s of a list).
 */
export function patternMatcherFor(kind: 'include' | 'exclude', patterns: readonly string[] | undefined): PatternMatcher | null {
  if (!patterns || patterns.length === 0) return null;
  try {
    return new PatternMatcher(patterns);
  } catch (err) {
    throw new InvalidArgumentError(`invalid ${kind}patterns: [${patterns.join(' ')}]: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Include and exclude patterns applied as fsutil's walker applies them (BuildKit v0.11 and later):
 * a path is kept when it matches the include patterns (if any) and not the exclude patterns.
 * Include patterns match parents too: `src/**` descends `src` and emits it before its first
 * kept entry. Directories are pruned only when no pattern could keep anything beneath them.
 */
export class PathFilter {
  readonly include: PatternMatcher | undefined;
  readonly exclude: PatternMatcher | undefined;
  readonly #onlyPrefixIncludes: boolean;
  readonly #onlyPrefixExcludeExceptions: boolean;

  constructor(opts: { includePatterns?: readonly string[]; excludePatterns?: readonly string[] }) {
    this.include = patternMatcherFor('include', opts.includePatterns) ?? undefined;
    this.exclude = patternMatcherFor('exclude', opts.excludePatterns) ?? undefined;
    this.#onlyPrefixIncludes = !(this.include?.patterns ?? []).some(
      (p) => !p.exclusion && PATTERN_CHARS.test(p.withoutTrailingGlob()),
    );
    this.#onlyPrefixExcludeExceptions = !(this.exclude?.patterns ?? []).some(
      (p) => p.exclusion && PATTERN_CHARS.test(p.withoutTrailingGlob()),
    );
  }

  /** False when there are no patterns: every path is kept. */
  get active(): boolean {
    return this.include !== undefined || this.exclude !== undefined;
  }

  /**
   * Decide for one path (relative, cleaned, slash-separated) given its parent directory's state
   * (undefined for entries of the root). `state` is to be passed to the entries of `path` when it
   * is a directory that is descended.
   */
  check(path: string, isDir: boolean, parent?: FilterState): { verdict: FilterVerdict; state: FilterState } {
    let skip = false;
    let includeInfo: MatchInfo | undefined;
    let excludeInfo: MatchInfo | undefined;
    if (this.include) {
      const r = this.include.matchesUsingParentResults(path, parent?.include);
      includeInfo = r.info;
      if (!r.matched) {
        if (isDir && this.#onlyPrefixIncludes && !hasPatternBelow(this.include, path, false)) {
          return { verdict: 'prune', state: {} };
        }
        skip = true;
      }
    }
    if (this.exclude) {
      const r = this.exclude.matchesUsingParentResults(path, parent?.exclude);
      excludeInfo = r.info;
      if (r.matched) {
        if (isDir && this.#onlyPrefixExcludeExceptions) {
          if (!this.exclude.hasExclusions || !hasPatternBelow(this.exclude, path, true)) {
            return { verdict: 'prune', state: {} };
          }
        }
        skip = true;
      }
    }
    return { verdict: skip ? 'exclude' : 'include', state: { include: includeInfo, exclude: excludeInfo } };
  }
}

/** Whether some pattern of the given kind names `dir` or a path below it literally. */
function hasPatternBelow(m: PatternMatcher, dir: string, exclusions: boolean): boolean {
  const dirSlash = dir + '/';
  return m.patterns.some((p) => p.exclusion === exclusions && (p.withoutTrailingGlob() + '/').startsWith(dirSlash));
}

// ---------------------------------------------------------------------------------------------

/**
 * Reads a `.dockerignore` as upstream does: a UTF-8 BOM is dropped, lines starting with `#` are
 * comments (only in the first column), lines are trimmed, blank ones dropped, each pattern is
 * cleaned and a leading `/` removed (also after `!`, which may be followed by spaces).
 */
export function parseDockerignore(text: string | Uint8Array): string[] {
  let s = typeof text === 'string' ? text : new TextDecoder().decode(text);
  if (s.startsWith('\ufeff')) s = s.slice(1);
  const lines = s.split('\n');
  // A final newline does not start another line (bufio.Scanner).
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const out: string[] = [];
  for (let line of lines) {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.startsWith('#')) continue;
    let pattern = goTrimSpace(line);
    if (pattern === '') continue;
    const invert = pattern.startsWith('!');
    if (invert) pattern = goTrimSpace(pattern.slice(1));
    if (pattern.length > 0) {
      pattern = cleanPath(pattern);
      if (pattern.length > 1 && pattern.startsWith('/')) pattern = pattern.slice(1);
    }
    out.push(invert ? '!' + pattern : pattern);
  }
  return out;
}
