import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { access, constants, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { LoomError } from '../../../util/errors.js';
import { packageRoot } from '../../../util/package-root.js';

const run = promisify(execFile);

const PKG_ROOT = packageRoot();
export const SHIM_SOURCE = path.join(PKG_ROOT, 'runc-shim', 'shim.c');
/** Where `make -C runc-shim` puts the binary. */
export const SHIM_PREBUILT = path.join(PKG_ROOT, 'dist', 'runc-shim', 'loom-runc-shim');

const pending = new Map<string, Promise<string>>();

/**
 * The path of a runc-shim binary built from this checkout's source: `$LOOM_RUNC_SHIM` if set, else
 * the `make -C runc-shim` build when it is newer than the source, else a build made now with `cc`
 * into `<stateRoot>/runc-shim/`, named by the source's hash so an upgrade never runs a stale one.
 */
export function ensureShim(stateRoot: string): Promise<string> {
  let p = pending.get(stateRoot);
  if (!p) {
    p = locate(stateRoot);
    pending.set(stateRoot, p);
    p.catch(() => pending.delete(stateRoot));
  }
  return p;
}

async function locate(stateRoot: string): Promise<string> {
  const env = process.env.LOOM_RUNC_SHIM;
  if (env) {
    await access(env, constants.X_OK).catch((err) => {
      throw new LoomError('FAILED_PRECONDITION', `LOOM_RUNC_SHIM=${env} is not an executable: ${(err as Error).message}`);
    });
    return env;
  }
  const [src, pre] = await Promise.all([stat(SHIM_SOURCE).catch(() => null), stat(SHIM_PREBUILT).catch(() => null)]);
  if (pre && (!src || pre.mtimeMs >= src.mtimeMs)) return SHIM_PREBUILT;
  if (!src) throw new LoomError('FAILED_PRECONDITION', `runc shim: neither ${SHIM_PREBUILT} nor its source ${SHIM_SOURCE} exists`);
  const source = await readFile(SHIM_SOURCE);
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const dir = path.join(stateRoot, 'runc-shim');
  const bin = path.join(dir, `loom-runc-shim-${hash}`);
  if (await access(bin, constants.X_OK).then(() => true, () => false)) return bin;
  await mkdir(dir, { recursive: true });
  const tmp = `${bin}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await run(process.env.CC ?? 'cc', ['-O2', '-Wall', '-o', tmp, SHIM_SOURCE]);
    await rename(tmp, bin);
  } catch (err) {
    await rm(tmp, { force: true });
    const e = err as { stderr?: string; message: string };
    throw new LoomError('FAILED_PRECONDITION', `failed to build the runc shim from ${SHIM_SOURCE} (needs a C compiler, e.g. Debian's gcc, or run \`make -C runc-shim\`): ${e.stderr?.trim() || e.message}`);
  }
  return bin;
}
