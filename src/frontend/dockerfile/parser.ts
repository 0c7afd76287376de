/**
 * The Dockerfile parser: text to a list of instruction nodes, with BuildKit's rules for parser
 * directives (`# syntax=`, `# escape=`, `# check=`), comments, line continuations (and the warning for
 * empty continuation lines), JSON versus shell forms, heredocs, and each instruction's own argument
 * splitting (ENV/LABEL name=value pairs, ONBUILD sub-commands, HEALTHCHECK's type word, flags).
 *
 * The tree mirrors upstream's `parser.Node` so the instruction layer reads it the same way: a node's
 * `next` chain holds its arguments, an ONBUILD node's argument has one child, `flags` are the leading
 * `--x=y` words. Lines are 1-based. Errors are `DockerfileError`s carrying the lines they concern.
 */
import { DockerfileError, type Range } from './errors.js';
import { isSpace, goQuote, trimLeftSpace, trimSpace } from './go-compat.js';
import { ShellLex } from './shell-lex.js';

export interface Heredoc {
  name: string;
  fileDescriptor: number;
  /** Variables in the body are expanded (the delimiter was not quoted). */
  expand: boolean;
  /** `<<-`: leading tabs are stripped from body lines. */
  chomp: boolean;
  content: string;
}

export class Node {
  value = '';
  next: Node | undefined;
  children: Node[] = [];
  heredocs: Heredoc[] = [];
  attributes: Record<string, boolean> = {};
  original = '';
  flags: string[] = [];
  startLine = 0;
  endLine = 0;
  prevComment: string[] = [];
  /** A key of ENV/LABEL written in the legacy form `KEY name value` (upstream keeps the delimiter). */
  noDelim = false;

  constructor(init: Partial<Node> = {}) {
    Object.assign(this, init);
  }

  location(): Range[] {
    return toRanges(this.startLine, this.endLine);
  }

  /** upstream's Node.Dump: the s-expression form its parser tests compare. */
  dump(): string {
    let str = this.value.toLowerCase();
    if (this.flags.length > 0) str += ' [' + this.flags.map(goQuote).join(' ') + ']';
    for (const n of this.children) str += '(' + n.dump() + ')\n';
    for (let n = this.next; n; n = n.next) {
      if (n.children.length > 0) str += ' ' + n.dump();
      else str += ' ' + goQuote(n.value);
    }
    return trimSpace(str);
  }

  /** The argument words of this instruction, ONBUILD's sub-command flattened in (instructions.nodeArgs). */
  args(): string[] {
    const out: string[] = [];
    for (let node: Node = this; node.next; node = node.next) {
      const arg = node.next;
      if (arg.children.length === 0) out.push(arg.value);
      else if (arg.children.length === 1) {
        out.push(arg.children[0]!.value);
        out.push(...arg.children[0]!.args());
      }
    }
    return out;
  }
}

export function toRanges(start: number, end: number): Range[] {
  if (end <= start) end = start;
  const r: Range[] = [];
  for (let i = start; i <= end; i++) r.push({ start: { line: i, character: 0 }, end: { line: i, character: 0 } });
  return r;
}

export interface Warning {
  short: string;
  detail: string[];
  url: string;
  location?: Range;
}

export interface Directive {
  name: string;
  value: string;
  location: Range[];
}

export interface ParseResult {
  /** The instructions, in order. */
  children: Node[];
  escapeToken: string;
  warnings: Warning[];
  /** Parser directives found at the top of the file (syntax, escape, check). */
  directives: Directive[];
}

const HEREDOC_COMMANDS = new Set(['add', 'copy', 'run']);
const HEREDOC_COMPOUND = new Set(['onbuild']);
const VALID_DIRECTIVES = new Set(['syntax', 'escape', 'check']);
const MAX_LINE = 64 * 1024;

/** Go's `[\t\v\f\r ]+`, the separator of whitespace-split arguments. */
const WS = /[\t\v\f\r ]+/;
const HEREDOC_RE = /^(\d*)<<(-?)([^<]*)$/;

