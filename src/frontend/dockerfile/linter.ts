/**
 * Dockerfile lint rules, as upstream's Dockerfile frontend 1.8.1 checks them (the release buildx
 * falls back to for `--check` / `--call=check` when a builder cannot lint): the rule names,
 * descriptions, documentation links and messages are upstream's, so buildx prints the same report.
 *
 * The conversion calls `Linter.run` where upstream's does; a `# check=` directive (or the
 * BUILDKIT_DOCKERFILE_CHECK build arg) skips rules (`skip=A,B` or `skip=all`) and, with
 * `error=true`, turns any violation into the conversion's error.
 */
import { definitionGoJSON, goJSON, goRangesJSON } from '../../content/go-json.js';
import { formatSource } from '../../client/error-source.js';
import type { Definition } from '../../gen/buildkit/ops_pb.js';
import { DockerfileError, type Range } from './errors.js';
import { goQuote, parseGoBool, suggestSearch } from './go-compat.js';
import type { Stage } from './instructions.js';
import type { Node } from './parser.js';

export interface LintRule {
  name: string;
  description: string;
  url?: string;
}

const doc = (slug: string) => `https://docs.docker.com/go/dockerfile/rule/${slug}/`;

export const RULES = {
  StageNameCasing: { name: 'StageNameCasing', description: 'Stage names should be lowercase', url: doc('stage-name-casing') },
  FromAsCasing: { name: 'FromAsCasing', description: "The 'as' keyword should match the case of the 'from' keyword", url: doc('from-as-casing') },
  NoEmptyContinuation: { name: 'NoEmptyContinuation', description: 'Empty continuation lines will become errors in a future release', url: doc('no-empty-continuation') },
  ConsistentInstructionCasing: {
    name: 'ConsistentInstructionCasing',
    description: 'All commands within the Dockerfile should use the same casing (either upper or lower)',
    url: doc('consistent-instruction-casing'),
  },
  DuplicateStageName: { name: 'DuplicateStageName', description: 'Stage names should be unique', url: doc('duplicate-stage-name') },
  ReservedStageName: { name: 'ReservedStageName', description: 'Reserved words should not be used as stage names', url: doc('reserved-stage-name') },
  JSONArgsRecommended: {
    name: 'JSONArgsRecommended',
    description: 'JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals',
    url: doc('json-args-recommended'),
  },
  MaintainerDeprecated: {
    name: 'MaintainerDeprecated',
    description: 'The MAINTAINER instruction is deprecated, use a label instead to define an image author',
    url: doc('maintainer-deprecated'),
  },
  UndefinedArgInFrom: { name: 'UndefinedArgInFrom', description: 'FROM command must use declared ARGs', url: doc('undefined-arg-in-from') },
  WorkdirRelativePath: {
    name: 'WorkdirRelativePath',
    description: 'Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes',
    url: doc('workdir-relative-path'),
  },
  UndefinedVar: { name: 'UndefinedVar', description: 'Variables should be defined before their use', url: doc('undefined-var') },
  MultipleInstructionsDisallowed: {
    name: 'MultipleInstructionsDisallowed',
    description: 'Multiple instructions of the same type should not be used in the same stage',
    url: doc('multiple-instructions-disallowed'),
  },
  LegacyKeyValueFormat: { name: 'LegacyKeyValueFormat', description: 'Legacy key/value format with whitespace separator should not be used', url: doc('legacy-key-value-format') },
  InvalidBaseImagePlatform: { name: 'InvalidBaseImagePlatform', description: 'Base image platform does not match expected target platform' },
} as const satisfies Record<string, LintRule>;

