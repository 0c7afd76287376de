import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import { gunzipStream } from '../util/zlib.js';
import { zstdStream } from '../util/zstd.js';
import type { ContentStore } from '../content/store.js';
import { applyLayerTar } from '../snapshot/layer/apply-layer-tar.js';
import type { Ref } from '../solver/types.js';
import { sha256 } from '../util/digest.js';
import { InvalidArgumentError } from '../util/errors.js';
import { layerCompression } from '../util/media-types.js';
import type { LayerStore } from './layers.js';
import type { LayerPair, MetadataStore } from './metadata.js';
import type { RefManager } from './ref-manager.js';

/** KV namespace: a layer chain (OCI chain id) to the snapshot holding it. */
const NS_CHAIN = 'image-chain';
/** KV namespace: a layer chain to its cache record (one per layer, as upstream's du lists them). */
const NS_CHAIN_REF = 'image-chain-ref';

/** One layer blob of a chain and the digest of its uncompressed tar. */
export interface ChainLayer {
  mediaType: string;
  digest: string;
  size: number;
  diffId: string;
}

export interface UnpackChainDeps {
  refs: RefManager;
  layers: LayerStore;
  content: ContentStore;
  metadata: MetadataStore;
}

/**
 * Turns a chain of layer blobs into a ref: each layer is applied once into a snapshot shared by
 * every chain with the same prefix (keyed by OCI chain id), whether it came from an image pull
 * or an imported cache. `fetch` brings a layer's blob into the content store (verified); it is
 * called only for layers not unpacked yet. The blobs are recorded as the chain's layers, so an
 * export pushes the very same bytes. Each layer is a cache record of its own, the one below as its
 * parent, described by the first source that brought it (upstream: `pulled from <image>@<digest>`), so du
 * lists and sizes an image's layers one by one; the last layer's record is returned.
 */
export async function unpackChain(
  deps: UnpackChainDeps,
  layers: readonly ChainLayer[],
  opts: {
    description: string;
    signal?: AbortSignal;
    fetch(layer: ChainLayer, index: number): Promise<void>;
    /** Told before and after a layer is applied (progress). */
    onExtract?(layer: ChainLayer): () => void;
    /** Names the source in errors (an image name, a cache ref). */
    what: string;
  },
): Promise<Ref> {
  const chain: LayerPair[] = [];
  let parent: string | null = null;
  let parentRef: Ref | null = null;
  let chainId = '';
  // Layer snapshots are unreferenced until the ref below names them: keep GC off them till then.
  const releases: (() => void)[] = [];
  const fetched = await fetchMissing(deps, layers, opts);
  try {
    for (let i = 0; i < layers.length; i++) {
      const layer = layers[i]!;
      chainId = i === 0 ? layer.diffId : sha256(`${chainId} ${layer.diffId}`);
      let snap: string | undefined;
      for (;;) {
        snap = deps.metadata.kvGet(NS_CHAIN, chainId);
        if (snap && deps.metadata.hasSnapshot(snap)) break;
        // Two builds pulling one image at once (two stages, two platforms' shared layers) apply
        // each layer once: the second waits for the first's snapshot, so every snapshot of the
        // chain stands on the one below it (merges rely on that), and nothing is unpacked twice.
        // If the first fails (its build was cancelled, say), this one tries itself.
        const pending = inflightOf(deps).get(chainId);
        if (pending) {
          await pending.catch(() => undefined);
          continue;
        }
        const lower = parent;
        const work = (async () => {
          await (fetched[i] ?? ((await deps.content.has(layer.digest as `sha256:${string}`)) ? undefined : opts.fetch(layer, i)));
          const made = await applyOne(deps, layer, lower, opts);
          deps.metadata.kvPut(NS_CHAIN, chainId, made);
          return made;
        })();
        inflightOf(deps).set(chainId, work);
        try {
          snap = await work;
        } finally {
          inflightOf(deps).delete(chainId);
        }
        break;
      }
      releases.push(deps.refs.protect([snap]));
      const pair = { lower: parent, upper: snap };
      const compression = layerCompression(layer.mediaType) ?? 'gzip';
      deps.layers.record(pair, { digest: layer.digest, size: layer.size, diffId: layer.diffId, compression, mediaType: layer.mediaType });
      chain.push(pair);
      parent = snap;
      const known = deps.metadata.kvGet(NS_CHAIN_REF, chainId);
      const rec = known ? deps.metadata.getRef(known) : undefined;
      if (rec && rec.snapshot === snap) {
        parentRef = await deps.refs.get(rec.id);
      } else {
        parentRef = await deps.refs.createRef({ snapshot: snap, parent: parentRef, chain: [...chain], description: opts.description });
        deps.metadata.kvPut(NS_CHAIN_REF, chainId, parentRef.id);
      }
    }
    if (!parentRef) {
      // No layers: an empty tree.
      const w = await deps.refs.prepare(null, { signal: opts.signal });
      return await w.commit({ description: opts.description, chain: [] });
    }
    return parentRef;
  } finally {
    for (const release of releases) release();
  }
}

