import { writeTreeTar } from '../snapshot/layer/write-tree-tar.js';
import { oneOff } from '../util/progress.js';
import { sendToClient } from './archive.js';
import { mappedPlatforms } from './commit.js';
import { parseEpochAttr } from './epoch.js';
import { platformDir, type ExportContext, type Exporter, type ExporterInstance, type ExportSource } from './types.js';

/** `type=tar`: the result's filesystem as one tar stream to the client. */
export class TarExporter implements Exporter {
  readonly name = 'tar';

  resolve(attrs: Record<string, string> = {}): ExporterInstance {
    // SOURCE_DATE_EPOCH: every entry's modification time, as upstream's.
    const epoch = parseEpochAttr(attrs);
    return {
      vertexName: 'exporting to client tarball',
      async export(ctx: ExportContext, src: ExportSource) {
        mappedPlatforms(src, 'unable to export multiple platforms without map');
        const done = oneOff(ctx.job.progress, ctx.vertex, 'sending tarball');
        const ref = src.ref;
        // A multi-platform result: each platform under a directory of its own (linux_arm64/), as upstream's.
        const parts = src.refs?.map((r) => ({ name: platformDir(r.id), dir: r.ref.dir }));
        await sendToClient(ctx, {}, async (out) => {
          if (parts?.length) await writeTreeTar(parts, out, { signal: ctx.job.signal, epoch });
          else if (ref) await writeTreeTar(ref.dir, out, { signal: ctx.job.signal, epoch });
          else out.write(Buffer.alloc(1024));
        });
        done();
        return {};
      },
    };
  }
}
