/**
 * Image assembly and archives against the upstream vector busybox-multiarch-oci.tar, which upstream's
 * oci exporter wrote: loom reads it, rebuilds its manifests, index and configs byte for byte, and
 * writes the same archive back byte for byte.
 */
import { createReadStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../../../src/content/store.js';
import { parseImageConfig, parseIndex, parseManifest, type Descriptor } from '../../../src/content/oci.js';
import { importOciArchive, type ImportedArchive } from '../../../src/exporter/image/archive-reader.js';
import {
  ANNOTATION_CREATED,
  ANNOTATION_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  normalizeImageNames,
  writeDockerArchive,
  writeOciArchive,
} from '../../../src/exporter/image/archive-writer.js';
import { buildImageConfig, defaultImageConfig } from '../../../src/exporter/image/image-config.js';
import { buildIndex, buildManifest, writeIndex, writeManifest } from '../../../src/exporter/image/manifest.js';
import { imageBlobs } from '../../../src/exporter/image/walk.js';
import { sha256 } from '../../../src/util/digest.js';
import { MediaType } from '../../../src/util/media-types.js';
import { vectorBaseImage } from '../../helpers/registry.js';

const VECTOR = vectorBaseImage();

async function collect(fn: (out: Writable) => Promise<void>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  // A small highWaterMark exercises back-pressure.
  const out = new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      setImmediate(cb);
    },
  });
  await fn(out);
  return Buffer.concat(chunks);
}

async function tarEntries(buf: Buffer): Promise<Array<{ name: string; mode: number; type: string; data: Buffer }>> {
  const ex = tar.extract();
  const src = new PassThrough();
  src.end(buf);
  src.pipe(ex);
  const out: Array<{ name: string; mode: number; type: string; data: Buffer }> = [];
  for await (const e of ex) {
    const chunks: Buffer[] = [];
    for await (const c of e) chunks.push(c as Buffer);
    out.push({ name: e.header.name, mode: e.header.mode ?? 0, type: e.header.type ?? '', data: Buffer.concat(chunks) });
  }
  return out;
}

