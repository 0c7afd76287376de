/**
 * Dockerfile to LLB and image config for one target platform (BuildKit's dockerfile2llb): stages
 * and their dependencies, global and per-stage ARGs with the built-in platform ARGs, base image
 * configs resolved through the caller, every instruction turned into ops or config changes, history
 * entries, vertex names (`[stage-0 2/5] RUN ...`), and the build context as one `local://` source
 * whose follow paths are the files the steps need.
 *
 * What the converter needs from outside comes in `ConvertOptions`: image config resolution and
 * named contexts. It performs no I/O of its own.
 */
import type { Definition } from '../../gen/buildkit/ops_pb.js';
import { CacheSharingOpt, NetMode, SecurityMode } from '../../gen/buildkit/ops_pb.js';
import { CancelledError, codeOf, errorMessage, LoomError } from '../../util/errors.js';
import { defaultPlatform, formatPlatform, normalizePlatform, parsePlatform, type Platform } from '../../util/platform.js';
import { formatReference, parseNormalizedNamed, withDefaultTag, type ImageReference } from '../../registry/reference.js';
import { isDigest, type Digest } from '../../util/digest.js';
import { checkSignal, healthcheckHistory, isHTTPSource, parseGitRef, parsePlatformSpec, parsePortSpecs } from './convert-helpers.js';
import { DockerfileError, LocatedError, withLocation, type Range } from './errors.js';
import { goQuoteSlice, goSlice, suggest, atoi } from './go-compat.js';
import {
  cloneImage,
  defaultPathEnv,
  emptyImage,
  imageToBytes,
  parseImageConfig,
  type Image,
} from './image-config.js';
import {
  parseCommand,
  parseStages,
  type Instruction,
  type KeyValueOptional,
  type Stage,
} from './instructions.js';
import {
  FileActions,
  LLBBuilder,
  LLBState,
  cleanPath,
  isAbs,
  joinPath,
  marshal,
  parseChown,
  scratch,
  type ExecMount,
  type ExecSpec,
  type HostIP,
  type OpOptions,
  type SourceMapRef,
} from './llb-state.js';
import { chompHeredocContent, parse, parseHeredoc, type Warning } from './parser.js';
import { parseMount, type Mount } from './run-mount.js';
import { buildEnvs, ShellLex } from './shell-lex.js';
import {
  lintCommandCasing, lintInstructionNode, lintMessages, lintStageNames, NON_ENV_ARGS, reportUnmatchedVariables, reportUnusedFromArgs, RULES, type Linter,
} from './linter.js';
import type { OutlineData } from './subrequests.js';

const EMPTY_IMAGE_NAME = 'scratch';
const DEFAULT_CONTEXT_LOCAL_NAME = 'context';
const HISTORY_COMMENT = 'buildkit.dockerfile.v0';

export type ResolveMode = 'default' | 'pull' | 'local';

export interface ResolveImageConfigOptions {
  platform: Platform;
  resolveMode: ResolveMode;
  /** The progress vertex name upstream shows: `[internal] load metadata for docker.io/library/busybox:latest`. */
  logName: string;
  /** Aborted when the resolve is no longer wanted (another stage's failed). */
  signal?: AbortSignal;
}

export interface ResolvedImageConfig {
  /** The manifest digest the reference resolved to ('' when unknown). */
  digest: string;
  config: Uint8Array;
}

/** A named build context (`context:<name>`) turned into a state, with an image config when it is an image. */
export interface NamedContext {
  state: LLBState;
  image?: Image;
}

export interface ConvertOptions {
  /** The Dockerfile bytes. */
  dockerfile: Uint8Array | string;
  /** For error source snippets and op locations; omitted: no source map. */
  sourceMap?: SourceMapRef;
  target?: string;
  buildArgs?: Record<string, string>;
  labels?: Record<string, string>;
  sessionId?: string;
  /** Replaces the local context source (a git or HTTP context, or a frontend input). */
  buildContext?: LLBState;
  /** .dockerignore patterns, applied to the context source. */
  excludes?: string[];
  /** Stages built without cache: undefined none, [] all, or names. */
  ignoreCache?: string[];
  cacheIdNamespace?: string;
  imageResolveMode?: ResolveMode;
  /** The platform to build for; undefined means the build platform, with base images free to pick. */
  targetPlatform?: Platform;
  /** The worker's platforms; the first is BUILDPLATFORM. Default: the host's. */
  buildPlatforms?: Platform[];
  /** Prefix vertex names with the platform (multi-platform builds). */
  prefixPlatform?: boolean;
  extraHosts?: HostIP[];
  shmSize?: number;
  ulimits?: { name: string; soft: bigint; hard: bigint }[];
  cgroupParent?: string;
  forceNetMode?: NetMode;
  contextLocalName?: string;
  hostname?: string;
  sourceDateEpoch?: Date;
  warn?: (w: Warning) => void;
  resolveImageConfig(ref: string, opts: ResolveImageConfigOptions): Promise<ResolvedImageConfig>;
  /** Named contexts: the state for `name`, or undefined when the client gave none. */
  contextByName?(name: string, resolveMode: ResolveMode, platform: Platform | undefined): Promise<NamedContext | undefined>;
  /** Lint rules are checked and reported to it (the `frontend.lint` subrequest, a `# check=` directive). */
  lint?: Linter;
  /** Resolve and dispatch every stage, not only those the target needs (linting without a target). */
  allStages?: boolean;
}

export interface ConvertResult {
  state: LLBState;
  definition: Definition;
  image: Image;
  /** The image config JSON for `containerimage.config`. */
  config: Uint8Array;
  /** What the target uses (build args, secrets, ssh), for the `frontend.outline` subrequest. */
  outline(): OutlineData;
}

/** A build arg as the outline reports it: its declaration, effective value and the args its default used. */
interface OutlineArgInfo {
  key: string;
  comment: string;
  value: string | undefined;
  deps: Set<string>;
  location: Range[];
}

/** Upstream's outline capture: per stage, the args known and used, and the secrets and ssh mounts. */
interface OutlineCapture {
  allArgs: Map<string, OutlineArgInfo>;
  usedArgs: Set<string>;
  secrets: Map<string, { required: boolean; location: Range[] }>;
  ssh: Map<string, { required: boolean; location: Range[] }>;
}

function emptyOutline(): OutlineCapture {
  return { allArgs: new Map(), usedArgs: new Set(), secrets: new Map(), ssh: new Map() };
}

function cloneOutline(o: OutlineCapture): OutlineCapture {
  return { allArgs: new Map(o.allArgs), usedArgs: new Set(o.usedArgs), secrets: new Map(o.secrets), ssh: new Map(o.ssh) };
}

interface ArgKV {
  key: string;
  value: string | undefined;
}

/** One stage (or image used by COPY --from / RUN --mount from=) during conversion. */
interface DispatchState {
  state: LLBState;
  image: Image;
  platform: Platform | undefined;
  stage: Stage;
  base: DispatchState | undefined;
  noinit: boolean;
  deps: Set<DispatchState>;
  buildArgs: ArgKV[];
  commands: Command[];
  ctxPaths: Set<string>;
  ignoreCache: boolean;
  cmdSet: boolean;
  unregistered: boolean;
  stageName: string;
  cmdIndex: number;
  cmdTotal: number;
  prefixPlatform: boolean;
  outline: OutlineCapture;
  /** For lint rules: a WORKDIR seen in this stage, and where CMD/ENTRYPOINT/HEALTHCHECK last were. */
  lintSeen: { workdir: boolean; cmd?: Range[]; entrypoint?: Range[]; healthcheck?: Range[] };
}

interface Command {
  instr: Instruction;
  sources: DispatchState[];
}

class DispatchStates {
  readonly states: DispatchState[] = [];
  readonly byName = new Map<string, DispatchState>();

  add(ds: DispatchState): void {
    this.states.push(ds);
    const base = this.byName.get(ds.stage.baseName);
    if (base) {
      ds.base = base;
      ds.outline = cloneOutline(base.outline);
    }
    if (ds.stage.name !== '') this.byName.set(ds.stage.name.toLowerCase(), ds);
  }

