import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { LoomError } from '../../util/errors.js';
import { log as rootLog } from '../../util/log.js';

const log = rootLog.child({ sub: 'snapshot' });

/**
 * Runs mount(8) and umount(8) (util-linux) for the overlay snapshotter. Node has no mount syscall
 * and loom adds no native modules, so a command it is; but a Node spawn costs ~15 ms on a small VM
 * before the command even starts, so one long-lived `/bin/sh` runs them all: a request is one line
 * written to its stdin, and requests issued in the same tick go in one write. Measured here (2-core
 * VM, kernel 6.18): mount + umount through the shell ~10-17 ms, through two Node spawns ~27 ms, the
 * bare syscalls ~1.3 ms.
 *
 * The shell's working directory is `cwd`, so overlay options may name layers by short relative
 * paths (`12/fs`): the kernel resolves them against the mounting process's cwd, and the option
 * string has a hard limit of one page (4096 bytes) with mount(2), 256 bytes per value with the new
 * fsconfig() API that util-linux >= 2.39 uses.
 *
 * Ownership: the Mounter owns its shell; `close()` ends it. The shell exits by itself when loom
 * dies (its stdin closes). While no request is pending the shell does not keep Node alive.
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

/** The option string of an overlay mount, as the kernel receives it. */
export function overlayOptions(spec: OverlayMountSpec): string {
  const opts = [`lowerdir=${spec.lower.join(':')}`];
  if (spec.upper !== undefined) opts.push(`upperdir=${spec.upper}`, `workdir=${spec.work}`);
  else opts.push('ro');
  opts.push(...(spec.options ?? []));
  return opts.join(',');
}

/** Overlay refuses more lower layers than this (OVL_MAX_STACK). */
export const MAX_OVERLAY_LOWERS = 500;
/** mount(2) copies one page of options. */
export const MAX_MOUNT_DATA = 4095;

interface Pending {
  what: string;
  rc?: number;
  stderr?: string;
  resolve: (r: { rc: number; stderr: string }) => void;
  reject: (err: Error) => void;
}

const MARK = '@@loom-mount';

export class Mounter {
  readonly #cwd: string;
  #sh: ChildProcessByStdio<Writable, Readable, Readable> | null = null;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #out = '';
  #err = '';
  #queue: string[] = [];
  #closed = false;

  constructor(opts: { cwd: string }) {
    this.#cwd = opts.cwd;
  }