/** The messages, worded as upstream's rules format them. */
export const lintMessages = {
  stageNameCasing: (stage: string) => `Stage name '${stage}' should be lowercase`,
  fromAsCasing: (from: string, as: string) => `'${as}' and '${from}' keywords' casing do not match`,
  noEmptyContinuation: () => 'Empty continuation line',
  consistentInstructionCasing: (cmd: string, casing: string) => `Command '${cmd}' should match the case of the command majority (${casing})`,
  duplicateStageName: (stage: string) => `Duplicate stage name ${goQuote(stage)}, stage names should be unique`,
  reservedStageName: (stage: string) => `Stage name should not use the same name as reserved stage ${goQuote(stage)}`,
  jsonArgsRecommended: (instruction: string) => `JSON arguments recommended for ${instruction} to prevent unintended behavior related to OS signals`,
  maintainerDeprecated: () => 'Maintainer instruction is deprecated in favor of using label',
  undefinedArgInFrom: (arg: string, suggest: string) => `FROM argument '${arg}' is not declared${suggest ? ` (did you mean ${suggest}?)` : ''}`,
  workdirRelativePath: (workdir: string) => `Relative workdir ${goQuote(workdir)} can have unexpected results if the base image changes`,
  undefinedVar: (v: string, suggest: string) => `Usage of undefined variable '$${v}'${suggest ? ` (did you mean $${suggest}?)` : ''}`,
  multipleInstructionsDisallowed: (instruction: string) =>
    `Multiple ${instruction} instructions should not be used in the same stage because only the last one will be used`,
  legacyKeyValueFormat: (cmd: string) => `"${cmd} key=value" should be used instead of legacy "${cmd} key value" format`,
  invalidBaseImagePlatform: (image: string, expected: string, actual: string) =>
    `Base image ${image} was pulled with platform ${goQuote(actual)}, expected ${goQuote(expected)} for current build`,
};

export interface LintWarning {
  rule: LintRule;
  detail: string;
  location: Range[];
}

export interface LintConfig {
  skipRules: Set<string>;
  skipAll: boolean;
  returnAsError: boolean;
}

/** A `# check=` directive's value (or BUILDKIT_DOCKERFILE_CHECK's): `skip=A,B|all;error=true`. */
export function parseLintOptions(checkStr: string): LintConfig {
  const cfg: LintConfig = { skipRules: new Set(), skipAll: false, returnAsError: false };
  const s = checkStr.trim();
  if (s === '') return cfg;
  const semi = s.indexOf(';');
  const parts = semi < 0 ? [s] : [s.slice(0, semi), s.slice(semi + 1)];
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq < 0) throw new DockerfileError(`failed to parse check options: invalid check option ${goQuote(p)}`);
    const k = p.slice(0, eq).trim();
    const v = p.slice(eq + 1).trim();
    if (k === 'skip') {
      if (v === 'all') cfg.skipAll = true;
      else for (const r of v.split(',')) cfg.skipRules.add(r.trim());
    } else if (k === 'error') {
      const b = parseGoBool(v);
      if (b === undefined) throw new DockerfileError(`failed to parse check options: failed to parse check option ${goQuote(p)}: strconv.ParseBool: parsing ${goQuote(v)}: invalid syntax`);
      cfg.returnAsError = b;
    } else throw new DockerfileError(`failed to parse check options: invalid check option ${goQuote(k)}`);
  }
  return cfg;
}

/** Collects the violations of one conversion; rules the configuration skips are not reported. */
export class Linter {
  readonly warnings: LintWarning[] = [];
  readonly #called: string[] = [];

  constructor(
    readonly config: LintConfig,
    private readonly onWarning?: (w: LintWarning) => void,
  ) {}

  run(rule: LintRule, location: Range[], detail: string): void {
    if (this.config.skipAll || this.config.skipRules.has(rule.name)) return;
    this.#called.push(rule.name);
    const w = { rule, detail, location };
    this.warnings.push(w);
    this.onWarning?.(w);
  }