  findByName(name: string): DispatchState | undefined {
    return this.byName.get(name.toLowerCase());
  }

  findByIndex(index: number): DispatchState {
    if (index < 0 || index >= this.states.length) throw new Error(`invalid stage index ${index}`);
    return this.states[index]!;
  }
}

interface DispatchOpt {
  all: DispatchStates;
  metaArgs: ArgKV[];
  buildArgValues: Record<string, string>;
  shlex: ShellLex;
  buildContext: LLBState;
  proxyEnv: ExecSpec['proxyEnv'];
  cacheIdNamespace: string;
  targetPlatform: Platform;
  buildPlatforms: Platform[];
  extraHosts: HostIP[];
  shmSize: number;
  ulimits: { name: string; soft: bigint; hard: bigint }[];
  cgroupParent: string;
  sourceMap: SourceMapRef | undefined;
  epoch: string | undefined;
  b: LLBBuilder;
  ctxPaths: Set<string>;
  lint: Linter | undefined;
}

function newDispatchState(stage: Stage, unregistered = false): DispatchState {
  return {
    state: scratch(),
    image: { architecture: '', os: '', rootfs: { type: '', diff_ids: null }, config: {} },
    platform: undefined,
    stage,
    base: undefined,
    noinit: false,
    deps: new Set(),
    buildArgs: [],
    commands: [],
    ctxPaths: new Set(),
    ignoreCache: false,
    cmdSet: false,
    unregistered,
    stageName: stage.name,
    cmdIndex: 0,
    cmdTotal: 0,
    prefixPlatform: false,
    outline: emptyOutline(),
    lintSeen: { workdir: false },
  };
}

function emptyStage(baseName: string, location: Range[] = []): Stage {
  return { name: '', commands: [], baseName, platform: '', comment: '', sourceCode: '', location };
}

function metaArgsToMap(args: ArgKV[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const a of args) m.set(a.key, a.value ?? '');
  return m;
}

function platformArgs(build: Platform, target: Platform): ArgKV[] {
  return [
    { key: 'BUILDPLATFORM', value: formatPlatform(build) },
    { key: 'BUILDOS', value: build.os },
    { key: 'BUILDARCH', value: build.architecture },
    { key: 'BUILDVARIANT', value: build.variant ?? '' },
    { key: 'TARGETPLATFORM', value: formatPlatform(target) },
    { key: 'TARGETOS', value: target.os },
    { key: 'TARGETARCH', value: target.architecture },
    { key: 'TARGETVARIANT', value: target.variant ?? '' },
  ];
}

function proxyEnvFromBuildArgs(args: Record<string, string>): ExecSpec['proxyEnv'] {
  const pe: NonNullable<ExecSpec['proxyEnv']> = {};
  let set = false;
  for (const [k, v] of Object.entries(args)) {
    switch (k.toLowerCase()) {
      case 'http_proxy':
        pe.httpProxy = v;
        set = true;
        break;
      case 'https_proxy':
        pe.httpsProxy = v;
        set = true;
        break;
      case 'ftp_proxy':
        pe.ftpProxy = v;
        set = true;
        break;
      case 'no_proxy':
        pe.noProxy = v;
        set = true;
        break;
      case 'all_proxy':
        pe.allProxy = v;
        set = true;
        break;
    }
  }
  return set ? pe : undefined;
}

function isReachable(from: DispatchState | undefined, to: DispatchState, seen = new Set<DispatchState>()): boolean {
  if (!from) return false;
  if (from === to) return true;
  if (seen.has(from)) return false;
  seen.add(from);
  if (isReachable(from.base, to, seen)) return true;
  for (const d of from.deps) if (isReachable(d, to, seen)) return true;
  return false;
}

function findCycle(states: DispatchState[]): DispatchState | undefined {
  const visited = new Set<DispatchState>();
  const path = new Set<DispatchState>();
  const visit = (s: DispatchState): boolean => {
    if (visited.has(s)) return false;
    visited.add(s);
    path.add(s);
    for (const dep of s.deps) {
      if (path.has(dep)) return true;
      if (visit(dep)) return true;
    }
    path.delete(s);
    return false;
  };
  for (const s of states) if (visit(s)) return s;
  return undefined;
}

function autoDetectPlatform(img: Image, target: Platform, supported: Platform[]): Platform {
  if (target.os === img.os && target.architecture === img.architecture) return target;
  for (const p of supported) if (p.os === img.os && p.architecture === img.architecture) return p;
  return target;
}

function uppercaseCmd(s: string): string {
  const i = s.indexOf(' ');
  if (i < 0) return s.toUpperCase();
  return s.slice(0, i).toUpperCase() + s.slice(i);
}

function processCmdEnv(shlex: ShellLex, cmd: string, env: string[]): string {
  try {
    return shlex.processWord(cmd, env);
  } catch {
    return cmd;
  }
}

function platformFromEnv(env: string[]): Platform | undefined {
  const p: Platform = { os: '', architecture: '' };
  let set = false;
  for (const v of env) {
    const i = v.indexOf('=');
    const k = i < 0 ? v : v.slice(0, i);
    const val = i < 0 ? '' : v.slice(i + 1);
    switch (k) {
      case 'TARGETPLATFORM':
        try {
          return parsePlatform(val);
        } catch {
          continue;
        }
      case 'TARGETOS':
        p.os = val;
        set = true;
        break;
      case 'TARGETARCH':
        p.architecture = val;
        set = true;
        break;
      case 'TARGETVARIANT':
        if (val) p.variant = val;
        set = true;
        break;
    }
  }
  return set ? p : undefined;
}

function formatTargetPlatform(base: Platform, target: Platform | undefined): string {
  if (!target) return '';
  const t = { ...target, os: target.os || base.os, architecture: target.architecture || base.architecture };
  const p = normalizePlatform(t);
  if (p.os === base.os && p.architecture !== base.architecture) return '->' + p.architecture + (p.variant ? '/' + p.variant : '');
  if (p.os !== base.os) return '->' + formatPlatform(p);
  return '';
}

function prefixCommand(ds: DispatchState, str: string, prefixPlatform: boolean, platform: Platform | undefined, env: string[]): string {
  if (ds.cmdTotal === 0) return str;
  let out = '[';
  if (prefixPlatform && platform) out += formatPlatform(platform) + formatTargetPlatform(platform, platformFromEnv(env)) + ' ';
  if (ds.stageName !== '') out += ds.stageName + ' ';
  ds.cmdIndex++;
  const width = Math.floor(1 + Math.log10(ds.cmdTotal));
  out += `${String(ds.cmdIndex).padStart(width)}/${ds.cmdTotal}] `;
  return out + str;
}

function summarizeHeredoc(doc: string): string {
  const lines = doc.trim().replace(/\r\n/g, '\n').split('\n');
  return lines.length > 1 ? lines[0] + '...' : lines[0]!;
}

function withShell(img: Image, args: string[]): string[] {
  const shell = img.config.Shell && img.config.Shell.length > 0 ? [...img.config.Shell] : img.os === 'windows' ? ['cmd', '/S', '/C'] : ['/bin/sh', '-c'];
  return [...shell, args.join(' ')];
}

function addEnvToList(env: string[] | undefined, k: string, v: string): string[] {
  const out = env ?? [];
  for (let i = 0; i < out.length; i++) {
    const e = out[i]!;
    const key = e.includes('=') ? e.slice(0, e.indexOf('=')) : e;
    if (key === k) {
      out[i] = `${k}=${v}`;
      return out;
    }
  }
  out.push(`${k}=${v}`);
  return out;
}

function parseKeyValue(env: string): [string, string] {
  const i = env.indexOf('=');
  return i < 0 ? [env, ''] : [env.slice(0, i), env.slice(i + 1)];
}

function commitToHistory(d: DispatchState, msg: string, withLayer: boolean, buildkit: boolean, epoch: string | undefined): void {
  const img = d.image;
  img.history ??= [];
  img.history.push({ created: epoch, created_by: buildkit ? msg + ' # buildkit' : msg, comment: HISTORY_COMMENT, empty_layer: withLayer ? undefined : true });
}

