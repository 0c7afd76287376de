import { spawn, type ChildProcess } from 'node:child_process';
import { Duplex } from 'node:stream';
import { LoomError, UnimplementedError } from './errors.js';

/**
 * zstd streams for layers (`compression=zstd` exports, base images and caches with zstd layers).
 * Node 20 has no zstd, so the bytes go through the system's `zstd` program (Debian's package: the
 * reference implementation; scripts/install-deps.sh installs it), which also puts the work on
 * another core. Its output ends only once the program has exited cleanly: a corrupt or truncated
 * input fails the stream, naming `what`, rather than ending it early.
 */
export function zstdStream(mode: 'compress' | 'decompress', what: string, level?: number): Duplex {
  return new ZstdStream(mode, what, level);
}

/**
 * The zstd level for upstream's `compression-level`: upstream maps it onto its encoder's four
 * speeds (fastest below 3, default below 7, better below 9, best from 9), whose ratios are zstd's
 * levels 1, 3, 7 and 11. Undefined gives the default speed, level 3, as upstream's.
 */
export function zstdLevel(compressionLevel: number | undefined): number {
  if (compressionLevel === undefined) return 3;
  if (compressionLevel < 3) return 1;
  if (compressionLevel < 7) return 3;
  if (compressionLevel < 9) return 7;
  return 11;
}

class ZstdStream extends Duplex {
  readonly #child: ChildProcess;
  readonly #exit: Promise<void>;

  constructor(mode: 'compress' | 'decompress', what: string, level?: number) {
    super();
    const args = mode === 'compress' ? ['-q', '-c', `-${zstdLevel(level)}`] : ['-q', '-d', '-c'];
    const child = spawn('zstd', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child = child;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    // Writes to a program that died are answered by its exit status below.
    child.stdin!.on('error', () => {});
    this.#exit = new Promise<void>((resolve, reject) => {
      child.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          err.code === 'ENOENT'
            ? new UnimplementedError(`${what}: zstd layers need the zstd program, which is not installed (apt-get install zstd)`)
            : new LoomError('UNKNOWN', `${what}: zstd: ${err.message}`),
        ),
      );
      child.once('close', (code, signal) => {
        if (code === 0) resolve();
        else reject(new LoomError('UNKNOWN', `${what}: zstd ${mode === 'compress' ? 'compression' : 'decompression'} failed: ${stderr.trim() || (signal ?? `exit status ${code}`)}`));
      });
    });
    // Failing before any output (the program missing) must reach a reader that waits.
    this.#exit.catch((err: unknown) => this.destroy(err as Error));
    child.stdout!.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) child.stdout!.pause();
    });
    child.stdout!.once('end', () => {
      this.#exit.then(
        () => this.push(null),
        () => {},
      );
    });
  }

  override _read(): void {
    this.#child.stdout!.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const stdin = this.#child.stdin!;
    if (stdin.destroyed) return cb();
    if (stdin.write(chunk)) cb();
    else stdin.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#child.stdin!.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill('SIGKILL');
    cb(err);
  }
}
