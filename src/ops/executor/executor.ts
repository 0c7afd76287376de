import { LoomError } from '../../util/errors.js';

/**
 * The executor runs one process in a container over a prepared root filesystem: the boundary
 * between build ops (which prepare snapshots and mounts) and the container runtime.
 *
 * Contracts:
 * - The caller owns every host path it passes (rootfs, bind sources, secret files) and keeps them
 *   alive until `run` settles; the executor never deletes them. It may create mount stubs (empty
 *   files and directories runc makes for mount points) in the rootfs and removes those that are
 *   still empty afterwards, never following a symlink on the way.
 * - Container ids are the executor's own random ids; nothing the caller passes becomes one.
 * - `run` resolves when the process exited 0 and rejects with ExitError for any other exit, with
 *   CancelledError when `signal` fired (the container is killed first), and with other errors
 *   when the container could not be set up.
 * - Output is delivered through `stdout`/`stderr` as it comes; with `tty` both arrive on `stdout`.
 */
export interface Executor {
  run(req: RunRequest): Promise<void>;
  /**
   * Whether a step can get a user namespace with a binfmt_misc instance of its own (RunRequest
   * `binfmt`); false (or absent) where the kernel or the runtime cannot.
   */
  ownBinfmt?(): Promise<boolean>;
}

export type NetMode = 'sandbox' | 'host' | 'none';
export type SecurityMode = 'sandbox' | 'insecure';

export interface ProcessSpec {
  args: string[];
  env: string[];
  /** Absolute path inside the container; created (owned by the user) if missing. */
  cwd: string;
  /** `name`, `uid`, `name:group`, `uid:gid`, or '' for root. Resolved in the rootfs. */
  user: string;
  /** '' for the default (`buildkitsandbox`). */
  hostname: string;
  extraHosts: { host: string; ip: string }[];
  ulimits: { name: string; soft: bigint; hard: bigint }[];
  netMode: NetMode;
  security: SecurityMode;
  /** Remove the now-empty parents of mount stubs too (upstream's removeMountStubsRecursive). */
  removeMountStubsRecursive: boolean;
  readonlyRootfs: boolean;
  cgroupParent: string;
  /** Give the process a terminal (stdin, stdout and stderr on one pty). */
  tty?: boolean;
  /** Terminal size with `tty`; 80x24 when unset. */
  size?: { cols: number; rows: number };
}

/** Where a mount's content comes from. */
export type MountSource =
  /** A host directory (a snapshot, a cache directory) or file, bound at `dest`; `selector` picks a path inside it. */
  | { kind: 'bind'; path: string; selector?: string; readonly: boolean }
  | { kind: 'tmpfs'; size?: number; readonly?: boolean }
  /** A host file made by the op (secret, ssh socket, emulator): bound read-only as is. */
  | { kind: 'file'; path: string; readonly: boolean };

export interface ExecMount {
  /** Absolute path inside the container. */
  dest: string;
  source: MountSource;
}

export interface RunRequest {
  /** The root filesystem: a directory the caller owns and that the process may write. */
  rootfs: string;
  mounts: ExecMount[];
  process: ProcessSpec;
  signal: AbortSignal;
  stdout?: (chunk: Buffer) => void;
  stderr?: (chunk: Buffer) => void;
  /** With `tty`: bytes to type into the terminal. */
  stdin?: AsyncIterable<Buffer | string>;
  /** With `tty`: called with a function that resizes the terminal. */
  onResize?: (resize: (size: { cols: number; rows: number }) => void) => void;
  /**
   * binfmt_misc registrations (`:name:M::magic:mask:interpreter:flags`) for a binfmt_misc instance
   * of the step's own, in a user namespace that maps every id to itself: foreign binaries the step
   * runs, its children included, go through the emulators they name. Only where `ownBinfmt()`.
   */
  binfmt?: string[];
}

/** The process ran and exited non-zero (or was killed: 128 + signal). */
export class ExitError extends LoomError {
  readonly exitCode: number;

  constructor(exitCode: number, options?: { cause?: unknown }) {
    // Upstream answers these with gRPC Unknown.
    super('UNKNOWN', `exit code: ${exitCode}`, options);
    this.exitCode = exitCode;
    this.name = 'ExitError';
  }
}

/** Go's %q for a string, as upstream's error messages quote: `"a \"b\"\n"`. */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\x07') out += '\\a';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\v') out += '\\v';
    else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
    else if (c >= 0x80 && c < 0xa0) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}