function runCommandString(args: string[], buildArgs: ArgKV[], env: Map<string, string>): string {
  const tmp: string[] = [];
  for (const a of buildArgs) tmp.push(`${a.key}=${env.has(a.key) ? env.get(a.key)! : (a.value ?? '')}`);
  if (tmp.length > 0) tmp.unshift(`|${tmp.length}`);
  return [...tmp, ...args].join(' ');
}

function normalizeContextPaths(paths: Set<string>): string[] | undefined {
  const out: string[] = [];
  for (const p of paths) {
    if (p === '/') return undefined;
    out.push(joinPath('.', p));
  }
  return out.sort();
}

/** An OCI Platform from an image's os/architecture/variant. */
function imagePlatform(img: Image): Platform {
  const p: Platform = { os: img.os, architecture: img.architecture };
  if (img.variant) p.variant = img.variant;
  return p;
}

function refString(r: ImageReference): string {
  return formatReference(r);
}

/** reference.WithDigest: the tag is kept, any digest replaced. */
function withDigest(r: ImageReference, d: Digest): ImageReference {
  return { ...r, digest: d };
}

function commonImageNames(): string[] {
  const out: string[] = [];
  for (const name of ['alpine', 'busybox', 'centos', 'debian', 'golang', 'ubuntu', 'fedora']) {
    // Upstream's list misses a slash after docker.io/library; kept as is for identical suggestions.
    out.push(name, 'docker.io/library' + name, name + ':latest', 'docker.io/library' + name + ':latest');
  }
  return out;
}

/** Converts a Dockerfile for one target platform. Errors are LoomErrors; Dockerfile errors carry lines. */
export async function dockerfileToLLB(opt: ConvertOptions): Promise<ConvertResult> {
  try {
    return await convert(opt);
  } catch (err) {
    if (err instanceof LoomError) throw err;
    // Anything else is a Dockerfile problem found outside an instruction (upstream reports it bare).
    throw new DockerfileError(errorMessage(err), { cause: err });
  }
}

