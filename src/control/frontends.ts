import { DockerfileFrontend } from '../frontend/dockerfile/frontend.js';
import { InvalidArgumentError } from '../util/errors.js';
import { inVertex } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import { toPbPlatform } from '../util/pb-platform.js';
import { readRefFile, type GatewayBuild, type GatewayDeps } from './gateway.js';

/** What a frontend produced: result ids of the build (one per platform) and export metadata. */
export interface FrontendOutcome {
  refs: { platformId: string; platform: Platform; id: string | undefined }[];
  multiPlatform: boolean;
  metadata: Record<string, Uint8Array>;
}

/** Frontends built into loom, by the names clients ask for. */
export const FRONTENDS = new Set(['dockerfile.v0']);

/**
 * Runs a built-in frontend inside a build: it solves definitions through the build (so results
 * are held and released with it), reads files from them, and resolves base image configs with
 * the build's credentials.
 */
export async function runFrontend(
  name: string,
  b: GatewayBuild,
  opts: { attrs: Record<string, string>; sessionId: string; deps: GatewayDeps; platforms: Platform[] },
): Promise<FrontendOutcome> {
  if (!FRONTENDS.has(name)) throw new InvalidArgumentError(`invalid frontend: ${name}`);
  const res = await new DockerfileFrontend().solve({
    attrs: opts.attrs,
    sessionId: opts.sessionId,
    inputs: b.inputs,
    workerPlatforms: opts.platforms,
    signal: b.job.signal,
    solve: (def) => b.solve(def),
    readFile: async (id, path, range) => readRefFile((await b.ref(id)).dir, path, range),
    resolveImageConfig: (ref, o) =>
      inVertex(b.job.progress, { name: o.logName, id: `${b.job.id}-${o.logName}` }, () =>
        opts.deps.resolveImageConfig(b.job, ref, toPbPlatform(o.platform), o.resolveMode),
      ),
    warn: (w) => b.job.progress.warn({ vertex: w.vertex, level: w.level, short: w.short, detail: w.detail, url: w.url }),
  });
  // Build info, as upstream's image exporter records it in the config: the frontend and the base
  // images with the digests they resolved to.
  const metadata = { ...res.metadata };
  const info = { frontend: name, sources: res.imageSources.map((s) => ({ type: 'docker-image', ref: s.ref, pin: s.pin })) };
  metadata['containerimage.buildinfo'] = Buffer.from(JSON.stringify(info));
  return {
    refs: res.refs.map((r) => ({ platformId: r.platformId, platform: r.platform, id: r.ref })),
    multiPlatform: res.multiPlatform,
    metadata,
  };
}
