import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { copyTree } from '../../../snapshot/native/native-snapshotter.js';
import { CancelledError, InvalidArgumentError } from '../../../util/errors.js';

export type CacheSharing = 'shared' | 'private' | 'locked';

/** One cache directory as a cache record. */
export interface CacheMountRecord {
  id: string;
  /** The mount's id (and its `from` ref's, after a colon). */
  key: string;
  dir: string;
  inUse: boolean;
  createdAt: number;
  lastUsedAt: number;
}

interface Instance {
  dir: string;
  holders: number;
  /** Held by `shared` users (others may join) or exclusively. */
  shared: boolean;
}

interface Entry {
  instances: Instance[];
  waiters: (() => void)[];
  /** The directories already on disk, read once when the key is first asked for. */
  loaded: Promise<void>;
  /** The directory being made now, if any (one at a time per key; it is its maker's, held). */
  creating: Promise<Instance> | undefined;
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
    // The entry is registered before anything is awaited: steps asking for one cache at the same
    // moment (the platforms of one multi-platform RUN) share it, and so its directories.
    let e = this.#entries.get(key);
    if (!e) {
      const fresh: Entry = { instances: [], waiters: [], loaded: Promise.resolve(), creating: undefined };
      fresh.loaded = this.#load(base).then((list) => {
        fresh.instances.unshift(...list);
      });
      this.#entries.set(key, fresh);
      e = fresh;
    }
    const entry = e;
    await entry.loaded;
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
      if (!inst && entry.creating) {
        // Another step is making a directory of this cache: a shared user joins it, the others
        // look again once it exists.
        await entry.creating.catch(() => undefined);
        continue;
      }
      if (!inst) {
        const made = this.#create(base, key, entry.instances.length, o.from).then((d) => {
          const ni: Instance = { dir: d, holders: 1, shared: o.sharing === 'shared' };
          entry.instances.push(ni);
          return ni;
        });
        entry.creating = made;
        try {
          inst = await made;
        } finally {
          entry.creating = undefined;
        }
      } else {
        inst.holders++;
        inst.shared = o.sharing === 'shared';
      }
      const held = inst;
      let released = false;
      return {
        dir: held.dir,
        release: () => {
          if (released) return;
          released = true;
          held.holders--;
          // The directory's mtime records its last use, for du and prune's keep-duration.
          const now = new Date();
          void utimes(held.dir, now, now).catch(() => undefined);
          if (held.holders === 0) {
            held.shared = false;
            for (const w of entry.waiters.splice(0)) w();
          }
        },
      };
    }
  }

  /**
   * Every cache directory, as `du` shows them (`exec.cachemount` records): its id is the key's
   * digest and the instance number. A directory a step holds now is in use.
   */
  async list(): Promise<CacheMountRecord[]> {
    const out: CacheMountRecord[] = [];
    for (const hash of await readdir(this.#dir).catch(() => [] as string[])) {
      const base = path.join(this.#dir, hash);
      const key = await readFile(path.join(base, 'key'), 'utf8').catch(() => undefined);
      if (key === undefined) continue;
      const held = this.#entries.get(key);
      for (const inst of await this.#load(base)) {
        const st = await stat(inst.dir).catch(() => undefined);
        if (!st) continue;
        const n = path.basename(inst.dir);
        out.push({
          id: `${hash.slice(0, 20)}-${n}`,
          key,
          dir: inst.dir,
          inUse: (held?.instances.find((i) => i.dir === inst.dir)?.holders ?? 0) > 0,
          createdAt: st.birthtimeMs || st.ctimeMs,
          lastUsedAt: st.mtimeMs,
        });
      }
    }
    return out;
  }

  /** Removes a cache directory nobody holds; false when it is in use (or gone). */
  async remove(rec: CacheMountRecord): Promise<boolean> {
    const entry = this.#entries.get(rec.key);
    const inst = entry?.instances.find((i) => i.dir === rec.dir);
    if (inst && inst.holders > 0) return false;
    if (entry && inst) entry.instances = entry.instances.filter((i) => i !== inst);
    await rm(rec.dir, { recursive: true, force: true });
    return true;
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
