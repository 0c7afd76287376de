/**
 * Word processing and variable expansion as the Dockerfile frontend does it (BuildKit's
 * frontend/dockerfile/shell): quotes, the escape token, `$name`, `${name}` and the modifiers
 * `${a:-b}`, `${a-b}`, `${a:+b}`, `${a+b}`, `${a:?msg}`, `${a?msg}`, plus splitting into words
 * after expansion. It is not a shell: there is no command substitution, globbing or arithmetic.
 *
 * Errors are plain `Error`s with upstream's messages; callers attach the Dockerfile line.
 */
import { isDigit, isLetter, isSpace } from './go-compat.js';

export interface ShellLexOptions {
  /** Keep quote characters in the output (used to tell quoted heredoc names apart). */
  rawQuotes?: boolean;
  /** Keep escape characters in the output. */
  rawEscapes?: boolean;
  /** Treat quotes as ordinary characters (heredoc bodies). */
  skipProcessQuotes?: boolean;
  /** Leave references to unset variables as written instead of expanding them to nothing. */
  skipUnsetEnv?: boolean;
  /**
   * Only the modifiers of upstream v0.11's lexer (`${a:-b}`, `${a:+b}`, `${a:?b}`, `${a?b}`): the
   * others are errors, as they were there. Step names are made so (see convert's RUN).
   */
  v011Modifiers?: boolean;
}

const EOF = '';

/** A character reader over code points with one character of look-ahead (Go's text/scanner Next/Peek). */
class Scanner {
  readonly #chars: string[];
  #pos = 0;

  constructor(s: string) {
    this.#chars = Array.from(s);
  }

  peek(): string {
    return this.#chars[this.#pos] ?? EOF;
  }

  next(): string {
    const c = this.#chars[this.#pos];
    if (c === undefined) return EOF;
    this.#pos++;
    return c;
  }
}

class Words {
  word = '';
  words: string[] = [];
  inWord = false;

  addChar(ch: string): void {
    if (isSpace(ch) && this.inWord) {
      if (this.word.length !== 0) {
        this.words.push(this.word);
        this.word = '';
        this.inWord = false;
      }
    } else if (!isSpace(ch)) {
      this.addRawChar(ch);
    }
  }

  addRawChar(ch: string): void {
    this.word += ch;
    this.inWord = true;
  }

  addString(s: string): void {
    for (const ch of s) this.addChar(ch);
  }

  addRawString(s: string): void {
    this.word += s;
    this.inWord = true;
  }

  getWords(): string[] {
    if (this.word.length > 0) {
      this.words.push(this.word);
      this.word = '';
      this.inWord = false;
    }
    return this.words;
  }
}

export type EnvInput = readonly string[] | ReadonlyMap<string, string> | Record<string, string>;

/** BuildKit's shell.BuildEnvs: `K=V` strings to a map, later entries winning, `K` alone is empty. */
export function buildEnvs(env: readonly string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of env) {
    const i = e.indexOf('=');
    if (i < 0) m.set(e, '');
    else m.set(e.slice(0, i), e.slice(i + 1));
  }
  return m;
}

function toMap(env: EnvInput): ReadonlyMap<string, string> {
  if (Array.isArray(env)) return buildEnvs(env as readonly string[]);
  if (env instanceof Map) return env;
  return new Map(Object.entries(env as Record<string, string>));
}

function isSpecialParam(ch: string): boolean {
  return '@*#?-$!0'.includes(ch) && ch.length === 1;
}

class ShellWord {
  readonly sc: Scanner;
  readonly envs: ReadonlyMap<string, string>;
  readonly escapeToken: string;
  readonly o: ShellLexOptions;
  readonly matches = new Set<string>();
  /** Variables looked up and not set (upstream 1.8's Unmatched, for the UndefinedVar lint rule). */
  readonly unmatched = new Set<string>();
  rawEscapes: boolean;

  constructor(word: string, env: ReadonlyMap<string, string>, escapeToken: string, o: ShellLexOptions) {
    this.sc = new Scanner(word);
    this.envs = env;
    this.escapeToken = escapeToken;
    this.o = o;
    this.rawEscapes = o.rawEscapes ?? false;
  }

