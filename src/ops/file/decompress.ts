import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { gunzipStream } from '../../util/zlib.js';
import { LoomError } from '../../util/errors.js';

/**
 * The compressions ADD recognises on a local archive, as upstream's (Docker's) DecompressStream
 * does, by magic bytes: gzip, bzip2, xz and zstd. gzip is decoded in-process; the others by the
 * system's `bzip2`, `xz` and `zstd` (upstream itself runs `xz`). When the tool is missing the
 * stream is empty, so the file does not read as a tar and ADD copies it as it is, as upstream does
 * for any archive it cannot decompress.
 */
export type Compression = 'none' | 'gzip' | 'bzip2' | 'xz' | 'zstd';

const TOOLS: Record<Exclude<Compression, 'none' | 'gzip'>, string> = { bzip2: 'bzip2', xz: 'xz', zstd: 'zstd' };

export function detectCompression(head: Uint8Array): Compression {
  const starts = (...b: number[]) => head.length >= b.length && b.every((x, i) => head[i] === x);
  if (starts(0x1f, 0x8b, 0x08)) return 'gzip';
  if (starts(0x42, 0x5a, 0x68)) return 'bzip2';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zstd';
  return 'none';
}

export async function fileCompression(p: string): Promise<Compression> {
  const fh = await open(p, 'r');
  try {
    const head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return detectCompression(head.subarray(0, bytesRead));
  } finally {
    await fh.close();
  }
}

/**
 * A file's decompressed bytes. The caller owns the result: it must call `close()` once done
 * (early or not), which ends the stream and any decoder process; `done()` then resolves, or
 * rejects when a decoder process failed (a truncated or corrupt archive), naming the file.
 */
export interface Decompressed {
  stream: Readable;
  close(): void;
  done(): Promise<void>;
}

/** A decoder process that failed (or, for bzip2, found stray bytes after its last stream). */
export class DecoderError extends LoomError {
  constructor(
    readonly compression: Compression,
    readonly exitCode: number,
    readonly stderr: string,
    message: string,
  ) {
    super('UNKNOWN', message);
  }
}

export function openDecompressed(p: string, c: Compression): Decompressed {
  const file = createReadStream(p);
  if (c === 'none' || c === 'gzip') {
    const stream = c === 'gzip' ? file.pipe(gunzipStream()) : file;
    if (stream !== file) file.on('error', (err) => stream.destroy(err));
    return {
      stream,
      close: () => {
        file.destroy();
        stream.destroy();
      },
      done: async () => {},
    };
  }
  const tool = TOOLS[c];
  // bzip2 without -q: its warning of stray bytes after the last stream is how they are seen.
  const child: ChildProcess = spawn(tool, c === 'bzip2' ? ['-d', '-c'] : ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let closedByUs = false;
  // The reader may stop at the archive's end blocks with the decoder's last bytes (the archive's
  // zero padding) unread: the decoder then dies of SIGPIPE, which is no failure.
  let readerStopped = false;
  let ended = false;
  child.stdout!.once('end', () => (ended = true));
  child.stdout!.once('close', () => (readerStopped = !ended));
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  // A decoder that quits early (bad data, or closed by us) closes its stdin: not an error here.
  child.stdin!.on('error', () => {});
  file.on('error', (err) => child.stdout!.destroy(err));
  file.pipe(child.stdin!);
  const exit = new Promise<void>((ok, fail) => {
    child.once('error', (err) => fail(new LoomError('UNKNOWN', `${tool} for ${p}: ${err.message}`)));
    child.once('close', (code, signal) => {
      // bzip2 decodes what precedes stray bytes after its last stream and only warns of them.
      const strayBzip2 = c === 'bzip2' && code === 0 && /trailing garbage after EOF ignored/.test(stderr) && readerStopped === false;
      if (!strayBzip2 && (code === 0 || closedByUs || (signal === 'SIGPIPE' && readerStopped))) ok();
      else fail(new DecoderError(c, code ?? 1, stderr, `${tool} -d ${p}: exit ${strayBzip2 ? 'after stray bytes' : (code ?? signal)}: ${stderr.trim()}`));
    });
  });
  // The rejection is read through done(); until then it must not count as unhandled.
  exit.catch(() => {});
  return {
    stream: child.stdout!,
    close: () => {
      if (child.exitCode === null && child.signalCode === null) {
        closedByUs = true;
        child.kill('SIGKILL');
      }
      file.destroy();
    },
    done: () => exit,
  };
}
