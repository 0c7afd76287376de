import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { PacketSchema } from '../../gen/fsutil/wire_pb.js';
import { InvalidArgumentError, NotFoundError } from '../../util/errors.js';
import { typedHandler, type SessionServices } from '../tunnel/server.js';
import { parseDiffCopyMetadata, sendDir } from './filesync-adapter.js';
import { systemXattrs } from '../filesync/xattr.js';

/** FileSync/DiffCopy's path, written out (see AUTH_PATHS in auth.ts). */
export const DIFFCOPY_PATH = '/moby.filesync.v1.FileSync/DiffCopy';

/**
 * FileSync.DiffCopy: sends one of the client's `--local name=dir` directories, chosen by the
 * call's `dir-name` header, filtered by the include/exclude/followpaths headers. A name that was
 * not shared is refused with NOT_FOUND, as upstream (`no access allowed to dir "x"`).
 * TarStream is not served (upstream's daemon never calls it: diffcopy is the only protocol).
 */
export function fileSyncService(dirs: Record<string, string>): SessionServices {
  const shared = new Map(Object.entries(dirs).map(([k, v]) => [k, resolve(v)]));
  return {
    [DIFFCOPY_PATH]: typedHandler(PacketSchema, PacketSchema, async (stream, ctx) => {
      const req = parseDiffCopyMetadata(stream.metadata);
      const root = shared.get(req.dirName);
      if (root === undefined) throw new NotFoundError(`no access allowed to dir ${JSON.stringify(req.dirName)}`);
      await sendDir(stream, {
        root,
        includePatterns: req.includePatterns,
        excludePatterns: req.excludePatterns,
        followPaths: req.followPaths,
        signal: ctx.signal,
        // Extended attributes go along only when asked for (LOOM_SEND_XATTRS=1): upstream's client
        // reads them with a system call per file, which Node lacks; the attr tools cost a process
        // per transfer, ~20-30 ms of every build here, for attributes context files rarely have.
        xattrs: process.env.LOOM_SEND_XATTRS === '1' ? await systemXattrs() : undefined,
      });
    }),
  };
}

/**
 * Checks `--local` directories before a build starts, as upstream's client does
 * (`could not find <dir>`, `<dir> not a directory`).
 */
export async function checkLocalDirs(dirs: Record<string, string>): Promise<void> {
  for (const [name, dir] of Object.entries(dirs)) {
    if (!name) throw new InvalidArgumentError(`invalid local ${JSON.stringify(`=${dir}`)}: empty name`);
    let st;
    try {
      st = await stat(dir);
    } catch (err) {
      throw new NotFoundError(`could not find ${dir}: ${(err as Error).message}`, { cause: err });
    }
    if (!st.isDirectory()) throw new InvalidArgumentError(`${dir} not a directory`);
  }
}
