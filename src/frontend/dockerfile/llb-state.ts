/**
 * The LLB the Dockerfile frontend emits, built the way BuildKit's client/llb builds it: a `State`
 * is an output plus the metadata later ops inherit (env, working dir, user, hostname, platform,
 * network and security mode, extra hosts), and ops are sources, execs with mounts of every type,
 * file ops (chains of mkdir/mkfile/rm/copy with named owners resolved against the destination),
 * and merges. Ops are made eagerly: the frontend knows the marshal defaults (target platform) up
 * front, so each op is serialized once and named by the sha256 of its bytes.
 *
 * src/llb/builder.ts is the small general builder; this file adds what the frontend needs beyond
 * it (exec, mount outputs, named chown with the base input, progress groups, source locations).
 */
import { randomBytes } from 'node:crypto';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  CacheOptSchema,
  CacheSharingOpt,
  ChownOptSchema,
  DefinitionSchema,
  ExecOpSchema,
  FileActionCopySchema,
  FileActionMkDirSchema,
  FileActionMkFileSchema,
  FileActionRmSchema,
  FileActionSchema,
  FileOpSchema,
  HostIPSchema,
  InputSchema,
  LocationSchema,
  LocationsSchema,
  MergeInputSchema,
  MergeOpSchema,
  MetaSchema,
  MountSchema,
  MountType,
  NetMode,
  OpMetadataSchema,
  OpSchema,
  PositionSchema,
  ProgressGroupSchema,
  ProxyEnvSchema,
  RangeSchema,
  SecretOptSchema,
  SecurityMode,
  SourceInfoSchema,
  SourceOpSchema,
  SourceSchema,
  SSHOptSchema,
  TmpfsOptSchema,
  UserOptSchema,
  UlimitSchema,
  WorkerConstraintsSchema,
  type ChownOpt,
  type Definition,
  type FileAction,
  type Mount as PbMount,
  type Op,
  type OpMetadata,
  type UserOpt,
} from '../../gen/buildkit/ops_pb.js';
import { sha256, type Digest } from '../../util/digest.js';
import { normalizePlatform, type Platform } from '../../util/platform.js';
import type { Range } from './errors.js';
import { toPbPlatform } from '../../util/pb-platform.js';

/** Where an op came from in the Dockerfile, for error source snippets. */
export interface SourceMapRef {
  filename: string;
  data: Uint8Array;
  /** The definition that loads the Dockerfile (upstream puts it in SourceInfo.definition). */
  definition?: Definition;
}

export interface OpOptions {
  customName?: string;
  description?: Record<string, string>;
  ignoreCache?: boolean;
  progressGroup?: { id: string; name: string; weak: boolean };
  /** Lines of the Dockerfile the op comes from. */
  location?: { map: SourceMapRef; ranges: Range[] };
  /** An explicit platform for the op (else the state's, else the marshal default). */
  platform?: Platform;
}

/** One serialized op and the ops it reads. */
export class Vertex {
  readonly op: Op;
  readonly deps: Vertex[];
  readonly metadata: OpMetadata;
  readonly locations: { map: SourceMapRef; ranges: Range[] }[];
  readonly bytes: Uint8Array;
  readonly digest: Digest;

  constructor(op: Op, deps: Vertex[], metadata: OpMetadata, locations: { map: SourceMapRef; ranges: Range[] }[], bytes?: Uint8Array) {
    this.op = op;
    this.deps = deps;
    this.metadata = metadata;
    this.locations = locations;
    // Ops taken from another definition keep their bytes (and so their digests) as sent.
    this.bytes = bytes ?? toBinary(OpSchema, op);
    this.digest = sha256(this.bytes);
  }
}

/**
 * The state a definition produces (a frontend input, a named `input:` context): its ops are kept
 * byte for byte. Scratch when the definition is empty.
 */
export function stateFromDefinition(def: Definition): LLBState {
  if (def.def.length === 0) return scratch();
  const ops = new Map<string, { op: Op; bytes: Uint8Array }>();
  let last: { op: Op; bytes: Uint8Array } | undefined;
  for (const bytes of def.def) {
    const op = fromBinary(OpSchema, bytes);
    const entry = { op, bytes };
    ops.set(sha256(bytes), entry);
    last = entry;
  }
  const terminal = last!;
  const head = terminal.op.inputs[0];
  if (!head) return scratch();
  const made = new Map<string, Vertex>();
  const make = (d: string, depth: number): Vertex => {
    const done = made.get(d);
    if (done) return done;
    const e = ops.get(d);
    if (!e) throw new Error(`invalid definition: missing op ${d}`);
    if (depth > 10000) throw new Error('invalid definition: too deep');
    const deps = e.op.inputs.map((i) => make(i.digest, depth + 1));
    const md = def.metadata[d] ?? create(OpMetadataSchema, {});
    const v = new Vertex(e.op, deps, md, [], e.bytes);
    made.set(d, v);
    return v;
  };
  const v = make(head.digest, 0);
  const st = new LLBState({ vertex: v, index: Number(head.index) });
  const p = v.op.op.case === 'source' && v.op.platform ? v.op.platform : undefined;
  return p ? st.platform({ os: p.OS, architecture: p.Architecture, ...(p.Variant ? { variant: p.Variant } : {}) }) : st;
}

