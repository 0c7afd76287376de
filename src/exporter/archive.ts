import { PassThrough } from 'node:stream';
import type { Writable } from 'node:stream';
import type { ContentStore } from '../content/store.js';
import { FileSend } from '../gen/session/filesync_pb.js';
import { SessionContentStore } from '../session/content/session-store.js';
import { EXPORT_STORE_ID } from '../session/content/store-id.js';
import { sendBytes } from '../session/filesync/bytes.js';
import { exporterMetadata } from '../session/filesync/metadata.js';
import { LoomError } from '../util/errors.js';
import { oneOff } from '../util/progress.js';
import type { Platform } from '../util/platform.js';
import { commitImage, imageResponse, parseBool, parseImageCommitOptions, type ImageCommitOptions } from './commit.js';
import { ANNOTATION_CREATED, normalizeImageNames, writeDockerArchive, writeOciArchive } from './image/archive-writer.js';
import type { ExportContext, Exporter, ExporterInstance, ExportSource, LayerProvider } from './types.js';

export interface ArchiveExporterDeps {
  content: ContentStore;
  layers: LayerProvider;
  defaultPlatform: Platform;
  leaseBlobs: (digests: string[]) => () => void;
}

/**
 * Streams bytes produced by `produce` to the client's FileSend service (the client writes them to
 * its `dest` file or stdout). Resolves once the client has everything.
 */
export async function sendToClient(ctx: ExportContext, md: Record<string, string>, produce: (out: Writable) => Promise<void>): Promise<void> {
  const job = ctx.job;
  const session = await job.session();
  if (!session.supports(FileSend.method.diffCopy)) {
    throw new LoomError('FAILED_PRECONDITION', 'the client does not accept exported files (its session has no FileSend service): give the output a dest');
  }
  const stream = await session.stream(FileSend.method.diffCopy, { metadata: exporterMetadata(md, { exporterId: ctx.exporterId ?? 0 }), signal: job.signal });
  const pass = new PassThrough({ highWaterMark: 1 << 20 });
  const producing = produce(pass).then(
    () => pass.end(),
    (err: Error) => {
      pass.destroy(err);
      throw err;
    },
  );
  await Promise.all([producing, sendBytes(stream, pass, { signal: job.signal })]);
}

/** `type=oci` and `type=docker`: the image as an archive, streamed to the client. */
export class ArchiveExporter implements Exporter {
  readonly name: 'oci' | 'docker';
  readonly #d: ArchiveExporterDeps;

  constructor(variant: 'oci' | 'docker', deps: ArchiveExporterDeps) {
    this.name = variant;
    this.#d = deps;
  }

  resolve(attrs: Record<string, string>): ExporterInstance {
    const opts = parseImageCommitOptions(attrs, { ociMediaTypes: this.name === 'oci' });
    let tar = true;
    if ('tar' in opts.rest) tar = parseBool(opts.rest.tar!, 'tar');
    const names = normalizeImageNames(opts.name || undefined);
    return new ArchiveExporterInstance(this.name, this.#d, opts, names, tar);
  }
}

class ArchiveExporterInstance implements ExporterInstance {
  readonly vertexName: string;

  constructor(
    private readonly variant: 'oci' | 'docker',
    private readonly d: ArchiveExporterDeps,
    private readonly opts: ImageCommitOptions,
    private readonly names: string[],
    /** false (tar=false): the blobs go into the client's OCI layout directory instead of an archive. */
    private readonly tar: boolean,
  ) {
    this.vertexName = `exporting to ${variant} image format`;
  }

  async export(ctx: ExportContext, src: ExportSource): Promise<Record<string, string>> {
    const img = await commitImage(this.d, ctx, src, this.opts);
    const release = this.d.leaseBlobs(img.blobs.map((b) => b.digest));
    try {
      // As upstream's oci exporter: index.json (and the descriptor in the response) records when the
      // image was made (SOURCE_DATE_EPOCH when one is set), unless an annotation already says.
      const created = (this.opts.epoch ?? new Date()).toISOString().replace(/\.\d{3}Z$/, 'Z');
      const root = { ...img.root, annotations: { [ANNOTATION_CREATED]: created, ...(img.root.annotations ?? {}) } };
      const resp = imageResponse({ ...img, root });
      if (this.names.length) resp['image.name'] = this.names.join(',');
      if (!this.tar) {
        // As upstream: every blob, children before the manifests and index naming them, through
        // the session's `export` content store; the client tags the image in its index.json.
        const store = new SessionContentStore({ caller: await ctx.job.session(), storeId: EXPORT_STORE_ID });
        for (const b of img.blobs) {
          if (await store.has(b.digest, { signal: ctx.job.signal })) continue;
          await store.write({ digest: b.digest, size: b.size, mediaType: b.mediaType }, await this.d.content.read(b.digest), { signal: ctx.job.signal });
        }
        return resp;
      }
      const done = oneOff(ctx.job.progress, ctx.vertex, 'sending tarball');
      const write = this.variant === 'oci' ? writeOciArchive : writeDockerArchive;
      await sendToClient(ctx, resp, (out) => write(out, { store: this.d.content, root, names: this.names, signal: ctx.job.signal }));
      done();
      return resp;
    } finally {
      release();
    }
  }
}
