import { fromBinary } from '@bufbuild/protobuf';
import { mkdir } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { readOciIndexTag, updateOciIndex, type OciIndexDescriptor } from '../session/client/oci-index.js';
import { EXPORT_STORE_ID, localCacheStoreId } from '../session/content/store-id.js';
import type { StatusResponse } from '../gen/buildkit/control_pb.js';
import type { Definition } from '../gen/buildkit/ops_pb.js';
import { clientSessionServices, checkLocalDirs, type AuthServiceOptions, type ExportTarget, type SecretSource } from '../session/client/index.js';
import type { resolveSshAgents } from '../session/client/ssh.js';
import { errorMessage, InvalidArgumentError, isAbortError, LoomError } from '../util/errors.js';
import type { ControlClient } from './control-client.js';
import { fromGrpcError } from './grpc-error.js';
import { newId, openSession } from './session.js';

/** One `--output`: the exporter and its attributes, and where its result lands on this machine. */
export interface ExportEntry {
  type: string;
  attrs: Record<string, string>;
  /** tar, oci, docker: the sink for the exporter's bytes (given the exporter's response values). */
  output?: (values: Record<string, string>) => Writable | Promise<Writable>;
  /** local: the directory the result tree is written into. */
  outputDir?: string;
}

export interface CacheOptionsEntry {
  type: string;
  attrs: Record<string, string>;
}

export interface SolveOptions {
  control: ControlClient;
  /** An LLB definition; exactly one of definition and frontend. */
  definition?: Definition;
  frontend?: string;
  frontendAttrs?: Record<string, string>;
  exports?: ExportEntry[];
  cacheImports?: CacheOptionsEntry[];
  cacheExports?: CacheOptionsEntry[];
  /** `--local name=dir`. */
  locals?: Record<string, string>;
  secrets?: Map<string, SecretSource>;
  ssh?: Awaited<ReturnType<typeof resolveSshAgents>>;
  /** Streams the daemon fetches as http://buildkit-session/<id> (a context sent as one tar, as buildx's `-`), by id. */
  uploads?: Map<string, () => Readable>;
  /** Registry credentials from the docker config (default) or none (false). */
  auth?: AuthServiceOptions | false;
  entitlements?: string[];
  signal?: AbortSignal;
  /** Progress as the daemon sends it (Control.Status). */
  onStatus?: (s: StatusResponse) => void;
  ref?: string;
  sharedKey?: string;
  /** Told of client-side warnings (a local cache to import that is not there). */
  onWarning?: (message: string) => void;
  sessionName?: string;
}

export interface SolveResult {
  ref: string;
  exporterResponse: Record<string, string>;
  /** A subrequest's answer (`requestid` in the frontend options): the frontend result's metadata. */
  subrequestMetadata?: Record<string, Uint8Array>;
}

export const EXPORTER_LOCAL = 'local';
export const EXPORTER_TAR = 'tar';
export const EXPORTER_OCI = 'oci';
export const EXPORTER_DOCKER = 'docker';

/**
 * One build, as upstream's client.Solve: open the session (serving locals, the export target,
 * credentials, secrets, ssh), then call Solve and follow Status concurrently under one ref.
 * The session is closed when Solve returns; Status is given 3 s more to drain, then cancelled.
 */