/** client/llb's WithImageConfig: the config's env and working dir, and its platform when complete. */
export function withImageConfig(st: LLBState, config: { os?: string; architecture?: string; variant?: string; config?: { Env?: string[]; WorkingDir?: string } }): LLBState {
  let s = st;
  for (const env of config.config?.Env ?? []) {
    const i = env.indexOf('=');
    const k = i < 0 ? env : env.slice(0, i);
    if (k.length > 0) s = s.addEnv(k, i < 0 ? '' : env.slice(i + 1));
  }
  s = s.dir(config.config?.WorkingDir ?? '');
  if (config.architecture && config.os) {
    s = s.platform({ os: config.os, architecture: config.architecture, ...(config.variant ? { variant: config.variant } : {}) });
  }
  return s;
}

export interface Output {
  vertex: Vertex;
  index: number;
}

export interface HostIP {
  host: string;
  ip: string;
}

interface StateMeta {
  env: [string, string][];
  dir: string;
  user: string;
  hostname: string;
  platform: Platform | undefined;
  network: NetMode;
  security: SecurityMode;
  extraHosts: HostIP[];
}

const EMPTY_META: StateMeta = {
  env: [],
  dir: '/',
  user: '',
  hostname: '',
  platform: undefined,
  network: NetMode.UNSET,
  security: SecurityMode.SANDBOX,
  extraHosts: [],
};

function pathJoin(...parts: string[]): string {
  return cleanPath(parts.filter((p) => p !== '').join('/'));
}

/** Go's path.Clean. */
export function cleanPath(p: string): string {
  if (p === '') return '.';
  const rooted = p.startsWith('/');
  const out: string[] = [];
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!rooted) out.push('..');
      continue;
    }
    out.push(seg);
  }
  const s = (rooted ? '/' : '') + out.join('/');
  return s === '' ? (rooted ? '/' : '.') : s;
}

/** Go's path.Join. */
export function joinPath(...parts: string[]): string {
  const nonEmpty = parts.filter((p) => p !== '');
  if (nonEmpty.length === 0) return '';
  return cleanPath(nonEmpty.join('/'));
}

export function isAbs(p: string): boolean {
  return p.startsWith('/');
}

/**
 * An LLB state: an output (undefined is scratch) and the metadata execs and file ops inherit.
 * Immutable: every change returns a new state.
 */
export class LLBState {
  readonly output: Output | undefined;
  readonly #meta: StateMeta;

  constructor(output: Output | undefined, meta: StateMeta = EMPTY_META) {
    this.output = output;
    this.#meta = meta;
  }

