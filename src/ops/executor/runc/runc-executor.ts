import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, lstatSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { CancelledError, InvalidArgumentError, LoomError } from '../../../util/errors.js';
import { pathInRoot, resolveInRootSync } from '../../../util/fs-safe.js';
import { log as rootLog } from '../../../util/log.js';
import { readTextOrEmpty } from '../../../util/read-text.js';
import { ExitError, type ExecMount, type Executor, type RunRequest } from '../executor.js';
import { HostsFiles } from '../hosts.js';
import { mountStubs } from '../mount-stubs.js';
import type { NetworkProviders } from '../network.js';
import { ResolvConf } from '../resolv-conf.js';
import { resolveUser } from '../user.js';
import { ensureShim } from './shim-binary.js';
import { capsFromBitmap, generateSpec, type SpecMount } from './spec.js';
import { cleanupStale, CONTAINER_ID_RE, executorPaths, removeBundle } from './stale.js';
import { startTraceCollector, traceEnv, TRACE_SOCKET_IN_CONTAINER } from '../trace-socket.js';

const log = () => rootLog.child({ sub: 'executor' });
const run = promisify(execFile);

export interface RuncExecutorOptions {
  /** The daemon's state root: the executor keeps its files in `<root>/executor`. */
  stateRoot: string;
  network: NetworkProviders;
  /** The runc binary (default `runc` on PATH). */
  runc?: string;
  /** The host's OCI architecture (seccomp architectures). */
  hostArch: string;
}

/** A fresh container id: loom's own randomness only, never anything from the build. */
export function newContainerId(): string {
  const id = 'loom-' + randomBytes(12).toString('hex');
  if (!CONTAINER_ID_RE.test(id)) throw new Error('container id shape');
  return id;
}

/**
 * Runs steps with runc through loom-runc-shim (see runc-shim/README.md), one container per run.
 * The shim owns the container's life; this class prepares the bundle (config.json from
 * spec.ts), the resolv.conf and hosts files, and maps the shim's outcome to errors.
 */
export class RuncExecutor implements Executor {
  readonly #o: RuncExecutorOptions;
  readonly #paths: ReturnType<typeof executorPaths>;
  readonly #resolv: ResolvConf;
  readonly #hosts: HostsFiles;
  #ready: Promise<{ shim: string; effectiveCaps: string[]; traceSocket: string | undefined }> | null = null;
  #ownBinfmt: Promise<boolean> | null = null;

  constructor(opts: RuncExecutorOptions) {
    this.#o = opts;
    this.#paths = executorPaths(opts.stateRoot);
    this.#resolv = new ResolvConf({ stateDir: this.#paths.base });
    this.#hosts = new HostsFiles({ stateDir: this.#paths.base });
  }

  get paths(): ReturnType<typeof executorPaths> {
    return this.#paths;
  }