async function convert(opt: ConvertOptions): Promise<ConvertResult> {
  const dt = typeof opt.dockerfile === 'string' ? Buffer.from(opt.dockerfile) : opt.dockerfile;
  if (dt.length === 0) throw new DockerfileError('the Dockerfile cannot be empty');
  const contextLocalName = opt.contextLocalName || DEFAULT_CONTEXT_LOCAL_NAME;
  const buildArgs = opt.buildArgs ?? {};
  const warn = opt.warn ?? (() => {});
  const resolveMode = opt.imageResolveMode ?? 'default';

  // Platforms: the target defaults to the first build platform ("implicit"), which lets a base
  // image of another supported platform choose the stage's platform.
  const buildPlatforms = (opt.buildPlatforms && opt.buildPlatforms.length > 0 ? opt.buildPlatforms : [defaultPlatform()]).map(normalizePlatform);
  const implicitTarget = opt.targetPlatform === undefined;
  const targetPlatform = normalizePlatform(opt.targetPlatform ?? buildPlatforms[0]!);

  const contextByName = async (name: string, p: Platform | undefined): Promise<NamedContext | undefined> => {
    const lower = name.toLowerCase();
    if (lower === 'scratch' || lower === 'context' || !opt.contextByName) return undefined;
    return opt.contextByName(name, resolveMode, p ?? targetPlatform);
  };

  const optMetaArgs: ArgKV[] = platformArgs(buildPlatforms[0]!, targetPlatform).map((a) =>
    a.key in buildArgs ? { key: a.key, value: buildArgs[a.key] } : a,
  );

  const ast = parse(dt);
  const lint = opt.lint;
  for (const w of ast.warnings) {
    // With lint rules checked, the empty continuation warning is the NoEmptyContinuation rule's.
    if (lint && w.short.startsWith('Empty continuation line found in: ')) lint.run(RULES.NoEmptyContinuation, w.location ? [w.location] : [], lintMessages.noEmptyContinuation());
    else warn(w);
  }
  if (lint) lintCommandCasing(ast.children, lint);
  const proxyEnv = proxyEnvFromBuildArgs(buildArgs);
  const { stages, metaArgs } = parseStages(ast, lint ? (n) => lintInstructionNode(n, lint) : undefined);
  if (lint) lintStageNames(stages, lint);
  const shlex = new ShellLex(ast.escapeToken);

  const globalOutline = emptyOutline();
  for (const cmd of metaArgs) {
    for (const metaArg of cmd.args) {
      let value = metaArg.value;
      let deps = new Set<string>();
      if (metaArg.key in buildArgs) value = buildArgs[metaArg.key];
      else if (value !== undefined) {
        try {
          ({ word: value, matches: deps } = shlex.processWordWithMatches(value, metaArgsToMap(optMetaArgs)));
        } catch {
          value = '';
        }
      }
      optMetaArgs.push({ key: metaArg.key, value });
      globalOutline.allArgs.set(metaArg.key, { key: metaArg.key, comment: metaArg.comment ?? '', value, deps, location: cmd.location });
    }
  }

  const b = new LLBBuilder({ defaultPlatform: targetPlatform });
  // UndefinedArgInFrom: what a FROM's image or platform used that no global ARG declares.
  const fromArgsLint = (location: Range[]) => (lint ? (u: Set<string>) => reportUnusedFromArgs(lint, location, optMetaArgs.map((a) => a.key), u) : undefined);
  const all = new DispatchStates();

  for (let i = 0; i < stages.length; i++) {
    const st = { ...stages[i]! };
    let name: string;
    let used: Set<string>;
    try {
      ({ word: name, matches: used } = shlex.processWordWithMatches(st.baseName, metaArgsToMap(optMetaArgs), fromArgsLint(st.location)));
    } catch (err) {
      throw withLocation(err, st.location);
    }
    if (name === '') throw new DockerfileError(`base name (${st.baseName}) should not be blank`, { location: st.location });
    st.baseName = name;
    const ds = newDispatchState(st);
    ds.prefixPlatform = opt.prefixPlatform ?? false;
    ds.outline = cloneOutline(globalOutline);
    if (st.platform !== '') {
      let v: string;
      try {
        const r = shlex.processWordWithMatches(st.platform, metaArgsToMap(optMetaArgs), fromArgsLint(st.location));
        v = r.word;
        for (const k of r.matches) used.add(k);
      } catch (err) {
        throw new DockerfileError(`failed to process arguments for platform ${st.platform}: ${errorMessage(err)}`, { location: st.location, cause: err });
      }
      try {
        ds.platform = parsePlatformSpec(v);
      } catch (err) {
        throw new DockerfileError(`failed to parse platform ${v}: ${errorMessage(err)}`, { location: st.location, cause: err });
      }
    }
    if (st.name !== '') {
      const nc = await contextByName(st.name, ds.platform);
      if (nc) {
        ds.noinit = true;
        ds.state = nc.state;
        if (nc.image) {
          ds.image = nc.image;
          if (nc.image.architecture !== '' && nc.image.os !== '') ds.platform = imagePlatform(nc.image);
        }
        all.add(ds);
        continue;
      }
    }
    if (st.name === '') ds.stageName = `stage-${i}`;
    all.add(ds);
    for (const k of used) ds.outline.usedArgs.add(k);
    let total = 0;
    if (st.baseName !== EMPTY_IMAGE_NAME && !ds.base) total = 1;
    for (const c of st.commands) if (c.kind === 'add' || c.kind === 'copy' || c.kind === 'run' || c.kind === 'workdir') total++;
    ds.cmdTotal = total;
    if (opt.ignoreCache !== undefined) {
      if (opt.ignoreCache.length === 0) ds.ignoreCache = true;
      else if (st.name !== '') for (const n of opt.ignoreCache) if (n.toLowerCase() === st.name.toLowerCase()) ds.ignoreCache = true;
    }
  }

  let target: DispatchState;
  if (!opt.target) {
    // Upstream v0.11 panics on a Dockerfile of ARGs only; loom says what is wrong.
    if (all.states.length === 0) throw new DockerfileError('dockerfile contains no stages to build');
    target = all.states[all.states.length - 1]!;
  }
  else {
    const t = all.findByName(opt.target);
    if (!t) throw new DockerfileError(`target stage ${opt.target} could not be found`);
    target = t;
  }

  // Dependencies, so stages the target does not need are not resolved.
  const initialStates = [...all.states];
  for (const d of initialStates) {
    d.commands = d.stage.commands.map((c) => toCommand(c, all));
    for (const cmd of d.commands) {
      for (const src of cmd.sources) {
        d.deps.add(src);
        if (src.unregistered) all.add(src);
      }
    }
  }
  const cyc = findCycle(all.states);
  if (cyc) throw new DockerfileError(`circular dependency detected on stage: ${cyc.stageName}`);
  if (all.states.length === 1) all.states[0]!.stageName = '';

  const allStageNames = all.states.map((s) => s.stageName).filter((n) => n !== '');

  // The stages' images are resolved together; the first failure cancels the others, as upstream's
  // errgroup does (their vertices end canceled rather than running on after the build failed).
  const resolveAc = new AbortController();
  // Stages naming one image for one platform share its resolve (upstream's source shares the flight).
  const resolving = new Map<string, Promise<ResolvedImageConfig>>();
  const resolveOnce = (ref: string, o: ResolveImageConfigOptions): Promise<ResolvedImageConfig> => {
    const key = `${ref} ${formatPlatform(o.platform)} ${o.resolveMode}`;
    let p = resolving.get(key);
    if (!p) {
      p = opt.resolveImageConfig(ref, o);
      resolving.set(key, p);
    }
    return p;
  };
  await Promise.all(
    all.states.map(async (d) => {
      // Linting without a target resolves (and then dispatches) every stage.
      const reachable = opt.allStages === true || isReachable(target, d);
      if (d.base || d.noinit) return;
      if (d.stage.baseName === EMPTY_IMAGE_NAME) {
        d.state = scratch();
        d.image = emptyImage(targetPlatform);
        return;
      }
      try {
        await resolveStage(d, reachable);
      } catch (err) {
        resolveAc.abort(new CancelledError('context canceled'));
        throw withLocation(err, d.stage.location);
      }
    }),
  );

  async function resolveStage(d: DispatchState, reachable: boolean): Promise<void> {
    const origName = d.stage.baseName;
    let ref: ImageReference;
    try {
      ref = parseNormalizedNamed(d.stage.baseName);
    } catch (err) {
      throw new DockerfileError(`failed to parse stage name ${JSON.stringify(d.stage.baseName)}: ${errorMessage(err).replace(/^invalid reference "[^"]*": /, '')}`, { cause: err });
    }
    let platform = d.platform ?? targetPlatform;
    d.stage.baseName = refString(withDefaultTag(ref));
    let isScratch = false;
    const nc = await contextByName(d.stage.baseName, platform);
    if (nc) {
      d.image = nc.image ?? emptyImage(targetPlatform);
      d.state = nc.state.platform(platform);
      d.platform = platform;
      return;
    }
    if (reachable) {
      const prefix = '[' + (opt.prefixPlatform ? formatPlatform(platform) + ' ' : '') + 'internal]';
      let resolved: ResolvedImageConfig;
      try {
        resolved = await resolveOnce(d.stage.baseName, { platform, resolveMode, logName: `${prefix} load metadata for ${d.stage.baseName}`, signal: resolveAc.signal });
      } catch (err) {
        const msg = suggest(`${origName}: ${errorMessage(err)}`, origName, [...allStageNames, ...commonImageNames()], true);
        throw new LocatedError(codeOf(err), msg, { cause: err });
      }
      let img: Image;
      try {
        img = parseImageConfig(resolved.config);
      } catch (err) {
        throw new DockerfileError(`failed to parse image config: ${errorMessage(err)}`, { cause: err });
      }
      if (d.platform === undefined && implicitTarget) platform = autoDetectPlatform(img, platform, buildPlatforms);
      if (resolved.digest) {
        if (!isDigest(resolved.digest)) throw new DockerfileError(`invalid digest ${JSON.stringify(resolved.digest)} for ${origName}`);
        ref = withDigest(ref, resolved.digest);
      }
      d.stage.baseName = refString(ref);
      if ((img.rootfs.diff_ids ?? []).length === 0) {
        isScratch = true;
        for (const h of img.history ?? []) {
          if (!h.empty_layer) {
            isScratch = false;
            break;
          }
        }
      }
      d.image = img;
    }
    if (isScratch) d.state = scratch();
    else {
      d.state = b.image(d.stage.baseName, {
        description: { 'com.docker.dockerfile.v1.command': d.stage.sourceCode },
        platform,
        resolveMode,
        customName: prefixCommand(d, 'FROM ' + d.stage.baseName, opt.prefixPlatform ?? false, platform, []),
        location: opt.sourceMap ? { map: opt.sourceMap, ranges: d.stage.location } : undefined,
      });
      // InvalidBaseImagePlatform: the image's config names another OS or architecture.
      if (lint && reachable && (platform.os !== d.image.os || platform.architecture !== d.image.architecture)) {
        const actual = formatPlatform(normalizePlatform({ os: d.image.os, architecture: d.image.architecture, variant: d.image.variant }));
        lint.run(RULES.InvalidBaseImagePlatform, d.stage.location, lintMessages.invalidBaseImagePlatform(origName, formatPlatform(normalizePlatform(platform)), actual));
      }
    }
    d.platform = platform;
  }

  // Dispatch twice: the context source lists the paths the steps read (follow paths), which are
  // known only once every step is dispatched; the first pass collects them against a stand-in.
  const snapshot = all.states.map((d) => ({ d, state: d.state, image: d.image, platform: d.platform, cmdIndex: d.cmdIndex, outline: cloneOutline(d.outline) }));
  const restore = () => {
    for (const s of snapshot) {
      s.d.outline = cloneOutline(s.outline);
      s.d.state = s.state;
      s.d.image = deepCloneImage(s.image);
      s.d.platform = s.platform;
      s.d.cmdIndex = s.cmdIndex;
      s.d.buildArgs = [];
      s.d.ctxPaths = new Set();
      s.d.cmdSet = false;
      s.d.lintSeen = { workdir: false };
    }
  };
  const epoch = opt.sourceDateEpoch ? goTimeString(opt.sourceDateEpoch) : undefined;
  const baseOpt = {
    all,
    metaArgs: optMetaArgs,
    buildArgValues: buildArgs,
    shlex,
    proxyEnv,
    cacheIdNamespace: opt.cacheIdNamespace ?? '',
    targetPlatform,
    buildPlatforms,
    extraHosts: opt.extraHosts ?? [],
    shmSize: opt.shmSize ?? 0,
    ulimits: opt.ulimits ?? [],
    cgroupParent: opt.cgroupParent ?? '',
    sourceMap: opt.sourceMap,
    epoch,
    b,
  };
  const localOpts = {
    sessionId: opt.sessionId,
    excludePatterns: opt.excludes,
    sharedKeyHint: contextLocalName,
    customName: '[internal] load build context',
  };

  const runDispatch = (buildContext: LLBState, final: boolean): Set<string> => {
    restore();
    const ctxPaths = new Set<string>();
    // Lint rules are checked on the pass whose result is kept, so each violation is reported once.
    const dopt: DispatchOpt = { ...baseOpt, buildContext, ctxPaths, lint: final ? lint : undefined };
    for (const d of all.states) {
      if (!opt.allStages && (!isReachable(target, d) || d.noinit)) continue;
      dispatchStage(d, dopt, opt);
      for (const p of d.ctxPaths) ctxPaths.add(p);
    }
    return ctxPaths;
  };

  let contextState = opt.buildContext;
  if (!contextState) {
    const paths = runDispatch(b.local(contextLocalName, localOpts), false);
    contextState = b.local(contextLocalName, { ...localOpts, followPaths: normalizeContextPaths(paths) });
  }
  runDispatch(contextState, true);
  // With `error=true` in the check options, any violation fails the conversion.
  const lintErr = lint?.error();
  if (lintErr) throw lintErr;

  const labels = opt.labels ?? {};
  if (Object.keys(labels).length > 0 && !target.image.config.Labels) target.image.config.Labels = {};
  for (const [k, v] of Object.entries(labels)) target.image.config.Labels![k] = v;

  if (!implicitTarget) {
    target.image.os = targetPlatform.os;
    target.image.architecture = targetPlatform.architecture;
    target.image.variant = targetPlatform.variant;
  }
  return {
    state: target.state,
    definition: marshal(target.state),
    image: target.image,
    config: imageToBytes(target.image),
    outline: () => outlineOf(target),
  };
}

