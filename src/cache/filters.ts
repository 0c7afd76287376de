import { InvalidArgumentError } from '../util/errors.js';

/**
 * containerd-style filters as `buildctl du --filter` and `prune --filter` pass them:
 * `field==value`, `field!=value`, `field~=regexp`, or a bare `field` (present/true); commas AND
 * the terms of one filter, several filters OR together.
 */
export type FieldGetter = (field: string) => { value: string; present: boolean };

type Term = { field: string; op: '==' | '!=' | '~=' | 'present'; value: string; re?: RegExp };

export function parseFilters(filters: readonly string[]): (get: FieldGetter) => boolean {
  const parsed = filters.filter((f) => f.trim() !== '').map(parseOne);
  if (parsed.length === 0) return () => true;
  return (get) => parsed.some((terms) => terms.every((t) => matchTerm(t, get)));
}

function parseOne(filter: string): Term[] {
  return splitTerms(filter).map((raw) => {
    const m = /^\s*([A-Za-z0-9_.]+)\s*(==|!=|~=|=)?\s*(.*?)\s*$/.exec(raw);
    if (!m) throw new InvalidArgumentError(`failed to parse filter ${JSON.stringify(filter)}: invalid term ${JSON.stringify(raw)}`);
    const [, field, op, value] = m;
    if (!op) {
      if (value) throw new InvalidArgumentError(`failed to parse filter ${JSON.stringify(filter)}: expected an operator after ${field}`);
      return { field: field!, op: 'present', value: '' };
    }
    const v = unquote(value!);
    const t: Term = { field: field!, op: op === '=' ? '==' : (op as Term['op']), value: v };
    if (t.op === '~=') {
      try {
        t.re = new RegExp(v);
      } catch (err) {
        throw new InvalidArgumentError(`failed to parse filter ${JSON.stringify(filter)}: bad regexp ${JSON.stringify(v)}`, { cause: err });
      }
    }
    return t;
  });
}

function splitTerms(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quote = '';
  for (const c of s) {
    if (quote) {
      if (c === quote) quote = '';
      cur += c;
    } else if (c === '"' || c === "'" || c === '/') {
      // A value may be quoted; '/' quotes regexps in containerd's syntax.
      if (cur.match(/(==|!=|~=)\s*$/)) quote = c;
      cur += c;
    } else if (c === ',') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}

function unquote(v: string): string {
  if (v.length >= 2 && (v[0] === '"' || v[0] === "'" || v[0] === '/') && v.at(-1) === v[0]) return v.slice(1, -1);
  return v;
}

function matchTerm(t: Term, get: FieldGetter): boolean {
  const { value, present } = get(t.field);
  switch (t.op) {
    case 'present':
      return present;
    case '==':
      return present && value === t.value;
    case '!=':
      return !present || value !== t.value;
    case '~=':
      return present && t.re!.test(value);
  }
}
