import { createWriteStream } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import tar from 'tar-stream';
import { createReadStream } from 'node:fs';
import { ControlClient } from '../../../src/client/control-client.js';
import { solve } from '../../../src/client/solve.js';
import { copy, local, marshal, mkfile, scratch } from '../../../src/llb/builder.js';
import { resolveSecrets } from '../../../src/session/client/secrets.js';
import type { StatusResponse } from '../../../src/gen/buildkit/control_pb.js';
import { startUpstreamBuildkitd, upstreamBuildkitdAvailable, type UpstreamBuildkitd } from '../../helpers/upstream-buildkitd.js';

/**
 * loom's client end of the session against upstream's buildkitd: proves the tunnel, FileSync,
 * FileSend and Health speak the real protocol. Needs root and an upstream buildkitd binary
 * ($LOOM_UPSTREAM_BUILDKITD or /opt/upstream/bin/buildkitd, never part of loom); skipped without.
 */
const enabled = upstreamBuildkitdAvailable;

describe.skipIf(!enabled)('client against upstream buildkitd (integration, root)', () => {
  let dir: string;
  let client: ControlClient;
  let upstream: UpstreamBuildkitd | undefined;

  beforeAll(async () => {
    upstream = await startUpstreamBuildkitd('loom-bkd-');
    dir = upstream.dir;
    client = upstream.client;
  }, 30_000);

  afterAll(async () => {
    await upstream?.stop();
  });

  it('exports a FileOp result as a tar file through FileSend', async () => {
    const def = marshal(scratch().file(mkfile('/hello.txt', 0o644, 'hello from loom\n')));
    const out = join(dir, 'out.tar');
    const statuses: StatusResponse[] = [];
    const res = await solve({
      control: client,
      definition: def,
      exports: [{ type: 'tar', attrs: {}, output: () => createWriteStream(out) }],
      auth: false,
      onStatus: (s) => statuses.push(s),
    });
    expect(res.exporterResponse).toBeTypeOf('object');
    const entries = await readTar(out);
    expect(entries.get('hello.txt')).toBe('hello from loom\n');
    expect(statuses.some((s) => s.vertexes.some((v) => v.name.includes('mkfile')))).toBe(true);
  }, 60_000);

  it('sends a --local dir through FileSync and receives a local export into a directory', async () => {
    const ctx = join(dir, 'ctx');
    await mkdir(join(ctx, 'sub'), { recursive: true });
    await writeFile(join(ctx, 'a.txt'), 'A');
    await writeFile(join(ctx, 'sub', 'big.bin'), Buffer.alloc(5 * 1024 * 1024, 7));
    const st = copy(local('context'), '/', '/copied/');
    const def = marshal(scratch().file(st));
    const dest = join(dir, 'dest');
    await solve({
      control: client,
      definition: def,
      locals: { context: ctx },
      exports: [{ type: 'local', attrs: {}, outputDir: dest }],
      auth: false,
    });
    expect(await readFile(join(dest, 'copied', 'a.txt'), 'utf8')).toBe('A');
    const big = await readFile(join(dest, 'copied', 'sub', 'big.bin'));
    expect(big.length).toBe(5 * 1024 * 1024);
    expect(big.every((b) => b === 7)).toBe(true);
    expect((await stat(join(dest, 'copied', 'sub'))).isDirectory()).toBe(true);
  }, 60_000);

  it('reports a local dir the definition names but the client did not share', async () => {
    const def = marshal(scratch().file(copy(local('other'), '/', '/')));
    await expect(solve({ control: client, definition: def, locals: {}, auth: false })).rejects.toThrow('local directory other not enabled');
  });

  it('keeps the session alive past the daemon health checks during a long build step', async () => {
    // The daemon checks health every 5 s; a session that does not answer is dropped after two misses.
    const secrets = await resolveSecrets([]);
    const ctx = join(dir, 'ctx2');
    await mkdir(ctx, { recursive: true });
    await writeFile(join(ctx, 'f'), 'x');
    const def = marshal(scratch().file(copy(local('c'), '/f', '/f')));
    const t0 = Date.now();
    const out = join(dir, 'slow.tar');
    await solve({
      control: client,
      definition: def,
      locals: { c: ctx },
      secrets,
      auth: false,
      exports: [
        {
          type: 'tar',
          attrs: {},
          // Hold the export open for 12 s: the session must survive two health check rounds.
          output: async () => {
            await new Promise((r) => setTimeout(r, 12_000));
            return createWriteStream(out);
          },
        },
      ],
    });
    expect(Date.now() - t0).toBeGreaterThan(11_000);
    expect((await readTar(out)).get('f')).toBe('x');
  }, 60_000);
});

async function readTar(path: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const ex = tar.extract();
  ex.on('entry', (h, s, next) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      out.set(h.name.replace(/^\.?\//, ''), Buffer.concat(chunks).toString());
      next();
    });
  });
  await new Promise<void>((resolve, reject) => {
    ex.on('finish', resolve);
    ex.on('error', reject);
    createReadStream(path).pipe(ex);
  });
  return out;
}
