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
      const re = shellPatternToRegex(pattern, true, false, replaceAll);
      if (replaceAll) return value.replace(re, () => replacement);
      const m = re.exec(value);
      if (!m) return value;
      return value.slice(0, m.index) + replacement + value.slice(m.index + m[0].length);
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
    if (v === undefined) return ['', false];
    this.matches.add(name);
    return [v, true];
  }
}

/**
 * A shell pattern (`*`, `?`, `\\x`) as a regular expression, for the `#`, `%` and `/` forms.
 * `}` and `/` may be escaped inside `${}` without the escape becoming part of the pattern.
 */
function shellPatternToRegex(pattern: string, greedy: boolean, anchored: boolean, global = false): RegExp {
  const chars = Array.from(pattern);
  let out = anchored ? '^' : '';
  const star = greedy ? '[^\n]*' : '[^\n]*?';
  for (let i = 0; i < chars.length; i++) {
    const tok = chars[i]!;
    if (tok === '*') {
      out += star;
      continue;
    }
    if (tok === '?') {
      out += '[^\n]';
      continue;
    }
    if (tok === '\\') {
      const n = chars[i + 1];
      if (n === '}' || n === '/') continue;
      i++;
      if (n !== '*' && n !== '?' && n !== '\\') {
        throw new Error(`invalid pattern (${pattern}) in substitution: invalid escape '\\${n ?? ''}'`);
      }
      out += '\\' + n;
      continue;
    }
    out += /[[\]{}.+()|^$]/.test(tok) ? '\\' + tok : tok;
  }
  return new RegExp(out, global ? 'gu' : 'u');
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const m = shellPatternToRegex(pattern, greedy, true).exec(value);
  return m ? value.slice(m[0].length) : value;
}

/** Reverses a pattern keeping each escape before the character it escapes. */
function reversePattern(pattern: string): string {
  const r = Array.from(pattern);
  const out: string[] = new Array(r.length);
  const last = r.length - 1;
  for (let i = 0; i <= last; ) {
    const tok = r[i]!;
    const o = last - i;
    if (tok === '\\' && i !== last) {
      out[o - 1] = tok;
      out[o] = r[i + 1]!;
      i += 2;
    } else {
      out[o] = tok;
      i++;
    }
  }
  return out.join('');
}

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  // Shortest rightmost match, found as a leftmost match on both strings reversed.
  const rev = (s: string) => Array.from(s).reverse().join('');
  return rev(trimPrefix(reversePattern(pattern), rev(value), greedy));
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

  /** As processWord, also returning the names of the variables that were found. */
  processWordWithMatches(word: string, env: EnvInput): { word: string; matches: Set<string> } {
    const sw = new ShellWord(word, toMap(env), this.escapeToken, this.options);
    const [w] = sw.process(word);
    return { word: w, matches: sw.matches };
  }

  /** The word expanded and then split on unquoted white space. */
  processWords(word: string, env: EnvInput): string[] {
    return new ShellWord(word, toMap(env), this.escapeToken, this.options).process(word)[1];
  }
}
