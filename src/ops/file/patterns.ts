import path from 'node:path';
import { InvalidArgumentError } from '../../util/errors.js';

/**
 * Include/exclude patterns of copies (the .dockerignore syntax of moby/patternmatcher): `*` and
 * `?` within one component, `**` any number of components, `[...]` classes, `\` escapes, a leading
 * `!` re-includes what an earlier pattern matched. Later patterns win. A path also matches when one
 * of its parent directories does; walks pass the parent's result down (`parent`) so that check is
 * not repeated at every depth.
 */

interface Pattern {
  exclusion: boolean;
  re: RegExp;
}

/** Per-pattern "matched at some parent" flags handed from a directory to its children. */
export type MatchInfo = readonly boolean[] | null;

export class PatternMatcher {
  readonly #patterns: Pattern[];

  constructor(opts: { patterns: readonly string[] }) {
    this.#patterns = [];
    for (let p of opts.patterns) {
      p = p.trim();
      if (p === '') continue;
      p = path.posix.normalize(p);
      if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
      let exclusion = false;
      if (p[0] === '!') {
        if (p.length === 1) throw new InvalidArgumentError('illegal exclusion pattern: "!"');
        exclusion = true;
        p = p.slice(1);
      }
      this.#patterns.push({ exclusion, re: compile(p) });
    }
  }

  get empty(): boolean {
    return this.#patterns.length === 0;
  }

  /** Whether relative `file` matches, given its parent directory's MatchInfo (null at the top). */
  matches(file: string, parent: MatchInfo): { matched: boolean; info: boolean[] } {
    let matched = false;
    const info: boolean[] = [];
    this.#patterns.forEach((pat, i) => {
      let m = parent ? parent[i]! : false;
      if (!m) {
        if (pat.exclusion !== matched) {
          info.push(false);
          return;
        }
        m = pat.re.test(file);
        if (!m && !parent) {
          const dir = path.posix.dirname(file);
          if (dir !== '.') {
            const parts = dir.split('/');
            for (let k = 1; k <= parts.length && !m; k++) m = pat.re.test(parts.slice(0, k).join('/'));
          }
        }
      }
      info.push(m);
      if (m) matched = !pat.exclusion;
    });
    return { matched, info };
  }
}

function compile(p: string): RegExp {
  let re = '^';
  const esc = (c: string) => c.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === '*') {
      if (p[i + 1] === '*') {
        i++;
        if (p[i + 1] === '/') i++;
        re += i + 1 >= p.length ? '.*' : '(.*/)?';
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '\\') {
      if (i + 1 < p.length) re += esc(p[++i]!);
      else re += '\\\\';
    } else if (c === '[' || c === ']') {
      re += c;
    } else {
      re += esc(c);
    }
  }
  try {
    return new RegExp(re + '$', 's');
  } catch (err) {
    throw new InvalidArgumentError(`invalid pattern ${JSON.stringify(p)}`, { cause: err });
  }
}
