import { create } from '@bufbuild/protobuf';
import path from 'node:path';
import type { RefManager, Writable } from '../cache/ref-manager.js';
import {
  CacheSharingOpt,
  MountType,
  NetMode,
  SecurityMode,
  type ExecOp as PbExecOp,
  type Mount as PbMount,
} from '../gen/buildkit/ops_pb.js';
import { GetSecretRequestSchema, Secrets } from '../gen/session/secrets_pb.js';
import type { SessionCaller } from '../session/types.js';
import type { ContentSelector, OpContext, OpImpl, Ref } from '../solver/types.js';
import { codeOf, errorMessage, InvalidArgumentError, LoomError } from '../util/errors.js';
import { log as rootLog } from '../util/log.js';
import type { Platform as HostPlatform } from '../util/platform.js';
import type { EmulatorInfo } from '../worker/platforms.js';
import { ExitError, goQuote, type ExecMount, type Executor, type NetMode as ExecNetMode } from './executor/executor.js';
import { parseExtraHosts } from './executor/hosts.js';
import { CacheMounts, type CacheSharing } from './executor/mounts/cache-mounts.js';
import { SecretFiles } from './executor/mounts/secrets.js';
import { checkSshAgent, forwardSshAgent } from './executor/mounts/ssh-forward.js';
import { createNetworkProviders, type NetworkProviders } from './executor/network.js';
import { binfmtRegistrations, emulatedArgs, emulationHint, emulatorFor, QEMU_MOUNT_PATH } from './executor/qemu.js';
import { RuncExecutor } from './executor/runc/runc-executor.js';
import { executorPaths } from './executor/runc/stale.js';
import { isEmptyRef } from './file-op.js';
import { checkExecEntitlements } from '../llb/entitlements.js';

const log = () => rootLog.child({ sub: 'exec' });
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** What ExecOp needs from the worker; one set per worker (see execSupport). */
export interface ExecSupport {
  refs: RefManager;
  executor: Executor;
  /** Resolves once the executor is ready (stale state of a crashed daemon cleaned); before any mount is made. */
  init(): Promise<void>;
  cacheMounts: CacheMounts;
  secrets: SecretFiles;
  /** Where ssh agent sockets are made. */
  sshDir: string;
  emulators: readonly EmulatorInfo[];
  native: HostPlatform;
}

const supports = new WeakMap<object, ExecSupport>();

/**
 * The exec machinery of one worker, made on first use and kept for the worker's life (keyed by
 * the worker's deps object). The runc executor cleans up containers of a crashed daemon before
 * its first run; the worker may call `cleanupStale()` earlier, at start.
 */
export function execSupport(d: {
  root: string;
  refs: RefManager;
  emulators: EmulatorInfo[];
  native: HostPlatform;
  network?: string;
  /** The worker's providers (opened at start); without them, `network` gives host networking. */
  networkProviders?: NetworkProviders;
}): ExecSupport {
  let s = supports.get(d);
  if (!s) {
    const p = executorPaths(d.root);
    const executor = new RuncExecutor({ stateRoot: d.root, network: d.networkProviders ?? createNetworkProviders({ workerNet: d.network }), hostArch: d.native.architecture });
    s = {
      refs: d.refs,
      executor,
      init: async () => {
        await executor.init();
      },
      cacheMounts: new CacheMounts({ dir: path.join(path.resolve(d.root), 'cache-mounts') }),
      secrets: new SecretFiles({ dir: p.secrets }),
      sshDir: p.ssh,
      emulators: d.emulators,
      native: d.native,
    };
    supports.set(d, s);
  }
  return s;
}

function netMode(op: PbExecOp): ExecNetMode {
  switch (op.network) {
    case NetMode.UNSET:
      return 'sandbox';
    case NetMode.HOST:
      return 'host';
    case NetMode.NONE:
      return 'none';
    default:
      throw new InvalidArgumentError(`unknown network mode ${op.network}`);
  }
}

function securityMode(op: PbExecOp): 'sandbox' | 'insecure' {
  switch (op.security) {
    case SecurityMode.SANDBOX:
      return 'sandbox';
    case SecurityMode.INSECURE:
      return 'insecure';
    default:
      throw new InvalidArgumentError(`unknown security mode ${op.security}`);
  }
}