function canContainHeredoc(node: Node): boolean {
  let n = node;
  if (HEREDOC_COMPOUND.has(n.value.toLowerCase()) && n.next && n.next.children.length > 0) n = n.next.children[0]!;
  if (!HEREDOC_COMMANDS.has(n.value.toLowerCase())) return false;
  return !n.attributes.json;
}

/** Tracks the directives at the top of the file: they stop at the first line that is not one. */
export class DirectiveParser {
  line = 0;
  #re: RegExp;
  #seen = new Set<string>();
  done = false;

  constructor(opts: { line?: number; comment?: string } = {}) {
    this.line = opts.line ?? 0;
    const c = (opts.comment ?? '#').replace(/[/]/g, '\\/');
    // Go's \s is [\t\n\f\r ]; `.` does not match a newline.
    this.#re = new RegExp(`^${c}[\\t\\n\\f\\r ]*([a-zA-Z][a-zA-Z0-9]*)[\\t\\n\\f\\r ]*=[\\t\\n\\f\\r ]*([^\\n]+?)[\\t\\n\\f\\r ]*$`);
  }

  parseLine(line: string): Directive | undefined {
    this.line++;
    if (this.done) return undefined;
    const m = this.#re.exec(line);
    if (!m) {
      this.done = true;
      return undefined;
    }
    const k = m[1]!.toLowerCase();
    if (!VALID_DIRECTIVES.has(k)) {
      this.done = true;
      return undefined;
    }
    if (this.#seen.has(k)) throw new Error(`only one ${k} parser directive can be used`);
    this.#seen.add(k);
    return { name: k, value: m[2]!, location: [{ start: { line: this.line, character: 0 }, end: { line: this.line, character: 0 } }] };
  }
}

/** Per-parse state: the escape token (settable by `# escape=`) and its continuation regex. */
export class Directives {
  readonly parser = new DirectiveParser();
  escapeToken = '\\';
  lineContinuation = /([^\\])\\[ \t]*$|^\\[ \t]*$/;
  readonly found: Directive[] = [];

  setEscapeToken(s: string): void {
    if (s !== '`' && s !== '\\') throw new Error(`invalid escape token '${s}' does not match \` or \\`);
    this.escapeToken = s;
    const e = s === '\\' ? '\\\\' : '`';
    this.lineContinuation = new RegExp(`([^${e}])${e}[ \\t]*$|^${e}[ \\t]*$`);
  }

  possibleParserDirective(line: string): void {
    const d = this.parser.parseLine(line);
    if (!d) return;
    this.found.push(d);
    if (d.name === 'escape') this.setEscapeToken(d.value);
  }
}

function located(err: unknown, start: number, end: number): DockerfileError {
  if (err instanceof DockerfileError) return err;
  return new DockerfileError((err as Error).message, { location: toRanges(start, end), cause: err });
}

/** Splits the text into lines that keep their line endings (bufio.Scanner with upstream's scanLines). */
function scanLines(text: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    const j = text.indexOf('\n', i);
    if (j < 0) {
      out.push(text.slice(i));
      break;
    }
    out.push(text.slice(i, j + 1));
    i = j + 1;
  }
  return out;
}

function trimNewline(s: string): string {
  let e = s.length;
  while (e > 0 && (s[e - 1] === '\n' || s[e - 1] === '\r')) e--;
  return s.slice(0, e);
}

function isComment(line: string): boolean {
  return trimLeftSpace(trimNewline(line)).startsWith('#');
}

function isEmptyContinuationLine(line: string): boolean {
  return trimLeftSpace(trimNewline(line)).length === 0;
}

function trimComments(s: string): string {
  return s.startsWith('#') ? '' : s;
}

function processLine(d: Directives, token: string, stripLeftWhitespace: boolean): string {
  let t = trimNewline(token);
  if (stripLeftWhitespace) t = trimLeftSpace(t);
  d.possibleParserDirective(t);
  return trimComments(t);
}

function trimContinuation(line: string, d: Directives): [string, boolean] {
  if (d.lineContinuation.test(line)) return [line.replace(d.lineContinuation, (_m, g1: string | undefined) => g1 ?? ''), false];
  return [line, true];
}

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/**
 * Parses a Dockerfile. Never throws anything but `DockerfileError`.
 */
