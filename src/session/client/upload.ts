import { create } from '@bufbuild/protobuf';
import type { Readable } from 'node:stream';
import { BytesMessageSchema, Upload } from '../../gen/session/upload_pb.js';
import { NotFoundError } from '../../util/errors.js';
import { methodPath } from '../tunnel/metadata.js';
import { UPLOAD_HOST } from '../types.js';
import { typedHandler, type SessionServices } from '../tunnel/server.js';

/** Upload chunks as upstream's provider sends them (its 32 KiB copy buffer). */
const CHUNK = 32 * 1024;

/**
 * Serves bytes the daemon fetches as `http://buildkit-session/<id>` (a context given as one
 * stream, buildx's `-`): Upload.Pull names the id in the `urlpath` metadata; each upload is given
 * once, then forgotten, as upstream's upload provider does.
 */
export function uploadService(uploads: Map<string, () => Readable>): SessionServices {
  return {
    [methodPath(Upload.method.pull)]: typedHandler(BytesMessageSchema, BytesMessageSchema, async (stream) => {
      const id = (stream.metadata['urlpath']?.[0] ?? '').replace(/^\/+/, '');
      const open = uploads.get(id);
      if (!open) throw new NotFoundError(`no http response from session for ${id}`);
      uploads.delete(id);
      for await (const chunk of open() as AsyncIterable<Buffer>) {
        for (let off = 0; off < chunk.length; off += CHUNK) await stream.send(create(BytesMessageSchema, { data: chunk.subarray(off, off + CHUNK) }));
      }
      stream.end();
    }),
  };
}

/** The URL the daemon fetches upload `id` by. */
export function uploadURL(id: string): string {
  return `http://${UPLOAD_HOST}/${id}`;
}
