/**
 * LayerStore: a ref's chain becomes one compressed blob per diff pair, computed side by side but
 * returned (and reported) in chain order, each remembered so the next export reuses its bytes;
 * a pair that cannot be diffed fails the call. Real stores and the native snapshotter in a
 * temporary directory.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerStore } from '../../../src/cache/layers.js';
import { MetadataStore } from '../../../src/cache/metadata.js';
import { ContentStore } from '../../../src/content/store.js';
import type { LayerDescriptor } from '../../../src/exporter/types.js';
import { NativeSnapshotter } from '../../../src/snapshot/native/native-snapshotter.js';
import type { Ref } from '../../../src/solver/types.js';

let root: string;
let snap: NativeSnapshotter;
let content: ContentStore;
let metadata: MetadataStore;
const chain: { lower: string | null; upper: string }[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'loom-layers-'));
  snap = new NativeSnapshotter({ root: join(root, 'snap') });
  content = new ContentStore({ root: join(root, 'content') });
  metadata = new MetadataStore({ root: join(root, 'meta') });
  let parent: string | null = null;
  for (let i = 0; i < 5; i++) {
    const key = `s${i}`;
    const dir = await snap.prepare(key, parent);
    // Layers of different sizes, so they finish out of order when computed side by side.
    writeFileSync(join(dir, `file${i}`), Buffer.alloc((5 - i) * 300_000, String(i)));
    await snap.commit(key);
    chain.push({ lower: parent, upper: key });
    parent = key;
  }
});

afterAll(() => {
  metadata?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

const refOf = (pairs: typeof chain) => ({ chain: pairs }) as unknown as Ref;

describe('LayerStore.layers', () => {
  it('returns each pair of the chain in order, each blob holding only its own diff', async () => {
    const store = new LayerStore({ metadata, content, snapshotter: snap });
    const reported: LayerDescriptor[] = [];
    const layers = await store.layers(refOf(chain), { compression: 'gzip', ociMediaTypes: true, onLayer: (d) => reported.push(d) });
    expect(layers).toHaveLength(5);
    expect(reported).toEqual(layers);
    for (const [i, l] of layers.entries()) {
      const tar = gunzipSync(await content.readAll(l.digest as never));
      expect(`sha256:${createHash('sha256').update(tar).digest('hex')}`).toBe(l.diffId);
      // The layer of pair i adds file i and nothing of the others.
      const text = tar.toString('latin1');
      expect(text).toContain(`file${i}`);
      for (let j = 0; j < 5; j++) if (j !== i) expect(text).not.toContain(`file${j}\u0000`);
    }
    // Computed once: a second call answers with the same blobs.
    const again = await store.layers(refOf(chain), { compression: 'gzip', ociMediaTypes: true });
    expect(again.map((l) => l.digest)).toEqual(layers.map((l) => l.digest));
  });

  it('fails when a pair cannot be diffed, naming it, and keeps serving the others', async () => {
    const store = new LayerStore({ metadata, content, snapshotter: snap });
    // The bad pair first: it fails at once, while the other layers are still being computed and
    // are stopped; the next call, which needs them, must not get that cancellation.
    const broken = [{ lower: null, upper: 'missing' }, ...chain];
    await expect(store.layers(refOf(broken), { compression: 'uncompressed', ociMediaTypes: true })).rejects.toThrow(/missing/);
    const ok = await store.layers(refOf(chain), { compression: 'uncompressed', ociMediaTypes: true });
    expect(ok).toHaveLength(5);
  });
});
