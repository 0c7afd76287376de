import { describe, expect, test } from 'vitest';
import { cleanPath, globMatch, goTrimSpace, parseDockerignore, PathFilter, PatternMatcher, patternMatcherFor, type MatchInfo } from '../../../src/util/patterns.js';

// Expected values below were checked against moby/patternmatcher as vendored in BuildKit v0.11.6.
const m = (patterns: string[], path: string): boolean => new PatternMatcher(patterns).matches(path);

describe('cleanPath (Go path.Clean)', () => {
  test.each([
    ['', '.'],
    ['.', '.'],
    ['./a', 'a'],
    ['a//b/', 'a/b'],
    ['a/./b/..', 'a'],
    ['../a', '../a'],
    ['a/../../b', '../b'],
    ['/../a', '/a'],
    ['/', '/'],
    ['//a//', '/a'],
  ])('%j -> %j', (input, want) => expect(cleanPath(input)).toBe(want));

  test('agrees with the element-by-element definition on every path of up to four elements', () => {
    const slow = (p: string): string => {
      if (p === '') return '.';
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
      const r = (rooted ? '/' : '') + out.join('/');
      return r === '' ? '.' : r;
    };
    const parts = ['', '.', '..', 'a', '.b', '..c', 'd.', 'e..', '...'];
    const paths = [''];
    for (let n = 1; n <= 4; n++) for (const base of paths.filter((x) => x.split('/').length === n - 1 || (n === 1 && x === ''))) for (const part of parts) paths.push(n === 1 ? part : `${base}/${part}`);
    for (const p of paths) expect(cleanPath(p), JSON.stringify(p)).toBe(slow(p));
    expect(paths.length).toBeGreaterThan(700);
  });
});

