import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PacketSchema } from '../gen/fsutil/wire_pb.js';
import { FileSend } from '../gen/session/filesync_pb.js';
import { exporterMetadata } from '../session/filesync/metadata.js';
import { sendDir } from '../session/filesync/send.js';
import type { XattrIO } from '../session/filesync/xattr.js';
import { listXattrs } from '../snapshot/layer/sys-ops.js';
import { LoomError } from '../util/errors.js';
import { byteStatus } from '../util/progress.js';
import type { Ref } from '../solver/types.js';
import { mappedPlatforms } from './commit.js';
import { epochNanos, parseEpochAttr } from './epoch.js';
import { platformDir, type ExportContext, type Exporter, type ExporterInstance, type ExportSource } from './types.js';

/**
 * `type=local`: the result's files written into a directory on the client's side, sent with the
 * filesync protocol over the client's FileSend service (fsutil packets, as upstream v0.11).
 */
/**
 * The daemon reads xattrs through its resident helper (snapshot/layer/sys-ops.ts, as the tar
 * exporter does): no process started per listing, which would fork the whole daemon.
 */
const helperXattrs: Pick<XattrIO, 'listMany'> = {
  async listMany(paths) {
    const lists = await listXattrs(paths);
    const found = new Map<string, Record<string, Uint8Array>>();
    lists.forEach((m, i) => {
      if (m.size > 0) found.set(paths[i]!, Object.fromEntries(m));
    });
    return found;
  },
};

export class LocalExporter implements Exporter {
  readonly name = 'local';

  resolve(attrs: Record<string, string> = {}): ExporterInstance {
    // SOURCE_DATE_EPOCH: every entry sent carries it as its modification time, as upstream's.
    const epoch = parseEpochAttr(attrs);
    const modTime = epoch ? epochNanos(epoch) : undefined;
    return {
      vertexName: 'exporting to client directory',
      async export(ctx: ExportContext, src: ExportSource) {
        mappedPlatforms(src, 'unable to export multiple platforms without map');
        const session = await ctx.job.session();
        if (!session.supports(FileSend.method.diffCopy)) {
          throw new LoomError('FAILED_PRECONDITION', 'the client does not accept exported files (its session has no FileSend service)');
        }
        // A multi-platform result: each platform in a directory of its own (linux_arm64), as
        // upstream's; the client's receiver merges, so the streams add to one another.
        const parts = src.refs?.length
          ? src.refs.map((r) => ({ ref: r.ref as Ref | undefined, subdir: { name: platformDir(r.id), modTime }, label: `copying files ${r.id}` }))
          : [{ ref: src.ref, subdir: undefined, label: 'copying files' }];
        for (const part of parts) {
          const stream = await session.stream(FileSend.method.diffCopy, {
            signal: ctx.job.signal,
            input: PacketSchema,
            output: PacketSchema,
            metadata: exporterMetadata({}, { exporterId: ctx.exporterId ?? 0 }),
          });
          // An empty result is an empty directory.
          const empty = part.ref ? undefined : await mkdtemp(join(tmpdir(), 'loom-empty-'));
          try {
            // Upstream's progress: a "copying files" status counting the bytes sent.
            const status = byteStatus(ctx.job.progress, ctx.vertex, part.label);
            let sent = 0;
            await sendDir(stream, {
              root: empty ?? part.ref!.dir,
              signal: ctx.job.signal,
              // Extended attributes go along, as upstream's walk reads them.
              xattrs: helperXattrs,
              subdir: part.subdir,
              modTime,
              onProgress: (bytes, done) => {
                sent = bytes;
                if (!done) status.update(bytes);
              },
            });
            status.done(sent);
          } finally {
            if (empty) await rm(empty, { recursive: true, force: true });
          }
        }
        return {};
      },
    };
  }
}
