/**
 * Parsed Dockerfile nodes to typed instructions grouped into stages (BuildKit's
 * frontend/dockerfile/instructions): flag parsing with upstream's rules and messages, argument
 * count checks, heredoc sources, HEALTHCHECK options, RUN --mount/--network/--security, and the
 * meta ARGs that come before the first FROM.
 *
 * Errors name the line as upstream does: `dockerfile parse error on line N: <reason>`.
 */
import { chompHeredocContent, parse as parseDockerfile, parseHeredoc, type Heredoc, type Node, type ParseResult } from './parser.js';
import { DockerfileError, withLocation, type Range } from './errors.js';
import { parseDuration, suggest, trimSpace, parseGoInt } from './go-compat.js';
import { parseMount, type Mount } from './run-mount.js';

export interface KeyValue {
  key: string;
  value: string;
  /** Written in the legacy form `ENV key value` (no `=`). */
  noDelim?: boolean;
}

export interface KeyValueOptional {
  key: string;
  value: string | undefined;
  comment?: string;
}

interface Base {
  /** The instruction keyword as written (`run`, `RUN`). */
  name: string;
  /** The instruction's source text, trimmed (upstream's String()). */
  code: string;
  location: Range[];
}

export interface SourceContent {
  path: string;
  data: string;
  expand: boolean;
}

export interface SourcesAndDest {
  destPath: string;
  sourcePaths: string[];
  sourceContents: SourceContent[];
}

export interface ShellInlineFile {
  name: string;
  data: string;
  chomp: boolean;
}

export interface ShellDependentCmdLine {
  cmdLine: string[] | undefined;
  files: ShellInlineFile[];
  prependShell: boolean;
}

export interface HealthConfig {
  test: string[];
  /** Nanoseconds, 0 for "inherit". */
  interval: bigint;
  timeout: bigint;
  startPeriod: bigint;
  retries: number;
}

export type Instruction =
  | (Base & { kind: 'env'; env: KeyValue[] })
  | (Base & { kind: 'maintainer'; maintainer: string })
  | (Base & { kind: 'label'; labels: KeyValue[] })
  | (Base & SourcesAndDest & { kind: 'add'; chown: string; chmod: string; link: boolean; keepGitDir: boolean; checksum: string; exclude: string[] })
  | (Base & SourcesAndDest & { kind: 'copy'; from: string; chown: string; chmod: string; link: boolean; parents: boolean; exclude: string[] })
  | (Base & { kind: 'onbuild'; expression: string })
  | (Base & { kind: 'workdir'; path: string })
  | (Base &
      ShellDependentCmdLine & {
        kind: 'run';
        /** The raw `--mount` values; `mounts` is their parse (expanded at dispatch). */
        mountSpecs: string[];
        mounts: Mount[];
        network: 'default' | 'none' | 'host';
        security: 'sandbox' | 'insecure';
        flagsUsed: string[];
      })
  | (Base & ShellDependentCmdLine & { kind: 'cmd' })
  | (Base & ShellDependentCmdLine & { kind: 'entrypoint' })
  | (Base & { kind: 'healthcheck'; health: HealthConfig })
  | (Base & { kind: 'expose'; ports: string[] })
  | (Base & { kind: 'user'; user: string })
  | (Base & { kind: 'volume'; volumes: string[] })
  | (Base & { kind: 'stopsignal'; signal: string })
  | (Base & { kind: 'arg'; args: KeyValueOptional[] })
  | (Base & { kind: 'shell'; shell: string[] });

export type InstructionKind = Instruction['kind'];

export interface Stage {
  /** Lower-cased `AS` name, or '' for an unnamed stage. */
  name: string;
  commands: Instruction[];
  baseName: string;
  platform: string;
  comment: string;
  sourceCode: string;
  location: Range[];
}

export interface ParsedDockerfile {
  stages: Stage[];
  metaArgs: Extract<Instruction, { kind: 'arg' }>[];
  ast: ParseResult;
}

export const INSTRUCTION_NAMES = [
  'add', 'arg', 'cmd', 'copy', 'entrypoint', 'env', 'expose', 'from', 'healthcheck', 'label', 'maintainer',
  'onbuild', 'run', 'shell', 'stopsignal', 'user', 'volume', 'workdir',
];

// --- Flags ----------------------------------------------------------------------------------------

type FlagType = 'bool' | 'string' | 'strings';

