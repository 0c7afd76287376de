import type { BigIntStats } from 'node:fs';

/**
 * One entry of the difference between two trees (lower -> upper), as layer tools exchange them.
 *
 * Lists of changes are in *layer order*: depth first, entries of one directory sorted by the bytes
 * of their names, a directory right before its children. That is the order of the double walk, the
 * order upstream writes layer tars in, and an order in which applying changes one by one is valid
 * (a parent exists before its children are created).
 */
export type ChangeKind = 'add' | 'modify' | 'delete' | 'unmodified';

export interface Change {
  /**
   * add: only in upper. modify: in both, differs (or changed type). delete: only in lower.
   * unmodified: same in both, reported only for multiply-linked files so that writers can keep
   * hard links together (upstream's ChangeKindUnmodified); everyone else skips them.
   */
  kind: ChangeKind;
  /** Slash-absolute path inside the tree, never `/` itself. */
  path: string;
  /** lstat of the upper entry; absent for deletes. */
  stat?: BigIntStats;
  /**
   * For a directory: its lower content is hidden entirely (an overlay opaque directory). Writers
   * emit `.wh..wh..opq`; appliers clear what the directory held before. The double walk never sets
   * it (it reports the deleted children instead).
   */
  opaque?: boolean;
}

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';
/** The xattr prefix of PAX records, as GNU tar, Go and containerd spell it. */
export const PAX_XATTR_PREFIX = 'SCHILY.xattr.';