describe('OCI archives and image assembly vs the upstream vector', () => {
  let root: string;
  let store: ContentStore;
  let imported: ImportedArchive;

  beforeAll(async () => {
    expect(VECTOR, 'shared/vectors/oci/busybox-multiarch-oci.tar is missing').toBeDefined();
    root = mkdtempSync(join(tmpdir(), 'loom-archive-'));
    store = new ContentStore({ root });
    imported = await importOciArchive(store, createReadStream(VECTOR!), 'busybox-multiarch-oci.tar');
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('reads the layout: index.json -> manifest list -> amd64 and arm64 manifests', async () => {
    expect(imported.layoutVersion).toBe('1.0.0');
    expect(imported.index.manifests).toHaveLength(1);
    const top = imported.index.manifests[0]!;
    expect(top.mediaType).toBe(MediaType.OciIndex);
    expect(Object.keys(top.annotations ?? {})).toEqual([ANNOTATION_CREATED]);
    const list = parseIndex(await store.readAll(top.digest), 'list', top.mediaType);
    expect(list.manifests.map((m) => `${m.platform?.os}/${m.platform?.architecture}`)).toEqual(['linux/amd64', 'linux/arm64']);
    for (const m of list.manifests) {
      const man = parseManifest(await store.readAll(m.digest), m.digest, m.mediaType);
      const cfg = parseImageConfig(await store.readAll(man.config.digest), man.config.digest);
      expect(cfg.architecture).toBe(m.platform!.architecture);
      expect(cfg.rootfs.diff_ids).toHaveLength(man.layers.length);
    }
    // Every blob in the archive was verified against its digest on the way in.
    const all = await imageBlobs(store, top);
    expect(all).toHaveLength(10);
    for (const d of all) expect(sha256(await store.readAll(d.digest))).toBe(d.digest);
    expect(new Set(imported.blobs)).toEqual(new Set(all.map((d) => d.digest)));
  });

  it('writes the same archive back, byte for byte', async () => {
    const top = imported.index.manifests[0]!;
    const bytes = await collect((out) => writeOciArchive(out, { store, root: top }));
    expect(bytes.length).toBe(readFileSync(VECTOR!).length);
    expect(sha256(bytes)).toBe(sha256(readFileSync(VECTOR!)));
  });

  it('rebuilds the manifests, the manifest list and the configs with the same digests', async () => {
    const top = imported.index.manifests[0]!;
    const list = parseIndex(await store.readAll(top.digest), 'list');
    const rebuilt: Descriptor[] = [];
    for (const entry of list.manifests) {
      const man = parseManifest(await store.readAll(entry.digest), entry.digest);
      const cfgBytes = await store.readAll(man.config.digest);
      const cfg = parseImageConfig(cfgBytes, 'config');
      // Re-patching the config with its own layers and build info is a no-op, as upstream's is.
      const patched = buildImageConfig({
        config: cfgBytes,
        layers: cfg.rootfs.diff_ids.map((diffId) => ({ diffId })),
        buildInfo: Buffer.from(cfg['moby.buildkit.buildinfo.v1'] as string, 'base64'),
      });
      expect(sha256(patched)).toBe(man.config.digest);
      const built = buildManifest({ config: patched, layers: man.layers, oci: true });
      expect(built.descriptor.digest).toBe(entry.digest);
      rebuilt.push({ ...built.descriptor, platform: entry.platform! });
    }
    const idx = buildIndex({ manifests: rebuilt, oci: true });
    expect(idx.descriptor).toEqual({ mediaType: MediaType.OciIndex, digest: top.digest, size: top.size });
  });

  it('names index.json entries as upstream: io.containerd.image.name and the ref name', async () => {
    const top = imported.index.manifests[0]!;
    const names = normalizeImageNames('busybox,localhost:5000/team/bb:v1');
    expect(names).toEqual(['docker.io/library/busybox:latest', 'localhost:5000/team/bb:v1']);
    const bytes = await collect((out) => writeOciArchive(out, { store, root: top, names }));
    const entries = await tarEntries(bytes);
    expect(entries.map((e) => e.name).slice(0, 2)).toEqual(['blobs/', 'blobs/sha256/']);
    expect(entries.map((e) => e.name).slice(-2)).toEqual(['index.json', 'oci-layout']);
    const index = JSON.parse(entries.find((e) => e.name === 'index.json')!.data.toString());
    expect(index).toEqual({
      schemaVersion: 2,
      manifests: names.map((n, i) => ({
        mediaType: MediaType.OciIndex,
        digest: top.digest,
        size: top.size,
        annotations: {
          [ANNOTATION_IMAGE_NAME]: n,
          [ANNOTATION_CREATED]: top.annotations![ANNOTATION_CREATED],
          [ANNOTATION_REF_NAME]: ['latest', 'v1'][i],
        },
      })),
    });
    // Annotation keys are in Go's (sorted) map order.
    expect(entries.find((e) => e.name === 'index.json')!.data.toString()).toContain(
      `"annotations":{"${ANNOTATION_IMAGE_NAME}":"docker.io/library/busybox:latest","${ANNOTATION_CREATED}"`,
    );
    expect(entries.some((e) => e.name === 'manifest.json')).toBe(false);
    // And loom reads its own output back.
    const store2Root = mkdtempSync(join(tmpdir(), 'loom-archive2-'));
    try {
      const s2 = new ContentStore({ root: store2Root });
      const back = await importOciArchive(s2, PassThrough.from([bytes]) as never, 'rewritten');
      expect(back.index.manifests.map((m) => m.annotations?.[ANNOTATION_IMAGE_NAME])).toEqual(names);
      expect((await s2.list()).length).toBe(10);
    } finally {
      rmSync(store2Root, { recursive: true, force: true });
    }
  });

  it('writes a docker archive of one platform with manifest.json RepoTags', async () => {
    const top = imported.index.manifests[0]!;
    const list = parseIndex(await store.readAll(top.digest), 'list');
    const amd64 = list.manifests[0]!;
    const man = parseManifest(await store.readAll(amd64.digest), amd64.digest);
    const names = normalizeImageNames('busybox:test,localhost:5000/x');
    const root = { mediaType: amd64.mediaType, digest: amd64.digest, size: amd64.size };
    const bytes = await collect((out) => writeDockerArchive(out, { store, root, names }));
    const entries = await tarEntries(bytes);
    const manifestJson = JSON.parse(entries.find((e) => e.name === 'manifest.json')!.data.toString());
    expect(manifestJson).toEqual([
      {
        Config: `blobs/sha256/${man.config.digest.slice(7)}`,
        RepoTags: ['busybox:test', 'localhost:5000/x:latest'],
        Layers: man.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`),
      },
    ]);
    // Only the amd64 blobs: manifest, config, four layers.
    expect(entries.filter((e) => e.name.startsWith('blobs/sha256/') && e.type === 'file')).toHaveLength(6);
    for (const e of entries.filter((x) => x.type === 'file' && x.name.startsWith('blobs/sha256/'))) {
      expect(sha256(e.data)).toBe(`sha256:${e.name.slice('blobs/sha256/'.length)}`);
      expect(e.mode).toBe(0o444);
    }
    await expect(collect((out) => writeDockerArchive(out, { store, root: top }))).rejects.toThrow(/manifest lists/);
    // The oci variant of one platform has a manifest.json too (containerd skips only the names
    // there), so docker load takes it; an index gets none (the test above).
    const oci = await tarEntries(await collect((out) => writeOciArchive(out, { store, root, names })));
    expect(JSON.parse(oci.find((e) => e.name === 'manifest.json')!.data.toString())).toEqual([{ ...manifestJson[0], RepoTags: null }]);
  });

  it('builds and stores a new image: Docker media types, history, default config, index', async () => {
    const list = parseIndex(await store.readAll(imported.index.manifests[0]!.digest), 'list');
    const base = parseManifest(await store.readAll(list.manifests[0]!.digest), 'base');
    const baseCfg = parseImageConfig(await store.readAll(base.config.digest), 'cfg');
    const extraLayer = await store.writeBlob(Buffer.from('not really a layer'), { mediaType: MediaType.OciLayerGzip });
    const diffId = sha256('uncompressed');
    const config = buildImageConfig({
      config: { ...baseCfg, created: undefined } as never,
      layers: [...baseCfg.rootfs.diff_ids.map((d) => ({ diffId: d })), { diffId, createdAt: new Date('2024-01-02T03:04:05.5Z'), description: 'RUN touch x' }],
      epoch: new Date('2024-01-02T00:00:00Z'),
    });
    const cfg = JSON.parse(config.toString());
    expect(Object.keys(cfg)).toEqual([...Object.keys(cfg)].sort());
    expect(cfg.rootfs.diff_ids.at(-1)).toBe(diffId);
    expect(cfg.history.at(-1)).toEqual({ created: '2024-01-02T00:00:00Z', created_by: 'RUN touch x', comment: 'buildkit.exporter.image.v0' });
    expect(cfg['moby.buildkit.buildinfo.v1']).toBeUndefined();
    expect(config.toString()).toContain('\\u003e /etc/passwd'); // Go's escaping of '>'

    const layers = [...base.layers, { ...extraLayer, annotations: { 'containerd.io/uncompressed': diffId, keep: 'me' } }];
    const docker = await writeManifest(store, { config, layers, oci: false, platform: { os: 'linux', architecture: 'amd64' } });
    const dm = JSON.parse((await store.readAll(docker.descriptor.digest)).toString());
    expect(dm.mediaType).toBe(MediaType.DockerManifest);
    expect(dm.config.mediaType).toBe(MediaType.DockerConfig);
    expect(dm.layers.map((l: Descriptor) => l.mediaType)).toEqual(Array(5).fill(MediaType.DockerLayerGzip));
    expect(dm.layers[4].annotations).toBeUndefined();
    expect(Object.keys(dm)).toEqual(['mediaType', 'schemaVersion', 'config', 'layers']);
    expect(docker.descriptor.platform).toEqual({ os: 'linux', architecture: 'amd64' });

    const oci = await writeManifest(store, { config, layers, oci: true, annotations: { 'org.example': 'x' } });
    const om = JSON.parse((await store.readAll(oci.descriptor.digest)).toString());
    expect(om.layers[4].annotations).toEqual({ keep: 'me' });
    expect(om.annotations).toEqual({ 'org.example': 'x' });
    // A Docker manifest carries manifest annotations too, after its layers, as upstream's writer (Go's ocispecs.Manifest).
    const dockerAnnotated = JSON.parse(buildManifest({ config, layers, oci: false, annotations: { a: 'b' } }).bytes.toString());
    expect(Object.keys(dockerAnnotated)).toEqual(['mediaType', 'schemaVersion', 'config', 'layers', 'annotations']);
    expect(dockerAnnotated.annotations).toEqual({ a: 'b' });

    const idx = await writeIndex(store, { manifests: [docker.descriptor], oci: false });
    const il = JSON.parse((await store.readAll(idx.descriptor.digest)).toString());
    expect(il.mediaType).toBe(MediaType.DockerManifestList);
    expect(il.manifests[0].platform).toEqual({ architecture: 'amd64', os: 'linux' });

    await expect(writeManifest(store, { config, layers: [{ ...extraLayer, digest: sha256('missing') }], oci: true })).rejects.toThrow(
      `layer ${sha256('missing')}: not found`,
    );

    const dflt = JSON.parse(buildImageConfig({ layers: [], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }).toString());
    expect(dflt).toEqual({
      architecture: 'arm64',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], WorkingDir: '/' },
      created: null,
      history: null,
      os: 'linux',
      // Go's nil list, as upstream's image writer marshals an image without layers.
      rootfs: { type: 'layers', diff_ids: null },
    });
    expect(JSON.parse(buildManifest({ config, layers: [], oci: true }).bytes.toString()).layers).toBeNull();
    expect(defaultImageConfig({ os: 'linux', architecture: 'arm', variant: 'v7' }).variant).toBe('v7');
  });

  it('refuses archives whose blobs do not match their names', async () => {
    const pack = tar.pack();
    const bogus = `sha256:${'0'.repeat(64)}`;
    pack.entry({ name: 'oci-layout' }, '{"imageLayoutVersion":"1.0.0"}');
    pack.entry({ name: `blobs/sha256/${'0'.repeat(64)}` }, 'not the content you are looking for');
    pack.finalize();
    const r = mkdtempSync(join(tmpdir(), 'loom-bad-'));
    try {
      const s = new ContentStore({ root: r });
      await expect(importOciArchive(s, pack as never, 'bad.tar')).rejects.toThrow(`bad.tar: blob blobs/sha256/${'0'.repeat(64)}`);
      expect(await s.has(bogus as never)).toBe(false);
    } finally {
      rmSync(r, { recursive: true, force: true });
    }
  });
});
