import { FileSync } from '../../gen/session/filesync_pb.js';
import type { MetadataStore } from '../../cache/metadata.js';
import type { RefManager } from '../../cache/ref-manager.js';
import { FileDigestCache, KnownStats, linkDigests, treeDigests } from '../../cache/content-hash.js';
import type { SessionManager } from '../../session/manager.js';
import { diffCopyMetadata } from '../../session/filesync/metadata.js';
import { receiveDir, type KnownTree } from '../../session/filesync/receive.js';
import type { SessionCaller } from '../../session/types.js';
import type { OpContext, OpImpl, Ref } from '../../solver/types.js';
import { InvalidArgumentError, LoomError } from '../../util/errors.js';
import { join, relative } from 'node:path';
import { lstatSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import { sha256 } from '../../util/digest.js';
import { LRUCache } from 'lru-cache';
import { copySmall, copyTree, linkedTreeUsage, linkTree, smallCopy } from '../../snapshot/native/native-snapshotter.js';
import { log as rootLog } from '../../util/log.js';
import { byteStatus } from '../../util/progress.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';

export interface LocalSourceDeps {
  root: string;
  refs: RefManager;
  metadata: MetadataStore;
  sessions: SessionManager;
  /** One transfer at a time into each mirror directory. */
  mirrors: KeyedMutex;
}

/**
 * Context snapshots by the digest of their content and modification times (treeDigests): a tree of
 * the same content with other times (files touched, another checkout) is a snapshot of its own, as
 * a step that is not cached (another COPY destination) copies the files with their times as they
 * are now. `.3`: those before were keyed by content alone; `.2`: those before had a 0700 root.
 */
const NS_LOCAL = 'local-content.3';
const log = rootLog.child({ sub: 'local-source' });

/**
 * Per mirror directory, the content digests of its files from the last digest of it (in memory: a
 * restarted daemon reads each mirror once more). The receiver reports every path it changes, and
 * those are forgotten before the next digest.
 */
const digestCaches = new LRUCache<string, FileDigestCache>({ max: 32 });
/**
 * Per mirror directory, what it held after its last transfer (the receiver's onTree), so that a
 * resend of an unchanged context compares against that instead of an lstat of every mirror entry
 * first (the largest part of the daemon's work for a fully cached build of a large context).
 * Only receives (one at a time per mirror) write a mirror; a mirror removed meanwhile (prune) is
 * told by its root's inode and change time. Bounded by entries held, in memory only.
 */
const knownTrees = new LRUCache<string, KnownTree>({ maxSize: 500_000, sizeCalculation: (t) => t.entries.size + 1 });
const NS_MIRROR = 'local-mirror';

/**
 * `local://name`: the client's directory, sent through its session's FileSync service with the
 * op's include/exclude patterns and follow paths. The transfer happens when the cache key is
 * computed (the key is the content's digest, so an unchanged directory hits the cache and a
 * touched-but-unchanged file does not miss); identical content is stored once.
 */
export class LocalSourceOp implements OpImpl {
  readonly #d: LocalSourceDeps;
  readonly #name: string;
  readonly #attrs: Record<string, string>;
  #synced: Promise<{ ref: Ref; digest: string }> | undefined;

  constructor(deps: LocalSourceDeps, identifier: string, attrs: Record<string, string>) {
    this.#d = deps;
    this.#name = identifier.slice('local://'.length);
    this.#attrs = attrs;
    if (!this.#name) throw new InvalidArgumentError(`invalid local source ${JSON.stringify(identifier)}: no name`);
  }

  #list(key: string): string[] | undefined {
    const v = this.#attrs[key];
    if (v === undefined || v === '') return undefined;
    try {
      const arr = JSON.parse(v) as unknown;
      if (!Array.isArray(arr) || arr.some((x) => typeof x !== 'string')) throw new Error('not a list of strings');
      return arr as string[];
    } catch (err) {
      throw new InvalidArgumentError(`local source ${this.#name}: invalid ${key} ${JSON.stringify(v)}: ${(err as Error).message}`);
    }
  }

  async #session(ctx: OpContext): Promise<SessionCaller> {
    const id = this.#attrs['local.session'];
    if (id) return this.#d.sessions.get(id, { signal: ctx.signal });
    return ctx.session();
  }

  #sync(ctx: OpContext): Promise<{ ref: Ref; digest: string }> {
    this.#synced ??= (async () => {
      const include = this.#list('local.includepattern');
      const exclude = this.#list('local.excludepatterns');
      const follow = this.#list('local.followpaths');
      const session = await this.#session(ctx);
      if (!session.supports(FileSync.method.diffCopy)) {
        // A plain error upstream (`no local sources enabled`, gRPC Unknown).
        throw new LoomError('UNKNOWN', `local source ${this.#name}: the client's session does not serve FileSync (was --local ${this.#name}=DIR given?)`);
      }
      // The client's directory is mirrored in a directory kept across builds (one per client
      // identity, name and filters), so a second transfer sends only what changed.
      const identity = this.#attrs['local.sharedkeyhint'] || session.sharedKey || session.id;
      const mirror = join(this.#d.root, 'local-mirrors', sha256(JSON.stringify([identity, this.#name, include, exclude, follow])).slice(7, 39));
      return this.#d.mirrors.run(mirror, async () => {
        const status = byteStatus(ctx.progress, ctx.vertex.digest, `transferring ${this.#name}:`, 0, { announce: false });
        const stream = await session.stream(FileSync.method.diffCopy, {
          metadata: diffCopyMetadata({ dirName: this.#name, includePatterns: include, excludePatterns: exclude, followPaths: follow }),
          signal: ctx.signal,
        });
        let bytes = 0;
        let changed = false;
        let cache = digestCaches.get(mirror);
        if (!cache) {
          cache = new FileDigestCache();
          digestCaches.set(mirror, cache);
        }
        const files = cache;
        // A transfer that fails half way leaves the mirror unknown: its digest is forgotten first.
        const before = this.#d.metadata.kvGet(NS_MIRROR, mirror);
        this.#d.metadata.kvDelete(NS_MIRROR, mirror);
        // Taken, not read: a transfer that fails half way leaves it unknown too.
        const knownTree = knownTrees.get(mirror);
        knownTrees.delete(mirror);
        // The mirror's new files are digested as they arrive (treeDigest below reads none), and
        // kept in its digest cache with the stat the receiver takes of each once all are written.
        const digested: [abs: string, hex: string][] = [];
        try {
          await receiveDir(stream, {
            dest: mirror,
            known: knownTree,
            onTree: (t) => knownTrees.set(mirror, t),
            differ: this.#attrs['local.differ'] === 'none' ? 'none' : 'metadata',
            signal: ctx.signal,
            onChange: (c) => {
              changed = true;
              files.forget(join(mirror, c.path));
            },
            onFileDigest: (abs, hex) => digested.push([abs, hex]),
            onProgress: (n: number) => {
              bytes = n;
              status.update(n);
            },
          });
        } catch (err) {
          files.clear();
          throw err;
        }
        status.done(bytes);
        const tree = knownTrees.get(mirror);
        for (const [abs, hex] of digested) {
          const st = tree?.entries.get(relative(mirror, abs)) ?? lstatSync(abs, { bigint: true, throwIfNoEntry: false });
          if (st?.isFile()) files.set(abs, st, hex);
        }
        // Nothing changed in a mirror whose digests were known: no need to look at it again.
        const known = !changed && before ? parseMirrorDigests(before) : undefined;
        // What the receiver knows of every entry it wrote or kept: neither digest nor size walks the tree.
        // Made only when needed: a rebuild of an unchanged context needs neither.
        let stats: KnownStats | undefined;
        const knownStats = () => (stats ??= tree && new KnownStats(tree.entries));
        const { content: digest, withTimes } = known ?? (await treeDigests(mirror, { signal: ctx.signal, cache: files, known: knownStats() }));
        this.#d.metadata.kvPut(NS_MIRROR, mirror, `${digest} ${withTimes}`);
        const existing = this.#d.metadata.kvGet(NS_LOCAL, withTimes);
        if (existing && this.#d.metadata.getRef(existing)) return { ref: await this.#d.refs.get(existing), digest };
        const made = await this.#snapshot(mirror, digest, withTimes, ctx, knownStats());
        // Steps keyed by the content of some of its paths digest the new snapshot next: its files
        // are the mirror's inodes, whose digests are known (linking changed only their ctime), and
        // its entries have the mirror's metadata.
        if (made.linked) linkDigests(made.ref.dir, mirror, files, knownStats());
        return made;
      });
    })();
    return this.#synced;
  }

  /**
   * The mirror's content as a new committed snapshot. A small tree is copied in the daemon; the
   * files of a larger one are hard links to the mirror's: the receiver never writes a mirror file
   * in place (a changed file is a new inode renamed over the old one, see receiveDir), and nobody
   * writes a committed snapshot, so the shared inodes never change. Where links cannot be made
   * (mirror and snapshots on different filesystems, a snapshotter whose fresh snapshot is a mount)
   * the tree is copied by cp.
   */
  async #snapshot(mirror: string, digest: string, withTimes: string, ctx: OpContext, stats?: KnownStats): Promise<{ ref: Ref; digest: string; linked: boolean }> {
    // A small tree is copied: its files are then their own inodes, with one link each, as the
    // files of upstream's local source are (`ls -l` or `stat -c %h` in a step that mounts the
    // context shows the count). Large trees are linked, at the cost of that count (2).
    const small = smallCopy(mirror);
    for (const mode of small ? (['small', 'copy'] as const) : (['link', 'copy'] as const)) {
      const w = await this.#d.refs.prepare(null, { signal: ctx.signal });
      try {
        if (mode === 'small') await copySmall(mirror, w.dir, small!);
        else if (mode === 'link') await linkTree(mirror, w.dir, ctx.signal);
        else await copyTree(mirror, w.dir, ctx.signal);
        // The mirror's own directory is the daemon's (0700); the context's root is 0755 as
        // upstream's, or a step mounting it (RUN --mount=type=bind) as another user cannot read it.
        await chmod(w.dir, 0o755);
        const size = mode === 'link' && stats ? linkedTreeUsage(w.dir, stats.entries()) : undefined;
        const ref = await w.commit({ description: `local source for ${this.#name}`, recordType: 'source.local', size });
        this.#d.metadata.kvPut(NS_LOCAL, withTimes, ref.id);
        return { ref, digest, linked: mode === 'link' };
      } catch (err) {
        await w.discard();
        if (mode === 'copy' || ctx.signal.aborted) throw err;
        log.debug({ mirror, err: (err as Error).message }, `cannot ${mode === 'link' ? 'link' : 'copy'} the mirror into a snapshot in the daemon; copying it with cp`);
      }
    }
    throw new LoomError('INTERNAL', 'unreachable');
  }

  async cacheKey(ctx: OpContext): Promise<string> {
    return (await this.#sync(ctx)).digest;
  }

  async run(ctx: OpContext): Promise<Ref[]> {
    return [(await this.#sync(ctx)).ref];
  }
}

/** A mirror's stored digests (`<content> <withTimes>`); undefined for a record of an older daemon (content only). */
function parseMirrorDigests(v: string): { content: string; withTimes: string } | undefined {
  const [content, withTimes, ...rest] = v.split(' ');
  return content && withTimes && rest.length === 0 ? { content, withTimes } : undefined;
}
