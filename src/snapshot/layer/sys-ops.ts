import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lutimes } from 'node:fs/promises';
import { log as rootLog } from '../../util/log.js';
import { LoomError } from '../../util/errors.js';

/**
 * The few syscalls Node lacks: extended attributes, timestamps with exact nanoseconds (Node's
 * utimes takes a double and rounds the nanoseconds, so a copied file would no longer compare equal
 * to its source in a later diff), and mknod. loom may not add native modules, so they go in
 * batches to a python3 helper (python3 is on every machine loom runs on). Batching matters: a tree
 * operation asks once for all its paths.
 *
 * The helper is one long-lived process per loom process, answering one JSON line per request in
 * order: starting python costs 20-50 ms, which a COPY of one file used to pay three times (list
 * xattrs, set xattrs, set times). It is started at the first call, and again after it dies
 * (requests in flight then fail). It never keeps the process alive: its handles are unreferenced
 * while no request is waiting, and it ends when its stdin closes with the process.
 *
 * When python3 is missing: xattr reads answer "none" and writes are skipped (with one warning, the
 * degradation upstream applies on filesystems without xattrs), times fall back to Node's rounding
 * lutimes, and mknod to the mknod(1) command.
 *
 * Symlinks are never followed.
 */

const log = rootLog.child({ sub: 'sys-ops' });

const HELPER = String.raw`
import os, sys, json, base64
def b64(v):
    return base64.b64encode(v).decode('ascii')
def each(items, fn):
    # One result per item: None, or the error's message.
    out = []
    for it in items:
        try:
            fn(it)
            out.append(None)
        except OSError as e:
            out.append(e.strerror or str(e))
    return out
def handle(req):
    op = req['op']
    out = []
    if op == 'get':
        name = req['name']
        for p in req['paths']:
            try:
                out.append(b64(os.getxattr(p, name, follow_symlinks=False)))
            except OSError:
                out.append(None)
    elif op == 'list':
        for p in req['paths']:
            d = {}
            try:
                for n in os.listxattr(p, follow_symlinks=False):
                    try:
                        d[n] = b64(os.getxattr(p, n, follow_symlinks=False))
                    except OSError:
                        pass
            except OSError:
                pass
            out.append(d)
    elif op == 'set':
        out = each(req['items'], lambda it: os.setxattr(it['path'], it['name'], base64.b64decode(it['value']), follow_symlinks=False))
    elif op == 'utimes':
        out = each(req['items'], lambda it: os.utime(it['path'], ns=(int(it['atime']), int(it['mtime'])), follow_symlinks=False))
    elif op == 'mknod':
        out = each(req['items'], lambda it: os.mknod(it['path'], int(it['mode']), int(it['rdev'])))
    else:
        raise ValueError('unknown op ' + repr(op))
    return out
while True:
    line = sys.stdin.readline()
    if not line:
        break
    rid = None
    try:
        req = json.loads(line)
        rid = req.get('id')
        res = {'id': rid, 'out': handle(req)}
    except Exception as e:
        res = {'id': rid, 'error': '%s: %s' % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(res) + '\n')
    sys.stdout.flush()
`;

let available: boolean | undefined;

/**
 * The system interpreter, not a version-manager shim (a pyenv shim costs ~200 ms a start); -S -E
 * skip site packages and environment for a ~20 ms start.
 */
const PYTHON = ['/usr/bin/python3', '/usr/local/bin/python3'].find((p) => existsSync(p)) ?? 'python3';

interface Waiter {
  resolve: (out: unknown[]) => void;
  reject: (err: Error) => void;
}

/** The running helper: requests are answered in order, each by id. */
class Helper {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #waiting = new Map<number, Waiter>();
  #nextId = 1;
  #buf = '';
  #stderr = '';
  #dead: Error | undefined;
  /** Called once when the process is gone, so the next request starts another. */
  readonly #onExit: (h: Helper) => void;

