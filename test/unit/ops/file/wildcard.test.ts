import { describe, expect, it } from 'vitest';
import { globMatch, splitWildcards } from '../../../../src/ops/file/wildcard.js';
import { PatternMatcher } from '../../../../src/util/patterns.js';
import { cleanPath } from '../../../../src/ops/file/actions.js';

describe('Go filepath.Match semantics', () => {
  it.each([
    ['*', 'abc', true],
    ['*', 'a/b', false],
    ['a?c', 'abc', true],
    ['a?c', 'a/c', false],
    ['[a-c]x', 'bx', true],
    ['[^a-c]x', 'dx', true],
    ['[^a-c]x', 'ax', false],
    ['\\*', '*', true],
    ['\\*', 'a', false],
    ['*.go', 'main.go', true],
    ['a*/b', 'abc/b', true],
    ['a*/b', 'a/c/b', false],
    ['[.]x', '.x', true],
  ])('%s ~ %s = %s', (p, n, m) => expect(globMatch(p, n)).toBe(m));

  it('rejects malformed patterns', () => {
    expect(() => globMatch('[a', 'a')).toThrow('syntax error in pattern');
    expect(() => globMatch('a\\', 'a')).toThrow('syntax error in pattern');
  });

  it('splits at the first component with a wildcard', () => {
    expect(splitWildcards('/etc/*.conf')).toEqual(['/etc', '*.conf']);
    expect(splitWildcards('/a/b*/c')).toEqual(['/a', 'b*/c']);
    expect(splitWildcards('/plain/path')).toEqual(['/plain/path', '']);
  });
});

describe('patternmatcher semantics', () => {
  it('matches ** across directories, parents, and ! exclusions in order', () => {
    // Copies use the same matcher as local sources and .dockerignore (util/patterns).
    const m = new PatternMatcher(['src/**', '!src/**/*.tmp', '*.json']);
    const t = (f: string) => m.matchesUsingParentResults(f).matched;
    expect(t('src/a/b.ts')).toBe(true);
    expect(t('src/a/b.tmp')).toBe(false);
    expect(t('package.json')).toBe(true);
    expect(t('docs/x.json')).toBe(false);
    expect(t('other')).toBe(false);
    // `src/**` does not match `src` itself (as upstream's prefix match); a matched directory's
    // result flows to its children.
    expect(t('src')).toBe(false);
    const dir = m.matchesUsingParentResults('src/a');
    expect(dir.matched).toBe(true);
    expect(m.matchesUsingParentResults('src/a/deep', dir.info).matched).toBe(true);
  });
});

describe('cleanPath', () => {
  it('keeps the trailing / and /. that mean "into"', () => {
    expect(cleanPath('a/b/')).toBe('/a/b/');
    expect(cleanPath('/a/./b/.')).toBe('/a/b/.');
    expect(cleanPath('../x')).toBe('/x');
    expect(cleanPath('/')).toBe('/');
  });
});