function sharing(m: PbMount): CacheSharing {
  switch (m.cacheOpt?.sharing ?? CacheSharingOpt.SHARED) {
    case CacheSharingOpt.SHARED:
      return 'shared';
    case CacheSharingOpt.PRIVATE:
      return 'private';
    case CacheSharingOpt.LOCKED:
      return 'locked';
    default:
      throw new InvalidArgumentError(`invalid cache sharing option: ${m.cacheOpt?.sharing} for mount ${m.dest}`);
  }
}

/** Upstream's secret lookup: NotFound or Unimplemented from the client read as "not found". */
async function getSecret(s: SessionCaller, id: string, signal: AbortSignal): Promise<Uint8Array | null> {
  if (!s.supports(Secrets.method.getSecret)) return null;
  try {
    const resp = (await s.unary(Secrets.method.getSecret, create(GetSecretRequestSchema, { ID: id }), { signal })) as { data: Uint8Array };
    return resp.data;
  } catch (err) {
    const code = codeOf(err);
    if (code === 'NOT_FOUND' || code === 'UNIMPLEMENTED') return null;
    throw err;
  }
}

/**
 * ExecOp: runs the step's process in a container (through the worker's Executor) over a copy of
 * its root input, with its mounts, and returns one ref per output mount.
 *
 * Ownership: every writable snapshot made here is committed into an output ref or discarded
 * before run() settles; secret files, ssh sockets and cache holds are released likewise.
 */
export class ExecOp implements OpImpl {
  readonly #s: ExecSupport;
  readonly #op: PbExecOp;

  constructor(support: ExecSupport, op: PbExecOp) {
    this.#s = support;
    this.#op = op;
  }

