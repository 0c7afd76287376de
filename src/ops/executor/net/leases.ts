import { randomInt } from 'node:crypto';
import { mkdir, open, readdir, readFile, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { LoomError } from '../../../util/errors.js';
import { hostRange, intToIp, type Cidr } from './ipv4.js';

/**
 * Addresses on the bridge, handed out as lease files (`<dir>/<ip>`, holding the owner's netns
 * name), as CNI's host-local IPAM does: the files live in /run, shared by every loom daemon on
 * the host (they share the bridge), and `O_EXCL` creation makes two daemons never take one address.
 * The bridge's own address (the subnet's first) is never handed out.
 */
export class IpLeases {
  readonly #dir: string;
  readonly #first: number;
  readonly #last: number;

  constructor(opts: { dir: string; subnet: Cidr }) {
    this.#dir = opts.dir;
    const [first, last] = hostRange(opts.subnet);
    this.#first = first + 1;
    this.#last = last;
  }

  /** Takes a free address for `owner`; starts at a random place so concurrent takers rarely collide. */
  async allocate(owner: string): Promise<string> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const size = this.#last - this.#first + 1;
    const start = randomInt(size);
    for (let i = 0; i < size; i++) {
      const ip = intToIp(this.#first + ((start + i) % size));
      try {
        const fh = await open(path.join(this.#dir, ip), 'wx', 0o600);
        await fh.writeFile(owner);
        await fh.close();
        return ip;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    throw new LoomError('UNAVAILABLE', `no free address left on the bridge network (${size} in use)`);
  }

  async release(ip: string): Promise<void> {
    await unlink(path.join(this.#dir, ip)).catch(() => {});
  }

  /**
   * Removes the leases whose owner `stale` says is gone (crashed daemons); `ageMs` lets the
   * caller spare young leases of other daemons, which may be creating their namespace right now.
   */
  async sweep(stale: (owner: string, ageMs: number) => boolean): Promise<string[]> {
    const removed: string[] = [];
    for (const ip of await readdir(this.#dir).catch(() => [] as string[])) {
      const f = path.join(this.#dir, ip);
      const [owner, st] = await Promise.all([readFile(f, 'utf8').catch(() => ''), stat(f).catch(() => null)]);
      if (!st) continue;
      if (stale(owner, Date.now() - st.mtimeMs)) {
        await unlink(f).catch(() => {});
        removed.push(ip);
      }
    }
    return removed;
  }
}