  process(source: string): [string, string[]] {
    try {
      return this.processStopOn(EOF);
    } catch (err) {
      throw new Error(`failed to process ${JSON.stringify(source)}: ${(err as Error).message}`, { cause: err });
    }
  }

  processStopOn(stopChar: string): [string, string[]] {
    let result = '';
    const words = new Words();
    while (this.sc.peek() !== EOF) {
      const ch = this.sc.peek();
      if (stopChar !== EOF && ch === stopChar) {
        this.sc.next();
        return [result, words.getWords()];
      }
      if (ch === '$') {
        const tmp = this.processDollar();
        result += tmp;
        words.addString(tmp);
      } else if (!this.o.skipProcessQuotes && (ch === "'" || ch === '"')) {
        const tmp = ch === "'" ? this.processSingleQuote() : this.processDoubleQuote();
        result += tmp;
        words.addRawString(tmp);
      } else {
        let c = this.sc.next();
        if (c === this.escapeToken) {
          if (this.rawEscapes) {
            words.addRawChar(c);
            result += c;
          }
          c = this.sc.next();
          if (c === EOF) break;
          words.addRawChar(c);
        } else {
          words.addChar(c);
        }
        result += c;
      }
    }
    if (stopChar !== EOF) throw new Error(`unexpected end of statement while looking for matching ${stopChar}`);
    return [result, words.getWords()];
  }

  processSingleQuote(): string {
    let result = '';
    let ch = this.sc.next();
    if (this.o.rawQuotes) result += ch;
    for (;;) {
      ch = this.sc.next();
      if (ch === EOF) throw new Error('unexpected end of statement while looking for matching single-quote');
      if (ch === "'") {
        if (this.o.rawQuotes) result += ch;
        return result;
      }
      result += ch;
    }
  }

  processDoubleQuote(): string {
    let result = '';
    const first = this.sc.next();
    if (this.o.rawQuotes) result += first;
    for (;;) {
      const p = this.sc.peek();
      if (p === EOF) throw new Error('unexpected end of statement while looking for matching double-quote');
      if (p === '"') {
        const ch = this.sc.next();
        if (this.o.rawQuotes) result += ch;
        return result;
      }
      if (p === '$') {
        result += this.processDollar();
        continue;
      }
      let ch = this.sc.next();
      if (ch === this.escapeToken) {
        if (this.rawEscapes) result += ch;
        const n = this.sc.peek();
        if (n === EOF) continue; // a lone escape at the end is dropped
        if (n === '"' || n === '$' || n === this.escapeToken) ch = this.sc.next();
      }
      result += ch;
    }
  }

