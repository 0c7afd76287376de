import type { BigIntStats } from 'node:fs';
import { LRUCache } from 'lru-cache';
import type { Snapshotter } from '../snapshot/snapshotter.js';
import { lstatTree } from './time-slice.js';
import { log as rootLog } from '../util/log.js';
import type { UsageEntry } from './ref-manager.js';

const log = () => rootLog.child({ sub: 'cache' });

/** The record types whose snapshots share inodes with each other (hard links from one mirror). */
const LINKED_TYPES = new Set(['source.local']);

/** What one snapshot's tree holds: bytes of inodes only it can hold, and its hard-linked inodes. */
interface TreeInodes {
  exclusive: number;
  /** `dev:ino` to bytes, for files with more than one link. */
  linked: Map<string, number>;
}

/**
 * Sizes of local-source records as the disk holds them. Every local-source snapshot is hard-linked
 * from the client's mirror (ops/source/local.ts), so two snapshots of one context share each file
 * that did not change between them; each record's stored size counts all its files, and `du`
 * would count the shared ones once per snapshot. Here each shared inode is counted once, for the
 * most recently used record holding it (the one the mirror currently matches); older records are
 * left with what only they hold, which is what removing them frees.
 *
 * Committed snapshots never change, so each tree is walked once and remembered (LRU). A file with
 * one link can never gain another (new links are only made from the mirror, which no longer has
 * it), so only multi-link inodes are remembered one by one.
 */
export class LinkedUsage {
  readonly #snap: Snapshotter;
  readonly #trees = new LRUCache<string, Promise<TreeInodes>>({ max: 128 });

  constructor(opts: { snapshotter: Snapshotter }) {
    this.#snap = opts.snapshotter;
  }

  /**
   * Record id to corrected size, for the linked records among `entries`; records not in the map
   * keep their stored size. A tree that cannot be read (removed meanwhile) keeps its stored size.
   */
  async sizes(entries: readonly UsageEntry[]): Promise<Map<string, number>> {
    const linked = entries.filter((e) => LINKED_TYPES.has(e.record.recordType));
    const out = new Map<string, number>();
    if (linked.length < 2) return out;
    const bySnapshot = new Map<string, UsageEntry[]>();
    for (const e of linked) bySnapshot.set(e.record.snapshot, [...(bySnapshot.get(e.record.snapshot) ?? []), e]);
    const trees = new Map<string, TreeInodes>();
    await Promise.all(
      [...bySnapshot.keys()].map(async (key) => {
        const t = await this.#tree(key).catch((err: Error) => {
          log().debug({ snapshot: key, err: err.message }, 'cannot read a local-source snapshot; keeping its stored size');
          return undefined;
        });
        if (t) trees.set(key, t);
      }),
    );
    // Most recently used first: it is charged for what it shares with older ones.
    const order = [...bySnapshot.entries()].sort(([, a], [, b]) => recency(b) - recency(a));
    const seen = new Set<string>();
    for (const [key, recs] of order) {
      const t = trees.get(key);
      if (!t) continue;
      let size = t.exclusive;
      for (const [ino, bytes] of t.linked) {
        if (seen.has(ino)) continue;
        seen.add(ino);
        size += bytes;
      }
      for (const r of recs) out.set(r.record.id, size);
    }
    return out;
  }

  #tree(key: string): Promise<TreeInodes> {
    let p = this.#trees.get(key);
    if (!p) {
      p = this.#snap.dir(key).then((dir) => walkInodes(dir));
      // A failed walk is not remembered: the next du tries again.
      p.catch(() => this.#trees.delete(key));
      this.#trees.set(key, p);
    }
    return p;
  }
}

function recency(recs: UsageEntry[]): number {
  return Math.max(...recs.map((e) => Math.max(e.record.lastUsedAt ?? 0, e.record.createdAt)));
}

/**
 * Blocks of a tree (st_blocks * 512, as du counts), split into single-link and multi-link inodes.
 * Entries removed meanwhile are not counted (see lstatTree).
 */
export async function walkInodes(dir: string): Promise<TreeInodes> {
  const t: TreeInodes = { exclusive: 0, linked: new Map() };
  const seenHere = new Set<string>();
  const count = (st: BigIntStats): void => {
    const bytes = Number(st.blocks) * 512;
    if (st.isDirectory() || st.nlink <= 1n) {
      t.exclusive += bytes;
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (seenHere.has(key)) return;
    seenHere.add(key);
    t.linked.set(key, bytes);
  };
  await lstatTree(dir, count);
  return t;
}
