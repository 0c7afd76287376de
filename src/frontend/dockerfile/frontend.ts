/**
 * The built-in `dockerfile.v0` frontend (BuildKit's frontend/dockerfile/builder): reads the
 * frontend options buildctl and buildx send, loads the Dockerfile and .dockerignore from the
 * client's `dockerfile` and `context` local sources, converts once per target platform, solves
 * each result and returns the refs with the image config metadata the exporters read
 * (`containerimage.config`, or `containerimage.config/<platform>` plus `refs.platforms`).
 *
 * Everything it needs from the daemon comes through `FrontendContext`; see that interface for
 * the contract the caller implements.
 */
import type { Definition } from '../../gen/buildkit/ops_pb.js';
import { fromBinary } from '@bufbuild/protobuf';
import { NetMode, OpSchema } from '../../gen/buildkit/ops_pb.js';
import { goJSON } from '../../content/go-json.js';
import { familiarString, parseNormalizedNamed, withDefaultTag, formatReference } from '../../registry/reference.js';
import { CancelledError, InvalidArgumentError, LoomError, UnimplementedError, codeOf, errorMessage, withStatusDetails } from '../../util/errors.js';
import { parseDockerignore } from '../../util/patterns.js';
import { defaultPlatform, formatPlatform, normalizePlatform, type Platform } from '../../util/platform.js';
import { parseGitRef, parsePlatformSpec } from './convert-helpers.js';
import { dockerfileToLLB, type NamedContext, type ResolveImageConfigOptions, type ResolveMode, type ResolvedImageConfig } from './convert.js';
import { DockerfileError, type Range } from './errors.js';
import { parseGoBool, parseGoInt, readCSVRecord } from './go-compat.js';
import { parseImageConfig } from './image-config.js';
import { FileActions, LLBBuilder, marshal, scratch, stateFromDefinition, withImageConfig, type HostIP, type LLBState, type SourceMapRef } from './llb-state.js';
import { detectDirective, detectSyntax, type Warning } from './parser.js';
import { Linter, lintResult, lintShort, parseLintOptions, REQUEST_LINT } from './linter.js';
import { describeSubrequests, isKnownSubrequest, listTargets, outlineResult, REQUEST_DESCRIBE, REQUEST_OUTLINE, REQUEST_TARGETS } from './subrequests.js';

/** A warning for the client, in the shape of the progress stream's warnings plus Dockerfile lines. */
export interface FrontendWarning {
  /** The vertex the warning belongs to (the Dockerfile load), or '' for none. */
  vertex: string;
  level: number;
  short: string;
  detail: string[];
  url?: string;
  /** Lines of the Dockerfile, with the source to show them from. */
  location?: Range[];
  source?: SourceMapRef;
}

/**
 * What the daemon provides to a frontend run. All methods may be called concurrently; every
 * promise rejects with a LoomError (CancelledError once `signal` fires).
 */
export interface FrontendContext {
  /** The frontend attributes of the solve request (`filename`, `build-arg:X`, `platform`...). */
  attrs: Record<string, string>;
  /** The client's session id: local sources are read through it. */
  sessionId: string;
  /** Frontend inputs sent with the request (named `context`/`dockerfile`, or any for `input:` contexts). */
  inputs?: Record<string, Definition>;
  /** The worker's platforms, best first; the first is the build platform. Default: the host's. */
  workerPlatforms?: Platform[];
  signal?: AbortSignal;
  /**
   * Solves a definition and returns an id for its result, valid until the build ends (the caller
   * owns and releases results). A failing solve rejects with the failing vertex's error.
   */
  solve(def: Definition): Promise<string>;
  /** A file of a solved result; rejects (NotFoundError) when it does not exist. */
  readFile(ref: string, path: string, range?: { offset: number; length: number }): Promise<Uint8Array>;
  /** The config of an image for a platform, showing progress under `opts.logName`. */
  resolveImageConfig(ref: string, opts: ResolveImageConfigOptions): Promise<ResolvedImageConfig>;
  warn(w: FrontendWarning): void;
}