export function parse(input: string | Uint8Array): ParseResult {
  let text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  const d = new Directives();
  const children: Node[] = [];
  const warnings: Warning[] = [];
  let comments: string[] = [];
  let currentLine = 0;
  const lines = scanLines(text);
  text = '';
  let li = 0;
  let scanError: string | undefined;
  const scan = (): string | undefined => {
    if (scanError !== undefined || li >= lines.length) return undefined;
    const l = lines[li]!;
    if (byteLength(l) > MAX_LINE) {
      scanError = `dockerfile line greater than max allowed size of ${MAX_LINE - 1}`;
      return undefined;
    }
    li++;
    return l;
  };

  for (let raw = scan(); raw !== undefined; raw = scan()) {
    let bytesRead = raw;
    if (currentLine === 0 && bytesRead.startsWith('\ufeff')) bytesRead = bytesRead.slice(1);
    if (isComment(bytesRead)) {
      // Upstream drops the first byte of the raw line, whatever it is.
      const c = trimSpace(bytesRead.slice(1));
      if (c === '') comments = [];
      else comments.push(c);
    }
    try {
      bytesRead = processLine(d, bytesRead, true);
    } catch (err) {
      throw located(err, currentLine, 0);
    }
    currentLine++;
    const startLine = currentLine;
    let [line, isEnd] = trimContinuation(bytesRead, d);
    if (isEnd && line === '') continue;

    let hasEmptyContinuation = false;
    while (!isEnd) {
      const next = scan();
      if (next === undefined) break;
      let processed: string;
      try {
        processed = processLine(d, next, false);
      } catch (err) {
        throw located(err, currentLine, 0);
      }
      currentLine++;
      if (isComment(next)) continue;
      if (isEmptyContinuationLine(processed)) {
        hasEmptyContinuation = true;
        continue;
      }
      let cont: string;
      [cont, isEnd] = trimContinuation(processed, d);
      line += cont;
    }
    if (hasEmptyContinuation) {
      warnings.push({
        short: 'Empty continuation line found in: ' + line,
        detail: ['Empty continuation lines will become errors in a future release'],
        url: 'https://github.com/moby/moby/pull/33719',
        location: { start: { line: currentLine, character: 0 }, end: { line: currentLine, character: 0 } },
      });
    }

    let child: Node;
    try {
      child = newNodeFromLine(line, d, comments);
    } catch (err) {
      throw located(err, startLine, currentLine);
    }

    if (canContainHeredoc(child)) {
      let heredocs: Heredoc[];
      try {
        heredocs = heredocsFromLine(line);
      } catch (err) {
        throw located(err, startLine, currentLine);
      }
      for (const h of heredocs) {
        let terminated = false;
        for (let body = scan(); body !== undefined; body = scan()) {
          currentLine++;
          let possible = trimNewline(body);
          if (h.chomp) possible = possible.replace(/^\t+/, '');
          if (possible === h.name) {
            terminated = true;
            break;
          }
          h.content += body;
        }
        if (!terminated) throw new DockerfileError('unterminated heredoc', { location: toRanges(startLine, currentLine) });
        child.heredocs.push(h);
      }
    }
    child.startLine = startLine;
    child.endLine = currentLine;
    children.push(child);
    comments = [];
  }

  if (children.length === 0) {
    if (scanError) throw new DockerfileError(scanError, { location: toRanges(currentLine, 0) });
    throw new DockerfileError('file with no instructions', { location: toRanges(currentLine, 0) });
  }
  if (scanError) throw new DockerfileError(scanError, { location: toRanges(currentLine, 0) });
  return { children, escapeToken: d.escapeToken, warnings, directives: d.found };
}

// --- Heredocs -----------------------------------------------------------------------------------