  constructor(opts: { onExit: (h: Helper) => void; onMissing: () => void }) {
    this.#onExit = opts.onExit;
    this.#child = spawn(PYTHON, ['-S', '-E', '-u', '-c', HELPER], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stdout.setEncoding('utf8');
    this.#child.stdout.on('data', (chunk: string) => this.#onData(chunk));
    this.#child.stderr.on('data', (b: Buffer) => {
      this.#stderr = (this.#stderr + b.toString()).slice(-2000);
    });
    this.#child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') opts.onMissing();
      this.#fail(e.code === 'ENOENT' ? new MissingPython() : new LoomError('INTERNAL', `sys-ops helper failed to start: ${e.message}`, { cause: e }));
    });
    this.#child.on('close', (code, signal) => {
      this.#fail(new LoomError('INTERNAL', `sys-ops helper exited (${signal ?? code})${this.#stderr ? `: ${this.#stderr.trim()}` : ''}`));
    });
    // A helper that died closes stdin under us; the close handler reports it.
    this.#child.stdin.on('error', () => {});
    this.#idle();
  }

  request(req: Record<string, unknown>): Promise<unknown[]> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise<unknown[]>((resolve, reject) => {
      if (this.#waiting.size === 0) this.#busy();
      this.#waiting.set(id, { resolve, reject });
      this.#child.stdin.write(`${JSON.stringify({ ...req, id })}\n`);
    });
  }

  #onData(chunk: string): void {
    this.#buf += chunk;
    for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
      const line = this.#buf.slice(0, nl);
      this.#buf = this.#buf.slice(nl + 1);
      let res: { id?: number; out?: unknown[]; error?: string };
      try {
        res = JSON.parse(line) as typeof res;
      } catch (e) {
        this.#fail(new LoomError('INTERNAL', 'sys-ops helper gave unreadable output', { cause: e }));
        this.#child.kill();
        return;
      }
      const w = res.id === undefined ? undefined : this.#waiting.get(res.id);
      if (!w) continue;
      this.#waiting.delete(res.id!);
      if (this.#waiting.size === 0) this.#idle();
      if (res.error !== undefined || !Array.isArray(res.out)) w.reject(new LoomError('INTERNAL', `sys-ops helper failed: ${res.error ?? 'no answer'}`));
      else w.resolve(res.out);
    }
  }

  #fail(err: Error): void {
    if (!this.#dead) {
      this.#dead = err;
      this.#onExit(this);
    }
    for (const w of this.#waiting.values()) w.reject(err);
    this.#waiting.clear();
  }

  /** Nothing waits on the helper: it must not keep the process alive. */
  #idle(): void {
    this.#child.unref();
    (this.#child.stdout as unknown as { unref?: () => void }).unref?.();
    (this.#child.stderr as unknown as { unref?: () => void }).unref?.();
    (this.#child.stdin as unknown as { unref?: () => void }).unref?.();
  }

  /** A request waits for its answer: keep the process alive until it comes. */
  #busy(): void {
    (this.#child.stdout as unknown as { ref?: () => void }).ref?.();
  }
}

/** Spawning python3 failed with ENOENT. */
class MissingPython extends Error {}

let helper: Helper | undefined;

async function runHelper(req: Record<string, unknown>): Promise<unknown[] | null> {
  if (available === false) return null;
  helper ??= new Helper({
    onExit: (h) => {
      if (helper === h) helper = undefined;
    },
    onMissing: () => {
      if (available === undefined) log.warn('python3 not found: xattrs are not kept, times are rounded to microseconds');
      available = false;
    },
  });
  try {
    const out = await helper.request(req);
    available = true;
    return out;
  } catch (err) {
    if (err instanceof MissingPython) return null;
    throw err;
  }
}

/** The value of xattr `name` of each path (null where absent or unreadable). */
export async function getXattr(paths: readonly string[], name: string): Promise<(Buffer | null)[]> {
  if (paths.length === 0) return [];
  const res = await runHelper({ op: 'get', name, paths });
  if (res === null) return paths.map(() => null);
  return res.map((v) => (typeof v === 'string' ? Buffer.from(v, 'base64') : null));
}

/** Every xattr of each path. */
export async function listXattrs(paths: readonly string[]): Promise<Map<string, Buffer>[]> {
  if (paths.length === 0) return [];
  const res = await runHelper({ op: 'list', paths });
  if (res === null) return paths.map(() => new Map());
  return res.map((d) => new Map(Object.entries(d as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64')])));
}

export interface XattrWrite {
  path: string;
  name: string;
  value: Buffer;
}

/** Sets xattrs; returns one error string (or null) per item so callers pick their own policy. */
export async function setXattrs(items: readonly XattrWrite[]): Promise<(string | null)[]> {
  if (items.length === 0) return [];
  const res = await runHelper({
    op: 'set',
    items: items.map((i) => ({ path: i.path, name: i.name, value: i.value.toString('base64') })),
  });
  if (res === null) return items.map(() => 'xattrs unsupported (no python3)');
  return res.map((v) => (typeof v === 'string' ? v : null));
}

/**
 * Copies every xattr of each src onto its dst, but those `skip` names (an overlay's own markers,
 * which are not content); a failure is logged, not thrown.
 */
export async function copyXattrs(pairs: readonly { src: string; dst: string }[], opts: { skip?: (name: string) => boolean } = {}): Promise<void> {
  if (pairs.length === 0) return;
  const lists = await listXattrs(pairs.map((p) => p.src));
  const writes: XattrWrite[] = [];
  lists.forEach((m, i) => {
    for (const [name, value] of m) if (!opts.skip?.(name)) writes.push({ path: pairs[i]!.dst, name, value });
  });
  const errs = await setXattrs(writes);
  errs.forEach((e, i) => {
    // Upstream's copy logs and goes on: xattrs from one filesystem may not fit another.
    if (e) log.debug({ path: writes[i]!.path, xattr: writes[i]!.name, err: e }, 'failed to set xattr');
  });
}

export interface TimesWrite {
  path: string;
  /** Nanoseconds since the epoch. */
  atimeNs: bigint;
  mtimeNs: bigint;
}

/**
 * Sets access and modification times with nanosecond precision, not following symlinks. Throws on
 * the first failure, naming the path.
 */
export async function setTimes(items: readonly TimesWrite[]): Promise<void> {
  if (items.length === 0) return;
  const res = await runHelper({
    op: 'utimes',
    items: items.map((i) => ({ path: i.path, atime: i.atimeNs.toString(), mtime: i.mtimeNs.toString() })),
  });
  if (res === null) {
    for (const i of items) {
      await lutimes(i.path, nsToSeconds(i.atimeNs), nsToSeconds(i.mtimeNs));
    }
    return;
  }
  res.forEach((e, idx) => {
    if (typeof e === 'string') throw new LoomError('INTERNAL', `failed to set times of ${items[idx]!.path}: ${e}`);
  });
}

function nsToSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}

/** Creates a device node, FIFO or socket stub: mode carries the S_IF* type bits. */
export async function mknod(path: string, mode: number, rdev: number): Promise<void> {
  const res = await runHelper({ op: 'mknod', items: [{ path, mode, rdev }] });
  if (res !== null) {
    if (typeof res[0] === 'string') throw new LoomError('INTERNAL', `failed to mknod ${path}: ${res[0]}`);
    return;
  }
  await mknodCommand(path, mode, rdev);
}

async function mknodCommand(path: string, mode: number, rdev: number): Promise<void> {
  const type = mode & 0o170000;
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  const args = ['-m', (mode & 0o7777).toString(8), path];
  if (type === 0o020000) args.push('c', String(major), String(minor));
  else if (type === 0o060000) args.push('b', String(major), String(minor));
  else if (type === 0o010000) args.push('p');
  else throw new LoomError('INTERNAL', `cannot create ${path}: unsupported file type ${type.toString(8)}`);
  await new Promise<void>((resolve, reject) => {
    const child = spawn('mknod', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new LoomError('INTERNAL', `mknod ${path}: ${Buffer.concat(err).toString().trim()}`)),
    );
  });
}