  /** Cleans up after a crashed daemon and builds or finds the shim. Idempotent; run() awaits it. */
  init(): Promise<{ shim: string; effectiveCaps: string[]; traceSocket: string | undefined }> {
    this.#ready ??= (async () => {
      await cleanupStale({ stateRoot: this.#o.stateRoot, runc: this.#o.runc });
      await mkdir(this.#paths.runcRoot, { recursive: true, mode: 0o711 });
      await mkdir(this.#paths.bundles, { recursive: true, mode: 0o711 });
      // Stale hosts files of an earlier run (upstream removes them at start too).
      await rm(path.join(this.#paths.base, 'hosts'), { force: true });
      await rm(path.join(this.#paths.base, 'resolv.conf'), { force: true });
      const shim = await ensureShim(this.#o.stateRoot);
      const status = await readFile('/proc/self/status', 'utf8').catch(() => '');
      const effectiveCaps = capsFromBitmap(/^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? '0');
      // Upstream's trace collector socket, bound into every step (trace-socket.ts). A daemon that
      // cannot make it runs steps without it, as upstream's does.
      const traceSocket = await startTraceCollector(this.#paths.traceSocket).then(
        () => this.#paths.traceSocket,
        (err: unknown) => {
          log().warn({ err: (err as Error).message }, 'cannot serve the trace collector socket; steps run without it');
          return undefined;
        },
      );
      return { shim, effectiveCaps, traceSocket };
    })();
    this.#ready.catch(() => (this.#ready = null));
    return this.#ready;
  }

  /**
   * Whether steps can have a binfmt_misc instance of their own (Linux 6.7 and later, in a user
   * namespace): asked of the shim once. Where not, foreign binaries run through QEMU only as the
   * step's first process, and a child of the foreign platform needs a handler on the host.
   */
  ownBinfmt(): Promise<boolean> {
    this.#ownBinfmt ??= (async () => {
      const { shim } = await this.init();
      try {
        await run(shim, ['--probe-binfmt'], { timeout: 10_000 });
        return true;
      } catch (err) {
        const why = ((err as { stderr?: string }).stderr ?? '').trim() || (err as Error).message;
        log().warn({ reason: why }, 'steps for other platforms run through QEMU without binfmt_misc: their child processes of that platform need a handler on the host');
        return false;
      }
    })();
    return this.#ownBinfmt;
  }

  async run(req: RunRequest): Promise<void> {
    const { shim, effectiveCaps, traceSocket } = await this.init();
    const p = req.process;
    if (req.signal.aborted) throw new CancelledError('context canceled', { cause: req.signal.reason });
    if (!p.args.length) throw new InvalidArgumentError('no process args: the step has nothing to run');
    if (!path.posix.isAbsolute(p.cwd)) throw new InvalidArgumentError(`working directory ${JSON.stringify(p.cwd)} is not absolute`);
    const cwd = path.posix.normalize(p.cwd);
    // procfs is mounted over /proc: a working directory there names the runtime's own files
    // (/proc/self/fd/N was a container breakout in runc). Nothing a build needs lives there.
    if (cwd === '/proc' || cwd.startsWith('/proc/')) {
      throw new InvalidArgumentError(`working directory ${cwd} is inside /proc, which is not allowed`);
    }

    const t0 = performance.now();
    const id = newContainerId();
    const bundle = path.join(this.#paths.bundles, id);
    const releases: (() => Promise<void>)[] = [];
    // A step's setup is a few dozen metadata calls on small local files (the bundle, the rootfs's
    // /etc, the working directory): made synchronously, they cost less than the thread-pool round
    // trips each would take awaited.
    mkdirSync(bundle, { mode: 0o711 });
    try {
      const resolvConf = await this.#resolv.get();
      const hosts = await this.#hosts.get(p.hostname, p.extraHosts);
      releases.push(hosts.release);
      // Insecure steps hold CAP_NET_ADMIN and could reconfigure a namespace: never reused.
      const net = await this.#o.network.acquire(p.netMode, { reusable: p.security !== 'insecure' });
      if (net.kind === 'netns') releases.push(net.release);

      const stubs = mountStubs(req.rootfs, req.mounts.map((m) => m.dest), p.removeMountStubsRecursive);
      const user = await resolveUser(req.rootfs, p.user);
      ensureCwd(req.rootfs, cwd, user.uid, user.gid);

      const srcArgs: string[] = [];
      const staging = path.join(bundle, 'mnt');
      const mounts = req.mounts.map((m) => toSpecMount(m, staging, srcArgs));
      if (srcArgs.length) mkdirSync(staging, { mode: 0o700 });
      // The shim binds the step's user namespace on this empty file.
      const userns = req.binfmt?.length ? path.join(bundle, 'userns') : undefined;
      if (userns) writeFileSync(userns, '', { mode: 0o600 });
      const spec = generateSpec({
        id,
        rootfs: req.rootfs,
        process: { ...p, cwd, env: traceSocket ? [...p.env, ...traceEnv()] : p.env },
        user,
        resolvConf,
        hosts: hosts.path,
        mounts: traceSocket ? [...mounts, { destination: TRACE_SOCKET_IN_CONTAINER, type: 'bind', source: traceSocket, options: ['ro', 'rbind'] }] : mounts,
        newNetns: net.kind !== 'host',
        netnsPath: net.kind === 'netns' ? net.path : undefined,
        hostArch: this.#o.hostArch,
        effectiveCaps,
        userns,
      });
      writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec));

      const statusFile = path.join(bundle, 'status');
      const args = ['--root', this.#paths.runcRoot, '--id', id, '--bundle', bundle, '--status', statusFile];
      if (this.#o.runc) args.push('--runc', this.#o.runc);
      args.push(...srcArgs);
      if (userns) {
        args.push('--userns', userns);
        for (const r of req.binfmt!) args.push('--binfmt', r);
        if (net.kind === 'netns') args.push('--netns', net.path);
      }
      if (stubs.length) {
        args.push('--stub-root', req.rootfs);
        for (const s of stubs) args.push('--stub', s);
      }
      const t1 = performance.now();
      const shimExit = p.tty ? await runPty(shim, args, req) : await runPiped(shim, args, req);
      // The shim's report (`exit N` or `error ...`), or '' when it wrote none.
      const status = readTextOrEmpty(statusFile);
      log().debug({ id, args: p.args, setupMs: t1 - t0, containerMs: performance.now() - t1 }, 'container ended');
      if (req.signal.aborted) throw new CancelledError('context canceled', { cause: req.signal.reason });
      const m = /^(exit|error|nosrc) (.*)\n?$/s.exec(status);
      if (!m) throw new LoomError('INTERNAL', `runc shim for ${id} ended (${shimExit}) without reporting the process's status`);
      if (m[1] === 'error') throw new LoomError('INTERNAL', m[2]!.trim());
      if (m[1] === 'nosrc') {
        // A bind mount's source is not there: in runc's words, in the step's log, and the
        // process fails with exit code 1, as upstream's does.
        const [, errno, root, sub] = /^(\d+) ([^\t]*)\t(.*)$/s.exec(m[2]!.replace(/\n$/, '')) ?? [];
        // `--src STAGING=ROOT:SUB`: the spec mount whose source is that staging path.
        const staged = srcArgs.find((a) => a.endsWith(`=${root}:${sub}`))?.split('=')[0];
        const dest = mounts.find((x) => staged !== undefined && x.source === staged)?.destination ?? '';
        const src = path.join(root ?? '', sub ?? '');
        const why = Number(errno) === 20 ? 'not a directory' : 'no such file or directory';
        req.stderr?.(Buffer.from(`runc run failed: unable to start container process: error during container init: error mounting "${src}" to rootfs at "${dest}": stat ${src}: ${why}\n`));
        throw new ExitError(1);
      }
      const code = Number(m[2]);
      if (code !== 0) throw new ExitError(code);
    } finally {
      for (const r of releases) await r().catch(() => {});
      await removeBundle(bundle);
    }
  }
}

/**
 * The spec mount of one executor mount. A bind with a selector is resolved by the shim inside
 * its source directory (openat2 RESOLVE_IN_ROOT) and bound on a staging path in the bundle that
 * the spec names: the directory may belong to other running steps (a shared cache), which could
 * otherwise swap a component for a symlink between a resolution here and runc's mount.
 */
function toSpecMount(m: ExecMount, staging: string, srcArgs: string[]): SpecMount {
  const s = m.source;
  switch (s.kind) {
    case 'tmpfs': {
      const options = ['nosuid'];
      if (s.readonly) options.push('ro');
      if (s.size && s.size > 0) options.push(`size=${s.size}`);
      return { destination: m.dest, type: 'tmpfs', source: 'tmpfs', options };
    }
    case 'file':
      return { destination: m.dest, type: 'bind', source: s.path, options: s.readonly ? ['ro', 'rbind', 'nodev', 'nosuid', 'noexec'] : ['rbind'] };
    case 'bind': {
      const options = s.readonly ? ['rbind', 'ro'] : ['rbind'];
      const sel = path.posix.normalize('/' + (s.selector ?? ''));
      if (sel === '/') return { destination: m.dest, type: 'bind', source: s.path, options };
      if (/[:=]/.test(s.path)) throw new InvalidArgumentError(`mount source ${s.path} holds ':' or '='`);
      const target = path.join(staging, String(srcArgs.length / 2));
      srcArgs.push('--src', `${target}=${s.path}:${sel}`);
      return { destination: m.dest, type: 'bind', source: target, options };
    }
  }
}

/**
 * Creates the working directory if missing, owned by the process's user (upstream's
 * MkdirAllAndChown). The rootfs is this step's own and nothing runs in it yet, so resolving in
 * the root and then creating is race-free.
 */
function ensureCwd(rootfs: string, cwd: string, uid: number, gid: number): void {
  const host = resolveInRootSync(rootfs, cwd);
  // The same check on the path symlinks in the rootfs lead to (runc checks the final directory too).
  const inRoot = pathInRoot(rootfs, host);
  if (inRoot === '/proc' || inRoot.startsWith('/proc/')) {
    throw new InvalidArgumentError(`working directory ${cwd} leads to ${inRoot}, inside /proc, which is not allowed`);
  }
  if (exists(host)) return;
  const missing: string[] = [];
  for (let d = host; d !== rootfs && d.startsWith(rootfs + '/'); d = path.dirname(d)) {
    if (exists(d)) break;
    missing.unshift(d);
  }
  for (const d of missing) {
    try {
      mkdirSync(d, { mode: 0o755 });
    } catch (err) {
      throw new LoomError('INTERNAL', `failed to create working directory ${cwd}: ${(err as Error).message}`, { cause: err });
    }
    chownSync(d, uid, gid);
  }
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function abortWith(signal: AbortSignal, kill: () => void): () => void {
  const onAbort = () => kill();
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function runPiped(shim: string, args: string[], req: RunRequest): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(shim, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    // SIGTERM is the shim's cancel: it kills the container and still reports and cleans up.
    const off = abortWith(req.signal, () => child.kill('SIGTERM'));
    child.stdout.on('data', (b: Buffer) => req.stdout?.(b));
    child.stderr.on('data', (b: Buffer) => req.stderr?.(b));
    child.on('error', (err) => {
      off();
      reject(new LoomError('INTERNAL', `failed to start the runc shim ${shim}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, sig) => {
      off();
      resolve(sig ? `signal ${sig}` : `code ${code}`);
    });
  });
}

async function runPty(shim: string, args: string[], req: RunRequest): Promise<string> {
  const pty = await import('node-pty');
  const size = req.process.size ?? { cols: 80, rows: 24 };
  const term = pty.spawn(shim, args, {
    name: 'xterm',
    cols: size.cols,
    rows: size.rows,
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
    encoding: null,
  });
  req.onResize?.((s) => term.resize(s.cols, s.rows));
  let feeding = true;
  // Typing ends with the process; a stdin that never ends must not keep the run alive.
  void (async () => {
    if (!req.stdin) return;
    for await (const chunk of req.stdin) {
      if (!feeding) break;
      term.write(chunk);
    }
  })().catch(() => {});
  return new Promise((resolve) => {
    const off = abortWith(req.signal, () => term.kill('SIGTERM'));
    term.onData((d: string | Buffer) => req.stdout?.(Buffer.isBuffer(d) ? d : Buffer.from(d)));
    term.onExit(({ exitCode, signal }) => {
      off();
      feeding = false;
      resolve(signal ? `signal ${signal}` : `code ${exitCode}`);
    });
  });
}