/** Layers being applied now, by chain id, per cache (its metadata store). */
const inflight = new WeakMap<MetadataStore, Map<string, Promise<string>>>();
function inflightOf(deps: UnpackChainDeps): Map<string, Promise<string>> {
  let m = inflight.get(deps.metadata);
  if (!m) {
    m = new Map();
    inflight.set(deps.metadata, m);
  }
  return m;
}

/** Layer blobs fetched at once, at most. */
const FETCH_CONCURRENCY = 3;

/**
 * Starts fetching every blob the chain will unpack and the store lacks, a few at a time, so the
 * layers download together while the first ones are applied (as upstream pulls); index i holds the
 * fetch of layer i, if any. Failures surface when the loop awaits that layer.
 */
async function fetchMissing(
  deps: UnpackChainDeps,
  layers: readonly ChainLayer[],
  opts: { fetch(layer: ChainLayer, index: number): Promise<void> },
): Promise<(Promise<void> | undefined)[]> {
  const wanted: number[] = [];
  let chainId = '';
  for (let i = 0; i < layers.length; i++) {
    const layer = layers[i]!;
    chainId = i === 0 ? layer.diffId : sha256(`${chainId} ${layer.diffId}`);
    const snap = deps.metadata.kvGet(NS_CHAIN, chainId);
    if (snap && deps.metadata.hasSnapshot(snap)) continue;
    if (!(await deps.content.has(layer.digest as `sha256:${string}`))) wanted.push(i);
  }
  const out: (Promise<void> | undefined)[] = [];
  let running = 0;
  const queue: (() => void)[] = [];
  const limited = (fn: () => Promise<void>): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const start = (): void => {
        running++;
        fn()
          .then(resolve, reject)
          .finally(() => {
            running--;
            queue.shift()?.();
          });
      };
      if (running < FETCH_CONCURRENCY) start();
      else queue.push(start);
    });
  for (const i of wanted) {
    const p = limited(() => opts.fetch(layers[i]!, i));
    // Failures are reported where the loop awaits the layer.
    p.catch(() => undefined);
    out[i] = p;
  }
  return out;
}

async function applyOne(
  deps: UnpackChainDeps,
  layer: ChainLayer,
  parent: string | null,
  opts: { signal?: AbortSignal; onExtract?(layer: ChainLayer): () => void; what: string },
): Promise<string> {
  const done = opts.onExtract?.(layer);
  // On overlay a layer on a parent is written into its snapshot's upper directory, unmounted, as
  // upstream's applier does there (see applyLayerTar's `overlay`).
  const layerDir = parent === null ? null : await deps.refs.prepareLayer(parent, { signal: opts.signal });
  const w = layerDir ?? (await deps.refs.prepare(null, { parentSnapshot: parent, signal: opts.signal }));
  let key: string;
  try {
    const input = decompress(createReadStream(deps.content.path(layer.digest as `sha256:${string}`)), layer.mediaType, `${opts.what}: layer ${layer.digest}`);
    const overlay = layerDir && parent !== null ? { lowerTree: () => deps.refs.snapshotter.dir(parent) } : undefined;
    await applyLayerTar(input, w.dir, { signal: opts.signal, overlay });
    key = await w.commitSnapshot();
  } catch (err) {
    await w.discard();
    throw err;
  }
  done?.();
  return key;
}

function decompress(src: Readable, mediaType: string, what: string): Readable {
  const c = layerCompression(mediaType);
  if (c === 'uncompressed') return src;
  if (c === 'gzip' || c === undefined) {
    // pipeline() passes a read error of the blob on to the gunzip stream the extractor reads.
    const gz = gunzipStream();
    pipeline(src, gz, () => {});
    return gz;
  }
  const z = zstdStream('decompress', what);
  pipeline(src, z, () => {});
  return z;
}

/** Checks a chain's shape before any work: every layer needs a digest and a diff id. */
export function checkChain(layers: readonly ChainLayer[], what: string): void {
  for (const [i, l] of layers.entries()) {
    if (!/^sha256:[0-9a-f]{64}$/.test(l.digest)) throw new InvalidArgumentError(`${what}: layer ${i} has an invalid digest ${JSON.stringify(l.digest)}`);
    if (!/^sha256:[0-9a-f]{64}$/.test(l.diffId)) throw new InvalidArgumentError(`${what}: layer ${l.digest} has an invalid diff id ${JSON.stringify(l.diffId)}`);
  }
}
