/**
 * unpackChain: two pulls of one image at once (two stages of a Dockerfile naming the same base)
 * apply each layer once, and every snapshot of both chains stands on the one below it, which
 * merges rely on to keep an image as a lower. Real stores, native snapshotter, temporary dirs.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { LayerStore } from '../../../src/cache/layers.js';
import { MetadataStore } from '../../../src/cache/metadata.js';
import { RefManager } from '../../../src/cache/ref-manager.js';
import { unpackChain, type ChainLayer } from '../../../src/cache/unpack-chain.js';
import { ContentStore } from '../../../src/content/store.js';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import type { Ref } from '../../../src/solver/types.js';

let root: string;
let layers: ChainLayer[];
const stores: MetadataStore[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'loom-unpack-'));
  // Blobs of a three-layer image, made from snapshots of another cache.
  const snap = new NativeSnapshotter({ root: join(root, 'src-snap') });
  const content = new ContentStore({ root: join(root, 'content') });
  const metadata = new MetadataStore({ root: join(root, 'src-meta') });
  stores.push(metadata);
  const chain: { lower: string | null; upper: string }[] = [];
  let parent: string | null = null;
  for (let i = 0; i < 3; i++) {
    const key = `l${i}`;
    const dir = await snap.prepare(key, parent);
    writeFileSync(join(dir, `file${i}`), `layer ${i}\n`.repeat(1000));
    await snap.commit(key);
    chain.push({ lower: parent, upper: key });
    parent = key;
  }
  const descs = await new LayerStore({ metadata, content, snapshotter: snap }).layers({ chain } as unknown as Ref, { compression: 'gzip', ociMediaTypes: true });
  layers = descs.map((d) => ({ mediaType: d.mediaType, digest: d.digest, size: d.size, diffId: d.diffId }));
});

afterAll(() => {
  for (const m of stores) m.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

it('applies each layer once when two builds pull one image at the same time', async () => {
  const snapshotter = new NativeSnapshotter({ root: join(root, 'snap') });
  const content = new ContentStore({ root: join(root, 'content') });
  const metadata = new MetadataStore({ root: join(root, 'meta') });
  stores.push(metadata);
  const refs = new RefManager({ metadata, snapshotter, content });
  const deps = { refs, content, metadata, layers: new LayerStore({ metadata, content, snapshotter }) };
  let extracted = 0;
  const pull = () =>
    unpackChain(deps, layers, {
      description: 'pulled',
      what: 'test image',
      fetch: async () => {
        throw new Error('every blob is in the store');
      },
      onExtract: () => {
        extracted++;
        return () => {};
      },
    });
  const [a, b] = await Promise.all([pull(), pull()]);
  expect(extracted).toBe(3);
  expect((await snapshotter.list()).length).toBe(3);
  for (const r of [a, b]) {
    expect(r.chain).toHaveLength(3);
    for (const pair of r.chain) expect((await snapshotter.stat(pair.upper)).parent).toBe(pair.lower);
  }
  expect(b.snapshot).toBe(a.snapshot);
});
