/**
 * Every blob of an image tree in the content store: an index, its manifests, their configs and
 * layers. Exporters and importers use it to know what an image consists of.
 */
import type { ContentStore } from '../../content/store.js';
import { parseIndex, parseManifest, type Descriptor } from '../../content/oci.js';
import { NotFoundError } from '../../util/errors.js';
import { isIndexType, isManifestType, isNondistributable } from '../../util/media-types.js';

export interface WalkOptions {
  /** Leave out nondistributable layers absent from the store instead of failing on them. */
  skipMissingNondistributable?: boolean;
}

/**
 * The descriptors of `root` and everything it references, parents before children, each digest once.
 * A referenced manifest or index that is not in the store is an error naming its digest and parent;
 * so is a missing config or layer.
 */
export async function imageBlobs(store: ContentStore, root: Descriptor, opts?: WalkOptions): Promise<Descriptor[]> {
  const seen = new Set<string>();
  const out: Descriptor[] = [];
  const visit = async (d: Descriptor, parent: string | undefined): Promise<void> => {
    if (seen.has(d.digest)) return;
    seen.add(d.digest);
    if (!(await store.has(d.digest))) {
      if (opts?.skipMissingNondistributable && isNondistributable(d.mediaType)) return;
      throw new NotFoundError(`content ${d.digest}${parent ? ` (referenced by ${parent})` : ''}: not found`);
    }
    out.push(d);
    if (isIndexType(d.mediaType)) {
      const idx = parseIndex(await store.readAll(d.digest), `index ${d.digest}`, d.mediaType);
      for (const m of idx.manifests) await visit(m, d.digest);
    } else if (isManifestType(d.mediaType)) {
      const m = parseManifest(await store.readAll(d.digest), `manifest ${d.digest}`, d.mediaType);
      await visit(m.config, d.digest);
      for (const l of m.layers) await visit(l, d.digest);
    }
  };
  await visit(root, undefined);
  return out;
}
