/**
 * Pulling an image whose layers download together (a few at a time) while the first ones are
 * unpacked: a layer the registry cannot serve fails the build with an error naming it, wherever it
 * is in the chain, and the daemon goes on serving; once the registry has it again the same build
 * pulls and succeeds.
 */
import { copyFileSync, mkdirSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildctl, removeDir, run, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';

const isRoot = process.getuid?.() === 0;

describe.runIf(isRoot)('image pull with a layer the registry cannot serve', () => {
  let reg: TestRegistry;
  let daemon: TestDaemon;
  let work: string;

  beforeAll(async () => {
    reg = await startRegistry();
    daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
    work = mkdtempSync(join(tmpdir(), 'loom-pull-failure-'));
  }, 120_000);
  afterAll(async () => {
    await daemon?.stop();
    if (daemon) removeDir(daemon.dir);
    await reg?.stop();
    if (work) removeDir(work);
  });

  /** The layer digests of the linux/amd64 image of `repo:latest`. */
  async function layersOf(repo: string): Promise<string[]> {
    const raw = await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${repo}:latest`]);
    let m = JSON.parse(raw.stdout) as { manifests?: { digest: string; platform: { architecture: string } }[]; layers?: { digest: string }[] };
    if (m.manifests) {
      const amd = m.manifests.find((x) => x.platform.architecture === 'amd64')!;
      m = JSON.parse((await run('skopeo', ['inspect', '--tls-verify=false', '--raw', `docker://${repo}@${amd.digest}`])).stdout);
    }
    return m.layers!.map((l) => l.digest);
  }

  it('fails naming the layer, keeps serving, and pulls once the layer is back', async () => {
    const layers = await layersOf(`${reg.host}/busybox`);
    expect(layers.length).toBeGreaterThan(2);
    // A later layer of the chain: its download runs beside the first layers' unpacking.
    const missing = layers[layers.length - 1]!;
    const hex = missing.slice('sha256:'.length);
    const data = join(reg.storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
    renameSync(data, `${data}.away`);

    const ctx = join(work, 'ctx');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN echo pulled > /pulled\n`);
    const build = () => buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=local,dest=${join(work, 'out')}`], { timeoutMs: 120_000 });
    const failed = await build();
    expect(failed.code).not.toBe(0);
    expect(failed.stderr).toContain(missing);

    const workers = await buildctl(daemon.addr, ['debug', 'workers']);
    expect(workers.code, workers.stderr).toBe(0);

    copyFileSync(`${data}.away`, data);
    const ok = await build();
    expect(ok.code, ok.stderr).toBe(0);
    const r = await run('cat', [join(work, 'out', 'pulled')]);
    expect(r.stdout).toBe('pulled\n');
  }, 180_000);
});
