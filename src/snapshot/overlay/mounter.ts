import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { ensureShim } from '../../ops/executor/runc/shim-binary.js';
import { LoomError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';

const log = rootLog.child({ sub: 'snapshot' });

/**
 * Makes the overlay snapshotter's mounts. Node has no mount syscall and loom adds no native Node
 * modules, so one long-lived `loom-runc-shim --mount-helper` (runc-shim/shim.c) makes the
 * mount(2) and umount2(2) calls: a request is one line on its stdin, and requests issued in the
 * same tick go in one write. Measured here (2-core VM, kernel 6.18): a mount + umount pair costs
 * ~1.5 ms this way, ~10-17 ms through mount(8) and umount(8) from a shell, ~27 ms through two
 * Node spawns.
 *
 * The helper's working directory is `cwd`, so overlay options may name layers by short relative
 * paths (`12/fs`): the kernel resolves them against the mounting process's cwd, and the option
 * string has a hard limit of one page (4096 bytes).
 *
 * Ownership: the Mounter owns its helper; `close()` ends it. The helper exits by itself when loom
 * dies (PDEATHSIG, and its stdin closes). While no request is pending it does not keep Node alive.
 */
export interface OverlayMountSpec {
  /** Absolute path of the mount point (an existing directory). */
  target: string;
  /** Layer directories, most recent first, relative to the Mounter's cwd or absolute. */
  lower: readonly string[];
  /** Writable layer and its work dir (same filesystem); both absent for a read-only view. */
  upper?: string;
  work?: string;
  /** Further options (index=off, ...). */
  options?: readonly string[];
}

/** The option string of an overlay mount, as the kernel receives it (a view's `ro` is a flag). */
export function overlayOptions(spec: OverlayMountSpec): string {
  const opts = [`lowerdir=${spec.lower.join(':')}`];
  if (spec.upper !== undefined) opts.push(`upperdir=${spec.upper}`, `workdir=${spec.work}`);
  opts.push(...(spec.options ?? []));
  return opts.join(',');
}

/** Overlay refuses more lower layers than this (OVL_MAX_STACK). */
export const MAX_OVERLAY_LOWERS = 500;
/** mount(2) copies one page of options. */
export const MAX_MOUNT_DATA = 4095;

interface Pending {
  what: string;
  resolve: (r: { errno: number; message: string }) => void;
  reject: (err: Error) => void;
}

const EINVAL = 22;
const ENOENT = 2;

export class Mounter {
  readonly #cwd: string;
  readonly #helper: () => Promise<string>;
  #proc: ChildProcessByStdio<Writable, Readable, null> | null = null;
  #starting: Promise<ChildProcessByStdio<Writable, Readable, null>> | null = null;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #out = '';
  #queue: string[] = [];
  #closed = false;

  /**
   * `stateRoot`: where the helper binary is built if `make -C runc-shim` has not built it (see
   * shim-binary.ts).
   */
  constructor(opts: { cwd: string; stateRoot: string }) {
    this.#cwd = opts.cwd;
    this.#helper = () => ensureShim(opts.stateRoot);
  }

  /** Mounts an overlay; the error names the mount point and carries the kernel's message. */
  async mountOverlay(spec: OverlayMountSpec): Promise<void> {
    const data = overlayOptions(spec);
    if (spec.lower.length === 0) throw new LoomError('INTERNAL', `overlay mount at ${spec.target} without lower layers`);
    if (spec.upper === undefined && spec.lower.length < 2) {
      throw new LoomError('INTERNAL', `read-only overlay mount at ${spec.target} needs two lower layers`);
    }
    if (spec.lower.length > MAX_OVERLAY_LOWERS) {
      throw new LoomError('FAILED_PRECONDITION', `overlay mount at ${spec.target}: ${spec.lower.length} layers exceed overlayfs's limit of ${MAX_OVERLAY_LOWERS}`);
    }
    if (Buffer.byteLength(data) > MAX_MOUNT_DATA) {
      throw new LoomError('FAILED_PRECONDITION', `overlay mount at ${spec.target}: the options of ${spec.lower.length} layers exceed the kernel's ${MAX_MOUNT_DATA + 1}-byte limit`);
    }
    const ro = spec.upper === undefined ? '1' : '0';
    const r = await this.#run(['M', spec.target, 'overlay', 'overlay', ro, data], `mount ${spec.target}`);
    if (r.errno !== 0) throw new LoomError('INTERNAL', `failed to mount overlay at ${spec.target}: ${r.message}`);
  }

  /**
   * Unmounts `target`. Returns false if it was not mounted. A busy mount (a process still has a
   * file or cwd there) is refused unless `detach`, which detaches it now and lets the kernel
   * release it when the last user goes (MNT_DETACH).
   */
  async unmount(target: string, opts: { detach?: boolean } = {}): Promise<boolean> {
    const r = await this.#run(['U', target, opts.detach ? '1' : '0'], `umount ${target}`);
    if (r.errno === 0) return true;
    if (r.errno === EINVAL || r.errno === ENOENT) return false;
    throw new LoomError('INTERNAL', `failed to unmount ${target}: ${r.message}`);
  }

  /** Ends the helper; pending requests fail. */
  close(): void {
    this.#closed = true;
    const proc = this.#proc;
    this.#proc = null;
    if (proc) {
      proc.stdin.end();
      proc.kill();
    }
    this.#failAll(new LoomError('CANCELLED', 'mount helper closed'));
  }

  #run(fields: string[], what: string): Promise<{ errno: number; message: string }> {
    if (this.#closed) return Promise.reject(new LoomError('FAILED_PRECONDITION', `mount helper closed: cannot ${what}`));
    const bad = fields.find((f) => /[\t\n\0]/.test(f));
    if (bad !== undefined) return Promise.reject(new LoomError('INTERNAL', `cannot ${what}: ${JSON.stringify(bad)} holds a tab, newline or NUL`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { what, resolve, reject });
      this.#queue.push([fields[0], String(id), ...fields.slice(1)].join('\t') + '\n');
      if (this.#queue.length === 1) queueMicrotask(() => void this.#flush());
    });
  }

  async #flush(): Promise<void> {
    let proc: ChildProcessByStdio<Writable, Readable, null>;
    try {
      proc = await this.#start();
    } catch (err) {
      this.#failAll(new LoomError('INTERNAL', `failed to start the mount helper: ${(err as Error).message}`, { cause: err }));
      return;
    }
    const text = this.#queue.join('');
    this.#queue = [];
    if (text === '') return;
    this.#setRef(true);
    proc.stdin.write(text);
  }

  #start(): Promise<ChildProcessByStdio<Writable, Readable, null>> {
    if (this.#proc) return Promise.resolve(this.#proc);
    this.#starting ??= (async () => {
      const bin = await this.#helper();
      if (this.#closed) throw new LoomError('CANCELLED', 'mount helper closed');
      const proc = spawn(bin, ['--mount-helper'], { cwd: this.#cwd, env: { LC_ALL: 'C' }, stdio: ['pipe', 'pipe', 'inherit'] });
      this.#proc = proc;
      this.#out = '';
      proc.stdout.setEncoding('utf8');
      proc.stdout.on('data', (s: string) => {
        this.#out += s;
        this.#parseOut();
      });
      proc.stdin.on('error', () => {}); // reported by 'close'
      proc.on('error', (err) => {
        if (this.#proc === proc) this.#proc = null;
        this.#failAll(new LoomError('INTERNAL', `mount helper failed: ${err.message}`, { cause: err }));
      });
      proc.on('close', (code, signal) => {
        if (this.#proc === proc) this.#proc = null;
        if (this.#pending.size > 0) {
          log.warn({ code, signal }, 'mount helper exited with requests pending');
          this.#failAll(new LoomError('INTERNAL', `mount helper exited (${signal ?? code})`));
        }
      });
      return proc;
    })().finally(() => (this.#starting = null));
    return this.#starting;
  }

  #parseOut(): void {
    let nl: number;
    while ((nl = this.#out.indexOf('\n')) >= 0) {
      const line = this.#out.slice(0, nl);
      this.#out = this.#out.slice(nl + 1);
      const m = /^(\d+) (\d+)(?: (.*))?$/.exec(line);
      if (!m) continue;
      const id = Number(m[1]);
      const p = this.#pending.get(id);
      if (!p) continue;
      this.#pending.delete(id);
      if (this.#pending.size === 0) this.#setRef(false);
      p.resolve({ errno: Number(m[2]), message: m[3] ?? '' });
    }
  }

  #failAll(err: Error): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    this.#queue = [];
    for (const p of all) p.reject(new LoomError('INTERNAL', `${p.what}: ${err.message}`, { cause: err }));
  }

  /** An idle helper must not keep the process alive; a busy one must, or awaits would hang. */
  #setRef(on: boolean): void {
    const proc = this.#proc;
    if (!proc) return;
    const items = [proc, proc.stdout, proc.stdin] as unknown as { ref?: () => void; unref?: () => void }[];
    for (const it of items) (on ? it.ref : it.unref)?.call(it);
  }
}

export interface MountInfo {
  mountId: number;
  parentId: number;
  mountPoint: string;
  fsType: string;
}

/** The mounts of this process's namespace, from /proc/self/mountinfo (escapes decoded). */
export async function readMountInfo(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0) continue;
    out.push({ mountId: Number(f[0]), parentId: Number(f[1]), mountPoint: unescapeMountPath(f[4]!), fsType: f[sep + 1]! });
  }
  return out;
}

/** mountinfo writes space, tab, newline and backslash as octal escapes. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}