  #with(patch: Partial<StateMeta>): LLBState {
    return new LLBState(this.output, { ...this.#meta, ...patch });
  }

  /** A state with another output and the same metadata (client/llb WithOutput). */
  withOutput(output: Output | undefined, platform?: Platform): LLBState {
    const meta = platform ? { ...this.#meta, platform: normalizePlatform(platform) } : this.#meta;
    return new LLBState(output, meta);
  }

  addEnv(key: string, value: string): LLBState {
    // EnvList.AddOrReplace: the old entry goes, the new one is appended.
    const env = this.#meta.env.filter(([k]) => k !== key);
    env.push([key, value]);
    return this.#with({ env });
  }

  /** Sets the working directory; a relative path is joined to the current one. */
  dir(p: string): LLBState {
    let v = p;
    if (!isAbs(v)) v = pathJoin(this.#meta.dir || '/', v);
    return this.#with({ dir: v });
  }

  user(u: string): LLBState {
    return this.#with({ user: u });
  }

  hostname(h: string): LLBState {
    return this.#with({ hostname: h });
  }

  platform(p: Platform): LLBState {
    return this.#with({ platform: normalizePlatform(p) });
  }

  network(n: NetMode): LLBState {
    return this.#with({ network: n });
  }

  security(s: SecurityMode): LLBState {
    return this.#with({ security: s });
  }

  addExtraHost(host: string, ip: string): LLBState {
    return this.#with({ extraHosts: [...this.#meta.extraHosts, { host, ip }] });
  }

  getEnv(): string[] {
    return this.#meta.env.map(([k, v]) => `${k}=${v}`);
  }

  getEnvValue(key: string): string | undefined {
    return this.#meta.env.find(([k]) => k === key)?.[1];
  }

  getDir(): string {
    return this.#meta.dir;
  }

  getUser(): string {
    return this.#meta.user;
  }

  getHostname(): string {
    return this.#meta.hostname;
  }

  getPlatform(): Platform | undefined {
    return this.#meta.platform;
  }

  getNetwork(): NetMode {
    return this.#meta.network;
  }

  getSecurity(): SecurityMode {
    return this.#meta.security;
  }

  getExtraHosts(): HostIP[] {
    return this.#meta.extraHosts;
  }
}

export function scratch(): LLBState {
  return new LLBState(undefined);
}


function sortedRecord<V>(rec: Record<string, V>): Record<string, V> {
  return Object.fromEntries(Object.entries(rec).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Builds ops against fixed marshal defaults (the target platform), as a Definition's marshal would. */
export class LLBBuilder {
  readonly defaultPlatform: Platform;

  constructor(opts: { defaultPlatform: Platform }) {
    this.defaultPlatform = normalizePlatform(opts.defaultPlatform);
  }

  #metadata(o: OpOptions, caps: string[]): OpMetadata {
    const description: Record<string, string> = { ...(o.description ?? {}) };
    if (o.customName !== undefined) description['llb.customname'] = o.customName;
    return create(OpMetadataSchema, {
      ignoreCache: o.ignoreCache ?? false,
      description: sortedRecord(description),
      caps: Object.fromEntries([...new Set(caps)].sort().map((c) => [c, true])),
      progressGroup: o.progressGroup ? create(ProgressGroupSchema, o.progressGroup) : undefined,
    });
  }

  #vertex(op: Op, deps: Vertex[], o: OpOptions, caps: string[]): Vertex {
    op.constraints = create(WorkerConstraintsSchema, {});
    return new Vertex(op, deps, this.#metadata(o, caps), o.location ? [o.location] : []);
  }

  source(identifier: string, attrs: Record<string, string>, o: OpOptions, caps: string[]): LLBState {
    const platformSpecific = identifier.startsWith('docker-image://') || identifier.startsWith('oci-layout://');
    // The op carries the platform as given; the state's copy is normalized (client/llb ensurePlatform).
    const platform = o.platform;
    const op = create(OpSchema, {
      op: { case: 'source', value: create(SourceOpSchema, { identifier, attrs: sortedRecord(attrs) }) },
      platform: platformSpecific ? toPbPlatform(platform ?? this.defaultPlatform) : undefined,
    });
    const v = this.#vertex(op, [], o, caps);
    // NewState: working dir `/`, and the platform when the source was given one.
    const st = new LLBState({ vertex: v, index: 0 });
    return platform ? st.platform(platform) : st;
  }

  image(ref: string, o: OpOptions & { resolveMode?: 'default' | 'pull' | 'local' } = {}): LLBState {
    const attrs: Record<string, string> = {};
    const caps = ['source.image'];
    if (o.resolveMode && o.resolveMode !== 'default') {
      attrs['image.resolvemode'] = o.resolveMode;
      if (o.resolveMode === 'pull') caps.push('source.image.resolvemode');
    }
    return this.source(`docker-image://${ref}`, attrs, o, caps);
  }

  local(
    name: string,
    o: OpOptions & {
      sessionId?: string;
      includePatterns?: string[];
      excludePatterns?: string[];
      followPaths?: string[];
      sharedKeyHint?: string;
      differ?: 'none' | 'metadata';
    } = {},
  ): LLBState {
    const attrs: Record<string, string> = {};
    const caps = ['source.local'];
    if (o.sessionId) {
      attrs['local.session'] = o.sessionId;
      caps.push('source.local.sessionid');
    }
    if (o.includePatterns?.length) {
      attrs['local.includepattern'] = JSON.stringify(o.includePatterns);
      caps.push('source.local.includepatterns');
    }
    if (o.followPaths?.length) {
      attrs['local.followpaths'] = JSON.stringify(o.followPaths);
      caps.push('source.local.followpaths');
    }
    if (o.excludePatterns?.length) {
      attrs['local.excludepatterns'] = JSON.stringify(o.excludePatterns);
      caps.push('source.local.excludepatterns');
    }
    if (o.sharedKeyHint) {
      attrs['local.sharedkeyhint'] = o.sharedKeyHint;
      caps.push('source.local.sharedkeyhint');
    }
    if (o.differ) attrs['local.differ'] = o.differ;
    if (!o.sessionId) {
      // Without a session the source is made unique to this build (upstream's local.unique).
      attrs['local.unique'] = randomBytes(16).toString('hex');
      caps.push('source.local.unique');
    }
    return this.source(`local://${name}`, attrs, o, caps);
  }

  http(url: string, o: OpOptions & { filename?: string; checksum?: string } = {}): LLBState {
    const attrs: Record<string, string> = {};
    const caps = ['source.http'];
    if (o.checksum) {
      attrs['http.checksum'] = o.checksum;
      caps.push('source.http.checksum');
    }
    if (o.filename) attrs['http.filename'] = o.filename;
    return this.source(url, attrs, o, caps);
  }

  /** A git source as client/llb's Git: `git://host/path#ref`, with the full remote URL as an attr. */
  git(remote: string, ref: string, o: OpOptions & { keepGitDir?: boolean } = {}): LLBState {
    let url = remote.split('#')[0]!;
    const { remote: stripped, protocol } = parseGitProtocol(remote);
    let r = stripped;
    const attrs: Record<string, string> = {};
    const caps = ['source.git'];
    if (protocol === 'ssh') {
      const i = r.indexOf(':');
      if (i >= 0) r = r.slice(0, i) + '/' + r.slice(i + 1);
    }
    if (protocol === 'unknown') url = 'https://' + url;
    let id = r;
    if (ref !== '') id += '#' + ref;
    if (o.keepGitDir) {
      attrs['git.keepgitdir'] = 'true';
      caps.push('source.git.keepgitdir');
    }
    if (url !== '') {
      attrs['git.fullurl'] = url;
      caps.push('source.git.fullurl');
    }
    attrs['git.authtokensecret'] = 'GIT_AUTH_TOKEN';
    attrs['git.authheadersecret'] = 'GIT_AUTH_HEADER';
    if (protocol === 'ssh') {
      attrs['git.mountsshsock'] = 'default';
      caps.push('source.git.knownsshhosts', 'source.git.mountsshsock');
    }
    return this.source(`git://${id}`, attrs, o, caps);
  }

  /** An exec op on `base`; its root mount is `/` and writable. */
  run(base: LLBState, spec: ExecSpec, o: OpOptions = {}): ExecResult {
    if (spec.args.length === 0) throw new Error('arguments are required');
    const cwd = base.getDir();
    if (cwd === '') throw new Error('working directory is required');
    interface M {
      target: string;
      source: Output | undefined;
      readonly: boolean;
      selector: string;
      cacheId: string;
      sharing: CacheSharingOpt;
      tmpfs: boolean;
      tmpfsSize: number;
      noOutput: boolean;
    }
    const mounts: M[] = [
      { target: '/', source: base.output, readonly: false, selector: '', cacheId: '', sharing: CacheSharingOpt.SHARED, tmpfs: false, tmpfsSize: 0, noOutput: false },
    ];
    for (const m of spec.mounts ?? []) {
      mounts.push({
        target: m.target,
        source: m.source?.output,
        readonly: m.readonly ?? false,
        selector: m.selector ?? '',
        cacheId: m.cacheId ?? '',
        sharing: m.cacheSharing ?? CacheSharingOpt.SHARED,
        tmpfs: m.tmpfs ?? false,
        tmpfsSize: m.tmpfsSize ?? 0,
        noOutput: m.noOutput ?? false,
      });
    }
    mounts.sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));

    let env = base.getEnv();
    const ssh = (spec.ssh ?? []).map((s, i) => ({ ...s, target: s.target || `/run/buildkit/ssh_agent.${i}` }));
    if (ssh.length > 0 && base.getEnvValue('SSH_AUTH_SOCK') === undefined) env = [...env, `SSH_AUTH_SOCK=${ssh[0]!.target}`];

    const caps = ['exec.meta.base', 'exec.meta.setsdefaultpath'];
    const network = spec.network ?? base.getNetwork();
    const security = spec.security ?? base.getSecurity();
    if (network !== NetMode.UNSET) caps.push('exec.meta.network');
    if (security !== SecurityMode.SANDBOX) caps.push('exec.meta.security');
    if (spec.proxyEnv) caps.push('exec.meta.proxyenv');
    if (spec.ulimits?.length) caps.push('exec.meta.ulimit');
    if (spec.cgroupParent) caps.push('exec.meta.cgroup.parent');

    const inputs: { digest: string; index: bigint }[] = [];
    const deps: Vertex[] = [];
    const pbMounts: PbMount[] = [];
    let outIndex = 0;
    const outputOf = new Map<string, number>();
    for (const m of mounts) {
      if (m.selector) caps.push('exec.mount.selector');
      if (m.cacheId) caps.push('exec.mount.cache', 'exec.mount.cache.sharing');
      else if (m.tmpfs) {
        caps.push('exec.mount.tmpfs');
        if (m.tmpfsSize > 0) caps.push('exec.mount.tmpfs.size');
      } else if (m.source) caps.push('exec.mount.bind');
      let input = -1n;
      if (m.source) {
        if (m.tmpfs) throw new Error('tmpfs mounts must use scratch');
        const d = m.source.vertex.digest;
        const idx = BigInt(m.source.index);
        const i = inputs.findIndex((x) => x.digest === d && x.index === idx);
        if (i >= 0) input = BigInt(i);
        else {
          input = BigInt(inputs.length);
          inputs.push({ digest: d, index: idx });
          deps.push(m.source.vertex);
        }
      }
      let output = -1n;
      if (!m.noOutput && !m.readonly && m.cacheId === '' && !m.tmpfs) {
        outputOf.set(m.target, outIndex);
        output = BigInt(outIndex++);
      }
      const pm = create(MountSchema, { input, dest: m.target, readonly: m.readonly, output, selector: m.selector });
      if (m.cacheId) {
        pm.mountType = MountType.CACHE;
        pm.cacheOpt = create(CacheOptSchema, { ID: m.cacheId, sharing: m.sharing });
      }
      if (m.tmpfs) {
        pm.mountType = MountType.TMPFS;
        pm.TmpfsOpt = create(TmpfsOptSchema, { size: BigInt(m.tmpfsSize) });
      }
      pbMounts.push(pm);
    }
    // Secret and SSH mounts read no input and produce no output; like upstream's client they leave
    // `input` and `output` at their zero values, which the daemon ignores for these mount types.
    for (const s of spec.secrets ?? []) {
      pbMounts.push(
        create(MountSchema, {
          dest: s.target,
          mountType: MountType.SECRET,
          secretOpt: create(SecretOptSchema, { ID: s.id, uid: s.uid ?? 0, gid: s.gid ?? 0, mode: s.mode ?? 0o400, optional: s.optional ?? false }),
        }),
      );
    }
    if ((spec.secrets ?? []).length > 0) caps.push('exec.mount.secret');
    for (const s of ssh) {
      pbMounts.push(
        create(MountSchema, {
          dest: s.target,
          mountType: MountType.SSH,
          SSHOpt: create(SSHOptSchema, { ID: s.id, uid: s.uid ?? 0, gid: s.gid ?? 0, mode: s.mode ?? 0o600, optional: s.optional ?? false }),
        }),
      );
    }
    if (ssh.length > 0) caps.push('exec.mount.ssh');

    const meta = create(MetaSchema, {
      args: spec.args,
      env,
      cwd,
      user: base.getUser(),
      hostname: base.getHostname(),
      removeMountStubsRecursive: true,
      extraHosts: [...base.getExtraHosts(), ...(spec.extraHosts ?? [])].map((h) => create(HostIPSchema, { Host: h.host, IP: h.ip })),
      ulimit: (spec.ulimits ?? []).map((u) => create(UlimitSchema, { Name: u.name, Soft: u.soft, Hard: u.hard })),
      cgroupParent: spec.cgroupParent ?? '',
      proxyEnv: spec.proxyEnv
        ? create(ProxyEnvSchema, {
            httpProxy: spec.proxyEnv.httpProxy ?? '',
            httpsProxy: spec.proxyEnv.httpsProxy ?? '',
            ftpProxy: spec.proxyEnv.ftpProxy ?? '',
            noProxy: spec.proxyEnv.noProxy ?? '',
            allProxy: spec.proxyEnv.allProxy ?? '',
          })
        : undefined,
    });
    const platform = o.platform ?? base.getPlatform() ?? this.defaultPlatform;
    const op = create(OpSchema, {
      inputs: inputs.map((i) => create(InputSchema, i)),
      op: { case: 'exec', value: create(ExecOpSchema, { meta, mounts: pbMounts, network, security }) },
      platform: toPbPlatform(platform),
    });
    const v = this.#vertex(op, deps, o, caps);
    const root = base.withOutput({ vertex: v, index: outputOf.get('/')! });
    return {
      root,
      vertex: v,
      mountOutput: (target: string) => {
        const i = outputOf.get(target);
        if (i === undefined) throw new Error(`mount ${target} has no output`);
        return { vertex: v, index: i };
      },
    };
  }

  /** A file op applying `actions` in order on `base`. */
  file(base: LLBState, actions: FileActions, o: OpOptions = {}): LLBState {
    const list = actions.list;
    if (list.length === 0) throw new Error('action is required');
    const inputs: { digest: string; index: bigint }[] = [];
    const deps: Vertex[] = [];
    const caps = ['file.base'];
    const addInput = (out: Output): bigint => {
      const d = out.vertex.digest;
      const idx = BigInt(out.index);
      const i = inputs.findIndex((x) => x.digest === d && x.index === idx);
      if (i >= 0) return BigInt(i);
      inputs.push({ digest: d, index: idx });
      deps.push(out.vertex);
      return BigInt(inputs.length - 1);
    };
    // Every action's base is `base` (bound as upstream binds a FileAction chain to the state);
    // action k > 0 reads the previous action's result.
    const resolved = list.map((a) => {
      const baseIdx = base.output ? addInput(base.output) : -1n;
      let secondary = -1n;
      if (a.kind === 'copy') {
        if (a.source.output) secondary = addInput(a.source.output);
        if (a.include.length || a.exclude.length) caps.push('file.copy.includeexcludepatterns');
      }
      return { a, baseIdx, secondary };
    });
    const n = BigInt(inputs.length);
    const parent = base.getDir();
    const pbActions: FileAction[] = resolved.map(({ a, baseIdx, secondary }, k) => {
      const input = k === 0 ? baseIdx : n + BigInt(k - 1);
      const output = k === list.length - 1 ? 0n : -1n;
      return create(FileActionSchema, { input, secondaryInput: secondary, output, action: toPbAction(a, parent, baseIdx) });
    });
    const platform = o.platform ?? base.getPlatform() ?? this.defaultPlatform;
    const op = create(OpSchema, {
      inputs: inputs.map((i) => create(InputSchema, i)),
      op: { case: 'file', value: create(FileOpSchema, { actions: pbActions }) },
      platform: toPbPlatform(platform),
    });
    const v = this.#vertex(op, deps, o, caps);
    return base.withOutput({ vertex: v, index: 0 });
  }

  /** A merge of the non-scratch states; one state is returned as is, none gives scratch. */
  merge(states: LLBState[], o: OpOptions = {}): LLBState {
    const inputsStates = states.filter((s) => s.output);
    if (inputsStates.length === 0) return scratch();
    if (inputsStates.length === 1) return inputsStates[0]!;
    const inputs = inputsStates.map((s) => create(InputSchema, { digest: s.output!.vertex.digest, index: BigInt(s.output!.index) }));
    const op = create(OpSchema, {
      inputs,
      op: { case: 'merge', value: create(MergeOpSchema, { inputs: inputs.map((_, i) => create(MergeInputSchema, { input: BigInt(i) })) }) },
    });
    const v = this.#vertex(op, inputsStates.map((s) => s.output!.vertex), o, ['mergeop']);
    return new LLBState({ vertex: v, index: 0 });
  }
}

export interface ExecMount {
  target: string;
  /** The mounted state; undefined or scratch mounts an empty directory. */
  source?: LLBState;
  readonly?: boolean;
  selector?: string;
  cacheId?: string;
  cacheSharing?: CacheSharingOpt;
  tmpfs?: boolean;
  tmpfsSize?: number;
  /** A writable bind mount whose changes are thrown away. */
  noOutput?: boolean;
}

export interface ExecSpec {
  args: string[];
  mounts?: ExecMount[];
  secrets?: { id: string; target: string; uid?: number; gid?: number; mode?: number; optional?: boolean }[];
  ssh?: { id: string; target?: string; uid?: number; gid?: number; mode?: number; optional?: boolean }[];
  proxyEnv?: { httpProxy?: string; httpsProxy?: string; ftpProxy?: string; noProxy?: string; allProxy?: string };
  network?: NetMode;
  security?: SecurityMode;
  ulimits?: { name: string; soft: bigint; hard: bigint }[];
  cgroupParent?: string;
  /** Extra /etc/hosts entries on top of the state's. */
  extraHosts?: HostIP[];
}

export interface ExecResult {
  root: LLBState;
  vertex: Vertex;
  mountOutput(target: string): Output;
}

/** `user[:group]` by id or name, as llb.WithUser parses a chown string. */
export interface Chown {
  user?: { id: number } | { name: string };
  group?: { id: number } | { name: string };
}

export function parseChown(spec: string): Chown {
  const parts = spec.split(':');
  const one = (v: string): { id: number } | { name: string } => {
    if (v === 'root') return { id: 0 };
    if (/^[+-]?\d+$/.test(v)) {
      const n = Number(v);
      if (Number.isSafeInteger(n) && n >= -2147483648 && n <= 2147483647) return { id: n >>> 0 };
    }
    return { name: v };
  };
  const c: Chown = { user: one(parts[0]!) };
  // SplitN(..., 2): everything after the first colon is the group.
  if (parts.length > 1) c.group = one(parts.slice(1).join(':'));
  return c;
}

export type FileActionSpec =
  | { kind: 'mkdir'; path: string; mode: number; makeParents: boolean; owner?: Chown }
  | { kind: 'mkfile'; path: string; mode: number; data: Uint8Array; owner?: Chown }
  | { kind: 'rm'; path: string; allowNotFound: boolean; allowWildcard: boolean }
  | {
      kind: 'copy';
      source: LLBState;
      src: string;
      dest: string;
      owner?: Chown;
      mode?: number;
      followSymlinks: boolean;
      copyDirContentsOnly: boolean;
      attemptUnpack: boolean;
      createDestPath: boolean;
      allowWildcard: boolean;
      allowEmptyWildcard: boolean;
      include: string[];
      exclude: string[];
      requiredPaths: string[];
    };

export class FileActions {
  readonly list: FileActionSpec[] = [];

  add(a: FileActionSpec): this {
    this.list.push(a);
    return this;
  }

  mkdir(path: string, mode: number, opts: { makeParents?: boolean; owner?: Chown } = {}): this {
    return this.add({ kind: 'mkdir', path, mode, makeParents: opts.makeParents ?? false, owner: opts.owner });
  }

  mkfile(path: string, mode: number, data: Uint8Array | string, opts: { owner?: Chown } = {}): this {
    return this.add({ kind: 'mkfile', path, mode, data: typeof data === 'string' ? Buffer.from(data) : data, owner: opts.owner });
  }

  copy(
    source: LLBState,
    src: string,
    dest: string,
    opts: Partial<Omit<Extract<FileActionSpec, { kind: 'copy' }>, 'kind' | 'source' | 'src' | 'dest'>> = {},
  ): this {
    return this.add({
      kind: 'copy',
      source,
      src,
      dest,
      owner: opts.owner,
      mode: opts.mode,
      followSymlinks: opts.followSymlinks ?? false,
      copyDirContentsOnly: opts.copyDirContentsOnly ?? false,
      attemptUnpack: opts.attemptUnpack ?? false,
      createDestPath: opts.createDestPath ?? false,
      allowWildcard: opts.allowWildcard ?? false,
      allowEmptyWildcard: opts.allowEmptyWildcard ?? false,
      include: opts.include ?? [],
      exclude: opts.exclude ?? [],
      requiredPaths: opts.requiredPaths ?? [],
    });
  }
}

/** client/llb normalizePath: relative paths are joined to the state's dir; `keepSlash` keeps a trailing `/` or `/.`. */
function normalizePath(parent: string, p: string, keepSlash: boolean): string {
  const orig = p;
  let out = cleanPath(p);
  if (!isAbs(out)) out = joinPath('/', parent, out);
  if (keepSlash) {
    if (orig.endsWith('/') && !out.endsWith('/')) out += '/';
    else if (orig.endsWith('/.')) {
      if (out !== '/') out += '/';
      out += '.';
    }
  }
  return out;
}

function userOpt(u: { id: number } | { name: string } | undefined, base: bigint): UserOpt | undefined {
  if (!u) return undefined;
  if ('name' in u && u.name !== '') {
    return create(UserOptSchema, { user: { case: 'byName', value: { $typeName: 'pb.NamedUserOpt', name: u.name, input: base } } });
  }
  return create(UserOptSchema, { user: { case: 'byID', value: 'id' in u ? u.id : 0 } });
}

function chownOpt(c: Chown | undefined, base: bigint): ChownOpt | undefined {
  if (!c) return undefined;
  return create(ChownOptSchema, { user: userOpt(c.user, base), group: userOpt(c.group, base) });
}

function toPbAction(a: FileActionSpec, parent: string, base: bigint): FileAction['action'] {
  switch (a.kind) {
    case 'mkdir':
      return {
        case: 'mkdir',
        value: create(FileActionMkDirSchema, { path: normalizePath(parent, a.path, false), mode: a.mode & 0o777, makeParents: a.makeParents, owner: chownOpt(a.owner, base), timestamp: -1n }),
      };
    case 'mkfile':
      return {
        case: 'mkfile',
        value: create(FileActionMkFileSchema, { path: normalizePath(parent, a.path, false), mode: a.mode & 0o777, data: a.data, owner: chownOpt(a.owner, base), timestamp: -1n }),
      };
    case 'rm':
      return { case: 'rm', value: create(FileActionRmSchema, { path: normalizePath(parent, a.path, false), allowNotFound: a.allowNotFound, allowWildcard: a.allowWildcard }) };
    case 'copy': {
      let src = cleanPath(a.src);
      if (!isAbs(src)) src = joinPath('/', a.source.getDir(), src);
      return {
        case: 'copy',
        value: create(FileActionCopySchema, {
          src,
          dest: normalizePath(parent, a.dest, true),
          owner: chownOpt(a.owner, base),
          includePatterns: a.include,
          excludePatterns: a.exclude,
          allowWildcard: a.allowWildcard,
          allowEmptyWildcard: a.allowEmptyWildcard,
          followSymlink: a.followSymlinks,
          dirCopyContents: a.copyDirContentsOnly,
          attemptUnpackDockerCompatibility: a.attemptUnpack,
          createDestPath: a.createDestPath,
          timestamp: -1n,
          mode: a.mode ?? -1,
          requiredPaths: a.requiredPaths,
        }),
      };
    }
  }
}

type GitProtocol = 'http' | 'https' | 'ssh' | 'git' | 'unknown';

const IMPLICIT_SSH = /^[a-zA-Z0-9-_]+@[a-zA-Z0-9-.]+:.*$/;

/** gitutil.ParseProtocol: the scheme, with the remote stripped of it (and of `user@` for ssh). */
export function parseGitProtocol(remote: string): { remote: string; protocol: GitProtocol } {
  let r = remote;
  let protocol: GitProtocol = 'unknown';
  for (const [prefix, p] of [
    ['http://', 'http'],
    ['https://', 'https'],
    ['git://', 'git'],
    ['ssh://', 'ssh'],
  ] as const) {
    if (r.startsWith(prefix)) {
      r = r.slice(prefix.length);
      protocol = p;
    }
  }
  if (protocol === 'unknown' && IMPLICIT_SSH.test(r)) protocol = 'ssh';
  if (protocol === 'ssh') {
    const i = r.indexOf('@');
    if (i >= 0) r = r.slice(i + 1);
  }
  return { remote: r, protocol };
}

/**
 * The Definition of `state`: every op once, inputs first, the terminal last, metadata merged per
 * digest, and the source map (the Dockerfile locations of ops; an empty entry for an op without).
 */
export function marshal(state: LLBState): Definition {
  const def = create(DefinitionSchema, {});
  const seen = new Set<string>();
  const maps: SourceMapRef[] = [];
  const locs = new Map<string, { index: number; ranges: Range[] }[]>();
  const visit = (v: Vertex) => {
    if (seen.has(v.digest)) {
      mergeInto(def.metadata, v);
      return;
    }
    seen.add(v.digest);
    for (const d of v.deps) visit(d);
    def.def.push(v.bytes);
    mergeInto(def.metadata, v);
    // Every op has an entry in the source map, empty when it has no location (upstream's collector).
    if (!locs.has(v.digest)) locs.set(v.digest, []);
    for (const l of v.locations) {
      let i = maps.indexOf(l.map);
      if (i < 0) i = maps.push(l.map) - 1;
      const list = locs.get(v.digest) ?? [];
      list.push({ index: i, ranges: l.ranges });
      locs.set(v.digest, list);
    }
  };
  if (!state.output) return def;
  visit(state.output.vertex);
  const terminal = create(OpSchema, { inputs: [create(InputSchema, { digest: state.output.vertex.digest, index: BigInt(state.output.index) })] });
  const tbytes = toBinary(OpSchema, terminal);
  def.def.push(tbytes);
  const caps: Record<string, boolean> = { constraints: true, platform: true };
  for (const m of Object.values(def.metadata)) {
    if (m.ignoreCache) caps['meta.ignorecache'] = true;
    if (Object.keys(m.description).length > 0) caps['meta.description'] = true;
    if (m.exportCache) caps['meta.exportcache'] = true;
  }
  def.metadata[sha256(tbytes)] = create(OpMetadataSchema, { caps: sortedRecord(caps) });
  def.Source = create(SourceSchema, {
    infos: maps.map((m) => create(SourceInfoSchema, { filename: m.filename, data: m.data, definition: m.definition, language: 'Dockerfile' })),
    locations: Object.fromEntries(
      [...locs.entries()].map(([d, list]) => [
        d,
        create(LocationsSchema, {
          locations: list.map((l) =>
            create(LocationSchema, {
              sourceIndex: l.index,
              ranges: l.ranges.map((r) =>
                create(RangeSchema, {
                  start: create(PositionSchema, { line: r.start.line, character: r.start.character }),
                  end: create(PositionSchema, { line: r.end.line, character: r.end.character }),
                }),
              ),
            }),
          ),
        }),
      ]),
    ),
  });
  return def;
}

function mergeInto(md: Record<string, OpMetadata>, v: Vertex): void {
  const cur = md[v.digest];
  if (!cur) {
    md[v.digest] = v.metadata;
    return;
  }
  // Two states may carry the same op with different metadata (upstream's mergeMetadata).
  const m = create(OpMetadataSchema, {
    ignoreCache: cur.ignoreCache || v.metadata.ignoreCache,
    description: sortedRecord({ ...cur.description, ...v.metadata.description }),
    caps: sortedRecord({ ...cur.caps, ...v.metadata.caps }),
    progressGroup: v.metadata.progressGroup ?? cur.progressGroup,
    exportCache: v.metadata.exportCache ?? cur.exportCache,
  });
  md[v.digest] = m;
}
