/**
 * loom's OCI and Docker archives as another tool reads them: skopeo finds the image by the
 * ref-name annotation (oci-archive:FILE:TAG) and by manifest.json RepoTags (docker-archive:FILE:NAME).
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../../../src/content/store.js';
import { parseImageConfig, parseIndex, parseManifest, type Descriptor } from '../../../src/content/oci.js';
import { importOciArchive } from '../../../src/exporter/image/archive-reader.js';
import { normalizeImageNames, writeDockerArchive, writeOciArchive } from '../../../src/exporter/image/archive-writer.js';
import { baseImageArchive } from '../../helpers/registry.js';

const run = promisify(execFile);

async function inspect(args: string[]): Promise<{ Architecture: string; Layers: string[] }> {
  const { stdout } = await run('skopeo', ['inspect', ...args], { maxBuffer: 16 << 20 });
  return JSON.parse(stdout);
}

describe('archives read by skopeo', () => {
  let dir: string;
  let store: ContentStore;
  let top: Descriptor;
  let arm64: Descriptor;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'loom-archives-'));
    store = new ContentStore({ root: join(dir, 'state') });
    const imp = await importOciArchive(store, createReadStream(await baseImageArchive()));
    top = imp.index.manifests[0]!;
    const list = parseIndex(await store.readAll(top.digest), 'list');
    const m = list.manifests.find((x) => x.platform?.architecture === 'arm64')!;
    arm64 = { mediaType: m.mediaType, digest: m.digest, size: m.size };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('finds a multi-platform OCI archive image by its tag', async () => {
    const file = join(dir, 'oci.tar');
    const out = createWriteStream(file);
    await writeOciArchive(out, { store, root: top, names: normalizeImageNames('example.com/team/busybox:v1') });
    out.end();
    await finished(out);
    const info = await inspect(['--override-os', 'linux', '--override-arch', 'arm64', `oci-archive:${file}:v1`]);
    const man = parseManifest(await store.readAll(arm64.digest), 'arm64');
    expect(info.Architecture).toBe('arm64');
    expect(info.Layers).toEqual(man.layers.map((l) => l.digest));
    await expect(inspect([`oci-archive:${file}:v2`])).rejects.toThrow(/v2/);
  });

  it('finds a Docker archive image by its RepoTags name', async () => {
    const file = join(dir, 'docker.tar');
    const out = createWriteStream(file);
    await writeDockerArchive(out, { store, root: arm64, names: normalizeImageNames('busybox:arm') });
    out.end();
    await finished(out);
    const info = await inspect([`docker-archive:${file}:busybox:arm`]);
    const man = parseManifest(await store.readAll(arm64.digest), 'arm64');
    const cfg = parseImageConfig(await store.readAll(man.config.digest), 'config');
    expect(info.Architecture).toBe('arm64');
    // skopeo reports a docker archive's layers by their uncompressed digests.
    expect(info.Layers).toEqual(cfg.rootfs.diff_ids);
  });
});
