import { connect, type Socket } from 'node:net';
import { InvalidArgumentError, LoomError } from '../../util/errors.js';
import type { CommandContext } from './common.js';

/**
 * `buildctl dial-stdio`: one raw connection to the daemon, bytes copied both ways between it and
 * stdin/stdout (buildx's docker-container driver runs this inside the container, once per
 * connection). stdin's end half-closes the connection and we wait for the daemon's side; the
 * daemon's end finishes at once (stdin may never end when it is a terminal).
 * Kept free of gRPC and protobuf imports so it starts fast.
 */
export async function dialStdio(ctx: CommandContext, stdin: NodeJS.ReadStream = process.stdin): Promise<void> {
  const addr = String(ctx.global.addr);
  const timeoutMs = Number(ctx.global.timeout ?? 5) * 1000;
  const conn = await dial(addr, timeoutMs);
  await new Promise<void>((resolve, reject) => {
    let stdinDone = false;
    const fail = (err: Error): void => {
      conn.destroy();
      reject(err);
    };
    conn.on('error', (err) => fail(new LoomError('UNAVAILABLE', `error while Copy (stream to stdout): ${err.message}`, { cause: err })));
    stdin.on('error', (err) => fail(new LoomError('INTERNAL', `error while Copy (stdin to stream): ${err.message}`, { cause: err })));
    // Daemon -> stdout, with back pressure.
    conn.on('data', (chunk: Buffer) => {
      if (!ctx.stdout.write(chunk)) {
        conn.pause();
        ctx.stdout.once('drain', () => conn.resume());
      }
    });
    conn.on('end', () => {
      // The daemon closed its side: flush stdout and finish without waiting for stdin.
      ctx.stdout.write('', () => {
        if (!stdinDone) stdin.destroy();
        conn.destroy();
        resolve();
      });
    });
    // stdin -> daemon.
    stdin.on('data', (chunk: Buffer) => {
      if (!conn.write(chunk)) {
        stdin.pause();
        conn.once('drain', () => stdin.resume());
      }
    });
    stdin.on('end', () => {
      stdinDone = true;
      conn.end();
    });
  });
}

function dial(address: string, timeoutMs: number): Promise<Socket> {
  const m = /^([a-z]+):\/\/(.*)$/.exec(address);
  if (!m) throw new InvalidArgumentError(`invalid address ${address}`);
  let opts: { path: string } | { host: string; port: number };
  if (m[1] === 'unix') opts = { path: m[2]! };
  else if (m[1] === 'tcp') {
    const u = new URL(`tcp://${m[2]}`);
    opts = { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port) };
  } else {
    throw new InvalidArgumentError(`invalid address ${address} (expected unix:// or tcp://, got ${m[1]}://)`);
  }
  return new Promise((resolve, reject) => {
    const s = connect(opts);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new LoomError('DEADLINE_EXCEEDED', `dial ${address}: i/o timeout`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(new LoomError('UNAVAILABLE', `dial ${address}: ${err.message}`, { cause: err }));
    });
  });
}