  /**
   * For each op input, the paths `read` names for the mounts of it (each once), or null where
   * `read` gives up on one of them (null for a mount).
   */
  #mountSelectors(read: (m: PbExecOp['mounts'][number]) => string | null): ({ paths: string[]; followSymlinks: boolean } | null)[] {
    const sel: ({ paths: string[]; followSymlinks: boolean } | null | undefined)[] = [];
    for (const m of this.#op.mounts) {
      const i = Number(m.input);
      if (i < 0 || sel[i] === null) continue;
      const p = read(m);
      if (p === null) {
        sel[i] = null;
        continue;
      }
      const cur = sel[i] ?? { paths: [], followSymlinks: true };
      if (!cur.paths.includes(p)) cur.paths.push(p);
      sel[i] = cur;
    }
    // As upstream's exec keys its inputs: a path below another path of the same input is left
    // out (its content is part of that one's), so a mount of `data/x` beside one of `data` whose
    // x is not there (kept out by .dockerignore) fails as the step runs, not in its key.
    return Array.from(sel, (s) => (s ? { ...s, paths: s.paths.filter((p) => !s.paths.some((q) => q !== p && p.startsWith(`${q}/`))) } : null));
  }

  /**
   * A mount's selector (a sub-path of its input) enters the key through the solver's input key
   * rather than the op: as upstream, where selectors are blanked from the op and the selected
   * paths' content keys the input. An input mounted whole anywhere is keyed whole.
   */
  inputSelectors(): ContentSelector[] {
    return this.#mountSelectors((m) => m.selector || null);
  }

  /**
   * As upstream's exec cache map: an input mounted only where the step's changes to it are not
   * kept (read-only, or writable without an output) may be keyed by its content at the mounted
   * path, the whole tree for a mount without a selector; the root and kept mounts may not.
   */
  contentSelectors(): ContentSelector[] {
    return this.#mountSelectors((m) => ((!m.readonly || m.dest === '/') && Number(m.output) !== -1 ? null : m.selector ? path.posix.join('/', m.selector) : '/'));
  }

  async cacheKey(ctx: OpContext): Promise<string> {
    // Refused before anything runs, as upstream refuses at load time.
    checkExecEntitlements(this.#op, ctx.entitlements);
    netMode(this.#op);
    securityMode(this.#op);
    return '';
  }

  async run(ctx: OpContext, inputs: readonly Ref[]): Promise<Ref[]> {
    const op = this.#op;
    checkExecEntitlements(op, ctx.entitlements);
    const t0 = performance.now();
    await this.#s.init();
    const meta = op.meta;
    if (!meta) throw new InvalidArgumentError('exec op has no meta');
    const args = [...meta.args];
    const net = netMode(op);
    const security = securityMode(op);
    const extraHosts = parseExtraHosts(meta.extraHosts);
    const cwd = meta.cwd || '/';

    const cleanups: (() => Promise<void> | void)[] = [];
    const writables: Writable[] = [];
    // Output refs in mount order, as upstream (only bind and cache mounts make outputs).
    const outputs: { writable?: Writable; ref?: Ref; dest: string }[] = [];
    let rootfs: string | undefined;
    let readonlyRoot = false;
    const mounts: ExecMount[] = [];
    let session: SessionCaller | undefined;
    const getSession = async () => (session ??= await ctx.session());
    const inputRef = (m: PbMount): Ref | null => {
      if (m.input === -1n) return null;
      const r = inputs[Number(m.input)];
      if (!r) throw new InvalidArgumentError(`missing input ${m.input} for mount ${m.dest}`);
      return r;
    };
    const newWritable = async (parent: Ref | null): Promise<Writable> => {
      const w = await this.#s.refs.prepare(parent && !isEmptyRef(parent) ? parent : null, { signal: ctx.signal });
      writables.push(w);
      return w;
    };

    try {
      for (const m of op.mounts) {
        const isRoot = m.dest === '/';
        if (isRoot && m.mountType !== MountType.BIND) throw new InvalidArgumentError(`invalid mount type ${MountType[m.mountType]} for ${m.dest}`);
        const ref = inputRef(m);
        const output = Number(m.output);
        const dest = path.posix.isAbsolute(m.dest) ? m.dest : path.posix.join('/', cwd, m.dest);
        let source: ExecMount['source'] | undefined;

        switch (m.mountType) {
          case MountType.BIND: {
            let dir: string | undefined;
            if (output >= 0) {
              if (m.readonly && ref && !isRoot) {
                outputs.push({ ref, dest: m.dest });
                dir = ref.dir;
              } else {
                const w = await newWritable(ref);
                outputs.push({ writable: w, dest: m.dest });
                dir = w.dir;
              }
            } else if ((!m.readonly || !ref) && !isRoot) {
              dir = (await newWritable(ref)).dir;
            } else if (isRoot) {
              // The root is always a copy the step may write (or a read-only view of one).
              dir = (await newWritable(ref)).dir;
            } else {
              dir = ref!.dir;
            }
            if (isRoot) {
              rootfs = dir;
              readonlyRoot = m.readonly;
            } else {
              source = { kind: 'bind', path: dir, selector: m.selector, readonly: m.readonly };
            }
            break;
          }
          case MountType.CACHE: {
            if (!m.cacheOpt) throw new InvalidArgumentError(`missing cache mount options for ${m.dest}`);
            const held = await this.#s.cacheMounts.acquire({
              id: m.cacheOpt.ID,
              sharing: sharing(m),
              from: ref && !isEmptyRef(ref) ? { id: ref.id, dir: ref.dir } : null,
              signal: ctx.signal,
            });
            cleanups.push(held.release);
            if (output >= 0 && ref) outputs.push({ ref, dest: m.dest });
            source = { kind: 'bind', path: held.dir, selector: m.selector, readonly: m.readonly };
            break;
          }
          case MountType.TMPFS:
            source = { kind: 'tmpfs', size: Number(m.TmpfsOpt?.size ?? 0n), readonly: m.readonly };
            break;
          case MountType.SECRET: {
            const so = m.secretOpt;
            if (!so) throw new InvalidArgumentError('invalid secret mount options');
            if (!so.ID) throw new InvalidArgumentError('secret ID missing from mount options');
            // Fetched for each use: a secret is never cached by loom.
            const data = await getSecret(await getSession(), so.ID, ctx.signal);
            if (data === null) {
              if (so.optional) continue;
              throw new LoomError('UNKNOWN', `secret ${so.ID}: not found`);
            }
            ctx.progress.secretRead(ctx.vertex.digest, data);
            const f = await this.#s.secrets.write(data, { uid: so.uid, gid: so.gid, mode: so.mode });
            cleanups.push(f.release);
            source = { kind: 'file', path: f.path, readonly: true };
            break;
          }
          case MountType.SSH: {
            const so = m.SSHOpt;
            if (!so) throw new InvalidArgumentError('invalid ssh mount options');
            const s = await getSession();
            if (!(await checkSshAgent(s, so.ID || 'default', so.optional, ctx.signal))) continue;
            const agent = await forwardSshAgent({ session: s, id: so.ID, dir: this.#s.sshDir, uid: so.uid, gid: so.gid, mode: so.mode });
            cleanups.push(agent.close);
            source = { kind: 'file', path: agent.path, readonly: false };
            break;
          }
          default:
            throw new InvalidArgumentError(`mount type ${MountType[m.mountType] ?? m.mountType} not implemented`);
        }
        if (source) mounts.push({ dest, source });
      }
      if (rootfs === undefined) throw new InvalidArgumentError('exec op has no root mount');
      // Parents are mounted before their children.
      mounts.sort((a, b) => (a.dest < b.dest ? -1 : a.dest > b.dest ? 1 : 0));

      let env = [...meta.env];
      const pe = meta.proxyEnv;
      if (pe) {
        const add = (k: string, v: string) => v && env.push(`${k}=${v}`, `${k.toLowerCase()}=${v}`);
        add('HTTP_PROXY', pe.httpProxy);
        add('HTTPS_PROXY', pe.httpsProxy);
        add('FTP_PROXY', pe.ftpProxy);
        add('NO_PROXY', pe.noProxy);
        add('ALL_PROXY', pe.allProxy);
      }
      if (!env.some((e) => e.startsWith('PATH='))) env.push(`PATH=${DEFAULT_PATH}`);
      for (const se of op.secretenv) {
        if (!se.ID) throw new InvalidArgumentError(`secret ID missing for ${goQuote(se.name)} environment variable`);
        const data = await getSecret(await getSession(), se.ID, ctx.signal);
        if (data === null) {
          if (se.optional) continue;
          throw new LoomError('UNKNOWN', `secret ${se.ID}: not found`);
        }
        ctx.progress.secretRead(ctx.vertex.digest, data);
        env = [...env, `${se.name}=${Buffer.from(data).toString()}`];
      }

      let procArgs = args;
      let binfmt: string[] | undefined;
      const emu = emulatorFor(ctx.platform, this.#s.native, this.#s.emulators);
      if (emu && (await this.#s.executor.ownBinfmt?.())) {
        // The step's own binfmt_misc: its children of the foreign platform run through QEMU too.
        binfmt = binfmtRegistrations(this.#s.native, this.#s.emulators);
      } else if (emu) {
        procArgs = await emulatedArgs(rootfs, args, env);
        mounts.push({ dest: QEMU_MOUNT_PATH, source: { kind: 'bind', path: emu.staticPath, readonly: true } });
      }

      const digest = ctx.vertex.digest;
      const t1 = performance.now();
      try {
        await this.#s.executor.run({
          rootfs,
          mounts,
          process: {
            args: procArgs,
            env,
            cwd,
            user: meta.user,
            hostname: meta.hostname,
            extraHosts,
            ulimits: meta.ulimit.map((u) => ({ name: u.Name, soft: u.Soft, hard: u.Hard })),
            netMode: net,
            security,
            removeMountStubsRecursive: meta.removeMountStubsRecursive,
            readonlyRootfs: readonlyRoot,
            cgroupParent: meta.cgroupParent,
          },
          signal: ctx.signal,
          binfmt,
          stdout: (b) => ctx.progress.log(digest, 1, b),
          stderr: (b) => ctx.progress.log(digest, 2, b),
        });
      } catch (err) {
        const valid = meta.validExitCodes;
        if (emu && !binfmt && err instanceof ExitError && err.exitCode === 126) {
          // Most likely a child of the foreign platform the kernel could not run ("Exec format error").
          ctx.progress.log(digest, 2, Buffer.from(emulationHint(ctx.platform)));
        }
        if (!(err instanceof ExitError && valid.length > 0 && valid.includes(err.exitCode))) {
          // A plain error upstream (gRPC Unknown) whatever failed inside, unless the build was cancelled.
          throw new LoomError(codeOf(err) === 'CANCELLED' ? 'CANCELLED' : 'UNKNOWN', `process ${goQuote(args.join(' '))} did not complete successfully: ${errorMessage(err)}`, { cause: err });
        }
      }
      // A list of valid exit codes (newer clients) may leave 0 out.
      if (meta.validExitCodes.length > 0 && !meta.validExitCodes.includes(0)) {
        throw new LoomError('UNKNOWN', `process ${goQuote(args.join(' '))} did not complete successfully: exit code: 0`);
      }

      const t2 = performance.now();
      const results: Ref[] = [];
      for (const o of outputs) {
        results.push(o.writable ? await o.writable.commit({ description: `mount ${o.dest} from exec ${args.join(' ')}` }) : o.ref!);
      }
      log().debug({ vertex: digest, prepareMs: t1 - t0, runMs: t2 - t1, commitMs: performance.now() - t2 }, 'exec step timings');
      return results;
    } finally {
      for (const w of writables) await w.discard();
      for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
    }
  }
}
