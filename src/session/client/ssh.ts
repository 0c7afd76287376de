import { connect, type Socket } from 'node:net';
import { stat } from 'node:fs/promises';
import { create } from '@bufbuild/protobuf';
import { BytesMessageSchema, SSH } from '../../gen/session/ssh_pb.js';
import { InvalidArgumentError, LoomError, NotFoundError } from '../../util/errors.js';
import { methodPath } from '../tunnel/metadata.js';
import { typedHandler, unaryHandler, type SessionServices } from '../tunnel/server.js';
import { KeyAgent, loadAgentKey } from './ssh-key-agent.js';

/** The id used when `--ssh` names none and the daemon asks for none. */
export const DEFAULT_SSH_ID = 'default';
/** Request header naming the agent the daemon wants (upstream's KeySSHID). */
export const SSH_ID_HEADER = 'buildkit.ssh.id';

/** One `--ssh` value: `default`, `id`, `id=socket` or `id=key[,key...]`. */
export interface SshSpec {
  id: string;
  paths: string[];
}

export function parseSshSpec(v: string): SshSpec {
  const i = v.indexOf('=');
  if (i < 0) return { id: v, paths: [] };
  return { id: v.slice(0, i), paths: v.slice(i + 1).split(',') };
}

type Agent = { kind: 'socket'; path: string } | { kind: 'keys'; agent: KeyAgent };

/**
 * Resolves specs as upstream's sshprovider: no path means $SSH_AUTH_SOCK; a path that is a socket
 * is an agent to proxy (only one); other paths are private key files served by an in-process
 * agent that only lists and signs. Errors name the path or id.
 */
export async function resolveSshAgents(specs: SshSpec[], env: NodeJS.ProcessEnv = process.env): Promise<Map<string, Agent>> {
  const m = new Map<string, Agent>();
  for (const spec of specs) {
    let paths = spec.paths;
    if (paths.length === 0 || (paths.length === 1 && paths[0] === '')) paths = [env.SSH_AUTH_SOCK ?? ''];
    if (paths[0] === '') throw new InvalidArgumentError('invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set');
    const id = spec.id || DEFAULT_SSH_ID;
    if (m.has(id)) throw new InvalidArgumentError(`invalid duplicate ID ${id}`);
    let socket: string | undefined;
    const keys = [];
    for (const p of paths) {
      if (socket !== undefined) throw new InvalidArgumentError('only single socket allowed');
      let st;
      try {
        st = await stat(p);
      } catch (err) {
        throw new NotFoundError(`${(err as Error).message}`, { cause: err });
      }
      if (st.isSocket()) {
        socket = p;
        continue;
      }
      keys.push(await loadAgentKey(p));
    }
    if (socket !== undefined) {
      if (keys.length > 0) throw new InvalidArgumentError('invalid combination of keys and sockets');
      m.set(id, { kind: 'socket', path: socket });
    } else {
      m.set(id, { kind: 'keys', agent: new KeyAgent(keys) });
    }
  }
  return m;
}

/**
 * moby.sshforward.v1.SSH: CheckAgent says whether an id was shared; ForwardAgent carries one
 * agent connection (the daemon's ssh client talking to our agent) as BytesMessages.
 */
export function sshService(agents: Map<string, Agent>): SessionServices {
  return {
    [methodPath(SSH.method.checkAgent)]: unaryHandler(SSH.method.checkAgent, async (req) => {
      const id = req.ID || DEFAULT_SSH_ID;
      if (!agents.has(id)) throw new LoomError('NOT_FOUND', `unset ssh forward key ${id}`);
      return {};
    }),
    [methodPath(SSH.method.forwardAgent)]: typedHandler(BytesMessageSchema, BytesMessageSchema, async (stream, ctx) => {
      const id = stream.metadata[SSH_ID_HEADER]?.[0] || DEFAULT_SSH_ID;
      const agent = agents.get(id);
      if (!agent) throw new LoomError('NOT_FOUND', `unset ssh forward key ${id}`);
      if (agent.kind === 'keys') {
        const conn = agent.agent.connection();
        const pump = (async () => {
          for await (const reply of conn.replies()) await stream.send(create(BytesMessageSchema, { data: reply }));
        })();
        for await (const m of stream.recv()) conn.push(m.data);
        conn.end();
        await pump;
        return;
      }
      const sock = await dial(agent.path);
      ctx.signal.addEventListener('abort', () => sock.destroy(), { once: true });
      try {
        const toDaemon = (async () => {
          for await (const chunk of sock) await stream.send(create(BytesMessageSchema, { data: chunk as Buffer }));
        })();
        for await (const m of stream.recv()) {
          if (!sock.write(m.data)) await new Promise((r) => sock.once('drain', r));
        }
        // The daemon closed its send side: no more requests; let the agent finish its answers.
        sock.end();
        await toDaemon;
      } finally {
        sock.destroy();
      }
    }),
  };
}

function dial(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    const timer = setTimeout(() => s.destroy(new Error(`timed out connecting to ${path}`)), 2000);
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(new LoomError('UNAVAILABLE', `failed to connect to ${path}: ${err.message}`, { cause: err }));
    });
  });
}