export interface FrontendRef {
  /** `os/arch[/variant]`, the key of `containerimage.config/<id>` and of refs.platforms. */
  platformId: string;
  platform: Platform;
  definition: Definition;
  /** The solved result (from FrontendContext.solve); undefined when the result is empty (scratch). */
  ref: string | undefined;
}

export interface FrontendResult {
  /** One entry for a single-platform build, one per platform otherwise. */
  refs: FrontendRef[];
  /** True when the result is a platform map (`refs` keyed by platformId). */
  multiPlatform: boolean;
  /** Export metadata: `containerimage.config[/<id>]`, `refs.platforms`; a subrequest's answer. */
  metadata: Record<string, Uint8Array>;
  /** The result answers a subrequest (`requestid`): metadata only, nothing to export. */
  subrequest?: boolean;
}

/**
 * Upstream's errdefs.UnsupportedSubrequestError: a plain error (gRPC Unknown) with the request's
 * name as a typed detail, which buildx reads to fall back to another frontend.
 */
function unsupportedSubrequest(id: string): LoomError {
  const err = new LoomError('UNKNOWN', `unsupported request ${id}`);
  return withStatusDetails(err, [{ typeUrl: 'github.com/moby/buildkit/errdefs.Subrequest+json', value: Buffer.from(goJSON({ name: id })) }]);
}

const DEFAULT_LOCAL_CONTEXT = 'context';
const DEFAULT_LOCAL_DOCKERFILE = 'dockerfile';
const DEFAULT_DOCKERFILE = 'Dockerfile';
const DOCKERIGNORE = '.dockerignore';

/** Options read here; anything else that looks like a BuildKit option gets a warning. */
const KNOWN_OPTS = new Set([
  'target', 'filename', 'cache-from', 'cache-imports', 'cgroup-parent', 'contextsubdir', 'force-network-mode', 'add-hosts',
  'hostname', 'image-resolve-mode', 'multi-platform', 'contextkey', 'dockerfilekey', 'no-cache', 'shm-size', 'platform',
  'ulimit', 'requestid', 'cmdline', 'source', 'frontend.caps', 'build-arg:BUILDKIT_INLINE_CACHE',
]);

