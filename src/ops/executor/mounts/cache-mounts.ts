import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { copyTree } from '../../../snapshot/native/native-snapshotter.js';
import { CancelledError, InvalidArgumentError } from '../../../util/errors.js';

export type CacheSharing = 'shared' | 'private' | 'locked';

interface Instance {
  dir: string;
  holders: number;
  /** Held by `shared` users (others may join) or exclusively. */
  shared: boolean;
}

interface Entry {
  instances: Instance[];
  waiters: (() => void)[];
  /** Serializes creation of instances for this key. */
  creating: Promise<void>;
}

/**
 * Cache mounts (`RUN --mount=type=cache`): directories that outlive builds, kept under
 * `<dir>/<sha256(key)>/<n>`, where the key is the mount's id plus the id of its `from` ref (a
 * cache seeded from another state is another cache, as upstream). A new directory starts as a
 * copy of `from`, or empty (0755, root).
 *
 * Sharing, as upstream: `shared` users use one directory at the same time; `private` takes a
 * directory nobody holds, making a new one if all are held; `locked` waits until the directory is
 * free. Holds are in memory: a restarted daemon starts with none.
 */
export class CacheMounts {
  readonly #dir: string;
  readonly #entries = new Map<string, Entry>();

  constructor(opts: { dir: string }) {
    this.#dir = opts.dir;
  }

  async acquire(o: { id: string; sharing: CacheSharing; from: { id: string; dir: string } | null; signal?: AbortSignal }): Promise<{ dir: string; release: () => void }> {
    if (!o.id) throw new InvalidArgumentError('cache mount has no id');
    const key = o.from ? `${o.id}:${o.from.id}` : o.id;
    const base = path.join(this.#dir, createHash('sha256').update(key).digest('hex'));
    let e = this.#entries.get(key);
    if (!e) {
      e = { instances: await this.#load(base), waiters: [], creating: Promise.resolve() };
      this.#entries.set(key, e);
    }
    const entry = e;
    for (;;) {
      if (o.signal?.aborted) throw new CancelledError('context canceled', { cause: o.signal.reason });
      let inst: Instance | undefined;
      if (o.sharing === 'shared') inst = entry.instances.find((i) => i.holders > 0 && i.shared) ?? entry.instances.find((i) => i.holders === 0);
      else inst = entry.instances.find((i) => i.holders === 0);
      if (!inst && o.sharing === 'locked' && entry.instances.length > 0) {
        await new Promise<void>((resolve, reject) => {
          const wake = () => {
            o.signal?.removeEventListener('abort', onAbort);
            resolve();
          };
          const onAbort = () => {
            entry.waiters = entry.waiters.filter((w) => w !== wake);
            reject(new CancelledError('context canceled', { cause: o.signal?.reason }));
          };
          entry.waiters.push(wake);
          o.signal?.addEventListener('abort', onAbort, { once: true });
        });
        continue;
      }
      if (!inst) {
        const n = entry.instances.length;
        const created = entry.creating.then(() => this.#create(base, key, n, o.from));
        entry.creating = created.then(
          () => {},
          () => {},
        );
        inst = { dir: await created, holders: 0, shared: false };
        entry.instances.push(inst);
      }
      inst.holders++;
      inst.shared = o.sharing === 'shared';
      const held = inst;
      let released = false;
      return {
        dir: held.dir,
        release: () => {
          if (released) return;
          released = true;
          held.holders--;
          if (held.holders === 0) {
            held.shared = false;
            for (const w of entry.waiters.splice(0)) w();
          }
        },
      };
    }
  }

  async #load(base: string): Promise<Instance[]> {
    const names = await readdir(base).catch(() => [] as string[]);
    return names
      .filter((n) => /^\d+$/.test(n))
      .sort((a, b) => Number(a) - Number(b))
      .map((n) => ({ dir: path.join(base, n), holders: 0, shared: false }));
  }

  async #create(base: string, key: string, n: number, from: { dir: string } | null): Promise<string> {
    await mkdir(base, { recursive: true, mode: 0o700 });
    await writeFile(path.join(base, 'key'), key);
    let i = n;
    const names = new Set(await readdir(base));
    while (names.has(String(i))) i++;
    const dir = path.join(base, String(i));
    const tmp = `${dir}.tmp`;
    await rm(tmp, { recursive: true, force: true });
    if (from) {
      await copyTree(from.dir, tmp);
    } else {
      await mkdir(tmp);
      await chmod(tmp, 0o755);
    }
    await rename(tmp, dir);
    return dir;
  }
}
