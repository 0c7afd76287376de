import { describe, expect, it } from 'vitest';
import { ShellLex } from '../../../src/frontend/dockerfile/shell-lex.js';

const ENV = ['a=hello/b.c.tar', 'empty=', 'sp=x  y'];

// [input, processWord result or error, processWords result (null on error)], as upstream's lexer
// (BuildKit v0.11.6) gives them for ENV above.
const LEX: [string, string | Error, string[] | null][] = [
  ["$a", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["${a}", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["${a:-d}", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["${empty:-d}", "d", ["d"]],
  ["${unset:-d}", "d", ["d"]],
  ["${a:+alt}", "alt", ["alt"]],
  ["${empty:+alt}", "", []],
  ["${unset:+alt}", "", []],
  ["${a:?m}", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["${empty:?must not be empty}", new Error("failed to process \"${empty:?must not be empty}\": empty: must not be empty"), null],
  ["${unset:?}", new Error("failed to process \"${unset:?}\": unset: is not allowed to be unset"), null],
  ["${unset?gone}", new Error("failed to process \"${unset?gone}\": unset: gone"), null],
  ["\"$a\"", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["'$a'", "$a", ["$a"]],
  ["\\$a", "$a", ["$a"]],
  ["a\\ b", "a b", ["a b"]],
  ["\"a\\\"b\"", "a\"b", ["a\"b"]],
  ["\"\\x\"", "\\x", ["\\x"]],
  ["$sp", "x  y", ["x","y"]],
  ["\"$sp\"", "x  y", ["x  y"]],
  ["${sp:-z} w", "x  y w", ["x","y","w"]],
  ["$1x", "x", ["x"]],
  ["$", "$", ["$"]],
  ["x$", "x$", ["x$"]],
  ["${}", new Error("failed to process \"${}\": syntax error: bad substitution"), null],
  ["${a", new Error("failed to process \"${a\": missing ':' in substitution"), null],
  ["${a:x}", new Error("failed to process \"${a:x}\": unsupported modifier (x) in substitution"), null],
  ["\"unterminated", new Error("failed to process \"\\\"unterminated\": unexpected end of statement while looking for matching double-quote"), null],
  ["'unterminated", new Error("failed to process \"'unterminated\": unexpected end of statement while looking for matching single-quote"), null],
  ["${a:-$empty}", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["${unset:-${a}}", "hello/b.c.tar", ["hello/b.c.tar"]],
  ["pre${a}post", "prehello/b.c.tarpost", ["prehello/b.c.tarpost"]],
  ["$a$a", "hello/b.c.tarhello/b.c.tar", ["hello/b.c.tarhello/b.c.tar"]],
];

describe('ShellLex', () => {
  const lex = new ShellLex('\\');
  for (const [input, word, words] of LEX) {
    it(`expands ${input}`, () => {
      if (word instanceof Error) {
        expect(() => lex.processWord(input, ENV)).toThrow(word.message);
        expect(() => lex.processWords(input, ENV)).toThrow();
      } else {
        expect(lex.processWord(input, ENV)).toBe(word);
        expect(lex.processWords(input, ENV)).toEqual(words);
      }
    });
  }

  it('supports the unset-only and pattern modifiers of newer Dockerfile frontends', () => {
    const cases: [string, string][] = [
      ['${empty-d}', ''],
      ['${unset-d}', 'd'],
      ['${empty+alt}', 'alt'],
      ['${unset+alt}', ''],
      ['${a#*/}', 'b.c.tar'],
      ['${a##*.}', 'tar'],
      ['${a%.*}', 'hello/b.c'],
      ['${a%%.*}', 'hello/b'],
      ['${a#nomatch}', 'hello/b.c.tar'],
      ['${a/./-}', 'hello/b-c.tar'],
      ['${a//./-}', 'hello/b-c-tar'],
      ['${a/hello\\/b/x}', 'x.c.tar'],
      ['${a/?/_}', '_ello/b.c.tar'],
    ];
    for (const [input, want] of cases) expect(lex.processWord(input, ENV), input).toBe(want);
    expect(() => lex.processWord('${a/x', ENV)).toThrow("syntax error: missing '/' in ${}");
  });

  it('uses the escape token of the Dockerfile', () => {
    const bt = new ShellLex('`');
    expect(bt.processWord('C:\\dir `$a', ENV)).toBe('C:\\dir $a');
    expect(bt.processWords('"x`"y" z', ENV)).toEqual(['x"y', 'z']);
  });

  it('keeps unset variables and quotes when asked (vertex names, heredoc words)', () => {
    const raw = lex.with({ rawQuotes: true, skipUnsetEnv: true });
    expect(raw.processWord('echo "$a" $nope ${nope:-x} \'q\'', ENV)).toBe('echo "hello/b.c.tar" $nope ${nope:-x} \'q\'');
    const m = lex.processWordWithMatches('$a ${empty} $unset', ENV);
    expect([...m.matches].sort()).toEqual(['a', 'empty']);
  });
});
