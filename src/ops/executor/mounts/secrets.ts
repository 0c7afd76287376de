import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, open, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { LoomError } from '../../../util/errors.js';

const run = promisify(execFile);
const TMPFS_MAGIC = 0x01021994;

/**
 * Secret files for secret mounts. They live only in memory: in a tmpfs loom mounts at `<dir>`
 * (nodev, nosuid, noexec) while at least one step holds a secret, and unmounts when the last one
 * is released, so no mount outlives its use (a crash leaves one for cleanupStale). Each file
 * exists for one step; nothing about a secret's content reaches a snapshot, a cache record or a
 * log (the caller binds the file read-only).
 */
export class SecretFiles {
  readonly #dir: string;
  #users = 0;
  /** Mounts and unmounts, one at a time. */
  #chain: Promise<void> = Promise.resolve();
  #mounted = false;

  constructor(opts: { dir: string }) {
    this.#dir = opts.dir;
  }

  #serial(fn: () => Promise<void>): Promise<void> {
    const p = this.#chain.then(fn);
    this.#chain = p.catch(() => {});
    return p;
  }

  async #mount(): Promise<void> {
    if (this.#mounted) return;
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    if ((await statfs(this.#dir)).type !== TMPFS_MAGIC) {
      try {
        // As upstream's: source `tmpfs`, no size or mode among the options, which a step sees in
        // /proc/mounts for its secret files; the root is made 0711 after mounting (which the
        // options do not show), so nobody else can list the secrets.
        await run('mount', ['-t', 'tmpfs', '-o', 'nodev,nosuid,noexec', 'tmpfs', this.#dir]);
        await chmod(this.#dir, 0o711);
      } catch (err) {
        throw new LoomError('FAILED_PRECONDITION', `unable to setup secret mount: cannot mount a tmpfs at ${this.#dir}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
      }
      if ((await statfs(this.#dir)).type !== TMPFS_MAGIC) throw new LoomError('FAILED_PRECONDITION', `${this.#dir} is not a tmpfs after mounting one`);
    }
    this.#mounted = true;
  }

  async #unmount(): Promise<void> {
    if (!this.#mounted || this.#users > 0) return;
    await run('umount', [this.#dir]).catch(() => run('umount', ['-l', this.#dir]).catch(() => {}));
    this.#mounted = false;
  }

  #release(): Promise<void> {
    this.#users--;
    return this.#users === 0 ? this.#serial(() => this.#unmount()) : Promise.resolve();
  }

  /** Writes one secret with the mount's owner and mode; `release` removes it. */
  async write(data: Uint8Array, o: { uid: number; gid: number; mode: number }): Promise<{ path: string; release: () => Promise<void> }> {
    this.#users++;
    const p = path.join(this.#dir, randomBytes(16).toString('hex'));
    try {
      await this.#serial(() => this.#mount());
      const fh = await open(p, 'wx', 0o600);
      try {
        await fh.writeFile(data);
      } finally {
        await fh.close();
      }
      await chown(p, o.uid, o.gid);
      await chmod(p, o.mode & 0o777);
    } catch (err) {
      await rm(p, { force: true });
      await this.#release();
      throw err;
    }
    let released = false;
    return {
      path: p,
      release: async () => {
        if (released) return;
        released = true;
        await rm(p, { force: true });
        await this.#release();
      },
    };
  }
}
