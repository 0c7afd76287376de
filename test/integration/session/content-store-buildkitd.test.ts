import { createHash, randomBytes } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../src/client/control-client.js';
import { openSession } from '../../../src/client/session.js';
import { contentStoreService, readOciIndexTag, updateOciIndex } from '../../../src/session/client/content-store.js';
import { healthService } from '../../../src/session/client/health.js';
import { localCacheStoreId } from '../../../src/session/content/store-id.js';
import type { SessionServices } from '../../../src/session/tunnel/server.js';
import { marshal, mkfile, scratch } from '../../../src/llb/builder.js';
import { startUpstreamBuildkitd, upstreamBuildkitdAvailable, type UpstreamBuildkitd } from '../../helpers/upstream-buildkitd.js';

/**
 * loom's client end of the content store against upstream's daemon: upstream buildkitd exports
 * and imports a local cache through contentStoreService (containerd's proxy client driving our
 * server: Info, Write STAT/WRITE/COMMIT, Read). Needs root and an upstream buildkitd binary
 * ($LOOM_UPSTREAM_BUILDKITD or /opt/upstream/bin/buildkitd, never part of loom); skipped without.
 */
const enabled = upstreamBuildkitdAvailable;

describe.skipIf(!enabled)('client content store against upstream buildkitd (integration, root)', () => {
  let dir: string;
  let client: ControlClient;
  let upstream: UpstreamBuildkitd | undefined;

  beforeAll(async () => {
    upstream = await startUpstreamBuildkitd('loom-cstore-bkd-');
    dir = upstream.dir;
    client = upstream.client;
  }, 30_000);

  afterAll(async () => {
    await upstream?.stop();
  });

  /** The content services, counting the calls the daemon makes per method name. */
  const counted = (services: SessionServices, calls: Record<string, number>): SessionServices =>
    Object.fromEntries(
      Object.entries(services).map(([path, h]) => [
        path,
        (stream, ctx) => {
          const name = path.split('/').pop()!;
          calls[name] = (calls[name] ?? 0) + 1;
          return h(stream, ctx);
        },
      ]),
    );

  // Two steps, since upstream exports results of steps with inputs only. Random bytes do not
  // compress: the layer blobs are a few MiB, several Write messages each.
  const def = marshal(
    scratch()
      .file(mkfile('/a.bin', 0o644, randomBytes(1536 * 1024)))
      .file(mkfile('/b.bin', 0o644, randomBytes(1536 * 1024))),
  );

  it('exports a local cache into the client directory and imports it back', async () => {
    const cacheDir = join(dir, 'cache');
    const exportCalls: Record<string, number> = {};
    const s1 = openSession({
      control: client,
      services: { ...healthService(), ...counted(contentStoreService({ stores: { [localCacheStoreId(cacheDir)]: cacheDir } }), exportCalls) },
    });
    let res;
    try {
      res = await client.solve({
        Ref: `ref-${Date.now()}`,
        Definition: def,
        Session: s1.id,
        Cache: { Exports: [{ Type: 'local', Attrs: { dest: cacheDir, mode: 'max' } }] },
      });
    } finally {
      s1.close();
    }
    const desc = JSON.parse(res.ExporterResponse['cache.manifest']!) as { mediaType: string; digest: string; size: number };
    expect(desc.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    expect(exportCalls.Write).toBeGreaterThanOrEqual(2);
    // Every blob the daemon wrote sits under its own digest, and the manifest list names them.
    const blobs = await readdir(join(cacheDir, 'blobs', 'sha256'));
    for (const hex of blobs) {
      const b = await readFile(join(cacheDir, 'blobs', 'sha256', hex));
      expect(createHash('sha256').update(b).digest('hex')).toBe(hex);
    }
    const manifest = await readFile(join(cacheDir, 'blobs', 'sha256', desc.digest.slice(7)));
    expect(manifest.length).toBe(desc.size);
    const entries = (JSON.parse(manifest.toString()) as { manifests: { mediaType: string; digest: string; size: number }[] }).manifests;
    expect(blobs.sort()).toEqual([...entries.map((m) => m.digest.slice(7)), desc.digest.slice(7)].sort());
    // Both layers came through in more than one Write message each (> 1 MiB).
    const layers = entries.filter((m) => m.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip');
    expect(layers).toHaveLength(2);
    for (const l of layers) expect(l.size).toBeGreaterThan(1 << 20);
    expect(exportCalls.Write).toBe(blobs.length);
    expect(await readdir(join(cacheDir, 'ingest')).catch(() => [])).toEqual([]);

    await updateOciIndex(cacheDir, 'latest', desc);
    const tagged = await readOciIndexTag(cacheDir, 'latest');
    expect(tagged?.digest).toBe(desc.digest);

    const importCalls: Record<string, number> = {};
    const s2 = openSession({
      control: client,
      services: { ...healthService(), ...counted(contentStoreService({ stores: { [localCacheStoreId(cacheDir)]: cacheDir } }), importCalls) },
    });
    try {
      await client.solve({
        Ref: `ref-${Date.now()}-2`,
        Definition: def,
        Session: s2.id,
        Cache: { Imports: [{ Type: 'local', Attrs: { src: cacheDir, digest: tagged!.digest } }] },
      });
    } finally {
      s2.close();
    }
    // The daemon looked the manifest list up and read it through the session.
    expect(importCalls.Info).toBeGreaterThanOrEqual(1);
    expect(importCalls.Read).toBeGreaterThanOrEqual(1);
  }, 120_000);
});