/** Args whose defaults name other args use those too (upstream's markAllUsed, guarded against cycles). */
function markAllUsed(o: OutlineCapture, keys: Iterable<string>, seen = new Set<string>()): void {
  for (const k of [...keys]) {
    if (seen.has(k)) continue;
    seen.add(k);
    const a = o.allArgs.get(k);
    if (a) markAllUsed(o, a.deps, seen);
    o.usedArgs.add(k);
  }
}

/** Upstream's Outline: the target's args, secrets and ssh, then its base's, then its dependencies', each once. */
function outlineOf(target: DispatchState): OutlineData {
  const args: OutlineData['args'] = [];
  const secrets: OutlineData['secrets'] = [];
  const ssh: OutlineData['ssh'] = [];
  const seenArgs = new Set<string>();
  const seenSecrets = new Set<string>();
  const seenSsh = new Set<string>();
  const walked = new Set<DispatchState>();
  const mounts = (from: OutlineCapture['secrets'], seen: Set<string>, out: OutlineData['secrets']) => {
    for (const [id, m] of from) {
      if (seen.has(id)) continue;
      seen.add(id);
      out.push({ name: id, required: m.required, location: m.location });
    }
  };
  const walk = (ds: DispatchState) => {
    if (walked.has(ds)) return;
    walked.add(ds);
    markAllUsed(ds.outline, ds.outline.usedArgs);
    for (const k of ds.outline.usedArgs) {
      const a = ds.outline.allArgs.get(k);
      if (!a || seenArgs.has(k)) continue;
      seenArgs.add(k);
      args.push({ name: a.key, description: a.comment, value: a.value ?? '', location: a.location });
    }
    mounts(ds.outline.secrets, seenSecrets, secrets);
    mounts(ds.outline.ssh, seenSsh, ssh);
    if (ds.base) walk(ds.base);
    for (const dep of ds.deps) walk(dep);
  };
  walk(target);
  return { name: target.stage.name, description: target.stage.comment, args, secrets, ssh };
}

/** Go's RFC 3339 time as json.Marshal writes a time.Time in UTC. */
function goTimeString(d: Date): string {
  return d.toISOString().replace(/\.000Z$/, 'Z');
}

function deepCloneImage(img: Image): Image {
  return JSON.parse(JSON.stringify(img)) as Image;
}

function toCommand(ic: Instruction, all: DispatchStates): Command {
  const cmd: Command = { instr: ic, sources: [] };
  if (ic.kind === 'copy' && ic.from !== '') {
    const index = /^[+-]?\d+$/.test(ic.from) ? atoi(ic.from) : undefined;
    let stn: DispatchState | undefined;
    if (index === undefined) {
      stn = all.findByName(ic.from);
      if (!stn) stn = newDispatchState(emptyStage(ic.from, ic.location), true);
    } else {
      stn = all.findByIndex(index);
    }
    cmd.sources = [stn];
  }
  if (ic.kind === 'run') {
    cmd.sources = ic.mounts.map((m) => {
      const from = m.from === '' ? EMPTY_IMAGE_NAME : m.from;
      return all.findByName(from) ?? newDispatchState(emptyStage(from), true);
    });
  }
  return cmd;
}

function dispatchStage(d: DispatchState, dopt: DispatchOpt, opt: ConvertOptions): void {
  if (d.base) {
    d.state = d.base.state;
    d.platform = d.base.platform;
    d.image = cloneImage(d.base.image);
  }
  if (!buildEnvs(d.image.config.Env ?? []).has('PATH')) {
    d.image.config.Env = [...(d.image.config.Env ?? []), 'PATH=' + defaultPathEnv(d.platform?.os ?? '')];
  }
  for (const env of d.image.config.Env ?? []) {
    const [k, v] = parseKeyValue(env);
    d.state = d.state.addEnv(k, v);
  }
  if (opt.hostname) d.state = d.state.hostname(opt.hostname);
  try {
    if (d.image.config.WorkingDir) dispatchWorkdir(d, d.image.config.WorkingDir, false, dopt, undefined);
    if (d.image.config.User) dispatchUser(d, d.image.config.User, false, dopt);
  } catch (err) {
    throw withLocation(err, d.stage.location);
  }
  d.state = d.state.network(opt.forceNetMode ?? NetMode.UNSET);

  try {
    for (const trigger of d.image.config.OnBuild ?? []) {
      const ast = parse(trigger);
      if (ast.children.length !== 1) throw new DockerfileError('onbuild trigger should be a single expression');
      const ic = parseCommand(ast.children[0]!);
      dispatch(d, toCommand(ic, dopt.all), dopt);
    }
  } catch (err) {
    throw withLocation(err, d.stage.location);
  }
  d.image.config.OnBuild = undefined;

  for (const cmd of d.commands) {
    try {
      dispatch(d, cmd, dopt);
    } catch (err) {
      throw withLocation(err, cmd.instr.location);
    }
  }
}

type Expander = (word: string) => string;

/** Expands the instruction's words with the stage's environment; returns a new instruction. */
function expandInstruction(ic: Instruction, expand: Expander, expandRaw: Expander): Instruction {
  switch (ic.kind) {
    case 'env':
      return { ...ic, env: ic.env.map((kv) => ({ ...kv, key: expand(kv.key), value: expand(kv.value) })) };
    case 'label':
      return { ...ic, labels: ic.labels.map((kv) => ({ ...kv, key: expand(kv.key), value: expand(kv.value) })) };
    case 'add':
    case 'copy': {
      const chown = expand(ic.chown);
      const checksum = ic.kind === 'add' ? expand(ic.checksum) : '';
      const sourcePaths = ic.sourcePaths.map(expand);
      const destPath = expand(ic.destPath);
      const sourceContents = ic.sourceContents.map((s) => (s.expand ? { ...s, data: expandRaw(s.data) } : s));
      return ic.kind === 'add'
        ? { ...ic, chown, checksum, sourcePaths, destPath, sourceContents }
        : { ...ic, chown, sourcePaths, destPath, sourceContents };
    }
    case 'workdir':
      return { ...ic, path: expand(ic.path) };
    case 'run':
      return { ...ic, mounts: ic.mountSpecs.map((s) => parseMount(s, expand)) };
    case 'user':
      return { ...ic, user: expand(ic.user) };
    case 'volume':
      return { ...ic, volumes: ic.volumes.map(expand) };
    case 'stopsignal':
      return { ...ic, signal: expand(ic.signal) };
    case 'arg':
      return { ...ic, args: ic.args.map((a) => ({ ...a, key: expand(a.key), value: a.value === undefined ? undefined : expand(a.value) })) };
    default:
      return ic;
  }
}

function opLocation(dopt: DispatchOpt, location: Range[]): OpOptions['location'] {
  return dopt.sourceMap ? { map: dopt.sourceMap, ranges: location } : undefined;
}

