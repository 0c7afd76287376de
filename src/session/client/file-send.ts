import { mkdir } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { PacketSchema } from '../../gen/fsutil/wire_pb.js';
import { BytesMessageSchema, FileSend } from '../../gen/session/filesync_pb.js';
import { LoomError } from '../../util/errors.js';
import { methodPath } from '../tunnel/metadata.js';
import { typedStream, type SessionServices } from '../tunnel/server.js';
import { parseExporterMetadata, receiveBytes, receiveDir } from './filesync-adapter.js';

/**
 * Where an export lands on the client:
 * - `file`: the exporter's bytes (tar, oci or docker tarball). `open` gets the exporter's
 *   response values sent along (`exporter-md-*` headers) and returns the sink, which the service
 *   ends when the export is complete.
 * - `dir`: a tree (the local exporter), written into `dir` with merge semantics: entries are
 *   written over what is there, nothing else is touched; owners become the current user's.
 */
export type ExportTarget =
  | { kind: 'file'; open: (values: Record<string, string>) => Writable | Promise<Writable> }
  | { kind: 'dir'; dir: string };

/**
 * FileSend.DiffCopy, the daemon's way to hand an export to the client. The method declares
 * BytesMessage, which it carries for files; for a directory the same method carries fsutil
 * Packets, so the handler picks the message type by what it was set up to receive.
 */
export function fileSendService(targets: ExportTarget | readonly (ExportTarget | undefined)[]): SessionServices {
  const list: readonly (ExportTarget | undefined)[] = Array.isArray(targets) ? targets : [targets as ExportTarget];
  return {
    [methodPath(FileSend.method.diffCopy)]: async (raw, ctx) => {
      // Several outputs: the daemon says which of them this is (its place in the request's
      // exporters); daemons before BuildKit v0.13 say nothing, for their one output.
      const { values, exporterId } = parseExporterMetadata(raw.metadata);
      const target = list[exporterId ?? 0];
      if (!target) throw new LoomError('INVALID_ARGUMENT', `the daemon sent files for output ${exporterId}, which this build does not have`);
      if (target.kind === 'dir') {
        await mkdir(target.dir, { recursive: true, mode: 0o700 }).catch((err: Error) => {
          throw new LoomError('INTERNAL', `failed to create synctarget dest dir ${target.dir}: ${err.message}`, { cause: err });
        });
        const uid = process.getuid?.() ?? 0;
        const gid = process.getgid?.() ?? 0;
        await receiveDir(typedStream(raw, PacketSchema, PacketSchema), {
          dest: target.dir,
          merge: true,
          signal: ctx.signal,
          mapStat: (_p, st) => {
            st.uid = uid;
            st.gid = gid;
            return true;
          },
        });
        return;
      }
      const sink = await target.open(values);
      await receiveBytes(typedStream(raw, BytesMessageSchema, BytesMessageSchema), sink, { signal: ctx.signal });
    },
  };
}