const ULIMIT_NAMES = new Set(['core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'rttime', 'sigpending', 'stack']);

function filter(opts: Record<string, string>, prefix: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

export function parsePlatforms(v: string): Platform[] {
  return v.split(',').map((s) => {
    try {
      return normalizePlatform(parsePlatformSpec(s));
    } catch (err) {
      throw new InvalidArgumentError(`failed to parse target platform ${s}: ${errorMessage(err)}`, { cause: err });
    }
  });
}

function parseResolveMode(v: string | undefined): ResolveMode {
  switch (v ?? '') {
    case '':
    case 'default':
      return 'default';
    case 'pull':
      return 'pull';
    case 'local':
      return 'local';
    default:
      throw new InvalidArgumentError(`invalid image-resolve-mode: ${v}`);
  }
}

function isIPv4(s: string): boolean {
  const p = s.split('.');
  return p.length === 4 && p.every((x) => /^\d{1,3}$/.test(x) && Number(x) <= 255);
}

function isIPv6(s: string): boolean {
  return /^[0-9a-f:.]+$/.test(s) && s.includes(':') && (s.match(/::/g) ?? []).length <= 1;
}

function parseExtraHosts(v: string | undefined): HostIP[] {
  if (!v) return [];
  let fields: string[];
  try {
    fields = readCSVRecord(v);
  } catch (err) {
    throw new InvalidArgumentError(`failed to parse additional hosts: ${errorMessage(err)}`);
  }
  return fields.map((f) => {
    const i = f.indexOf('=');
    if (i < 0) throw new InvalidArgumentError(`failed to parse additional hosts: invalid key-value pair ${f}`);
    const host = f.slice(0, i).toLowerCase();
    const ip = f.slice(i + 1).toLowerCase();
    if (!isIPv4(ip) && !isIPv6(ip)) throw new InvalidArgumentError(`failed to parse additional hosts: failed to parse IP ${ip}`);
    return { host, ip };
  });
}

function parseUlimits(v: string | undefined): { name: string; soft: bigint; hard: bigint }[] {
  if (!v) return [];
  let fields: string[];
  try {
    fields = readCSVRecord(v);
  } catch (err) {
    throw new InvalidArgumentError(`failed to parse ulimit: ${errorMessage(err)}`);
  }
  return fields.map((f) => {
    const bad = (m: string) => new InvalidArgumentError(`failed to parse ulimit: ${m}`);
    const i = f.indexOf('=');
    if (i < 0) throw bad(`invalid ulimit argument: ${f}`);
    const name = f.slice(0, i);
    if (!ULIMIT_NAMES.has(name)) throw bad(`invalid ulimit type: ${name}`);
    const vals = f.slice(i + 1).split(':');
    if (vals.length > 2) throw bad(`too many limit value arguments - ${f.slice(i + 1)}, can only have up to two, \`soft[:hard]\``);
    const soft = parseGoInt(vals[0]!, 64);
    const hard = vals.length === 2 ? parseGoInt(vals[1]!, 64) : soft;
    if (soft === undefined || hard === undefined) throw bad(`invalid ulimit value: ${f}`);
    if (hard !== -1n) {
      if (soft === -1n) throw bad(`ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), hard: ${hard}`);
      if (soft > hard) throw bad(`ulimit soft limit must be less than or equal to hard limit: ${soft} > ${hard}`);
    }
    return { name, soft, hard };
  });
}

function parseNetMode(v: string | undefined): NetMode {
  switch (v ?? '') {
    case '':
    case 'sandbox':
      return NetMode.UNSET;
    case 'none':
      return NetMode.NONE;
    case 'host':
      return NetMode.HOST;
    default:
      throw new InvalidArgumentError(`invalid netmode ${v}`);
  }
}

function pathBase(p: string): string {
  const s = p.replace(/\/+$/, '');
  return s === '' ? (p.startsWith('/') ? '/' : '.') : s.slice(s.lastIndexOf('/') + 1);
}

function pathDir(p: string): string {
  const i = p.lastIndexOf('/');
  if (i < 0) return '.';
  return p.slice(0, i) || '/';
}

function joinRel(dir: string, name: string): string {
  return dir === '.' ? name : `${dir}/${name}`;
}

/**
 * Whether a `# syntax=` reference names the official Dockerfile frontend, which loom's built-in
 * frontend stands in for (`docker/dockerfile:1`, `:1.4`, `:labs`, `docker.io/docker/dockerfile-upstream:master`...).
 */
export function isOfficialDockerfileFrontend(ref: string): boolean {
  try {
    const r = parseNormalizedNamed(ref);
    return r.domain === 'docker.io' && (r.path === 'docker/dockerfile' || r.path === 'docker/dockerfile-upstream');
  } catch {
    return false;
  }
}

export class DockerfileFrontend {
  /** Runs the frontend for one solve request. */
  async solve(ctx: FrontendContext): Promise<FrontendResult> {
    const opts = { ...ctx.attrs };
    const check = () => {
      if (ctx.signal?.aborted) throw new CancelledError('context canceled', { cause: ctx.signal.reason });
    };
    if (opts['override-copy-image']) throw new InvalidArgumentError('support for "override-copy-image" was removed in BuildKit 0.11');
    if (parseGoBool(opts['build-arg:BUILDKIT_DISABLE_FILEOP'] ?? '') === true) {
      throw new InvalidArgumentError('support for "build-arg:BUILDKIT_DISABLE_FILEOP" was removed in BuildKit 0.11');
    }

    const localNameContext = opts.contextkey ?? DEFAULT_LOCAL_CONTEXT;
    const forceLocalDockerfile = 'dockerfilekey' in opts;
    const localNameDockerfile = opts.dockerfilekey ?? DEFAULT_LOCAL_DOCKERFILE;
    const buildPlatform = normalizePlatform(ctx.workerPlatforms?.[0] ?? defaultPlatform());
    const targetPlatforms: (Platform | undefined)[] = opts.platform ? parsePlatforms(opts.platform) : [undefined];
    const resolveMode = parseResolveMode(opts['image-resolve-mode']);
    const extraHosts = parseExtraHosts(opts['add-hosts']);
    let shmSize = 0;
    if (opts['shm-size']) {
      const v = parseGoInt(opts['shm-size'], 64);
      if (v === undefined) throw new InvalidArgumentError(`failed to parse shm size: strconv.ParseInt: parsing ${JSON.stringify(opts['shm-size'])}: invalid syntax`);
      shmSize = Number(v);
    }
    const ulimits = parseUlimits(opts.ulimit);
    const forceNetMode = parseNetMode(opts['force-network-mode']);
    let filename = opts.filename || DEFAULT_DOCKERFILE;
    let ignoreCache: string[] | undefined;
    if ('no-cache' in opts) ignoreCache = opts['no-cache'] === '' ? [] : opts['no-cache']!.split(',');

    this.#warnUnsupported(ctx, opts);

    const b = new LLBBuilder({ defaultPlatform: buildPlatform });
    const name = 'load build definition from ' + filename;
    const filenames = [filename, filename + '.dockerignore'];
    if (pathBase(filename) === DEFAULT_DOCKERFILE) filenames.push(joinRel(pathDir(filename), DEFAULT_DOCKERFILE.toLowerCase()));
    let src: LLBState = b.local(localNameDockerfile, {
      followPaths: filenames,
      sessionId: ctx.sessionId,
      sharedKeyHint: localNameDockerfile,
      customName: '[internal] ' + name,
      differ: 'none',
    });

    let buildContext: LLBState | undefined;
    let isNotLocalContext = false;
    const keepGit = parseGoBool(opts['build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR'] ?? '') === true;
    const ctxOpt = opts[localNameContext] ?? '';
    const gitContext = gitContextState(b, ctxOpt, keepGit);
    if (gitContext) {
      if (!forceLocalDockerfile) src = gitContext;
      buildContext = gitContext;
    } else if (/^https?:\/\//.test(ctxOpt)) {
      const httpContext = b.http(ctxOpt, { filename: 'context', customName: '[internal] load remote build context' });
      const ref = await ctx.solve(marshal(httpContext));
      const head = await ctx.readFile(ref, 'context', { offset: 0, length: 1024 });
      if (isArchive(head)) {
        const bc = b.file(scratchState(), new FileActions().copy(httpContext, '/context', '/', { attemptUnpack: true }));
        if (!forceLocalDockerfile) src = bc;
        buildContext = bc;
      } else {
        filename = 'context';
        if (!forceLocalDockerfile) src = httpContext;
        buildContext = httpContext;
        isNotLocalContext = true;
      }
    } else if (ctx.inputs) {
      if (!forceLocalDockerfile && ctx.inputs[DEFAULT_LOCAL_DOCKERFILE]) src = stateFromDefinition(ctx.inputs[DEFAULT_LOCAL_DOCKERFILE]);
      if (ctx.inputs[DEFAULT_LOCAL_CONTEXT]) {
        buildContext = stateFromDefinition(ctx.inputs[DEFAULT_LOCAL_CONTEXT]);
        isNotLocalContext = true;
      }
    }
    if (buildContext && 'contextsubdir' in opts) {
      buildContext = b.file(scratchState(), new FileActions().copy(buildContext, opts.contextsubdir!, '/', { copyDirContentsOnly: true }));
    }

    const srcDef = marshal(src);
    const defVertex = srcDef.def.length > 0 ? headDigest(srcDef) : '';
    check();
    const readDockerfile = async (): Promise<{ dockerfile: Uint8Array; dockerignore?: Uint8Array }> => {
      let ref: string;
      try {
        ref = await ctx.solve(srcDef);
      } catch (err) {
        throw wrapLoom(err, 'failed to resolve dockerfile');
      }
      let dockerfile: Uint8Array;
      try {
        dockerfile = await ctx.readFile(ref, filename);
      } catch (err) {
        let fallback: Uint8Array | undefined;
        if (pathBase(filename) === DEFAULT_DOCKERFILE) {
          try {
            fallback = await ctx.readFile(ref, joinRel(pathDir(filename), DEFAULT_DOCKERFILE.toLowerCase()));
          } catch {
            fallback = undefined;
          }
        }
        if (!fallback) throw wrapLoom(err, 'failed to read dockerfile');
        dockerfile = fallback;
      }
      let dockerignore: Uint8Array | undefined;
      try {
        dockerignore = await ctx.readFile(ref, filename + '.dockerignore');
      } catch {
        dockerignore = undefined;
      }
      return { dockerfile, dockerignore };
    };
    const readDefaultIgnore = async (): Promise<Uint8Array | undefined> => {
      if (isNotLocalContext) return undefined;
      const st =
        buildContext ??
        b.local(localNameContext, {
          sessionId: ctx.sessionId,
          followPaths: [DOCKERIGNORE],
          sharedKeyHint: localNameContext + '-' + DOCKERIGNORE,
          customName: '[internal] load ' + DOCKERIGNORE,
          differ: 'none',
        });
      const ref = await ctx.solve(marshal(st));
      try {
        return await ctx.readFile(ref, DOCKERIGNORE);
      } catch {
        return undefined;
      }
    };
    const [df, defaultIgnore] = await Promise.all([readDockerfile(), readDefaultIgnore()]);
    const dockerfile = df.dockerfile;
    const sourceMap: SourceMapRef = { filename, data: dockerfile, definition: srcDef };
    const ignoreBytes = df.dockerignore ?? defaultIgnore;
    const excludes = ignoreBytes ? parseDockerignore(ignoreBytes) : undefined;

    if (!('cmdline' in opts)) {
      const syntaxArg = opts['build-arg:BUILDKIT_SYNTAX'];
      const detected = syntaxArg !== undefined ? { ref: syntaxArg.trim().split(' ')[0]!, cmdline: syntaxArg, location: [] as Range[] } : detectSyntax(dockerfile);
      if (detected) {
        if (!isOfficialDockerfileFrontend(detected.ref)) {
          const via = syntaxArg !== undefined ? 'build-arg:BUILDKIT_SYNTAX' : 'the "# syntax=" directive';
          const e = new DockerfileError(
            `frontend image ${detected.ref} (named by ${via}) is not supported: loom only runs its built-in Dockerfile frontend (dockerfile.v0); remove the directive or name docker/dockerfile`,
            { location: detected.location },
          );
          throw Object.assign(new UnimplementedError(e.message, { cause: e }), { location: detected.location });
        }
        ctx.warn({
          vertex: defVertex,
          level: 1,
          short: `syntax ${detected.cmdline} is served by loom's built-in Dockerfile frontend (compatible with docker/dockerfile:1 as of BuildKit v0.11)`,
          detail: [],
          location: detected.location,
          source: sourceMap,
        });
      }
    }
    const requestId = opts.requestid;
    if (requestId !== undefined) {
      if (requestId === REQUEST_DESCRIBE) return { refs: [], multiPlatform: false, metadata: describeSubrequests(), subrequest: true };
      if (!isKnownSubrequest(requestId) && requestId !== REQUEST_LINT) throw unsupportedSubrequest(requestId);
    }

    let exportMap = targetPlatforms.length > 1;
    const mp = opts['build-arg:BUILDKIT_MULTI_PLATFORM'] || opts['multi-platform'];
    if (mp) {
      const v = parseGoBool(mp);
      if (v === undefined) throw new InvalidArgumentError(`invalid boolean value ${mp}`);
      if (!v && exportMap) throw new InvalidArgumentError('returning multiple target platforms is not allowed');
      exportMap = v;
    }
    const hostname = opts['build-arg:BUILDKIT_SANDBOX_HOSTNAME'] || opts.hostname;
    let epoch: Date | undefined;
    const sde = opts['build-arg:SOURCE_DATE_EPOCH'];
    if (sde) {
      const v = parseGoInt(sde, 64);
      if (v === undefined) throw new InvalidArgumentError(`invalid SOURCE_DATE_EPOCH: ${sde}`);
      epoch = new Date(Number(v) * 1000);
    }

    const withSource = (err: unknown) => {
      // Errors naming Dockerfile lines carry the source too, for the client's snippet.
      if (err && typeof err === 'object' && Array.isArray((err as { location?: unknown }).location)) Object.assign(err, { source: sourceMap });
      return err;
    };
    if (requestId === REQUEST_TARGETS) {
      try {
        return { refs: [], multiPlatform: false, metadata: listTargets(dockerfile), subrequest: true };
      } catch (err) {
        throw withSource(err);
      }
    }

    const convertBase = () => ({
      dockerfile,
      sourceMap,
      target: opts.target,
      buildArgs: filter(opts, 'build-arg:'),
      labels: filter(opts, 'label:'),
      sessionId: ctx.sessionId,
      buildContext,
      excludes,
      ignoreCache,
      cacheIdNamespace: opts['build-arg:BUILDKIT_CACHE_MOUNT_NS'],
      imageResolveMode: resolveMode,
      buildPlatforms: [buildPlatform],
      extraHosts,
      shmSize,
      ulimits,
      cgroupParent: opts['cgroup-parent'],
      forceNetMode,
      contextLocalName: localNameContext,
      hostname,
      sourceDateEpoch: epoch,
      resolveImageConfig: (ref: string, o: ResolveImageConfigOptions) => ctx.resolveImageConfig(ref, o),
      contextByName: (n: string, mode: ResolveMode, p: Platform | undefined) => this.#contextByName(ctx, b, n, mode, p),
    });

    // Lint options: the BUILDKIT_DOCKERFILE_CHECK build arg, else the `# check=` directive's first word.
    const checkArg = opts['build-arg:BUILDKIT_DOCKERFILE_CHECK'];
    const checkOpts = checkArg ?? detectDirective(dockerfile, 'check')?.value.split(' ')[0];
    const lintSource = { filename, data: dockerfile, definition: srcDef.def.length > 0 ? srcDef : undefined };

    if (requestId === REQUEST_LINT) {
      // The lint report: every stage converted (only the target's with --target), nothing built.
      let lint: Linter | undefined;
      try {
        lint = new Linter(parseLintOptions(checkOpts ?? ''));
        await dockerfileToLLB({
          ...convertBase(),
          targetPlatform: targetPlatforms[0],
          prefixPlatform: exportMap,
          lint,
          allStages: !opts.target,
        });
        return { refs: [], multiPlatform: false, metadata: lintResult(lint.warnings, lintSource), subrequest: true };
      } catch (err) {
        if (err instanceof CancelledError) throw err;
        const loc = (err as { location?: Range[] } | undefined)?.location;
        return {
          refs: [],
          multiPlatform: false,
          metadata: lintResult(lint?.warnings ?? [], lintSource, { message: errorMessage(err), location: Array.isArray(loc) ? loc : [] }),
          subrequest: true,
        };
      }
    }
    // A build lints only when asked to (a `# check=` directive or the build arg): upstream's v0.11
    // frontend, whose builds loom's match, knows no lint rules.
    const lintConfig = checkOpts !== undefined && checkOpts !== '' ? parseLintOptions(checkOpts) : undefined;

    const refs: FrontendRef[] = [];
    const metadata: Record<string, Uint8Array> = {};
    // The outline is the first platform's, without a build.
    const outline = requestId === REQUEST_OUTLINE;
    const results = await Promise.all(
      (outline ? targetPlatforms.slice(0, 1) : targetPlatforms).map(async (tp, i) => {
        const conv = await dockerfileToLLB({
          ...convertBase(),
          targetPlatform: tp,
          prefixPlatform: exportMap,
          warn:
            i === 0
              ? (w: Warning) =>
                  ctx.warn({ vertex: defVertex, level: 1, short: w.short, detail: w.detail, url: w.url, location: w.location ? [w.location] : undefined, source: sourceMap })
              : undefined,
          // Violations are build warnings (the first platform's, as upstream's); with error=true, the error.
          lint:
            i === 0 && lintConfig
              ? new Linter(lintConfig, (w) =>
                  ctx.warn({ vertex: defVertex, level: 1, short: lintShort(w), detail: [w.rule.description], url: w.rule.url ?? '', location: w.location, source: sourceMap }),
                )
              : undefined,
        }).catch((err: unknown) => {
          throw withSource(err);
        });
        check();
        if (outline) return { conv, ref: undefined, p: normalizePlatform(tp ?? defaultPlatform()) };
        // An empty definition (the target is scratch) has nothing to solve: its result is empty.
        const ref = conv.definition.def.length > 0 ? await ctx.solve(conv.definition) : undefined;
        const p = normalizePlatform(tp ?? defaultPlatform());
        return { conv, ref, p };
      }),
    );
    if (outline) return { refs: [], multiPlatform: false, metadata: outlineResult(results[0]!.conv.outline(), dockerfile), subrequest: true };
    const platforms: { ID: string; Platform: Record<string, unknown> }[] = [];
    for (const { conv, ref, p } of results) {
      const id = formatPlatform(p);
      refs.push({ platformId: id, platform: p, definition: conv.definition, ref });
      metadata[exportMap ? `containerimage.config/${id}` : 'containerimage.config'] = conv.config;
      platforms.push({ ID: id, Platform: ociPlatformJSON(p) });
    }
    metadata['refs.platforms'] = Buffer.from(goJSON({ Platforms: platforms }));
    return { refs, multiPlatform: exportMap, metadata };
  }

  #warnUnsupported(ctx: FrontendContext, opts: Record<string, string>): void {
    for (const k of Object.keys(opts)) {
      if (k.startsWith('attest:')) {
        ctx.warn({ vertex: '', level: 1, short: `attestations (${k.slice(7)}) are not supported by loom yet; the image is built without them`, detail: [] });
      }
    }
    for (const k of Object.keys(opts)) {
      if (k.includes(':') || KNOWN_OPTS.has(k) || k === 'context' || k === 'dockerfile') continue;
      ctx.warn({ vertex: '', level: 1, short: `frontend option ${JSON.stringify(k)} is not supported by loom's Dockerfile frontend and was ignored`, detail: [] });
    }
  }

  /** The state of a named context (`context:<name>` options), as upstream's contextByNameFunc. */
  async #contextByName(ctx: FrontendContext, b: LLBBuilder, name: string, resolveMode: ResolveMode, p: Platform | undefined): Promise<NamedContext | undefined> {
    let short: string;
    try {
      short = familiarString(parseNormalizedNamed(name)).replace(/:latest$/, '');
    } catch (err) {
      throw new InvalidArgumentError(`invalid context name ${name}: ${errorMessage(err)}`, { cause: err });
    }
    const platform = normalizePlatform(p ?? defaultPlatform());
    const pname = short + '::' + formatPlatform(platform);
    return (await this.#namedContext(ctx, b, short, pname, platform, resolveMode)) ?? this.#namedContext(ctx, b, short, short, platform, resolveMode);
  }

  async #namedContext(ctx: FrontendContext, b: LLBBuilder, _name: string, pname: string, platform: Platform, resolveMode: ResolveMode): Promise<NamedContext | undefined> {
    const v = ctx.attrs['context:' + pname];
    if (v === undefined) return undefined;
    const colon = v.indexOf(':');
    if (colon < 0) throw new InvalidArgumentError(`invalid context specifier ${v} for ${pname}`);
    let kind = v.slice(0, colon);
    const rest = v.slice(colon + 1);
    if (kind.startsWith('git@')) kind = 'git';
    switch (kind) {
      case 'docker-image': {
        const ref = rest.replace(/^\/\//, '');
        if (ref === 'scratch') return { state: scratchState() };
        let named;
        try {
          named = withDefaultTag(parseNormalizedNamed(ref));
        } catch (err) {
          throw new InvalidArgumentError(errorMessage(err), { cause: err });
        }
        const full = formatReference(named);
        const resolved = await ctx.resolveImageConfig(full, { platform, resolveMode, logName: `[context ${pname}] load metadata for ${ref}` });
        const img = parseImageConfig(resolved.config);
        const st = withImageConfig(b.image(full, { customName: `[context ${pname}] ${ref}`, platform }), img);
        return { state: st, image: img };
      }
      case 'git': {
        const st = gitContextState(b, v, true);
        if (!st) throw new InvalidArgumentError(`invalid git context ${v}`);
        return { state: st };
      }
      case 'http':
      case 'https': {
        const st = gitContextState(b, v, true) ?? b.http(v, { customName: `[context ${pname}] ${v}` });
        return { state: st };
      }
      case 'local': {
        const ign = b.local(rest, {
          sessionId: ctx.sessionId,
          followPaths: [DOCKERIGNORE],
          sharedKeyHint: `context:${pname}-${DOCKERIGNORE}`,
          customName: `[context ${pname}] load ${DOCKERIGNORE}`,
          differ: 'none',
        });
        const ref = await ctx.solve(marshal(ign));
        let excludes: string[] | undefined;
        try {
          const dt = await ctx.readFile(ref, DOCKERIGNORE);
          if (dt.length > 0) excludes = parseDockerignore(dt);
        } catch {
          excludes = undefined;
        }
        const st = b.local(rest, { customName: `[context ${pname}] load from client`, sessionId: ctx.sessionId, sharedKeyHint: `context:${pname}`, excludePatterns: excludes });
        return { state: st };
      }
      case 'input': {
        const def = ctx.inputs?.[rest];
        if (!def) throw new InvalidArgumentError(`invalid input ${rest} for ${pname}`);
        let st = stateFromDefinition(def);
        const md = ctx.attrs['input-metadata:' + rest];
        if (md !== undefined) {
          let m: Record<string, string>;
          try {
            m = JSON.parse(md) as Record<string, string>;
          } catch (err) {
            throw new InvalidArgumentError(`failed to parse input metadata ${md}: ${errorMessage(err)}`);
          }
          const cfg = m['containerimage.config'];
          if (cfg !== undefined) {
            // Go's []byte in JSON is base64.
            const bytes = Buffer.from(cfg, 'base64');
            const img = parseImageConfig(bytes);
            st = withImageConfig(st, img);
            return { state: st, image: img };
          }
        }
        return { state: st };
      }
      case 'oci-layout':
        throw new UnimplementedError(`oci-layout contexts are not supported by loom yet (context ${pname})`);
      default:
        throw new InvalidArgumentError(`unsupported context source ${kind} for ${pname}`);
    }
  }
}

function scratchState(): LLBState {
  return scratch();
}

/** The digest of a definition's result op (its terminal's input). */
function headDigest(def: Definition): string {
  const last = fromBinary(OpSchema, def.def[def.def.length - 1]!);
  return last.inputs[0]?.digest ?? '';
}

function gitContextState(b: LLBBuilder, ref: string, keepGit: boolean): LLBState | undefined {
  const g = parseGitRef(ref);
  if (!g) return undefined;
  let commit = g.commit;
  if (g.subDir !== '') commit += ':' + g.subDir;
  return b.git(g.remote, commit, { keepGitDir: keepGit, customName: '[internal] load git source ' + ref });
}

function isArchive(header: Uint8Array): boolean {
  const magic = [
    [0x42, 0x5a, 0x68],
    [0x1f, 0x8b, 0x08],
    [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
  ];
  for (const m of magic) if (header.length >= m.length && m.every((x, i) => header[i] === x)) return true;
  // A tar header: "ustar" at offset 257, or a valid checksum in the first 512 bytes.
  if (header.length >= 262 && Buffer.from(header.subarray(257, 262)).toString('latin1') === 'ustar') return true;
  return false;
}

function ociPlatformJSON(p: Platform): Record<string, unknown> {
  const o: Record<string, unknown> = { architecture: p.architecture, os: p.os };
  if (p['os.version']) o['os.version'] = p['os.version'];
  if (p['os.features']?.length) o['os.features'] = p['os.features'];
  if (p.variant) o.variant = p.variant;
  return o;
}

function wrapLoom(err: unknown, prefix: string): Error {
  if (err instanceof CancelledError) return err;
  return new LoomError(codeOf(err), `${prefix}: ${errorMessage(err)}`, { cause: err });
}
