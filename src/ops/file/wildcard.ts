import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../../util/errors.js';
import { resolveInRoot, resolveParentInRoot } from '../../util/fs-safe.js';
import { containsWildcards } from '../../util/patterns.js';

export { containsWildcards };

/**
 * Wildcards of file actions, with Go's path/filepath.Match syntax: `*` any run of non-`/`
 * characters, `?` one non-`/` character, `[...]` a class (`^` negates, `a-z` ranges, `\` escapes),
 * `\x` a literal x.
 */

/** Compiles a filepath.Match pattern; throws InvalidArgumentError for a malformed one. */
export function compileGlob(pattern: string): RegExp {
  let re = '^';
  let i = 0;
  const bad = () => new InvalidArgumentError(`syntax error in pattern ${JSON.stringify(pattern)}`);
  const esc = (c: string) => c.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
  while (i < pattern.length) {
    const c = pattern[i]!;
    if (c === '*') {
      re += '[^/]*';
      i++;
    } else if (c === '?') {
      re += '[^/]';
      i++;
    } else if (c === '\\') {
      if (i + 1 >= pattern.length) throw bad();
      re += esc(pattern[i + 1]!);
      i += 2;
    } else if (c === '[') {
      i++;
      let cls = '[';
      if (pattern[i] === '^') {
        cls += '^';
        i++;
      }
      let n = 0;
      for (;;) {
        if (i >= pattern.length) throw bad();
        if (pattern[i] === ']' && n > 0) {
          i++;
          break;
        }
        let lo = pattern[i]!;
        if (lo === '\\') {
          if (i + 1 >= pattern.length) throw bad();
          lo = pattern[++i]!;
        } else if (lo === '-' || lo === ']') {
          throw bad();
        }
        i++;
        cls += esc(lo);
        if (pattern[i] === '-' && pattern[i + 1] !== ']') {
          i++;
          let hi = pattern[i];
          if (hi === undefined) throw bad();
          if (hi === '\\') hi = pattern[++i];
          if (hi === undefined || hi < lo) throw bad();
          i++;
          cls += '-' + esc(hi);
        }
        n++;
      }
      // Unlike `*` and `?`, a class may match `/` in Go's filepath.Match.
      re += cls + ']';
    } else {
      re += esc(c);
      i++;
    }
  }
  return new RegExp(re + '$', 's');
}

export function globMatch(pattern: string, name: string): boolean {
  return compileGlob(pattern).test(name);
}


/** Splits a clean path at its first component with a wildcard: (fixed prefix, pattern rest). */
export function splitWildcards(p: string): [string, string] {
  const parts = path.posix.normalize(p).split('/');
  const fixed: string[] = [];
  const rest: string[] = [];
  let found = false;
  for (let part of parts) {
    if (!found && containsWildcards(part)) found = true;
    if (part === '') part = '/';
    (found ? rest : fixed).push(part);
  }
  const join = (xs: string[]) => (xs.length === 0 ? '' : path.posix.join(...xs));
  return [join(fixed), join(rest)];
}

/**
 * The paths (inside the root, slash-absolute) that `src` matches: every entry below the fixed
 * prefix whose relative path matches the pattern part, in walk order, not descending into matched
 * directories. A src without wildcards is returned as is. Upstream's copy.ResolveWildcards.
 */
export async function resolveWildcards(root: string, src: string, followLinks: boolean): Promise<string[]> {
  const [fixed, pattern] = splitWildcards(src);
  if (pattern === '') return [fixed];
  const re = compileGlob(pattern);
  const fixedAbs = '/' + fixed.replace(/^\/+/, '');
  const base = fixedAbs === '/' ? root : followLinks ? await resolveInRoot(root, fixedAbs) : await resolveParentInRoot(root, fixedAbs);
  const out: string[] = [];
  // Walk the base (lstat: a symlinked base is not descended), lexical order.
  const st = await lstat(base); // missing base: the error surfaces, as upstream's walk does
  if (!st.isDirectory()) return out;
  const walk = async (dir: string, rel: string): Promise<void> => {
    const names = (await readdir(dir)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) {
      const r = rel === '' ? n : rel + '/' + n;
      const host = path.join(dir, n);
      const s = await lstat(host);
      if (re.test(r)) {
        out.push(host);
        continue;
      }
      if (s.isDirectory()) await walk(host, r);
    }
  };
  await walk(base, '');
  return out.map((h) => '/' + path.relative(root, h));
}
