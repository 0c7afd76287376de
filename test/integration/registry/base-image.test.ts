/**
 * fixtures/make-base-image.sh builds the test base image from Debian's busybox-static; its file
 * tree must equal the upstream-built vector's (the image the expected outputs were made from), layer
 * by layer, for both platforms; and it must be deterministic. Needs dpkg-deb and the busybox-static
 * .debs (apt cache or apt-get download).
 */
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../../../src/content/store.js';
import { parseIndex, parseManifest } from '../../../src/content/oci.js';
import { importOciArchive } from '../../../src/exporter/image/archive-reader.js';
import { sha256 } from '../../../src/util/digest.js';
import { builtBaseImage, vectorBaseImage } from '../../helpers/registry.js';

type Tree = Map<string, string>;

async function layerEntries(gz: Buffer): Promise<string[]> {
  const ex = tar.extract();
  const src = new PassThrough();
  src.end(gunzipSync(gz));
  src.pipe(ex);
  const out: string[] = [];
  for await (const e of ex) {
    const h = createHash('sha256');
    for await (const c of e) h.update(c as Buffer);
    const hd = e.header;
    const name = hd.name.replace(/\/$/, '');
    const content = hd.type === 'file' ? h.digest('hex').slice(0, 16) : '';
    out.push(`${name} ${hd.type} ${(hd.mode ?? 0).toString(8)} ${hd.uid}:${hd.gid} ${hd.size ?? 0} ${hd.linkname ?? ''} ${content}`);
  }
  return out;
}

/** Per platform: each layer's entries (path type mode owner size link content), times left out. */
async function describeImage(archive: string): Promise<Record<string, string[][]>> {
  const root = mkdtempSync(join(tmpdir(), 'loom-base-'));
  try {
    const store = new ContentStore({ root });
    const imp = await importOciArchive(store, createReadStream(archive), archive);
    const list = parseIndex(await store.readAll(imp.index.manifests[0]!.digest), 'list');
    const out: Record<string, string[][]> = {};
    for (const m of list.manifests) {
      const man = parseManifest(await store.readAll(m.digest), m.digest);
      const layers: string[][] = [];
      for (const l of man.layers) layers.push(await layerEntries(await store.readAll(l.digest)));
      out[`${m.platform!.os}/${m.platform!.architecture}`] = layers;
    }
    return out;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

function flatten(layers: string[][]): Tree {
  const t: Tree = new Map();
  for (const l of layers) for (const e of l) t.set(e.split(' ')[0]!, e);
  return t;
}

describe('fixtures/make-base-image.sh', () => {
  let cache: string;
  let built: string;
  const saved = process.env.LOOM_FIXTURE_CACHE;

  beforeAll(async () => {
    cache = mkdtempSync(join(tmpdir(), 'loom-fixture-cache-'));
    process.env.LOOM_FIXTURE_CACHE = cache;
    built = await builtBaseImage();
  }, 300_000);
  afterAll(() => {
    if (saved === undefined) delete process.env.LOOM_FIXTURE_CACHE;
    else process.env.LOOM_FIXTURE_CACHE = saved;
    rmSync(cache, { recursive: true, force: true });
  });

  it('builds the same file tree as the upstream vector image, layer by layer', async () => {
    const vector = vectorBaseImage();
    expect(vector, 'shared/vectors/oci/busybox-multiarch-oci.tar is missing').toBeDefined();
    const mine = await describeImage(built);
    const theirs = await describeImage(vector!);
    expect(Object.keys(mine)).toEqual(['linux/amd64', 'linux/arm64']);
    expect(Object.keys(theirs)).toEqual(['linux/amd64', 'linux/arm64']);
    for (const p of Object.keys(theirs)) {
      expect(mine[p]!.length, p).toBe(theirs[p]!.length);
      for (let i = 0; i < theirs[p]!.length; i++) {
        expect([...mine[p]![i]!].sort(), `${p} layer ${i}`).toEqual([...theirs[p]![i]!].sort());
      }
    }
    const amd64 = flatten(mine['linux/amd64']!);
    expect(amd64.get('tmp')).toMatch(/^tmp directory 1777 0:0 /);
    expect(amd64.get('home/app')).toMatch(/^home\/app directory 755 1000:1000 /);
    expect(amd64.get('bin/sh')).toBe('bin/sh symlink 777 0:0 0 /bin/busybox ');
    expect(amd64.get('etc/passwd')).toMatch(/^etc\/passwd file 644 0:0 120 /);
    // The two busybox binaries are the two architectures' builds.
    expect(amd64.get('bin/busybox')).not.toBe(flatten(mine['linux/arm64']!).get('bin/busybox'));
  });

  it('is deterministic', async () => {
    const first = sha256(readFileSync(built));
    const again = mkdtempSync(join(tmpdir(), 'loom-fixture-cache2-'));
    try {
      process.env.LOOM_FIXTURE_CACHE = again;
      const second = await builtBaseImage();
      expect(sha256(readFileSync(second))).toBe(first);
    } finally {
      process.env.LOOM_FIXTURE_CACHE = cache;
      rmSync(again, { recursive: true, force: true });
    }
  }, 300_000);
});