export async function solve(opts: SolveOptions): Promise<SolveResult> {
  const { control } = opts;
  if (!opts.frontend && !opts.definition) throw new InvalidArgumentError('invalid empty definition');
  if (opts.frontend && opts.definition) throw new InvalidArgumentError(`invalid definition for frontend ${opts.frontend}`);

  const locals = await neededLocals(opts.definition, opts.locals ?? {});
  await checkLocalDirs(locals);

  // Several exports (BuildKit v0.13+ daemons): each is one of the request's Exporters, and what the
  // daemon sends to the client says which by its place in that list.
  const exports = opts.exports ?? [];
  const ex: ExportEntry = exports[0] ?? { type: '', attrs: {} };
  const targets = exports.map(resolveExportTarget);
  const stores = targets.filter((t): t is { kind: 'store'; dir: string } => t?.kind === 'store');
  if (stores.length > 1) throw new InvalidArgumentError('only one oci or docker export to a directory (tar=false) can be specified');
  // An oci or docker export into a directory: the client serves that directory as a content store.
  const store = stores[0];
  const sendTargets = targets.map((t) => (t?.kind === 'store' ? undefined : t));
  const exportTarget = exports.length > 1 ? sendTargets : sendTargets[0];

  const { imports, exportsCache, frontendAttrs: cacheAttrs, contentStores, storesToUpdate } = await cacheOptions(opts);
  if (store) {
    await mkdir(store.dir, { recursive: true });
    contentStores.set(EXPORT_STORE_ID, store.dir);
  }
  const frontendAttrs = { ...(opts.frontendAttrs ?? {}), ...cacheAttrs };

  const ref = opts.ref ?? newId();
  const services = clientSessionServices({ locals, exportTarget, auth: opts.auth, secrets: opts.secrets, ssh: opts.ssh, contentStores, uploads: opts.uploads });
  const session = openSession({ control, services, name: opts.sessionName, sharedKey: opts.sharedKey });

  // Status outlives Solve a little (its last messages), but never the caller's cancel.
  const statusAc = new AbortController();
  const solveAc = new AbortController();
  const onAbort = (): void => {
    solveAc.abort(opts.signal?.reason);
    statusAc.abort(opts.signal?.reason);
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let statusCancelledByUs = false;

  const statusP = control
    .status(ref, (s) => opts.onStatus?.(s), statusAc.signal)
    .catch((err: unknown) => {
      if (statusCancelledByUs && isCancel(err)) return;
      throw err;
    });

  // A subrequest runs as upstream's buildctl runs it: a gateway build (client.Build) whose client
  // side asks for the frontend, keeps the answer's metadata and returns an empty result.
  const subrequest = opts.frontend !== undefined && opts.frontend !== '' && 'requestid' in frontendAttrs;
  let subrequestMetadata: Record<string, Uint8Array> | undefined;
  const solveP = (async () => {
    try {
      const solving = control.solve(
        {
          Ref: ref,
          Definition: opts.definition,
          ...(exports.length > 1 ? { Exporters: exports.map((e) => ({ Type: e.type, Attrs: e.attrs })) } : { Exporter: ex.type, ExporterAttrs: ex.attrs }),
          Session: session.id,
          Frontend: subrequest ? '' : (opts.frontend ?? ''),
          FrontendAttrs: subrequest ? {} : frontendAttrs,
          Cache: { Exports: exportsCache, Imports: imports },
          Entitlements: opts.entitlements ?? [],
        },
        solveAc.signal,
      );
      if (subrequest) {
        // The Solve may fail first (the build ends with the returned error): awaited below.
        solving.catch(() => undefined);
        const feOpts = { 'frontend.caps': 'moby.buildkit.frontend.subrequests', ...frontendAttrs };
        let failure: { code: number; message: string } | undefined;
        try {
          subrequestMetadata = await control.gatewaySolve(ref, opts.frontend!, feOpts, solveAc.signal);
        } catch (err) {
          const e = err as { grpcCode?: number; cause?: unknown; message?: string };
          const raw = e.cause instanceof Error ? e.cause.message : (e.message ?? String(err));
          failure = { code: e.grpcCode ?? 2, message: raw };
        }
        // The build ends with what the client side returned; its failure is the Solve's.
        await control.gatewayReturn(ref, failure, solveAc.signal).catch(() => undefined);
      }
      const res = await solving;
      // A local cache export wrote its blobs into our directory: tag its manifest in index.json.
      const manifest = res.ExporterResponse['cache.manifest'];
      if (manifest) {
        const desc = JSON.parse(manifest) as OciIndexDescriptor;
        for (const [dir, tag] of storesToUpdate) await updateOciIndex(dir, tag, desc);
      }
      // So did an image export into an OCI layout directory: tagged by its name, else latest.
      const image = res.ExporterResponse['containerimage.descriptor'];
      if (store && image) {
        const desc = JSON.parse(Buffer.from(image, 'base64').toString()) as OciIndexDescriptor;
        await updateOciIndex(store.dir, res.ExporterResponse['image.name'] || 'latest', desc);
      }
      return { ref, exporterResponse: { ...res.ExporterResponse }, ...(subrequestMetadata ? { subrequestMetadata } : {}) };
    } finally {
      session.close();
      const t = setTimeout(() => {
        statusCancelledByUs = true;
        statusAc.abort();
      }, 3000);
      t.unref();
      void statusP.finally(() => clearTimeout(t)).catch(() => undefined);
    }
  })();

  try {
    // Either failing fails the build (upstream's errgroup); a failed Status cancels the Solve.
    const [res] = await Promise.all([
      solveP,
      statusP.catch((err: unknown) => {
        solveAc.abort(err);
        throw err;
      }),
    ]);
    return res;
  } catch (err) {
    session.close();
    // Prefer the Solve's own error: a Status failure is often just its consequence.
    const solveErr = await solveP.then(
      () => undefined,
      (e: unknown) => e,
    );
    // The failed step's own progress (its error) may still be on the way: Status drains first
    // (the daemon ends it with the build, or the 3 s timer above does), as upstream's client.
    if (solveErr !== undefined) await statusP.catch(() => undefined);
    statusAc.abort();
    throw solveErr ?? err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

function isCancel(err: unknown): boolean {
  return isAbortError(err) || (err instanceof LoomError && err.code === 'CANCELLED');
}

/**
 * The `--local` dirs a build may read. With a definition, only those its `local://` sources name
 * are shared, and each of those must have been given (`local directory X not enabled`); with a
 * frontend, every one given (the frontend decides).
 */
export async function neededLocals(def: Definition | undefined, locals: Record<string, string>): Promise<Record<string, string>> {
  if (!def) return { ...locals };
  const { OpSchema } = await import('../gen/buildkit/ops_pb.js');
  const out: Record<string, string> = {};
  for (const dt of def.def) {
    let op;
    try {
      op = fromBinary(OpSchema, dt);
    } catch (err) {
      throw new InvalidArgumentError(`failed to parse llb proto op: ${errorMessage(err)}`, { cause: err });
    }
    if (op.op.case !== 'source') continue;
    const id = op.op.value.identifier;
    if (!id.startsWith('local://')) continue;
    const name = id.slice('local://'.length);
    if (!Object.hasOwn(locals, name)) throw new InvalidArgumentError(`local directory ${name} not enabled`);
    out[name] = locals[name]!;
  }
  return out;
}

/**
 * Where the export lands on this side, with upstream's checks of file versus directory outputs.
 * An oci or docker export with tar=false goes into an OCI layout directory (`store`): the daemon
 * writes its blobs through the session's content store named `export`, and the client then tags
 * the image in the directory's index.json, as upstream's client.
 */
export function resolveExportTarget(ex: ExportEntry): ExportTarget | { kind: 'store'; dir: string } | undefined {
  let supportFile = false;
  let supportDir = false;
  switch (ex.type) {
    case EXPORTER_LOCAL:
      supportDir = true;
      break;
    case EXPORTER_TAR:
      supportFile = true;
      break;
    case EXPORTER_OCI:
    case EXPORTER_DOCKER:
      supportDir = ex.outputDir !== undefined && ex.outputDir !== '';
      supportFile = ex.output !== undefined;
      break;
  }
  if (supportFile && supportDir) throw new InvalidArgumentError(`both file and directory output is not support by ${ex.type} exporter`);
  if (!supportFile && ex.output) throw new InvalidArgumentError(`output file writer is not supported by ${ex.type} exporter`);
  if (!supportDir && ex.outputDir) throw new InvalidArgumentError(`output directory is not supported by ${ex.type} exporter`);
  if (supportFile) {
    if (!ex.output) throw new InvalidArgumentError(`output file writer is required for ${ex.type} exporter`);
    return { kind: 'file', open: ex.output };
  }
  if (supportDir) {
    if (!ex.outputDir) throw new InvalidArgumentError(`output directory is required for ${ex.type} exporter`);
    if (ex.type !== EXPORTER_LOCAL) return { kind: 'store', dir: ex.outputDir };
    return { kind: 'dir', dir: ex.outputDir };
  }
  return undefined;
}

async function cacheOptions(opts: SolveOptions): Promise<{
  imports: { Type: string; Attrs: Record<string, string> }[];
  exportsCache: { Type: string; Attrs: Record<string, string> }[];
  frontendAttrs: Record<string, string>;
  /** Store id (`local:<dir>`) to directory, served to the daemon over the session. */
  contentStores: Map<string, string>;
  /** Directory to the tag its exported cache manifest gets in index.json. */
  storesToUpdate: Map<string, string>;
}> {
  const contentStores = new Map<string, string>();
  const storesToUpdate = new Map<string, string>();
  const exportsCache = [];
  for (const e of opts.cacheExports ?? []) {
    if (e.type === 'local') {
      const dest = e.attrs.dest;
      if (!dest) throw new InvalidArgumentError('local cache exporter requires dest');
      await mkdir(dest, { recursive: true });
      contentStores.set(localCacheStoreId(dest), dest);
      storesToUpdate.set(dest, e.attrs.tag || 'latest');
    }
    if (e.type === 'registry' && !e.attrs.ref) throw new InvalidArgumentError('registry cache exporter requires ref');
    exportsCache.push({ Type: e.type, Attrs: { ...e.attrs } });
  }
  const imports = [];
  for (const e of opts.cacheImports ?? []) {
    const attrs = { ...e.attrs };
    if (e.type === 'local') {
      const src = attrs.src;
      if (!src) throw new InvalidArgumentError('local cache importer requires src');
      if (!attrs.digest) {
        // As upstream's client: the tag's manifest in the directory's index.json; a directory
        // without one is skipped with a warning.
        let desc;
        try {
          desc = await readOciIndexTag(src, attrs.tag || 'latest');
        } catch (err) {
          opts.onWarning?.(`local cache import at ${src} not found due to err: ${(err as Error).message}`);
          continue;
        }
        if (desc) attrs.digest = desc.digest;
      }
      if (!attrs.digest) throw new InvalidArgumentError('local cache importer requires either explicit digest, "latest" tag or custom tag on index.json');
      contentStores.set(localCacheStoreId(src), src);
    }
    if (e.type === 'registry' && !attrs.ref) throw new InvalidArgumentError('registry cache importer requires ref');
    imports.push({ Type: e.type, Attrs: attrs });
  }
  const frontendAttrs: Record<string, string> = {};
  if (opts.frontend && imports.length > 0) {
    // As Go's encoding/json writes []*CacheOptionsEntry: fields in declaration order, map keys sorted.
    frontendAttrs['cache-imports'] = JSON.stringify(
      imports.map((i) => ({ Type: i.Type, Attrs: Object.fromEntries(Object.entries(i.Attrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) })),
    );
  }
  return { imports, exportsCache, frontendAttrs, contentStores, storesToUpdate };
}

export { fromGrpcError };