interface Flag {
  type: FlagType;
  value: string;
  values: string[];
  used: boolean;
}

/** BuildKit's BFlags: `--name`, `--name=value`, repeated only for string lists. */
class BFlags {
  readonly #args: string[];
  readonly #flags = new Map<string, Flag>();
  readonly used = new Set<string>();

  constructor(args: string[]) {
    this.#args = args;
  }

  #add(name: string, type: FlagType, def: string): Flag {
    const f: Flag = { type, value: def, values: [], used: false };
    this.#flags.set(name, f);
    return f;
  }

  bool(name: string, def = false): Flag {
    return this.#add(name, 'bool', def ? 'true' : 'false');
  }

  string(name: string, def = ''): Flag {
    return this.#add(name, 'string', def);
  }

  strings(name: string): Flag {
    return this.#add(name, 'strings', '');
  }

  parse(): void {
    for (const raw of this.#args) {
      if (!raw.startsWith('--')) throw new Error(`arg should start with -- : ${raw}`);
      if (raw === '--') return;
      let arg = raw.slice(2);
      let value = '';
      const index = arg.indexOf('=');
      if (index >= 0) {
        value = arg.slice(index + 1);
        arg = arg.slice(0, index);
      }
      const flag = this.#flags.get(arg);
      if (!flag) throw new Error(suggest(`unknown flag: ${arg}`, arg, [...this.#flags.keys()], true));
      if (this.used.has(arg) && flag.type !== 'strings') throw new Error(`duplicate flag specified: ${arg}`);
      this.used.add(arg);
      flag.used = true;
      switch (flag.type) {
        case 'bool': {
          if (index >= 0 && value === '') throw new Error(`missing a value on flag: ${arg}`);
          const lower = value.toLowerCase();
          if (lower === '') flag.value = 'true';
          else if (lower === 'true' || lower === 'false') flag.value = lower;
          else throw new Error(`expecting boolean value for flag ${arg}, not: ${value}`);
          break;
        }
        case 'string':
          if (index < 0) throw new Error(`missing a value on flag: ${arg}`);
          flag.value = value;
          break;
        case 'strings':
          if (index < 0) throw new Error(`missing a value on flag: ${arg}`);
          flag.values.push(value);
          break;
      }
    }
  }
}

// --- Parsing -------------------------------------------------------------------------------------

interface Request {
  command: string;
  args: string[];
  heredocs: Heredoc[];
  json: boolean;
  flags: BFlags;
  original: string;
  /** ENV/LABEL in the legacy `key value` form. */
  legacyKV: boolean;
  location: Range[];
  comments: string[];
}

function base(req: Request): Base {
  return { name: req.command, code: trimSpace(req.original), location: req.location };
}

const errAtLeastOne = (c: string) => new Error(`${c} requires at least one argument`);
const errExactlyOne = (c: string) => new Error(`${c} requires exactly one argument`);
const errNoDest = (c: string) => new Error(`${c} requires at least two arguments, but only one was provided. Destination could not be determined`);
const errBlankNames = (c: string) => new Error(`${c} names can not be blank`);

function markLegacy(kvs: KeyValue[], legacy: boolean): KeyValue[] {
  if (legacy && kvs[0]) kvs[0].noDelim = true;
  return kvs;
}

function parseKvps(args: string[], cmd: string): KeyValue[] {
  if (args.length === 0) throw errAtLeastOne(cmd);
  if (args.length % 2 !== 0) throw new Error(`Bad input to ${cmd}, too many arguments`);
  const out: KeyValue[] = [];
  for (let j = 0; j < args.length; j += 2) {
    if (args[j]!.length === 0) throw errBlankNames(cmd);
    out.push({ key: args[j]!, value: args[j + 1]! });
  }
  return out;
}

/** For CMD/ENTRYPOINT/RUN/SHELL: the JSON words, or the shell form joined into one string. */
function handleJSONArgs(args: string[], json: boolean): string[] {
  if (args.length === 0) return [];
  if (json) return args;
  return [args.join(' ')];
}

function parseSourcesAndDest(req: Request, cmd: string): SourcesAndDest {
  const srcs = req.args.slice(0, -1);
  const dest = req.args[req.args.length - 1]!;
  if (parseHeredoc(dest)) throw new Error(`${cmd} cannot accept a heredoc as a destination`);
  const byName = new Map(req.heredocs.map((h) => [h.name, h]));
  const sourcePaths: string[] = [];
  const sourceContents: SourceContent[] = [];
  for (const src of srcs) {
    const h = parseHeredoc(src);
    if (h) {
      let content = byName.get(h.name)?.content ?? '';
      if (h.chomp) content = chompHeredocContent(content);
      sourceContents.push({ data: content, path: h.name, expand: h.expand });
    } else {
      sourcePaths.push(src);
    }
  }
  return { destPath: dest, sourcePaths, sourceContents };
}

function shellDependent(req: Request, emptyAsNil: boolean): ShellDependentCmdLine {
  const files = req.heredocs.map((h) => ({ name: h.name, data: h.content, chomp: h.chomp }));
  let cmd: string[] | undefined = handleJSONArgs(req.args, req.json);
  if (emptyAsNil && cmd.length === 0) cmd = undefined;
  return { cmdLine: cmd, files, prependShell: !req.json };
}

function getComment(comments: string[], name: string): string {
  if (name === '') return '';
  for (const line of comments) if (line.startsWith(name + ' ')) return line.slice(name.length + 1);
  return '';
}

const STAGE_NAME_RE = /^[a-z][a-z0-9_.-]*$/;

function parseFrom(req: Request): Stage {
  let stageName = '';
  if (req.args.length === 3 && req.args[1]!.toLowerCase() === 'as') {
    stageName = req.args[2]!.toLowerCase();
    if (!STAGE_NAME_RE.test(stageName)) {
      throw new Error(`invalid name for build stage: ${JSON.stringify(req.args[2])}, name can't start with a number or contain symbols`);
    }
  } else if (req.args.length !== 1) {
    throw new Error('FROM requires either one or three arguments');
  }
  const platform = req.flags.string('platform');
  req.flags.parse();
  return {
    baseName: req.args[0]!,
    name: stageName,
    sourceCode: trimSpace(req.original),
    commands: [],
    platform: platform.value,
    location: req.location,
    comment: getComment(req.comments, stageName),
  };
}

const MIN_DURATION = 1_000_000n; // container.MinimumDuration: 1ms

function parseOptInterval(name: string, v: string): bigint {
  if (v === '') return 0n;
  const d = parseDuration(v);
  if (d === 0n) return 0n;
  if (d < MIN_DURATION) throw new Error(`Interval ${JSON.stringify(name)} cannot be less than 1ms`);
  return d;
}

function parseHealthcheck(req: Request): Instruction {
  if (req.args.length === 0) throw errAtLeastOne('HEALTHCHECK');
  let typ = req.args[0]!.toUpperCase();
  const args = req.args.slice(1);
  if (typ === 'NONE') {
    if (args.length !== 0) throw new Error('HEALTHCHECK NONE takes no arguments');
    return { ...base(req), kind: 'healthcheck', health: { test: [typ], interval: 0n, timeout: 0n, startPeriod: 0n, retries: 0 } };
  }
  const interval = req.flags.string('interval');
  const timeout = req.flags.string('timeout');
  const startPeriod = req.flags.string('start-period');
  const retries = req.flags.string('retries');
  req.flags.parse();
  if (typ !== 'CMD') throw new Error(`Unknown type ${JSON.stringify(typ)} in HEALTHCHECK (try CMD)`);
  const cmd = handleJSONArgs(args, req.json);
  if (cmd.length === 0) throw new Error('Missing command after HEALTHCHECK CMD');
  if (!req.json) typ = 'CMD-SHELL';
  const health: HealthConfig = { test: [typ, ...cmd], interval: 0n, timeout: 0n, startPeriod: 0n, retries: 0 };
  health.interval = parseOptInterval('interval', interval.value);
  health.timeout = parseOptInterval('timeout', timeout.value);
  health.startPeriod = parseOptInterval('start-period', startPeriod.value);
  if (retries.value !== '') {
    const r = parseGoInt(retries.value, 32);
    if (r === undefined) throw new Error(`strconv.ParseInt: parsing ${JSON.stringify(retries.value)}: invalid syntax`);
    if (r < 0n) throw new Error(`--retries cannot be negative (${r})`);
    health.retries = Number(r);
  }
  return { ...base(req), kind: 'healthcheck', health };
}

function parseOnBuild(req: Request): Instruction {
  if (req.args.length === 0) throw errAtLeastOne('ONBUILD');
  req.flags.parse();
  const trigger = trimSpace(req.args[0]!).toUpperCase();
  if (trigger === 'ONBUILD') throw new Error('Chaining ONBUILD via `ONBUILD ONBUILD` isn\'t allowed');
  if (trigger === 'MAINTAINER' || trigger === 'FROM') throw new Error(`${trigger} isn't allowed as an ONBUILD trigger`);
  let original = req.original.replace(/^\s*ONBUILD\s*/i, '');
  for (const h of req.heredocs) original += '\n' + h.content + h.name;
  return { ...base(req), kind: 'onbuild', expression: original };
}

function parseRun(req: Request): Instruction {
  const mount = req.flags.strings('mount');
  const network = req.flags.string('network', 'default');
  const security = req.flags.string('security', 'sandbox');
  req.flags.parse();
  const flagsUsed = [...req.flags.used];
  const cmd = shellDependent(req, false);
  const mounts = mount.values.map((v) => parseMount(v, undefined));
  if (!['default', 'none', 'host'].includes(network.value)) throw new Error(`invalid network mode ${JSON.stringify(network.value)}`);
  if (!['sandbox', 'insecure'].includes(security.value)) throw new Error(`security ${JSON.stringify(security.value)} is not valid`);
  return {
    ...base(req),
    ...cmd,
    kind: 'run',
    mountSpecs: mount.values,
    mounts,
    network: network.value as 'default' | 'none' | 'host',
    security: security.value as 'sandbox' | 'insecure',
    flagsUsed,
  };
}

function parseArg(req: Request): Instruction {
  if (req.args.length < 1) throw errAtLeastOne('ARG');
  const args = req.args.map((arg): KeyValueOptional => {
    const i = arg.indexOf('=');
    if (i >= 0) {
      if (i === 0) throw errBlankNames('ARG');
      const key = arg.slice(0, i);
      return { key, value: arg.slice(i + 1), comment: getComment(req.comments, key) };
    }
    return { key: arg, value: undefined, comment: getComment(req.comments, arg) };
  });
  return { ...base(req), kind: 'arg', args };
}

function parseNode(req: Request): Instruction | Stage {
  switch (req.command.toLowerCase()) {
    case 'env': {
      req.flags.parse();
      return { ...base(req), kind: 'env', env: markLegacy(parseKvps(req.args, 'ENV'), req.legacyKV) };
    }
    case 'maintainer': {
      if (req.args.length !== 1) throw errExactlyOne('MAINTAINER');
      req.flags.parse();
      return { ...base(req), kind: 'maintainer', maintainer: req.args[0]! };
    }
    case 'label': {
      req.flags.parse();
      return { ...base(req), kind: 'label', labels: markLegacy(parseKvps(req.args, 'LABEL'), req.legacyKV) };
    }
    case 'add': {
      if (req.args.length < 2) throw errNoDest('ADD');
      const chown = req.flags.string('chown');
      const chmod = req.flags.string('chmod');
      const link = req.flags.bool('link');
      const keepGitDir = req.flags.bool('keep-git-dir');
      const checksum = req.flags.string('checksum');
      const exclude = req.flags.strings('exclude');
      req.flags.parse();
      return {
        ...base(req),
        ...parseSourcesAndDest(req, 'ADD'),
        kind: 'add',
        chown: chown.value,
        chmod: chmod.value,
        link: link.value === 'true',
        keepGitDir: keepGitDir.value === 'true',
        checksum: checksum.value,
        exclude: exclude.values,
      };
    }
    case 'copy': {
      if (req.args.length < 2) throw errNoDest('COPY');
      const chown = req.flags.string('chown');
      const from = req.flags.string('from');
      const chmod = req.flags.string('chmod');
      const link = req.flags.bool('link');
      const exclude = req.flags.strings('exclude');
      const parents = req.flags.bool('parents');
      req.flags.parse();
      return {
        ...base(req),
        ...parseSourcesAndDest(req, 'COPY'),
        kind: 'copy',
        from: from.value,
        chown: chown.value,
        chmod: chmod.value,
        link: link.value === 'true',
        parents: parents.value === 'true',
        exclude: exclude.values,
      };
    }
    case 'from':
      return parseFrom(req);
    case 'onbuild':
      return parseOnBuild(req);
    case 'workdir': {
      if (req.args.length !== 1) throw errExactlyOne('WORKDIR');
      req.flags.parse();
      return { ...base(req), kind: 'workdir', path: req.args[0]! };
    }
    case 'run':
      return parseRun(req);
    case 'cmd':
      req.flags.parse();
      return { ...base(req), ...shellDependent(req, false), kind: 'cmd' };
    case 'entrypoint':
      req.flags.parse();
      return { ...base(req), ...shellDependent(req, true), kind: 'entrypoint' };
    case 'healthcheck':
      return parseHealthcheck(req);
    case 'expose': {
      if (req.args.length === 0) throw errAtLeastOne('EXPOSE');
      req.flags.parse();
      return { ...base(req), kind: 'expose', ports: [...req.args].sort() };
    }
    case 'user': {
      if (req.args.length !== 1) throw errExactlyOne('USER');
      req.flags.parse();
      return { ...base(req), kind: 'user', user: req.args[0]! };
    }
    case 'volume': {
      if (req.args.length === 0) throw errAtLeastOne('VOLUME');
      req.flags.parse();
      const volumes: string[] = [];
      for (const v of req.args) {
        const t = trimSpace(v);
        if (t === '') throw new Error('VOLUME specified can not be an empty string');
        volumes.push(t);
      }
      return { ...base(req), kind: 'volume', volumes };
    }
    case 'stopsignal': {
      if (req.args.length !== 1) throw errExactlyOne('STOPSIGNAL');
      return { ...base(req), kind: 'stopsignal', signal: req.args[0]! };
    }
    case 'arg':
      return parseArg(req);
    case 'shell': {
      req.flags.parse();
      const shell = handleJSONArgs(req.args, req.json);
      if (shell.length === 0) throw errAtLeastOne('SHELL');
      if (!req.json) throw new Error('SHELL requires the arguments to be in JSON form');
      return { ...base(req), kind: 'shell', shell };
    }
  }
  throw new DockerfileError(
    suggest(`unknown instruction: ${req.command}`, req.command, INSTRUCTION_NAMES.map((n) => n.toUpperCase()), false),
    { location: req.location },
  );
}

/** One node to an instruction or a stage; errors carry the node's lines (ParseInstruction). */
export function parseInstruction(node: Node): Instruction | Stage {
  const req: Request = {
    command: node.value,
    args: node.args(),
    heredocs: node.heredocs,
    json: node.attributes.json === true,
    flags: new BFlags(node.flags),
    original: node.original,
    legacyKV: node.next?.noDelim === true,
    location: node.location(),
    comments: node.prevComment,
  };
  try {
    return parseNode(req);
  } catch (err) {
    throw withLocation(err, node.location());
  }
}

export function isStage(v: Instruction | Stage): v is Stage {
  return !('kind' in v);
}

/** A node that must be a command (ONBUILD triggers): a FROM there is an error. */
export function parseCommand(node: Node): Instruction {
  const v = parseInstruction(node);
  if (isStage(v)) throw new DockerfileError('*instructions.Stage is not a command type', { location: node.location() });
  return v;
}

/** Parses the Dockerfile text into stages and the meta ARGs before the first FROM. */
export function parseStages(input: string | Uint8Array | ParseResult, onNode?: (n: Node) => void): ParsedDockerfile {
  const ast = typeof input === 'string' || input instanceof Uint8Array ? parseDockerfile(input) : input;
  const stages: Stage[] = [];
  const metaArgs: Extract<Instruction, { kind: 'arg' }>[] = [];
  for (const n of ast.children) {
    // Lint checks of the instruction as written come before its parse, as upstream's.
    onNode?.(n);
    let cmd: Instruction | Stage;
    try {
      cmd = parseInstruction(n);
    } catch (err) {
      const e = withLocation(err, n.location());
      e.message = `dockerfile parse error on line ${n.startLine}: ${e.message}`;
      throw e;
    }
    if (stages.length === 0 && !isStage(cmd) && cmd.kind === 'arg') {
      metaArgs.push(cmd);
      continue;
    }
    if (isStage(cmd)) {
      stages.push(cmd);
      continue;
    }
    const cur = stages[stages.length - 1];
    if (!cur) throw new DockerfileError('no build stage in current context', { location: n.location() });
    cur.commands.push(cmd);
  }
  return { stages, metaArgs, ast };
}