/** The heredoc a word such as `<<EOF`, `<<-"EOF"` or `3<<EOF` introduces, or undefined. */
export function parseHeredoc(src: string): Heredoc | undefined {
  const m = HEREDOC_RE.exec(src);
  if (!m) return undefined;
  const fd = m[1] ? Number.parseInt(m[1], 10) : 0;
  const chomp = m[2] === '-';
  const rest = m[3]!;
  if (rest.length === 0) return undefined;
  // Lexing the word with and without quotes kept tells whether any part of it was quoted: a
  // quoted delimiter means the body is not expanded.
  const lex = new ShellLex('\\', { skipUnsetEnv: true });
  const words = lex.processWords(rest, []);
  if (words.length !== 1) return undefined;
  const raw = lex.with({ rawQuotes: true }).processWords(rest, []);
  if (raw.length !== words.length) throw new Error(`internal lexing of heredoc produced inconsistent results: ${rest}`);
  const quotes = (s: string) => (s.match(/['"]/g) ?? []).length;
  return { name: words[0]!, expand: quotes(words[0]!) === quotes(raw[0]!), chomp, fileDescriptor: Number.isSafeInteger(fd) ? fd : 0, content: '' };
}

function heredocsFromLine(line: string): Heredoc[] {
  const lex = new ShellLex('\\', { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true });
  let words: string[];
  try {
    words = lex.processWords(line, []);
  } catch {
    words = [];
  }
  const docs: Heredoc[] = [];
  for (const w of words) {
    const h = parseHeredoc(w);
    if (h) docs.push(h);
  }
  return docs;
}

/** Removes leading tabs from every line (`<<-`). */
export function chompHeredocContent(src: string): string {
  return src.replace(/^\t+/gm, '');
}

// --- Splitting an instruction line -------------------------------------------------------------

function splitN(s: string, re: RegExp): [string] | [string, string] {
  const m = re.exec(s);
  if (!m) return [s];
  return [s.slice(0, m.index), s.slice(m.index + m[0].length)];
}

function splitAll(s: string, re: RegExp): string[] {
  return s.split(new RegExp(re.source, 'g'));
}

function splitCommand(line: string): { cmd: string; flags: string[]; args: string } {
  const cmdline = splitN(trimSpace(line), WS);
  let args = '';
  let flags: string[] = [];
  if (cmdline.length === 2) [args, flags] = extractBuilderFlags(cmdline[1]);
  return { cmd: cmdline[0], flags, args: trimSpace(args) };
}

/** The leading `--flag[=value]` words and the rest of the line (upstream's byte-wise scanner). */
function extractBuilderFlags(line: string): [string, string[]] {
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;
  const words: string[] = [];
  let phase = IN_SPACES;
  let word = '';
  let quote = '';
  let blankOK = false;
  let ch = '';
  for (let pos = 0; pos <= line.length; pos++) {
    if (pos !== line.length) ch = line[pos]!;
    if (phase === IN_SPACES) {
      if (pos === line.length) break;
      if (isSpace(ch)) continue;
      if (ch !== '-' || pos + 1 === line.length || line[pos + 1] !== '-') return [line.slice(pos), words];
      phase = IN_WORD;
    }
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === line.length) {
      if (word !== '--' && (blankOK || word.length > 0)) words.push(word);
      break;
    }
    if (phase === IN_WORD) {
      if (isSpace(ch)) {
        phase = IN_SPACES;
        if (word === '--') return [line.slice(pos), words];
        if (blankOK || word.length > 0) words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
        continue;
      }
      if (ch === '\\') {
        if (pos + 1 === line.length) continue;
        pos++;
        ch = line[pos]!;
      }
      word += ch;
      continue;
    }
    if (phase === IN_QUOTE) {
      if (ch === quote) {
        phase = IN_WORD;
        continue;
      }
      if (ch === '\\') {
        if (pos + 1 === line.length) {
          phase = IN_WORD;
          continue;
        }
        pos++;
        ch = line[pos]!;
      }
      word += ch;
    }
  }
  return ['', words];
}

type LineParser = (rest: string, d: Directives) => { node: Node | undefined; attrs?: Record<string, boolean> };

function newNodeFromLine(line: string, d: Directives, comments: string[]): Node {
  const { cmd, flags, args } = splitCommand(line);
  const fn = DISPATCH[cmd.toLowerCase()] ?? parseIgnore;
  const { node, attrs } = fn(args, d);
  return new Node({ value: cmd, original: line, flags, next: node, attributes: attrs ?? {}, prevComment: comments });
}

const parseIgnore: LineParser = () => ({ node: new Node() });

const parseSubCommand: LineParser = (rest, d) => {
  if (rest === '') return { node: undefined };
  const child = newNodeFromLine(rest, d, []);
  return { node: new Node({ children: [child] }) };
};

/** Space-separated words with quotes and escapes kept (they are processed at expansion time). */
function parseWords(rest: string, d: Directives): string[] {
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;
  const words: string[] = [];
  const chars = Array.from(rest);
  let phase = IN_SPACES;
  let word = '';
  let quote = '';
  let blankOK = false;
  let ch = '';
  for (let pos = 0; pos <= chars.length; pos++) {
    if (pos !== chars.length) ch = chars[pos]!;
    if (phase === IN_SPACES) {
      if (pos === chars.length) break;
      if (isSpace(ch)) continue;
      phase = IN_WORD;
    }
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === chars.length) {
      if (blankOK || word.length > 0) words.push(word);
      break;
    }
    if (phase === IN_WORD) {
      if (isSpace(ch)) {
        phase = IN_SPACES;
        if (blankOK || word.length > 0) words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
      }
      if (ch === d.escapeToken) {
        if (pos + 1 === chars.length) continue;
        word += ch;
        pos++;
        ch = chars[pos]!;
      }
      word += ch;
      continue;
    }
    if (phase === IN_QUOTE) {
      if (ch === quote) phase = IN_WORD;
      if (ch === d.escapeToken && quote !== "'") {
        if (pos + 1 === chars.length) {
          phase = IN_WORD;
          continue;
        }
        pos++;
        word += ch;
        ch = chars[pos]!;
      }
      word += ch;
    }
  }
  return words;
}

function keyValueNode(key: string, value: string): Node {
  return new Node({ value: key, next: new Node({ value }) });
}

function parseNameVal(rest: string, key: string, d: Directives): Node | undefined {
  const words = parseWords(rest, d);
  if (words.length === 0) return undefined;
  // The old form `KEY name value`: the first word has no `=`.
  if (!words[0]!.includes('=')) {
    const parts = splitN(rest, WS);
    if (parts.length < 2) throw new Error(`${key} must have two arguments`);
    const kv = keyValueNode(parts[0], parts[1]!);
    kv.noDelim = true;
    return kv;
  }
  let root: Node | undefined;
  let prev: Node | undefined;
  for (const w of words) {
    if (!w.includes('=')) throw new Error(`Syntax error - can't find = in ${goQuote(w)}. Must be of the form: name=value`);
    const i = w.indexOf('=');
    const node = keyValueNode(w.slice(0, i), w.slice(i + 1));
    root ??= node;
    if (prev) prev.next = node;
    prev = node.next;
  }
  return root;
}

const parseEnv: LineParser = (rest, d) => ({ node: parseNameVal(rest, 'ENV', d) });
const parseLabel: LineParser = (rest, d) => ({ node: parseNameVal(rest, 'LABEL', d) });

function chain(values: string[]): Node | undefined {
  let root: Node | undefined;
  let prev: Node | undefined;
  for (const v of values) {
    const n = new Node({ value: v });
    if (prev) prev.next = n;
    else root = n;
    prev = n;
  }
  return root;
}

const parseNameOrNameVal: LineParser = (rest, d) => ({ node: chain(parseWords(rest, d)) });

const parseStringsWhitespaceDelimited: LineParser = (rest) => {
  if (rest === '') return { node: undefined };
  return { node: chain(splitAll(rest, WS)) };
};

const parseString: LineParser = (rest) => (rest === '' ? { node: undefined } : { node: new Node({ value: rest }) });

const NOT_STRING_ARRAY = 'when using JSON array syntax, arrays must be comprised of strings only';

/** The end (exclusive) of the JSON value at the start of `s`, or -1 when it is not closed. */
function jsonValueEnd(s: string): number {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

/**
 * A JSON array of strings at the start of `rest`. Like Go's json.Decoder, anything after the first
 * complete value is ignored. `undefined` when it is not valid JSON (the shell form applies).
 */
function parseJSON(rest: string): { node: Node | undefined; attrs: Record<string, boolean> } | undefined {
  const r = trimLeftSpace(rest);
  if (!r.startsWith('[')) return undefined;
  const end = jsonValueEnd(r);
  if (end < 0) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(r.slice(0, end));
  } catch {
    return undefined;
  }
  if (!Array.isArray(v)) return undefined;
  for (const x of v) if (typeof x !== 'string') throw new Error(NOT_STRING_ARRAY);
  return { node: chain(v as string[]), attrs: { json: true } };
}

const parseMaybeJSON: LineParser = (rest) => {
  if (rest === '') return { node: undefined };
  const j = parseJSON(rest);
  if (j) return j;
  return { node: new Node({ value: rest }) };
};

const parseMaybeJSONToList: LineParser = (rest, d) => parseJSON(rest) ?? parseStringsWhitespaceDelimited(rest, d);

const parseHealthConfig: LineParser = (rest, d) => {
  let sep = 0;
  while (sep < rest.length && !isSpace(rest[sep]!)) sep++;
  let next = sep;
  while (next < rest.length && isSpace(rest[next]!)) next++;
  if (sep === 0) return { node: undefined };
  const typ = rest.slice(0, sep);
  const cmd = parseMaybeJSON(rest.slice(next), d);
  return { node: new Node({ value: typ, next: cmd.node }), attrs: cmd.attrs };
};

const DISPATCH: Record<string, LineParser> = {
  add: parseMaybeJSONToList,
  arg: parseNameOrNameVal,
  cmd: parseMaybeJSON,
  copy: parseMaybeJSONToList,
  entrypoint: parseMaybeJSON,
  env: parseEnv,
  expose: parseStringsWhitespaceDelimited,
  from: parseStringsWhitespaceDelimited,
  healthcheck: parseHealthConfig,
  label: parseLabel,
  maintainer: parseString,
  onbuild: parseSubCommand,
  run: parseMaybeJSON,
  shell: parseMaybeJSON,
  stopsignal: parseString,
  user: parseString,
  volume: parseMaybeJSONToList,
  workdir: parseString,
};

// --- Syntax detection ---------------------------------------------------------------------------

export interface DetectedSyntax {
  /** The frontend image (first word of the directive). */
  ref: string;
  /** The whole directive value. */
  cmdline: string;
  location: Range[];
}

/**
 * The `syntax` directive of a Dockerfile, as upstream's DetectSyntax: `# syntax=`, then `// syntax=`,
 * then a JSON document's `syntax` key; a leading `#!` line is skipped.
 */
export function detectSyntax(input: string | Uint8Array): DetectedSyntax | undefined {
  const d = detectDirective(input, 'syntax');
  if (!d) return undefined;
  const sp = d.value.indexOf(' ');
  return { ref: sp < 0 ? d.value : d.value.slice(0, sp), cmdline: d.value, location: d.location };
}

/** A directive's value found as upstream's ParseDirective finds it (see detectSyntax). */
export function detectDirective(input: string | Uint8Array, key: string): { value: string; location: Range[] } | undefined {
  let text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  let line = 0;
  const nl = text.indexOf('\n');
  const first = nl < 0 ? text : text.slice(0, nl);
  if (first.startsWith('#!')) {
    text = nl < 0 ? '' : text.slice(nl + 1);
    line++;
  }
  for (const comment of ['#', '//']) {
    const p = new DirectiveParser({ line, comment });
    for (const l of scanLines(text)) {
      if (p.done) break;
      let dir: Directive | undefined;
      try {
        dir = p.parseLine(trimNewline(l));
      } catch {
        break;
      }
      if (dir?.name === key) return { value: dir.value, location: dir.location };
    }
  }
  try {
    const j = JSON.parse(text) as unknown;
    if (j && typeof j === 'object' && !Array.isArray(j)) {
      const s = (j as Record<string, unknown>)[key];
      if (typeof s === 'string' && s !== '') return { value: s, location: [{ start: { line, character: 0 }, end: { line, character: 0 } }] };
    }
  } catch {
    // Not JSON: no such directive.
  }
  return undefined;
}