function dispatch(d: DispatchState, cmd: Command, dopt: DispatchOpt): void {
  const env = () => d.state.getEnv();
  const rawLex = new ShellLex('\\', { skipProcessQuotes: true });
  const lint = dopt.lint;
  const metaArgKeys = () => dopt.metaArgs.map((a) => a.key);
  // UndefinedVar: the variables each expanded word used that nothing defines (ARG values apart,
  // which upstream checks only for defaults the client did not override).
  const undefinedVars = lint && cmd.instr.kind !== 'arg'
    ? (u: Set<string>) => reportUnmatchedVariables(lint, cmd.instr.location, d.buildArgs, env(), metaArgKeys(), u)
    : undefined;
  const ic = expandInstruction(
    cmd.instr,
    (w) => dopt.shlex.processWordWithMatches(w, env(), undefinedVars).word,
    (w) => rawLex.processWordWithMatches(w, env(), undefinedVars).word,
  );
  if (lint && cmd.instr.kind === 'arg') {
    const seen = [...d.buildArgs];
    for (const a of cmd.instr.args) {
      if (a.value !== undefined && !(a.key in dopt.buildArgValues)) {
        const { unmatched } = dopt.shlex.processWordWithMatches(a.value, env());
        reportUnmatchedVariables(lint, cmd.instr.location, seen, env(), metaArgKeys(), unmatched);
      }
      seen.push({ key: a.key, value: a.value });
    }
  }
  switch (ic.kind) {
    case 'maintainer':
      d.image.author = ic.maintainer;
      commitToHistory(d, `MAINTAINER ${ic.maintainer}`, false, false, dopt.epoch);
      return;
    case 'env': {
      let msg = 'ENV';
      for (const e of ic.env) {
        if (e.noDelim) lint?.run(RULES.LegacyKeyValueFormat, ic.location, lintMessages.legacyKeyValueFormat(ic.name));
        msg += ` ${e.key}=${e.value}`;
        d.state = d.state.addEnv(e.key, e.value);
        d.image.config.Env = addEnvToList(d.image.config.Env, e.key, e.value);
      }
      commitToHistory(d, msg, false, false, dopt.epoch);
      return;
    }
    case 'run':
      dispatchRun(d, ic, cmd.sources, dopt);
      return;
    case 'workdir':
      dispatchWorkdir(d, ic.path, true, dopt, ic);
      return;
    case 'add': {
      if (ic.checksum !== '') checkDigest(ic.checksum);
      dispatchCopy(d, ic, { source: dopt.buildContext, isAdd: true, from: false }, dopt);
      for (const src of ic.sourcePaths) if (!isHTTPSource(src)) d.ctxPaths.add(joinPath('/', src));
      return;
    }
    case 'copy': {
      const source = cmd.sources.length > 0 ? cmd.sources[0]!.state : dopt.buildContext;
      dispatchCopy(d, ic, { source, isAdd: false, from: cmd.sources.length > 0 }, dopt);
      if (cmd.sources.length === 0) {
        for (const src of ic.sourcePaths) d.ctxPaths.add(joinPath('/', ic.parents ? src.replace('/./', '/') : src));
      }
      return;
    }
    case 'label': {
      let msg = 'LABEL';
      d.image.config.Labels ??= {};
      for (const l of ic.labels) {
        if (l.noDelim) lint?.run(RULES.LegacyKeyValueFormat, ic.location, lintMessages.legacyKeyValueFormat(ic.name));
        d.image.config.Labels[l.key] = l.value;
        msg += ` ${l.key}=${l.value}`;
      }
      commitToHistory(d, msg, false, false, dopt.epoch);
      return;
    }
    case 'onbuild':
      d.image.config.OnBuild = [...(d.image.config.OnBuild ?? []), ic.expression];
      return;
    case 'cmd': {
      lintUsedOnce(d, 'cmd', ic, lint);
      let args = ic.cmdLine ?? [];
      if (ic.prependShell && lint && !d.image.config.Shell?.length) lint.run(RULES.JSONArgsRecommended, ic.location, lintMessages.jsonArgsRecommended(ic.name));
      if (ic.prependShell) args = withShell(d.image, args);
      d.image.config.Cmd = args;
      d.image.config.ArgsEscaped = true;
      d.cmdSet = true;
      commitToHistory(d, `CMD ${goQuoteSlice(args)}`, false, false, dopt.epoch);
      return;
    }
    case 'entrypoint': {
      lintUsedOnce(d, 'entrypoint', ic, lint);
      let args = ic.cmdLine;
      if (ic.prependShell && lint && !d.image.config.Shell?.length) lint.run(RULES.JSONArgsRecommended, ic.location, lintMessages.jsonArgsRecommended(ic.name));
      if (ic.prependShell) args = withShell(d.image, args ?? []);
      d.image.config.Entrypoint = args;
      if (!d.cmdSet) d.image.config.Cmd = undefined;
      commitToHistory(d, `ENTRYPOINT ${goQuoteSlice(args ?? [])}`, false, false, dopt.epoch);
      return;
    }
    case 'healthcheck': {
      lintUsedOnce(d, 'healthcheck', ic, lint);
      const h = ic.health;
      d.image.config.Healthcheck = {
        Test: h.test,
        Interval: Number(h.interval),
        Timeout: Number(h.timeout),
        StartPeriod: Number(h.startPeriod),
        Retries: h.retries,
      };
      commitToHistory(d, healthcheckHistory(h), false, false, dopt.epoch);
      return;
    }
    case 'expose': {
      const ports: string[] = [];
      for (const p of ic.ports) ports.push(...dopt.shlex.processWords(p, env()));
      const set = parsePortSpecs(ports);
      d.image.config.ExposedPorts ??= {};
      for (const p of set) d.image.config.ExposedPorts[p] = {};
      commitToHistory(d, `EXPOSE map[${[...set].sort().map((p) => `${p}:{}`).join(' ')}]`, false, false, dopt.epoch);
      return;
    }
    case 'user':
      dispatchUser(d, ic.user, true, dopt);
      return;
    case 'volume': {
      d.image.config.Volumes ??= {};
      for (const v of ic.volumes) {
        if (v === '') throw new DockerfileError('VOLUME specified can not be an empty string');
        d.image.config.Volumes[v] = {};
      }
      commitToHistory(d, `VOLUME ${goSlice(ic.volumes)}`, false, false, dopt.epoch);
      return;
    }
    case 'stopsignal':
      checkSignal(ic.signal);
      d.image.config.StopSignal = ic.signal;
      commitToHistory(d, `STOPSIGNAL ${ic.signal}`, false, false, dopt.epoch);
      return;
    case 'shell':
      d.image.config.Shell = ic.shell;
      commitToHistory(d, `SHELL ${goSlice(ic.shell)}`, false, false, dopt.epoch);
      return;
    case 'arg':
      dispatchArg(d, ic.args, dopt, ic.location);
      return;
  }
}

/**
 * MultipleInstructionsDisallowed: a second CMD, ENTRYPOINT or HEALTHCHECK in a stage; reported
 * at the earlier one, which is the one without effect.
 */
function lintUsedOnce(d: DispatchState, kind: 'cmd' | 'entrypoint' | 'healthcheck', ic: Instruction, lint: Linter | undefined): void {
  if (!lint) return;
  const prev = d.lintSeen[kind];
  if (prev) lint.run(RULES.MultipleInstructionsDisallowed, prev, lintMessages.multipleInstructionsDisallowed(ic.name));
  d.lintSeen[kind] = ic.location;
}

function dispatchArg(d: DispatchState, args: KeyValueOptional[], dopt: DispatchOpt, location: Range[]): void {
  const commitStrs: string[] = [];
  for (const arg of args) {
    const buildArg: ArgKV = { key: arg.key, value: arg.key in dopt.buildArgValues ? dopt.buildArgValues[arg.key] : arg.value };
    commitStrs.push(arg.value === undefined ? arg.key : `${arg.key}=${arg.value}`);
    // An arg inherited from the global scope keeps the global declaration in the outline.
    let inherited = false;
    if (buildArg.value === undefined) {
      for (const ma of dopt.metaArgs) {
        if (ma.key === buildArg.key) {
          buildArg.value = ma.value;
          inherited = true;
        }
      }
    }
    if (buildArg.value !== undefined && !NON_ENV_ARGS.has(buildArg.key)) d.state = d.state.addEnv(buildArg.key, buildArg.value);
    if (!inherited) d.outline.allArgs.set(arg.key, { key: arg.key, comment: arg.comment ?? '', value: buildArg.value, deps: new Set(), location });
    d.outline.usedArgs.add(arg.key);
    d.buildArgs.push(buildArg);
  }
  commitToHistory(d, 'ARG ' + commitStrs.join(' '), false, false, dopt.epoch);
}