describe('PatternMatcher', () => {
  test('a pattern matching a directory matches everything under it', () => {
    expect(m(['a'], 'a')).toBe(true);
    expect(m(['a'], 'a/b/c')).toBe(true);
    expect(m(['a'], 'ab')).toBe(false);
    expect(m(['a/b'], 'a')).toBe(false);
    expect(m(['*/b'], 'x/b/c')).toBe(true);
  });

  test('* and ? do not cross /, ** does', () => {
    expect(m(['*.txt'], 'a.txt')).toBe(true);
    expect(m(['*.txt'], 'd/a.txt')).toBe(false);
    expect(m(['a?c'], 'abc')).toBe(true);
    expect(m(['a?c'], 'a/c')).toBe(false);
    expect(m(['**/*.txt'], 'd/e/a.txt')).toBe(true);
    expect(m(['**/*.txt'], 'a.txt')).toBe(true);
    expect(m(['a/**/c'], 'a/c')).toBe(true);
    expect(m(['a/**/c'], 'a/x/y/c')).toBe(true);
    expect(m(['dir/**/*.go'], 'dir/y.go')).toBe(true);
    expect(m(['a/**'], 'a')).toBe(false);
    expect(m(['a/**'], 'a/b')).toBe(true);
    expect(m(['**'], 'anything/at/all')).toBe(true);
  });

  test('upstream shortcut quirks are kept', () => {
    // A trailing ** after a literal is a plain prefix test.
    expect(m(['a**'], 'abc/d')).toBe(true);
    // A leading ** before a literal is a plain suffix test.
    expect(m(['**c'], 'abc')).toBe(true);
    // A * inside brackets becomes part of the class upstream builds.
    expect(m(['[*]'], ']')).toBe(true);
  });

  test('classes, escapes and regexp characters', () => {
    expect(m(['[abc]'], 'b')).toBe(true);
    expect(m(['[a-c]x'], 'bx')).toBe(true);
    expect(m(['[^a]'], 'b')).toBe(true);
    expect(m(['[^a]'], 'a')).toBe(false);
    expect(m(['[[:digit:]]*'], '1')).toBe(true);
    expect(m(['a\\*b'], 'a*b')).toBe(true);
    expect(m(['a\\*b'], 'axb')).toBe(false);
    expect(m(['a.b'], 'a.b')).toBe(true);
    expect(m(['a.b'], 'axb')).toBe(false);
    expect(m(['a+b'], 'a+b')).toBe(true);
    expect(m(['(a)'], '(a)')).toBe(true);
    expect(m(['{a}'], '{a}')).toBe(true);
    expect(m(['?é'], 'xé')).toBe(true);
    expect(m(['?'], '🎉')).toBe(true);
  });

  test('exceptions: later patterns win, parents count', () => {
    expect(m(['a', '!a/b'], 'a/c')).toBe(true);
    expect(m(['a', '!a/b'], 'a/b')).toBe(false);
    expect(m(['a', '!a/b'], 'a/b/c')).toBe(false);
    expect(m(['a', '!a/b', 'a/b/c'], 'a/b/c')).toBe(true);
    expect(m(['!a', 'a'], 'a')).toBe(true);
    expect(m(['**', '!*.txt'], 'a.txt')).toBe(false);
    expect(m(['**', '!*.txt'], 'd/a.txt')).toBe(true);
  });

  test('patterns are trimmed and cleaned; a leading / is kept (and then never matches)', () => {
    expect(m([' ./a/ '], 'a')).toBe(true);
    expect(m(['a//b'], 'a/b')).toBe(true);
    expect(m(['a/../b'], 'b')).toBe(true);
    expect(m(['/a'], 'a')).toBe(false);
    expect(m(['', '   '], 'a')).toBe(false);
  });

  test("matching with the parent directory's state agrees with matching the whole path, with and without exceptions", () => {
    const tree = ['a', 'a/b', 'a/b/c.txt', 'a/b/d', 'a/b/d/e.go', 'a/x.txt', 'src', 'src/pkg3', 'src/pkg3/f.js', 'src/pkg3/g.txt', 'z', 'z/y'];
    const sets = [['src', 'a/b'], ['a/b/*', 'src'], ['**/*.txt', 'z'], ['a', '!a/b', 'a/b/d'], ['*', '!src/pkg3/*.js'], ['a/**/e.go', 'src/pkg3']];
    for (const patterns of sets) {
      const matcher = new PatternMatcher(patterns);
      const state = new Map<string, MatchInfo>();
      for (const path of tree) {
        const slash = path.lastIndexOf('/');
        const r = matcher.matchesUsingParentResults(path, slash < 0 ? undefined : state.get(path.slice(0, slash)));
        state.set(path, r.info);
        expect(r.matched, `${JSON.stringify(patterns)} ${path}`).toBe(matcher.matches(path));
      }
    }
  });

  test('malformed patterns are refused in Go\'s words, the list named by whoever uses them (as upstream)', () => {
    expect(() => new PatternMatcher(['!'])).toThrow(/illegal exclusion pattern/);
    expect(() => new PatternMatcher(['a['])).toThrow(/^syntax error in pattern$/);
    expect(() => patternMatcherFor('include', ['x', 'a['])).toThrow(/^invalid includepatterns: \[x a\[\]: syntax error in pattern$/);
    expect(patternMatcherFor('exclude', [])).toBeNull();
    expect(() => new PatternMatcher(['[a-]'])).toThrow(/syntax error in pattern/);
    expect(() => new PatternMatcher(['a\\'])).toThrow(/syntax error/);
  });

  test('goTrimSpace trims what Go does, not what JavaScript does', () => {
    expect(goTrimSpace('\u0085a\u00a0')).toBe('a');
    expect(goTrimSpace('\ufeffa')).toBe('\ufeffa');
  });
});

describe('globMatch (Go filepath.Match)', () => {
  test('basics', () => {
    expect(globMatch('*.go', 'a.go')).toBe(true);
    expect(globMatch('*', 'a/b')).toBe(false);
    expect(globMatch('[a-c]?', 'bz')).toBe(true);
    expect(globMatch('\\*', '*')).toBe(true);
    expect(() => globMatch('[', 'x')).toThrow(/syntax error/);
  });
});

describe('PathFilter (fsutil walker rules)', () => {
  test('exclude without exceptions prunes a matched directory', () => {
    const f = new PathFilter({ excludePatterns: ['node_modules'] });
    expect(f.check('node_modules', true).verdict).toBe('prune');
    expect(f.check('src', true).verdict).toBe('include');
  });

  test('an exception below an excluded directory makes the walker descend it', () => {
    const f = new PathFilter({ excludePatterns: ['docs', '!docs/keep.md'] });
    const d = f.check('docs', true);
    expect(d.verdict).toBe('exclude');
    expect(f.check('docs/keep.md', false, d.state).verdict).toBe('include');
    expect(f.check('docs/drop.md', false, d.state).verdict).toBe('exclude');
    // An exception elsewhere does not keep an unrelated excluded dir.
    expect(f.check('other', true).verdict).toBe('include');
    const g = new PathFilter({ excludePatterns: ['a', 'b', '!b/x'] });
    expect(g.check('a', true).verdict).toBe('prune');
  });

  test('a wildcard exception disables pruning', () => {
    const f = new PathFilter({ excludePatterns: ['docs', '!**/*.md'] });
    expect(f.check('docs', true).verdict).toBe('exclude');
  });

  test('include src/** descends src without including it by itself', () => {
    const f = new PathFilter({ includePatterns: ['src/**'] });
    const src = f.check('src', true);
    expect(src.verdict).toBe('exclude');
    expect(f.check('src/a', false, src.state).verdict).toBe('include');
    expect(f.check('lib', true).verdict).toBe('prune');
    expect(f.check('README', false).verdict).toBe('exclude');
  });

  test('an included directory includes its contents', () => {
    const f = new PathFilter({ includePatterns: ['src'] });
    const src = f.check('src', true);
    expect(src.verdict).toBe('include');
    expect(f.check('src/deep', true, src.state).verdict).toBe('include');
  });

  test('wildcard includes descend everything', () => {
    const f = new PathFilter({ includePatterns: ['*/*.go'] });
    expect(f.check('anything', true).verdict).toBe('exclude');
  });

  test('no patterns: inactive; bad patterns name the list', () => {
    expect(new PathFilter({}).active).toBe(false);
    expect(new PathFilter({ includePatterns: [], excludePatterns: [] }).active).toBe(false);
    expect(() => new PathFilter({ excludePatterns: ['a', '['] })).toThrow(/^invalid excludepatterns: \[a \[\]: syntax error in pattern$/);
  });
});

describe('parseDockerignore', () => {
  test('comments, blank lines, trimming, cleaning, leading slash, exceptions', () => {
    const text = '\ufeff# comment\n\n  node_modules/  \n /abs/path\n!/keep/this\n! spaced\r\n  # not a comment\n./a/../b\n*.log\n!\n/\n';
    expect(parseDockerignore(text)).toEqual(['node_modules', 'abs/path', '!keep/this', '!spaced', '# not a comment', 'b', '*.log', '!', '/']);
  });

  test('bytes, no final newline', () => {
    expect(parseDockerignore(new TextEncoder().encode('a\nb'))).toEqual(['a', 'b']);
    expect(parseDockerignore('')).toEqual([]);
  });
});