  processDollar(): string {
    this.sc.next();
    if (this.sc.peek() !== '{') {
      const name = this.processName();
      if (name === '') return '$';
      const [value, found] = this.getEnv(name);
      if (!found && this.o.skipUnsetEnv) return '$' + name;
      return value;
    }
    this.sc.next();
    const p = this.sc.peek();
    if (p === EOF) throw new Error("syntax error: missing '}'");
    if (p === '{' || p === '}' || p === ':') throw new Error('syntax error: bad substitution');
    const name = this.processName();
    const ch = this.sc.next();
    if (ch === '}') {
      const [value, found] = this.getEnv(name);
      if (!found && this.o.skipUnsetEnv) return `\${${name}}`;
      return value;
    }
    if (ch === ':') {
      // ${a:-b}, ${a:+b}, ${a:?b}: an empty variable counts as unset. The word is read before
      // the modifier is checked, so an unterminated form reports the missing brace first.
      const modifier = this.sc.next();
      const word = this.wordUntil('}', false, "syntax error: missing '}'");
      const [value, set] = this.getEnv(name);
      switch (modifier) {
        case '+':
          if (!set && this.o.skipUnsetEnv) return `\${${name}:+${word}}`;
          return value !== '' ? word : value;
        case '-':
          if (!set && this.o.skipUnsetEnv) return `\${${name}:-${word}}`;
          return value === '' ? word : value;
        case '?':
          if (!set) {
            if (this.o.skipUnsetEnv) return `\${${name}:?${word}}`;
            throw new Error(`${name}: ${word || 'is not allowed to be unset'}`);
          }
          if (value === '') throw new Error(`${name}: ${word || 'is not allowed to be empty'}`);
          return value;
        default:
          throw new Error(`unsupported modifier (${modifier === EOF ? '\ufffd' : modifier}) in substitution`);
      }
    }
    if (this.o.v011Modifiers && (ch === '+' || ch === '-' || ch === '#' || ch === '%' || ch === '/')) throw new Error("missing ':' in substitution");
    if (ch === '+' || ch === '-' || ch === '?' || ch === '#' || ch === '%') {
      // ${a-b}, ${a+b} (only an unset variable counts as unset), ${a?msg}, and the pattern
      // removals ${a#p}, ${a##p}, ${a%p}, ${a%%p} of newer Dockerfile frontends.
      const rawEscapes = ch === '#' || ch === '%';
      let word = this.wordUntil('}', rawEscapes, "syntax error: missing '}'");
      const [value, set] = this.getEnv(name);
      if (this.o.skipUnsetEnv && !set) return `\${${name}${ch}${word}}`;
      switch (ch) {
        case '-':
          return set ? value : word;
        case '+':
          return set ? word : '';
        case '?':
          if (!set) throw new Error(`${name}: ${word || 'is not allowed to be unset'}`);
          return value;
        default: {
          let greedy = false;
          if (word.length > 0 && word[0] === ch) {
            greedy = true;
            word = word.slice(1);
          }
          return ch === '%' ? trimSuffix(word, value, greedy) : trimPrefix(word, value, greedy);
        }
      }
    }
    if (ch === '/') {
      // ${a/p/r} replaces the first match of a shell pattern, ${a//p/r} every match.
      const replaceAll = this.sc.peek() === '/';
      if (replaceAll) this.sc.next();
      const pattern = this.wordUntil('/', true, "syntax error: missing '/' in ${}");
      const replacement = this.wordUntil('}', true, "syntax error: missing '}'");
      const [value, set] = this.getEnv(name);
      if (this.o.skipUnsetEnv && !set) return `\${${name}/${pattern}/${replacement}}`;
      return replacePattern(pattern, value, replacement, replaceAll);
    }
    throw new Error("missing ':' in substitution");
  }

  /** The word of a `${name<op>word}` form up to `stop`, escapes kept when `rawEscapes`. */
  wordUntil(stop: string, rawEscapes: boolean, eofMessage: string): string {
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      return this.processStopOn(stop)[0];
    } catch (err) {
      if (this.sc.peek() === EOF) throw new Error(eofMessage);
      throw err;
    } finally {
      this.rawEscapes = saved;
    }
  }

  processName(): string {
    let name = '';
    while (this.sc.peek() !== EOF) {
      const ch = this.sc.peek();
      if (name.length === 0 && isDigit(ch)) {
        while (this.sc.peek() !== EOF && isDigit(this.sc.peek())) name += this.sc.next();
        return name;
      }
      if (name.length === 0 && isSpecialParam(ch)) {
        return this.sc.next();
      }
      if (!isLetter(ch) && !isDigit(ch) && ch !== '_') break;
      name += this.sc.next();
    }
    return name;
  }

  getEnv(name: string): [string, boolean] {
    const v = this.envs.get(name);
    if (v === undefined) {
      this.unmatched.add(name);
      return ['', false];
    }
    this.matches.add(name);
    return [v, true];
  }
}

type PatternToken = { kind: 'star' } | { kind: 'any' } | { kind: 'lit'; ch: string };

/**
 * A shell pattern (`*`, `?`, `\\x`) of the `#`, `%` and `/` forms as tokens. `}` and `/` may be
 * escaped inside `${}` without the escape becoming part of the pattern.
 */
function compilePattern(pattern: string): PatternToken[] {
  const chars = Array.from(pattern);
  const out: PatternToken[] = [];
  for (let i = 0; i < chars.length; i++) {
    const tok = chars[i]!;
    if (tok === '*') out.push({ kind: 'star' });
    else if (tok === '?') out.push({ kind: 'any' });
    else if (tok === '\\') {
      const n = chars[i + 1];
      if (n === '}' || n === '/') continue;
      i++;
      if (n !== '*' && n !== '?' && n !== '\\') {
        throw new Error(`invalid pattern (${pattern}) in substitution: invalid escape '\\${n ?? ''}'`);
      }
      out.push({ kind: 'lit', ch: n });
    } else out.push({ kind: 'lit', ch: tok });
  }
  return out;
}