  /** Mounts an overlay; the error names the mount point and carries mount(8)'s message. */
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
    const r = await this.#run(`mount -t overlay -o ${quote(data)} overlay ${quote(spec.target)}`, `mount ${spec.target}`);
    if (r.rc !== 0) throw new LoomError('INTERNAL', `failed to mount overlay at ${spec.target}: ${r.stderr || `mount exited ${r.rc}`}`);
  }

  /**
   * Unmounts `target`. Returns false if it was not mounted. A busy mount (a process still has a
   * file or cwd there) is refused unless `detach`, which detaches it now and lets the kernel
   * release it when the last user goes (umount -l).
   */
  async unmount(target: string, opts: { detach?: boolean } = {}): Promise<boolean> {
    const r = await this.#run(`umount ${opts.detach ? '-l ' : ''}${quote(target)}`, `umount ${target}`);
    if (r.rc === 0) return true;
    if (/not mounted|no mount point specified/i.test(r.stderr)) return false;
    throw new LoomError('INTERNAL', `failed to unmount ${target}: ${r.stderr || `umount exited ${r.rc}`}`);
  }

  /** Ends the shell; pending requests fail. */
  close(): void {
    this.#closed = true;
    const sh = this.#sh;
    this.#sh = null;
    if (sh) {
      sh.stdin.end();
      sh.kill();
    }
    this.#failAll(new LoomError('CANCELLED', 'mount helper closed'));
  }

  #run(cmd: string, what: string): Promise<{ rc: number; stderr: string }> {
    if (this.#closed) return Promise.reject(new LoomError('FAILED_PRECONDITION', `mount helper closed: cannot ${what}`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { what, resolve, reject });
      // stdin from /dev/null: nothing a command reads may eat the following requests.
      this.#queue.push(`${cmd} </dev/null; echo "${MARK} ${id} $?"; echo "${MARK} ${id}" >&2\n`);
      if (this.#queue.length === 1) queueMicrotask(() => this.#flush());
    });
  }

  #flush(): void {
    const text = this.#queue.join('');
    this.#queue = [];
    if (text === '') return;
    let sh: ChildProcessByStdio<Writable, Readable, Readable>;
    try {
      sh = this.#shell();
    } catch (err) {
      this.#failAll(new LoomError('INTERNAL', `failed to start the mount helper: ${(err as Error).message}`, { cause: err }));
      return;
    }
    this.#setRef(true);
    sh.stdin.write(text);
  }

  #shell(): ChildProcessByStdio<Writable, Readable, Readable> {
    if (this.#sh) return this.#sh;
    const env = {
      PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`,
      // Stable, parseable messages ("not mounted").
      LC_ALL: 'C',
    };
    const sh = spawn('/bin/sh', [], { cwd: this.#cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.#sh = sh;
    this.#out = '';
    this.#err = '';
    sh.stdout.setEncoding('utf8');
    sh.stderr.setEncoding('utf8');
    sh.stdout.on('data', (s: string) => {
      this.#out += s;
      this.#parseOut();
    });
    sh.stderr.on('data', (s: string) => {
      this.#err += s;
      this.#parseErr();
    });
    sh.stdin.on('error', () => {}); // reported by 'close'
    sh.on('error', (err) => {
      if (this.#sh === sh) this.#sh = null;
      this.#failAll(new LoomError('INTERNAL', `mount helper failed: ${err.message}`, { cause: err }));
    });
    sh.on('close', (code, signal) => {
      if (this.#sh === sh) this.#sh = null;
      if (this.#pending.size > 0) {
        log.warn({ code, signal }, 'mount helper exited with requests pending');
        this.#failAll(new LoomError('INTERNAL', `mount helper exited (${signal ?? code})`));
      }
    });
    return sh;
  }

  #parseOut(): void {
    const re = new RegExp(`${MARK} (\\d+) (\\d+)\\n`, 'g');
    let m: RegExpExecArray | null;
    let end = 0;
    while ((m = re.exec(this.#out)) !== null) {
      const p = this.#pending.get(Number(m[1]));
      if (p) {
        p.rc = Number(m[2]);
        this.#settle(Number(m[1]), p);
      }
      end = re.lastIndex;
    }
    // Whatever the commands print on stdout is not ours to keep; a partial last line may be the
    // start of a marker whose end is still in the pipe.
    const rest = this.#out.slice(end);
    this.#out = rest.slice(rest.lastIndexOf('\n') + 1);
  }

  #parseErr(): void {
    const re = new RegExp(`${MARK} (\\d+)\\n`, 'g');
    let m: RegExpExecArray | null;
    let start = 0;
    while ((m = re.exec(this.#err)) !== null) {
      const p = this.#pending.get(Number(m[1]));
      if (p) {
        p.stderr = this.#err.slice(start, m.index).trim();
        this.#settle(Number(m[1]), p);
      }
      start = re.lastIndex;
    }
    this.#err = this.#err.slice(start);
  }

  #settle(id: number, p: Pending): void {
    if (p.rc === undefined || p.stderr === undefined) return;
    this.#pending.delete(id);
    if (this.#pending.size === 0) this.#setRef(false);
    p.resolve({ rc: p.rc, stderr: p.stderr });
  }

  #failAll(err: Error): void {
    const all = [...this.#pending.values()];
    this.#pending.clear();
    this.#queue = [];
    for (const p of all) p.reject(new LoomError('INTERNAL', `${p.what}: ${err.message}`, { cause: err }));
  }

  /** An idle shell must not keep the process alive; a busy one must, or awaits would hang. */
  #setRef(on: boolean): void {
    const sh = this.#sh;
    if (!sh) return;
    const items = [sh, sh.stdout, sh.stderr, sh.stdin] as unknown as { ref?: () => void; unref?: () => void }[];
    for (const it of items) (on ? it.ref : it.unref)?.call(it);
  }
}

/** A word for sh: single-quoted, with embedded quotes closed and escaped. */
function quote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
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
