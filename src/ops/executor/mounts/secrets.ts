import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, open, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { LoomError } from '../../../util/errors.js';

const run = promisify(execFile);
const TMPFS_MAGIC = 0x01021994;

/**
 * Secret files for secret mounts. They live only in memory: in a tmpfs loom mounts at
 * `<dir>` (nodev, nosuid, noexec, mode 0700) the first time a secret is needed. Each file exists
 * for one step and is removed when the step ends; nothing about a secret's content reaches a
 * snapshot, a cache record or a log (the caller binds the file read-only).
 */
export class SecretFiles {
  readonly #dir: string;
  #ready: Promise<void> | null = null;

  constructor(opts: { dir: string }) {
    this.#dir = opts.dir;
  }

  #init(): Promise<void> {
    this.#ready ??= (async () => {
      await mkdir(this.#dir, { recursive: true, mode: 0o700 });
      if ((await statfs(this.#dir)).type === TMPFS_MAGIC) return;
      try {
        await run('mount', ['-t', 'tmpfs', '-o', 'mode=0711,nodev,nosuid,noexec,size=64m', 'loom-secrets', this.#dir]);
      } catch (err) {
        throw new LoomError('FAILED_PRECONDITION', `unable to setup secret mount: cannot mount a tmpfs at ${this.#dir}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
      }
      if ((await statfs(this.#dir)).type !== TMPFS_MAGIC) throw new LoomError('FAILED_PRECONDITION', `${this.#dir} is not a tmpfs after mounting one`);
    })();
    this.#ready.catch(() => (this.#ready = null));
    return this.#ready;
  }

  /** Writes one secret with the mount's owner and mode; `release` removes it. */
  async write(data: Uint8Array, o: { uid: number; gid: number; mode: number }): Promise<{ path: string; release: () => Promise<void> }> {
    await this.#init();
    const p = path.join(this.#dir, randomBytes(16).toString('hex'));
    const fh = await open(p, 'wx', 0o600);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
    try {
      await chown(p, o.uid, o.gid);
      await chmod(p, o.mode & 0o777);
    } catch (err) {
      await rm(p, { force: true });
      throw err;
    }
    return { path: p, release: () => rm(p, { force: true }) };
  }
}
