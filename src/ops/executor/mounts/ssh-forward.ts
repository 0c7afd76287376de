import { create } from '@bufbuild/protobuf';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import { BytesMessageSchema, CheckAgentRequestSchema, SSH } from '../../../gen/session/ssh_pb.js';
import type { SessionCaller } from '../../../session/types.js';
import { InvalidArgumentError, LoomError } from '../../../util/errors.js';
import { log as rootLog } from '../../../util/log.js';

const log = () => rootLog.child({ sub: 'ssh-forward' });

/** The metadata key naming which of the client's agents a ForwardAgent call wants. */
export const KEY_SSH_ID = 'buildkit.ssh.id';

/**
 * Checks the client forwards agent `id` (SSH.CheckAgent). Returns false when it does not and the
 * mount is optional; throws upstream's errors otherwise.
 */
export async function checkSshAgent(s: SessionCaller, id: string, optional: boolean, signal?: AbortSignal): Promise<boolean> {
  try {
    if (!s.supports(SSH.method.checkAgent)) throw Object.assign(new LoomError('UNIMPLEMENTED', 'unknown service moby.sshforward.v1.SSH'));
    await s.unary(SSH.method.checkAgent, create(CheckAgentRequestSchema, { ID: id }), { signal });
    return true;
  } catch (err) {
    if (optional) return false;
    if (err instanceof LoomError && err.code === 'UNIMPLEMENTED') throw new InvalidArgumentError(`no SSH key ${JSON.stringify(id)} forwarded from the client`);
    throw err;
  }
}

/**
 * A unix socket whose every connection is carried to the client's ssh agent through the session
 * (SSH.ForwardAgent, raw bytes in BytesMessage both ways), as upstream's MountSSHSocket. The
 * socket's owner and mode are the mount's; `close` stops listening and ends open connections.
 */
export async function forwardSshAgent(o: {
  session: SessionCaller;
  id: string;
  dir: string;
  uid: number;
  gid: number;
  mode: number;
}): Promise<{ path: string; close: () => Promise<void> }> {
  const dir = path.join(o.dir, randomBytes(12).toString('hex'));
  await mkdir(dir, { recursive: true, mode: 0o711 });
  await chmod(dir, 0o711);
  const sock = path.join(dir, 'ssh_auth_sock');
  const conns = new Set<Socket>();
  const ac = new AbortController();
  const server: Server = createServer((conn) => {
    conns.add(conn);
    conn.on('close', () => conns.delete(conn));
    pipeConnection(o.session, o.id || 'default', conn, ac.signal).catch((err: Error) => {
      log().debug({ err: err.message }, 'ssh agent connection ended with an error');
      conn.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sock, () => resolve());
  });
  try {
    await chown(sock, o.uid, o.gid);
    await chmod(sock, o.mode & 0o777);
  } catch (err) {
    server.close();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    path: sock,
    close: async () => {
      ac.abort();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of conns) c.destroy();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function pipeConnection(session: SessionCaller, id: string, conn: Socket, signal: AbortSignal): Promise<void> {
  const stream = await session.stream(SSH.method.forwardAgent, { metadata: { [KEY_SSH_ID]: [id] }, signal });
  conn.on('data', (b: Buffer) => {
    conn.pause();
    stream.send(create(BytesMessageSchema, { data: new Uint8Array(b) })).then(
      () => conn.resume(),
      () => conn.destroy(),
    );
  });
  conn.on('end', () => stream.end());
  conn.on('error', () => stream.close());
  try {
    for await (const m of stream.recv()) {
      const data = (m as { data: Uint8Array }).data;
      if (!conn.write(data)) await new Promise<void>((r) => conn.once('drain', () => r()));
    }
    // The agent side closed: let the program read what is left, then finish.
    conn.end();
  } finally {
    stream.close();
  }
}