function dispatchUser(d: DispatchState, user: string, commit: boolean, dopt: DispatchOpt): void {
  d.state = d.state.user(user);
  d.image.config.User = user;
  if (commit) commitToHistory(d, `USER ${user}`, false, false, dopt.epoch);
}

function dispatchWorkdir(d: DispatchState, p: string, commit: boolean, dopt: DispatchOpt, ic: Instruction | undefined): void {
  d.state = d.state.dir(p);
  let wd = p;
  if (!isAbs(p)) wd = joinPath('/', d.image.config.WorkingDir ?? '', wd);
  d.image.config.WorkingDir = wd;
  if (!commit) return;
  // WorkdirRelativePath: the stage's first WORKDIR is relative (to whatever the base image sets).
  if (dopt.lint && !d.lintSeen.workdir && !isAbs(p)) dopt.lint.run(RULES.WorkdirRelativePath, ic!.location, lintMessages.workdirRelativePath(p));
  d.lintSeen.workdir = true;
  let withLayer = false;
  if (wd !== '/') {
    const platform = d.platform ?? dopt.targetPlatform;
    const env = d.state.getEnv();
    const user = d.image.config.User;
    d.state = dopt.b.file(d.state, new FileActions().mkdir(wd, 0o755, { makeParents: true, owner: user ? parseChown(user) : undefined }), {
      customName: prefixCommand(d, uppercaseCmd(processCmdEnv(dopt.shlex, ic!.code, env)), d.prefixPlatform, platform, env),
      location: opLocation(dopt, ic!.location),
    });
    withLayer = true;
  }
  commitToHistory(d, 'WORKDIR ' + wd, withLayer, false, dopt.epoch);
}

function dispatchRun(d: DispatchState, c: Extract<Instruction, { kind: 'run' }>, sources: DispatchState[], dopt: DispatchOpt): void {
  let customname = c.code;
  let args: string[] = c.cmdLine ?? [];
  const mounts: ExecMount[] = [];
  if (c.files.length > 0) {
    if (args.length !== 1 || !c.prependShell) throw new DockerfileError(`parsing produced an invalid run command: [${args.join(' ')}]`);
    if (parseHeredoc(args[0]!)) {
      const f0 = c.files[0]!;
      let data = f0.data;
      if (f0.chomp) data = chompHeredocContent(data);
      if (d.image.os !== 'windows' && f0.data.startsWith('#!')) {
        // A single heredoc with a shebang is written to a file and run.
        const st = dopt.b.file(scratch(), new FileActions().mkfile(f0.name, 0o755, data), { customName: '[internal] preparing inline document' });
        mounts.push({ target: '/dev/pipes/', source: st, selector: '/', readonly: true });
        args = [joinPath('/dev/pipes/', f0.name)];
      } else {
        args = [data];
      }
      customname += ` (${summarizeHeredoc(f0.data)})`;
    } else {
      let full = args[0]!;
      for (const f of c.files) full += '\n' + f.data + f.name;
      args = [full];
    }
  }
  if (c.prependShell) args = withShell(d.image, args);
  const env = d.state.getEnv();

  const spec: ExecSpec = { args, mounts, proxyEnv: dopt.proxyEnv, secrets: [], ssh: [] };
  dispatchRunMounts(d, c, sources, dopt, spec);
  if (c.security === 'insecure') spec.security = SecurityMode.INSECURE;
  else if (c.flagsUsed.includes('security')) spec.security = SecurityMode.SANDBOX;
  if (c.network === 'none') spec.network = NetMode.NONE;
  else if (c.network === 'host') spec.network = NetMode.HOST;

  // The step's name is its command with the stage's variables filled in, as upstream v0.11
  // makes it: a command using a modifier that lexer did not know (`${a-b}`, `${a#p}`, common in
  // shell code) is left as written.
  const nameLex = dopt.shlex.with({ rawQuotes: true, skipUnsetEnv: true, v011Modifiers: true });
  const name = prefixCommand(d, uppercaseCmd(processCmdEnv(nameLex, customname, env)), d.prefixPlatform, d.state.getPlatform(), env);
  const base = d.state;
  spec.extraHosts = dopt.extraHosts;
  if (dopt.ulimits.length > 0) spec.ulimits = dopt.ulimits;
  if (dopt.cgroupParent) spec.cgroupParent = dopt.cgroupParent;
  if (dopt.shmSize > 0) mounts.push({ target: '/dev/shm', tmpfs: true, tmpfsSize: dopt.shmSize });
  const res = dopt.b.run(base, spec, {
    customName: name,
    description: { 'com.docker.dockerfile.v1.command': c.code },
    ignoreCache: d.ignoreCache,
    location: opLocation(dopt, c.location),
  });
  d.state = d.state.withOutput(res.root.output);
  commitToHistory(d, 'RUN ' + runCommandString(args, d.buildArgs, buildEnvs(env)), true, true, dopt.epoch);
}

function dispatchRunMounts(d: DispatchState, c: Extract<Instruction, { kind: 'run' }>, sources: DispatchState[], dopt: DispatchOpt, spec: ExecSpec): void {
  c.mounts.forEach((m0: Mount, i) => {
    const m = { ...m0 };
    if (m.from === '' && m.type === 'cache') m.from = EMPTY_IMAGE_NAME;
    let st: LLBState | undefined = dopt.buildContext;
    if (m.from !== '') st = sources[i]?.state ?? scratch();
    const mount: ExecMount = { target: '' };
    if (m.type === 'tmpfs') {
      st = undefined;
      mount.tmpfs = true;
      mount.tmpfsSize = m.sizeLimit;
    }
    if (m.type === 'secret') {
      let id = m.cacheId;
      if (m.source !== '') id = m.source;
      if (id === '') {
        if (m.target === '') throw new DockerfileError('one of source, target required');
        id = basename(m.target);
      }
      const target = m.target !== '' ? m.target : '/run/secrets/' + basename(id);
      const s: NonNullable<ExecSpec['secrets']>[number] = { id, target, optional: !m.required };
      if (m.uid !== undefined || m.gid !== undefined || m.mode !== undefined) {
        s.uid = m.uid ?? 0;
        s.gid = m.gid ?? 0;
        s.mode = m.mode ?? 0o400;
      }
      spec.secrets!.push(s);
      if (!d.outline.secrets.has(id)) d.outline.secrets.set(id, { required: m.required, location: c.location });
      return;
    }
    if (m.type === 'ssh') {
      if (m.source !== '') throw new DockerfileError('ssh does not support source');
      const s: NonNullable<ExecSpec['ssh']>[number] = { id: m.cacheId, optional: !m.required };
      if (m.target !== '') s.target = m.target;
      if (m.uid !== undefined || m.gid !== undefined || m.mode !== undefined) {
        s.uid = m.uid ?? 0;
        s.gid = m.gid ?? 0;
        s.mode = m.mode ?? 0o600;
      }
      spec.ssh!.push(s);
      const outlineId = m.cacheId || 'default';
      if (!d.outline.ssh.has(outlineId)) d.outline.ssh.set(outlineId, { required: m.required, location: c.location });
      return;
    }
    if (m.readOnly) mount.readonly = true;
    else if (m.type === 'bind') mount.noOutput = true;
    if (m.type === 'cache') {
      const sharing = m.cacheSharing === 'private' ? CacheSharingOpt.PRIVATE : m.cacheSharing === 'locked' ? CacheSharingOpt.LOCKED : CacheSharingOpt.SHARED;
      if (m.cacheId === '') m.cacheId = cleanPath(m.target);
      mount.cacheId = dopt.cacheIdNamespace + '/' + m.cacheId;
      mount.cacheSharing = sharing;
    }
    let target = m.target;
    if (!isAbs(cleanPath(m.target))) target = joinPath('/', d.state.getDir(), m.target);
    if (target === '/') throw new DockerfileError(`invalid mount target ${JSON.stringify(target)}`);
    mount.target = target;
    const src = joinPath('/', m.source);
    if (src !== '/') mount.selector = src;
    else if (m.uid !== undefined || m.gid !== undefined || m.mode !== undefined) {
      st = dopt.b.file(st ?? scratch(), new FileActions().mkdir('/cache', m.mode ?? 0o755, { owner: { user: { id: m.uid ?? 0 }, group: { id: m.gid ?? 0 } } }), {
        customName: '[internal] settings cache mount permissions',
      });
      mount.selector = '/cache';
    }
    if (st?.output) mount.source = st;
    spec.mounts!.push(mount);
    if (m.from === '') d.ctxPaths.add(joinPath('/', m.source));
  });
}

