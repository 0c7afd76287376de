import { mkdtemp, readFile, rm, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readOciIndex, readOciIndexTag, updateOciIndex } from '../../../src/session/client/oci-index.js';
import { LoomError } from '../../../src/util/errors.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const D3 = `sha256:${'3'.repeat(64)}`;
const IDX = 'application/vnd.oci.image.index.v1+json';

describe('updateOciIndex / readOciIndexTag (index.json of a client-side layout)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loom-ociidx-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates index.json as Go marshals it, plus oci-layout', async () => {
    const store = join(dir, 'new', 'store');
    await updateOciIndex(store, 'latest', { mediaType: IDX, digest: D1, size: 123 });
    // Byte for byte what upstream's ociindex.StoreIndex.Put writes for the same descriptor.
    expect(await readFile(join(store, 'index.json'), 'utf8')).toBe(
      `{"schemaVersion":2,"manifests":[{"mediaType":"${IDX}","digest":"${D1}","size":123,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}`,
    );
    expect(await readFile(join(store, 'oci-layout'), 'utf8')).toBe('{"imageLayoutVersion":"1.0.0"}');
    expect(await readOciIndexTag(store, 'latest')).toEqual({
      mediaType: IDX,
      digest: D1,
      size: 123,
      annotations: { 'org.opencontainers.image.ref.name': 'latest' },
    });
    expect(await readOciIndexTag(store, 'other')).toBeUndefined();
  });

  it('replaces the entry of the same tag and keeps the others in order', async () => {
    await updateOciIndex(dir, 'latest', { mediaType: IDX, digest: D1, size: 1 });
    await updateOciIndex(dir, 'v2', { mediaType: IDX, digest: D2, size: 2, annotations: { 'z.key': 'z', 'a.key': 'a' } });
    await updateOciIndex(dir, 'latest', { mediaType: IDX, digest: D3, size: 3 });
    const idx = await readOciIndex(dir);
    expect(idx.manifests.map((m) => [m.digest, m.annotations?.['org.opencontainers.image.ref.name']])).toEqual([
      [D2, 'v2'],
      [D3, 'latest'],
    ]);
    expect((await readOciIndexTag(dir, 'latest'))?.digest).toBe(D3);
    // Annotation keys are sorted, as Go writes maps.
    const raw = await readFile(join(dir, 'index.json'), 'utf8');
    expect(raw).toContain('"annotations":{"a.key":"a","org.opencontainers.image.ref.name":"v2","z.key":"z"}');
    expect((await readdir(dir)).sort()).toEqual(['index.json', 'oci-layout']);
  });

  it('keeps an existing layout index (image manifests of another tool) and its oci-layout', async () => {
    await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion": "1.0.0"}\n');
    await writeFile(
      join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        mediaType: IDX,
        manifests: [
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D1, size: 10, platform: { os: 'linux', architecture: 'amd64' }, extra: 'dropped' },
        ],
        annotations: { 'x.y': '1' },
      }),
    );
    await updateOciIndex(dir, 'cache', { mediaType: IDX, digest: D2, size: 20 });
    expect(await readFile(join(dir, 'index.json'), 'utf8')).toBe(
      `{"schemaVersion":2,"mediaType":"${IDX}","manifests":[` +
        `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"${D1}","size":10,"platform":{"architecture":"amd64","os":"linux"}},` +
        `{"mediaType":"${IDX}","digest":"${D2}","size":20,"annotations":{"org.opencontainers.image.ref.name":"cache"}}],` +
        `"annotations":{"x.y":"1"}}`,
    );
    expect(await readFile(join(dir, 'oci-layout'), 'utf8')).toBe('{"imageLayoutVersion": "1.0.0"}\n');
  });

  it('serializes concurrent updates of one index within the process', async () => {
    const digests = Array.from({ length: 8 }, (_, i) => `sha256:${String(i).repeat(64)}`);
    await Promise.all(digests.map((d, i) => updateOciIndex(dir, `t${i}`, { digest: d, size: i })));
    const idx = await readOciIndex(dir);
    expect(idx.manifests.map((m) => m.digest).sort()).toEqual([...digests].sort());
  });

  it('names the file or field on bad input', async () => {
    await expect(readOciIndexTag(dir, 'latest')).rejects.toSatisfy(
      (e: LoomError) => e.code === 'NOT_FOUND' && e.message.includes(join(dir, 'index.json')),
    );
    await writeFile(join(dir, 'index.json'), '{"manifests": [');
    await expect(readOciIndexTag(dir, 'latest')).rejects.toThrow(`could not unmarshal ${join(dir, 'index.json')}`);
    await expect(updateOciIndex(dir, 'latest', { digest: D1, size: 1 })).rejects.toThrow(`could not unmarshal ${join(dir, 'index.json')}`);
    await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ digest: 'sha256:abc', size: 1 }] }));
    await expect(readOciIndex(dir)).rejects.toThrow(`${join(dir, 'index.json')}: manifests[0]: invalid digest "sha256:abc"`);
    await expect(updateOciIndex(dir, 'latest', { digest: D1, size: -1 })).rejects.toThrow(`descriptor ${D1} has invalid size -1`);
    // An empty index.json is a new index, as upstream treats it.
    await writeFile(join(dir, 'index.json'), '');
    await updateOciIndex(dir, '', { digest: D1, size: 1 });
    expect(await readFile(join(dir, 'index.json'), 'utf8')).toBe(`{"schemaVersion":2,"manifests":[{"digest":"${D1}","size":1}]}`);
  });
});