  /** With `error=true`, the error a conversion that found violations ends with (upstream's wording). */
  error(): Error | undefined {
    if (!this.config.returnAsError || this.#called.length === 0) return undefined;
    return new DockerfileError(`lint violation found for rules: ${[...new Set(this.#called)].join(', ')}`);
  }
}

/** upstream's LintFormatShort: the one-line form of a violation shown as a build warning. */
export function lintShort(w: LintWarning): string {
  const line = w.location[0]?.start.line ?? 0;
  return `${w.rule.name}: ${w.detail}${line > 0 ? ` (line ${line})` : ''}`;
}

export const REQUEST_LINT = 'frontend.lint';
const LINT_VERSION = '1.0.0';

export interface LintSource {
  filename: string;
  data: Uint8Array;
  /** The LLB that loaded the Dockerfile. */
  definition?: Definition;
}

/**
 * The `frontend.lint` answer: result.json (upstream's LintResults: warnings in the order found, the
 * Dockerfile as the only source, the conversion's error if it failed), result.txt (the report as
 * upstream's PrintLintViolations writes it), result.statuscode (1 when anything was found) and
 * version.
 */
export function lintResult(warnings: readonly LintWarning[], source: LintSource, buildError?: { message: string; location: Range[] }): Record<string, Uint8Array> {
  // The error's ranges are merged where they overlap, as upstream's DockerfileLint does.
  const loc = (ranges: Range[]) => (ranges.length > 0 ? { ranges: goRangesJSON(mergeLocations(ranges)) } : {});
  const json = goJSON(
    {
      warnings:
        warnings.length === 0
          ? null
          : warnings.map((w) => ({
              ruleName: w.rule.name,
              ...(w.rule.description ? { description: w.rule.description } : {}),
              ...(w.rule.url ? { url: w.rule.url } : {}),
              ...(w.detail ? { detail: w.detail } : {}),
              location: w.location.length > 0 ? { ranges: goRangesJSON(w.location) } : {},
            })),
      sources: [
        {
          filename: source.filename,
          data: Buffer.from(source.data).toString('base64'),
          ...(source.definition ? { definition: definitionGoJSON(source.definition) } : {}),
          language: 'Dockerfile',
        },
      ],
      ...(buildError ? { buildError: { message: buildError.message, location: loc(buildError.location) } } : {}),
    },
    '  ',
  );
  // Sorted by first line; ties keep the order found (upstream's sort is not stable).
  const sorted = warnings
    .map((w, i) => ({ w, i }))
    .sort((a, b) => {
      const la = a.w.location.length;
      const lb = b.w.location.length;
      if (la === 0 || lb === 0) return la === lb ? (a.w.rule.name < b.w.rule.name ? -1 : a.w.rule.name > b.w.rule.name ? 1 : a.i - b.i) : la === 0 ? -1 : 1;
      return a.w.location[0]!.start.line - b.w.location[0]!.start.line || a.i - b.i;
    })
    .map((x) => x.w);
  let txt = '';
  for (const w of sorted) {
    txt += `\nWARNING: ${w.rule.name}`;
    if (w.rule.url) txt += ` - ${w.rule.url}`;
    txt += `\n${w.detail}\n`;
    txt += formatSource({ filename: source.filename, data: source.data, language: 'Dockerfile', ranges: w.location });
  }
  return {
    'result.json': Buffer.from(json),
    'result.txt': Buffer.from(txt),
    'result.statuscode': Buffer.from(warnings.length > 0 || buildError ? '1' : '0'),
    version: Buffer.from(LINT_VERSION),
  };
}

/** upstream's mergeLocations: ranges sorted by start line, overlapping ones joined. */
function mergeLocations(ranges: Range[]): Range[] {
  if (ranges.length <= 1) return ranges;
  const all = [...ranges].sort((a, b) => a.start.line - b.start.line);
  const out: Range[] = [];
  let cur = { start: { ...all[0]!.start }, end: { ...all[0]!.end } };
  for (const r of all.slice(1)) {
    if (r.start.line <= cur.end.line) cur.end.line = Math.max(cur.end.line, r.end.line);
    else {
      out.push(cur);
      cur = { start: { ...r.start }, end: { ...r.end } };
    }
  }
  out.push(cur);
  return out;
}

// --- the checks made on the parsed Dockerfile, before conversion ------------------------------

const isSelfConsistentCasing = (s: string) => s === s.toLowerCase() || s === s.toUpperCase();

/** ConsistentInstructionCasing: every instruction in the majority's casing (upper on a tie). */
export function lintCommandCasing(nodes: readonly Node[], lint: Linter): void {
  let lower = 0;
  let upper = 0;
  for (const n of nodes) {
    if (!isSelfConsistentCasing(n.value)) continue;
    if (n.value === n.value.toLowerCase()) lower++;
    else upper++;
  }
  const majorityLower = lower > upper;
  for (const n of nodes) {
    let casing = '';
    if (majorityLower && n.value.toLowerCase() !== n.value) casing = 'lowercase';
    else if (!majorityLower && n.value.toUpperCase() !== n.value) casing = 'uppercase';
    if (casing) lint.run(RULES.ConsistentInstructionCasing, n.location(), lintMessages.consistentInstructionCasing(n.value, casing));
  }
}

/** The checks upstream makes while parsing one instruction: MAINTAINER, and a FROM's stage name and AS. */
export function lintInstructionNode(n: Node, lint: Linter): void {
  const cmd = n.value.toLowerCase();
  if (cmd === 'maintainer') lint.run(RULES.MaintainerDeprecated, n.location(), lintMessages.maintainerDeprecated());
  if (cmd !== 'from') return;
  const args = n.args();
  if (args.length === 3 && args[2] !== args[2]!.toLowerCase()) lint.run(RULES.StageNameCasing, n.location(), lintMessages.stageNameCasing(args[2]!));
  if (args.length >= 3) {
    const fromLower = n.value === n.value.toLowerCase();
    const fromUpper = n.value === n.value.toUpperCase();
    const as = args[1]!;
    const matches = !fromLower && !fromUpper ? true : fromLower ? as === as.toLowerCase() : as === as.toUpperCase();
    if (!matches) lint.run(RULES.FromAsCasing, n.location(), lintMessages.fromAsCasing(n.value, as));
  }
}

const RESERVED_STAGE_NAMES = new Set(['context', 'scratch']);

/** ReservedStageName and DuplicateStageName. */
export function lintStageNames(stages: readonly Stage[], lint: Linter): void {
  const seen = new Set<string>();
  for (const st of stages) {
    if (st.name === '') continue;
    if (RESERVED_STAGE_NAMES.has(st.name)) lint.run(RULES.ReservedStageName, st.location, lintMessages.reservedStageName(st.name));
    if (seen.has(st.name)) lint.run(RULES.DuplicateStageName, st.location, lintMessages.duplicateStageName(st.name));
    seen.add(st.name);
  }
}

/** Args the frontend uses itself, never set in the environment (nor reported as undefined). */
export const NON_ENV_ARGS = new Set(['BUILDKIT_SBOM_SCAN_CONTEXT', 'BUILDKIT_SBOM_SCAN_STAGE']);

/** UndefinedVar: variables an instruction used that neither its stage's ARGs nor the environment define. */
export function reportUnmatchedVariables(
  lint: Linter,
  location: Range[],
  stageArgs: readonly { key: string }[],
  env: readonly string[],
  metaArgKeys: readonly string[],
  unmatched: ReadonlySet<string>,
): void {
  if (unmatched.size === 0) return;
  const left = new Set(unmatched);
  for (const a of stageArgs) left.delete(a.key);
  if (left.size === 0) return;
  const options = [...metaArgKeys, ...env.map((e) => (e.includes('=') ? e.slice(0, e.indexOf('=')) : e))];
  for (const v of left) {
    if (NON_ENV_ARGS.has(v)) continue;
    lint.run(RULES.UndefinedVar, location, lintMessages.undefinedVar(v, suggestSearch(v, options, true)));
  }
}

/** UndefinedArgInFrom: variables a FROM's image or platform used that no global ARG declares. */
export function reportUnusedFromArgs(lint: Linter, location: Range[], metaArgKeys: readonly string[], unmatched: ReadonlySet<string>): void {
  for (const arg of unmatched) lint.run(RULES.UndefinedArgInFrom, location, lintMessages.undefinedArgInFrom(arg, suggestSearch(arg, metaArgKeys, true)));
}