function basename(p: string): string {
  if (p === '') return '.';
  const s = p.replace(/\/+$/, '');
  if (s === '') return '/';
  return s.slice(s.lastIndexOf('/') + 1);
}

interface CopySource {
  source: LLBState;
  isAdd: boolean;
  from: boolean;
}

function dispatchCopy(d: DispatchState, c: Extract<Instruction, { kind: 'add' | 'copy' }>, cfg: CopySource, dopt: DispatchOpt): void {
  const pp = isAbs(c.destPath) ? c.destPath : joinPath(d.state.getDir(), c.destPath);
  let dest = joinPath('/', pp);
  if (c.destPath === '.' || c.destPath === '' || c.destPath.endsWith('/')) dest += '/';

  const owner = c.chown !== '' ? parseChown(c.chown) : undefined;
  let mode: number | undefined;
  if (c.chmod !== '') {
    // Upstream v0.11 ignores a --chmod that is not an octal number.
    if (/^[0-7]+$/.test(c.chmod) && Number.parseInt(c.chmod, 8) <= 0xffffffff) mode = Number.parseInt(c.chmod, 8);
  }
  const checksum = c.kind === 'add' ? c.checksum : '';
  if (checksum !== '') {
    if (c.sourcePaths.length !== 1) throw new DockerfileError("checksum can't be specified for multiple sources");
    if (!isHTTPSource(c.sourcePaths[0]!)) throw new DockerfileError("checksum can't be specified for non-HTTP sources");
  }

  let msg = cfg.isAdd ? 'ADD' : 'COPY';
  // Every upstream that knows --parents or --exclude (Dockerfile 1.7 on) also names --parents,
  // --chown and --chmod in the history entry; v0.11's built-in frontend names none of them.
  if ((c.kind === 'copy' && c.parents) || c.exclude.length > 0) {
    if (c.kind === 'copy' && c.parents) msg += ' --parents';
    if (c.chown !== '') msg += ' --chown=' + c.chown;
    if (c.chmod !== '') msg += ' --chmod=' + c.chmod;
  }
  const actions = new FileActions();
  for (const src of c.sourcePaths) {
    msg += ' ' + src;
    const gitRef = parseGitRef(src);
    if (gitRef && !gitRef.indistinguishableFromLocal) {
      if (!cfg.isAdd) throw new DockerfileError("source can't be a git ref for COPY");
      let commit = gitRef.commit;
      if (gitRef.subDir !== '') commit += ':' + gitRef.subDir;
      const st = dopt.b.git(gitRef.remote, commit, { keepGitDir: c.kind === 'add' && c.keepGitDir });
      actions.copy(st, '/', dest, { mode, createDestPath: true, owner, exclude: c.exclude });
    } else if (isHTTPSource(src)) {
      if (!cfg.isAdd) throw new DockerfileError("source can't be a URL for COPY");
      let f = '__unnamed__';
      try {
        const u = new URL(src);
        const base = basename(decodeURIComponent(u.pathname) || '.');
        if (base !== '.' && base !== '/') f = base;
      } catch {
        // Not a URL Go can parse: the file keeps the default name.
      }
      const st = dopt.b.http(src, { filename: f, checksum: checksum || undefined, description: { 'com.docker.dockerfile.v1.command': '' } });
      actions.copy(st, f, dest, { mode, createDestPath: true, owner, exclude: c.exclude });
    } else {
      let srcPath = src;
      let include: string[] = [];
      const requiredPaths: string[] = [];
      if (c.kind === 'copy' && c.parents) {
        // --parents: copy from the pivot (`a/./b` pivots at `a`) keeping the path below it.
        const pivot = src.indexOf('/./');
        let pattern: string;
        if (pivot < 0) {
          pattern = src;
          srcPath = '/';
        } else {
          pattern = src.slice(pivot + 3);
          srcPath = src.slice(0, pivot);
        }
        pattern = joinPath('/', pattern);
        include = [pattern.replace(/^\//, '')];
        if (!/[*?[\\]/.test(srcPath) && !/[*?[\\]/.test(pattern)) requiredPaths.push(joinPath('/', srcPath, pattern));
      }
      actions.copy(cfg.source, joinPath('/', srcPath), dest, {
        mode,
        followSymlinks: true,
        copyDirContentsOnly: true,
        attemptUnpack: cfg.isAdd,
        createDestPath: true,
        allowWildcard: true,
        allowEmptyWildcard: true,
        owner,
        include,
        exclude: c.exclude,
        requiredPaths,
      });
    }
  }
  for (const sc of c.sourceContents) {
    msg += ' <<' + sc.path;
    const st = dopt.b.file(scratch(), new FileActions().mkfile(sc.path, 0o664, sc.data), { customName: '[internal] preparing inline document' });
    actions.copy(st, sc.path, dest, { mode, createDestPath: true, owner, exclude: c.exclude });
  }
  msg += ' ' + c.destPath;

  const platform = d.platform ?? dopt.targetPlatform;
  const env = d.state.getEnv();
  const name = uppercaseCmd(processCmdEnv(dopt.shlex, c.code, env));
  if (c.link && c.chmod === '') {
    // COPY --link: the files are copied onto scratch and merged, so the layer does not depend on
    // the stage's previous state. Upstream's file op here carries only the progress group; the
    // merge carries --no-cache, so a no-cache build runs it (shown as the COPY, by its group).
    const pgName = prefixCommand(d, name, d.prefixPlatform, platform, env);
    d.cmdIndex--;
    const linkName = prefixCommand(d, 'LINK ' + name, d.prefixPlatform, platform, env);
    const pgID = progressGroupId(d, pgName);
    const copied = dopt.b.file(scratch(), actions, { progressGroup: { id: pgID, name: pgName, weak: true } });
    const merged = dopt.b.merge([d.state, copied], { progressGroup: { id: pgID, name: pgName, weak: false }, customName: linkName, ignoreCache: d.ignoreCache });
    d.state = d.state.withOutput(merged.output);
  } else {
    const st = dopt.b.file(d.state, actions, {
      customName: prefixCommand(d, name, d.prefixPlatform, platform, env),
      location: opLocation(dopt, c.location),
      ignoreCache: d.ignoreCache,
    });
    d.state = st;
  }
  commitToHistory(d, msg, true, true, dopt.epoch);
}

const DIGEST_LENGTHS: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };

/** go-digest's Parse, with its messages. */
function checkDigest(s: string): void {
  const i = s.indexOf(':');
  if (i <= 0 || i + 1 === s.length) throw new DockerfileError('invalid checksum digest format');
  const alg = s.slice(0, i);
  const enc = s.slice(i + 1);
  const len = DIGEST_LENGTHS[alg];
  if (len === undefined) {
    if (!/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(s)) throw new DockerfileError('invalid checksum digest format');
    throw new DockerfileError('unsupported digest algorithm');
  }
  if (enc.length !== len) throw new DockerfileError('invalid checksum digest length');
  if (!/^[a-f0-9]+$/.test(enc)) throw new DockerfileError('invalid checksum digest format');
}

/** A progress group id stable for the same step (upstream uses a random id per build). */
function progressGroupId(d: DispatchState, name: string): string {
  return `${d.stageName}-${d.cmdIndex}-${Buffer.from(name).toString('base64url').slice(0, 16)}`;
}

