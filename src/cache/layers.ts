import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { PassThrough, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipStream } from '../util/zlib.js';
import type { ContentStore } from '../content/store.js';
import { isCompression, type Compression, type LayerDescriptor, type LayerOptions, type LayerOrigin, type LayerProvider } from '../exporter/types.js';
import { changes as diffTrees } from '../snapshot/layer/changes.js';
import { writeLayerTar } from '../snapshot/layer/write-layer-tar.js';
import type { Snapshotter } from '../snapshot/snapshotter.js';
import type { Ref } from '../solver/types.js';
import { layerMediaType } from '../util/media-types.js';
import type { Digest } from '../util/digest.js';
import { zstdStream } from '../util/zstd.js';
import { sharedRun, type SharedRun } from '../util/shared-run.js';
import type { LayerBlobRecord, LayerPair, MetadataStore } from './metadata.js';

/**
 * Layer blobs of refs' chains: each diff pair is turned into a compressed tar once, stored in the
 * content store, and remembered in the index (layer_blobs) so later exports and pushes reuse the
 * same bytes, hence the same digests. Image layers pulled from a registry are recorded the same
 * way at pull time, so re-exporting a base image reuses its original blobs.
 */
export class LayerStore implements LayerProvider {
  readonly #md: MetadataStore;
  readonly #content: ContentStore;
  readonly #snap: Snapshotter;
  readonly #inflight = new Map<string, SharedRun<LayerDescriptor>>();

  constructor(opts: { metadata: MetadataStore; content: ContentStore; snapshotter: Snapshotter }) {
    this.#md = opts.metadata;
    this.#content = opts.content;
    this.#snap = opts.snapshotter;
  }

  async layers(ref: Ref, opts: LayerOptions & { onLayer?: (d: LayerDescriptor) => void }): Promise<LayerDescriptor[]> {
    // Layers are computed side by side, as upstream computes a chain's blobs: compressing is most
    // of an export of new layers and zlib runs on the thread pool, so each core takes one layer.
    // The first failure stops the others.
    const chain = ref.chain;
    const out: LayerDescriptor[] = new Array(chain.length);
    const ac = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, ac.signal]) : ac.signal;
    let next = 0;
    const worker = async () => {
      while (next < chain.length) {
        const i = next++;
        out[i] = await this.layer(chain[i]!, { ...opts, signal });
      }
    };
    const width = Math.min(chain.length, Math.max(1, availableParallelism()));
    try {
      await Promise.all(Array.from({ length: width }, worker));
    } catch (err) {
      ac.abort(err);
      throw err;
    }
    for (const d of out) opts.onLayer?.(d);
    return out;
  }

  origins(ref: Ref): LayerOrigin[] {
    return ref.chain.map((pair) => {
      const o = this.#md.snapshotOrigin(pair.upper);
      // Upstream's words for a layer whose ref has no description.
      return { createdAt: o.createdAt !== undefined ? new Date(o.createdAt) : undefined, description: o.description || 'created by buildkit' };
    });
  }

  /**
   * The blob of one diff pair: the recorded one if its compression fits, else computed now. With
   * `force: false` (an image export without force-compression, as upstream's) a pair that already
   * has a blob of another compression (a pulled base layer, an earlier export) keeps it: only new
   * layers take the asked compression.
   */
  async layer(pair: LayerPair, opts: LayerOptions): Promise<LayerDescriptor> {
    const stored = async (rec: LayerBlobRecord | undefined) => rec !== undefined && (await this.#content.has(rec.digest as Digest));
    let rec = this.#md.getLayerBlob(pair.lower, pair.upper, opts.compression);
    if (!(await stored(rec))) rec = undefined;
    if (!rec && opts.force === false) {
      for (const other of this.#md.layerBlobsOf(pair.lower, pair.upper)) {
        if (isCompression(other.compression) && (await stored(other))) {
          rec = other;
          break;
        }
      }
    }
    if (rec) return { mediaType: layerMediaType(rec.compression as Compression, opts.ociMediaTypes), digest: rec.digest, size: rec.size, diffId: rec.diffId };
    const key = `${pair.lower ?? ''}>${pair.upper}>${opts.compression}`;
    // A computation shared with another caller that stops (its build, or its export stopping at
    // another layer's failure) is computed again for this one.
    const d = await sharedRun(this.#inflight, key, opts.signal, () => this.#compute(pair, opts.compression, opts.level, opts.signal));
    return { ...d, mediaType: layerMediaType(opts.compression, opts.ociMediaTypes) };
  }

  /** Records a blob made elsewhere (a pulled image layer) as the layer of `pair`. */
  record(pair: LayerPair, d: { digest: string; size: number; diffId: string; compression: Compression; mediaType: string }): void {
    this.#md.putLayerBlob({ lower: pair.lower, upper: pair.upper, compression: d.compression, digest: d.digest, diffId: d.diffId, size: d.size, mediaType: d.mediaType });
  }

  async #compute(pair: LayerPair, compression: Compression, level: number | undefined, signal?: AbortSignal): Promise<LayerDescriptor> {
    const upperDir = await this.#snap.dir(pair.upper);
    const lowerDir = pair.lower ? await this.#snap.dir(pair.lower) : null;
    const info = await this.#snap.stat(pair.upper);
    // The snapshotter may know the changes against the parent without walking both trees.
    const known = info.parent === pair.lower ? await this.#snap.changes(pair.upper) : null;
    const list = known ?? (await diffTrees(lowerDir, upperDir, { signal }));
    const tar = new PassThrough();
    const diffHash = createHash('sha256');
    const hashTap = new Transform({
      transform(chunk: Buffer, _e, cb) {
        diffHash.update(chunk);
        cb(null, chunk);
      },
    });
    const stages: NodeJS.ReadWriteStream[] = [hashTap];
    if (compression === 'gzip') stages.push(gzipStream(level));
    else if (compression === 'zstd') stages.push(zstdStream('compress', `layer of snapshot ${pair.upper}`, level));
    const writer = this.#content.ingest();
    const w = await writer;
    const sink = async function* (src: AsyncIterable<Buffer>) {
      for await (const chunk of src) await w.write(chunk);
    };
    const producing = writeLayerTar(list, upperDir, tar, { signal }).then(
      () => tar.end(),
      (err) => {
        tar.destroy(err as Error);
        throw err;
      },
    );
    try {
      await Promise.all([producing, pipeline(tar, ...(stages as [Transform]), sink, { signal })]);
    } catch (err) {
      await w.abort();
      throw err;
    }
    const committed = await w.commit();
    const diffId = `sha256:${diffHash.digest('hex')}`;
    const mediaType = layerMediaType(compression, true);
    this.#md.putLayerBlob({ lower: pair.lower, upper: pair.upper, compression, digest: committed.digest, diffId, size: committed.size, mediaType });

    return { mediaType, digest: committed.digest, size: committed.size, diffId };
  }
}
