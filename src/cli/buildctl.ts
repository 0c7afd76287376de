import { errorMessage, errorSources } from '../util/errors.js';
import { formatSource } from '../client/error-source.js';
import { parseFlags, UsageError } from './buildctl/args.js';
import { GLOBAL_FLAGS, type CommandContext } from './buildctl/common.js';

/**
 * loom's buildctl: upstream's commands, flags and output, over loom's client library.
 * Commands are imported when run, so `dial-stdio` (exec'd by buildx per connection) does not
 * load gRPC or protobuf.
 */

const USAGE = `NAME:
   buildctl - build utility

USAGE:
   buildctl [global options] command [command options] [arguments...]

COMMANDS:
   du        disk usage
   prune     clean up build cache
   build, b  build
   debug     debug utilities
   help, h   Shows a list of commands or help for one command

GLOBAL OPTIONS:
   --debug                enable debug output in logs
   --addr value           buildkitd address (default: "unix:///run/buildkit/buildkitd.sock")
   --tlsservername value  buildkitd server name for certificate validation
   --tlscacert value      CA certificate for validation
   --tlscert value        client certificate
   --tlskey value         client key
   --tlsdir value         directory containing CA certificate, client certificate, and client key
   --timeout value        timeout backend connection after value seconds (default: 5)
   --help, -h             show help
   --version, -v          print the version
`;

type Command = (ctx: CommandContext, args: string[]) => Promise<void>;

const COMMANDS: Record<string, () => Promise<Command>> = {
  build: async () => (await import('./buildctl/build.js')).build,
  b: async () => (await import('./buildctl/build.js')).build,
  du: async () => (await import('./buildctl/du.js')).du,
  prune: async () => (await import('./buildctl/prune.js')).prune,
  'dial-stdio': async () => (ctx) => import('./buildctl/dial-stdio.js').then((m) => m.dialStdio(ctx)),
  debug: async () => debugCommand,
};

async function debugCommand(ctx: CommandContext, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'workers') {
    const { debugWorkers } = await import('./buildctl/debug-workers.js');
    return debugWorkers(ctx, rest);
  }
  if (sub === 'builds' || sub === 'build') {
    const { debugBuilds } = await import('./buildctl/debug-builds.js');
    return debugBuilds(ctx, rest, sub === 'build');
  }
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    ctx.stdout.write(
      'NAME:\n   buildctl debug - debug utilities\n\nCOMMANDS:\n   workers  list workers\n   builds   list recent builds with their cached and run steps (loom)\n   build    show one build\'s steps and why each step that ran missed the cache (loom)\n',
    );
    return;
  }
  throw new UsageError(`No help topic for '${sub}'`, 3);
}

export async function main(argv: string[]): Promise<number> {
  const ac = new AbortController();
  let interrupted = 0;
  const onSignal = (): void => {
    interrupted++;
    if (interrupted > 1) process.exit(130);
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let debug = false;
  try {
    const { values: global, rest } = parseFlags(argv, GLOBAL_FLAGS);
    debug = Boolean(global.debug);
    if (global.version) {
      const { versionInfo } = await import('./version.js');
      const v = versionInfo();
      process.stdout.write(`buildctl ${v.package} ${v.version} ${v.revision}\n`);
      return 0;
    }
    const [name, ...args] = rest;
    if (global.help || name === undefined || name === 'help' || name === 'h') {
      process.stdout.write(USAGE);
      return 0;
    }
    const load = COMMANDS[name];
    if (!load) {
      process.stderr.write(`No help topic for '${name}'\n`);
      return 3;
    }
    const cmd = await load();
    await cmd({ global, stdout: process.stdout, stderr: process.stderr, signal: ac.signal }, args);
    return 0;
  } catch (err) {
    if (err instanceof UsageError && err.exitCode === 3) {
      process.stderr.write(`${err.message}\n`);
      return 3;
    }
    if (err instanceof UsageError) process.stderr.write(`Incorrect Usage: ${err.message}\n\n`);
    // The Dockerfile lines the error is about, before it, as upstream's buildctl prints them.
    for (const s of errorSources(err)) process.stderr.write(formatSource(s));
    if (debug && err instanceof Error && err.stack) process.stderr.write(`error: ${err.stack}\n`);
    else process.stderr.write(`error: ${errorMessage(err)}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Exits with `code` now, even if a library left a handle open (grpc-js channels close lazily):
 * writes to pipes, files and terminals are synchronous on Linux, so only a stream still holding
 * data is waited for.
 */
export function exitWhenFlushed(code: number): void {
  process.exitCode = code;
  const pending = [process.stdout, process.stderr].filter((s) => s.writableLength > 0);
  if (pending.length === 0) process.exit(code);
  let left = pending.length;
  for (const s of pending) s.once('drain', () => --left === 0 && process.exit(code));
  setTimeout(() => process.exit(code), 1000).unref();
}