/**
 * Whether `s` (code points) matches the whole pattern: a dynamic program in O(len(s) x len(p)),
 * so no pattern can make matching slow. `*` and `?` do not match a newline (Go's `.`).
 */
function globMatch(p: PatternToken[], s: string[]): boolean {
  let prev: boolean[] = new Array<boolean>(s.length + 1).fill(false);
  prev[0] = true;
  for (const t of p) {
    const cur: boolean[] = new Array<boolean>(s.length + 1).fill(false);
    if (t.kind === 'star') {
      cur[0] = prev[0]!;
      for (let j = 1; j <= s.length; j++) cur[j] = prev[j]! || (cur[j - 1]! && s[j - 1] !== '\n');
    } else {
      for (let j = 1; j <= s.length; j++) {
        const c = s[j - 1]!;
        cur[j] = prev[j - 1]! && (t.kind === 'any' ? c !== '\n' : c === t.ch);
      }
    }
    prev = cur;
  }
  return prev[s.length]!;
}

/** The length of the shortest (or longest, `greedy`) prefix of `s` matching `p`, or -1. */
function prefixMatch(p: PatternToken[], s: string[], greedy: boolean): number {
  if (greedy) {
    for (let n = s.length; n >= 0; n--) if (globMatch(p, s.slice(0, n))) return n;
  } else {
    for (let n = 0; n <= s.length; n++) if (globMatch(p, s.slice(0, n))) return n;
  }
  return -1;
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const s = Array.from(value);
  const n = prefixMatch(compilePattern(pattern), s, greedy);
  return n < 0 ? value : s.slice(n).join('');
}

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  // The shortest (longest) suffix matching: a prefix match of the reversed pattern on the reversed value.
  const p = compilePattern(pattern).reverse();
  const s = Array.from(value).reverse();
  const n = prefixMatch(p, s, greedy);
  return n < 0 ? value : s.slice(n).reverse().join('');
}

/** `${a/p/r}` and `${a//p/r}`: leftmost, longest matches of the pattern replaced. */
function replacePattern(pattern: string, value: string, replacement: string, all: boolean): string {
  const p = compilePattern(pattern);
  const s = Array.from(value);
  let out = '';
  let i = 0;
  let replaced = false;
  while (i <= s.length) {
    if (replaced && !all) break;
    const n = prefixMatch(p, s.slice(i), true);
    if (n >= 0) {
      out += replacement;
      replaced = true;
      if (n === 0) {
        if (i < s.length) out += s[i];
        i++;
      } else i += n;
      continue;
    }
    if (i < s.length) out += s[i];
    i++;
  }
  if (i < s.length) out += s.slice(i).join('');
  return out;
}

/** The lexer; one instance per escape token and option set, reusable and stateless between calls. */
export class ShellLex {
  readonly escapeToken: string;
  readonly options: ShellLexOptions;

  constructor(escapeToken = '\\', options: ShellLexOptions = {}) {
    this.escapeToken = escapeToken;
    this.options = { ...options };
  }

  with(options: ShellLexOptions): ShellLex {
    return new ShellLex(this.escapeToken, { ...this.options, ...options });
  }

  /** The word with variables expanded and quotes and escapes processed. */
  processWord(word: string, env: EnvInput): string {
    return new ShellWord(word, toMap(env), this.escapeToken, this.options).process(word)[0];
  }

  /**
   * As processWord, also returning the names of the variables that were found and of those that
   * were looked up but not set. `onUnmatched`, when given, gets the latter even when processing fails.
   */
  processWordWithMatches(word: string, env: EnvInput, onUnmatched?: (names: Set<string>) => void): { word: string; matches: Set<string>; unmatched: Set<string> } {
    const sw = new ShellWord(word, toMap(env), this.escapeToken, this.options);
    try {
      const [w] = sw.process(word);
      return { word: w, matches: sw.matches, unmatched: sw.unmatched };
    } finally {
      onUnmatched?.(sw.unmatched);
    }
  }

  /** The word expanded and then split on unquoted white space. */
  processWords(word: string, env: EnvInput): string[] {
    return new ShellWord(word, toMap(env), this.escapeToken, this.options).process(word)[1];
  }
}
