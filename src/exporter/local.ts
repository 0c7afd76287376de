import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PacketSchema } from '../gen/fsutil/wire_pb.js';
import { FileSend } from '../gen/session/filesync_pb.js';
import { sendDir } from '../session/filesync/send.js';
import { LoomError } from '../util/errors.js';
import type { ExportContext, Exporter, ExporterInstance, ExportSource } from './types.js';

/**
 * `type=local`: the result's files written into a directory on the client's side, sent with the
 * filesync protocol over the client's FileSend service (fsutil packets, as upstream v0.11).
 */
export class LocalExporter implements Exporter {
  readonly name = 'local';

  resolve(): ExporterInstance {
    return {
      vertexName: 'exporting to client directory',
      async export(ctx: ExportContext, src: ExportSource) {
        if (src.refs?.length) throw new LoomError('UNIMPLEMENTED', 'the local exporter does not support multi-platform results in loom yet');
        const session = await ctx.job.session();
        if (!session.supports(FileSend.method.diffCopy)) {
          throw new LoomError('FAILED_PRECONDITION', 'the client does not accept exported files (its session has no FileSend service)');
        }
        const stream = await session.stream(FileSend.method.diffCopy, { signal: ctx.job.signal, input: PacketSchema, output: PacketSchema });
        // An empty result is an empty directory.
        const empty = src.ref ? undefined : await mkdtemp(join(tmpdir(), 'loom-empty-'));
        try {
          await sendDir(stream, { root: src.ref?.dir ?? empty!, signal: ctx.job.signal });
        } finally {
          if (empty) await rm(empty, { recursive: true, force: true });
        }
        return {};
      },
    };
  }
}
