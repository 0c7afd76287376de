import { DockerfileFrontend } from '../frontend/dockerfile/frontend.js';
import { InvalidArgumentError, LoomError, withSources } from '../util/errors.js';
import { inVertex } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import { toPbPlatform } from '../util/pb-platform.js';
import { readRefFile, resolveVertexId, type GatewayBuild, type GatewayDeps } from './gateway.js';
import { BuildRecorder } from './build-records.js';
import { buildInfoSources, type PlatformScope } from './build-info.js';

/**
 * What a frontend produced: result ids of the build (one per platform whose result is not empty)
 * and export metadata.
 */
export interface FrontendOutcome {
  refs: { platformId: string; platform: Platform; id: string }[];
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
  // One image resolved twice for one platform (a named context that is also a stage's base) is one
  // vertex, whose name clients take from its latest event. Upstream names it by whichever resolve
  // ends last, `[context img] load metadata for ...` or `[internal] load metadata for ...`, varying
  // from build to build (about half each over 16 random Dockerfiles); loom always names it by the
  // named context, one of upstream's two, so the same build always reads the same.
  const resolveNames = new Map<string, string>();
  const resolveName = (id: string, logName: string): string => {
    const had = resolveNames.get(id);
    if (had?.startsWith('[context ') && !logName.startsWith('[context ')) return had;
    resolveNames.set(id, logName);
    return logName;
  };
  const res = await new DockerfileFrontend()
    .solve({
    attrs: opts.attrs,
    sessionId: opts.sessionId,
    inputs: b.inputs,
    workerPlatforms: opts.platforms,
    signal: b.job.signal,
    solve: (def) => b.solve(def),
    readFile: async (id, path, range) => readRefFile((await b.ref(id)).dir, path, range),
    resolveImageConfig: (ref, o) => {
      const id = resolveVertexId(ref, o.platform);
      return inVertex(b.job.progress, { name: resolveName(id, o.logName), id }, () =>
        opts.deps.resolveImageConfig(b.job, ref, toPbPlatform(o.platform), o.resolveMode, o.signal),
      );
    },
    warn: (w) => b.job.progress.warn({ vertex: w.vertex, level: w.level, short: w.short, detail: w.detail, url: w.url }),
  })
    .catch((err: unknown) => {
      // Errors naming Dockerfile lines carry the Dockerfile: clients print those lines.
      const e = err as { location?: { start: { line: number; character: number }; end: { line: number; character: number } }[]; source?: { filename: string; data: Uint8Array } };
      if (e && typeof e === 'object' && e.location?.length && e.source) {
        withSources(err, [{ filename: e.source.filename, data: e.source.data, language: 'Dockerfile', ranges: e.location }]);
        // Upstream's frontend errors are plain errors (gRPC Unknown): clients print no code.
        if (err instanceof LoomError && err.code === 'INVALID_ARGUMENT') (err as { code: string }).code = 'UNKNOWN';
      }
      throw err;
    });
  // A subrequest's answer is its metadata alone.
  if (res.subrequest) return { refs: [], multiPlatform: false, metadata: res.metadata };
  // Build info, as upstream's image exporter records it in the config: the response's (the frontend
  // and the images and downloads the build read, with what they resolved to) without the options.
  const metadata = { ...res.metadata };
  const rec = b.job.steps instanceof BuildRecorder ? b.job.steps : undefined;
  const info = (scope?: PlatformScope): Buffer => {
    const sources = rec ? buildInfoSources(rec.sources, rec.resolvedImages, scope) : [];
    // Go's omitempty: no sources (FROM scratch) leaves the key out.
    return Buffer.from(JSON.stringify(sources.length ? { frontend: name, sources } : { frontend: name }));
  };
  metadata['containerimage.buildinfo'] = info();
  // Each platform of a multi-platform result lists the images resolved for every platform once,
  // by its own platform's resolve (upstream's filterImagePlatforms).
  if (res.multiPlatform) {
    const platforms = res.refs.map((r) => r.platform);
    res.refs.forEach((r, i) => (metadata[`containerimage.buildinfo/${r.platformId}`] = info({ platforms, current: platforms[i]! })));
  }
  return {
    // A platform whose result is empty (a stage with no filesystem change) has no ref, as upstream
    // leaves nil refs out of a frontend's result: its gateway answers with no entry for it (its
    // client cannot Return an entry without an id), and with none at all the exporters refuse as
    // upstream's do (mappedPlatforms).
    refs: res.refs.flatMap((r) => (r.ref ? [{ platformId: r.platformId, platform: r.platform, id: r.ref }] : [])),
    multiPlatform: res.multiPlatform,
    metadata,
  };
}

