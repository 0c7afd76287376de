import { writeTreeTar } from '../snapshot/layer/write-tree-tar.js';
import { LoomError } from '../util/errors.js';
import { oneOff } from '../util/progress.js';
import { sendToClient } from './archive.js';
import type { ExportContext, Exporter, ExporterInstance, ExportSource } from './types.js';

/** `type=tar`: the result's filesystem as one tar stream to the client. */
export class TarExporter implements Exporter {
  readonly name = 'tar';

  resolve(): ExporterInstance {
    return {
      vertexName: 'exporting to client tarball',
      async export(ctx: ExportContext, src: ExportSource) {
        if (src.refs?.length) throw new LoomError('UNIMPLEMENTED', 'the tar exporter does not support multi-platform results in loom yet');
        const done = oneOff(ctx.job.progress, ctx.vertex, 'sending tarball');
        const ref = src.ref;
        await sendToClient(ctx.job, {}, async (out) => {
          if (ref) await writeTreeTar(ref.dir, out, { signal: ctx.job.signal });
          else out.write(Buffer.alloc(1024));
        });
        done();
        return {};
      },
    };
  }
}
