import { spawn } from 'node:child_process';
import { LoomError } from '../../../util/errors.js';

/**
 * Runs a host networking tool (`ip`, `iptables`, `nft`) with optional stdin (batch scripts) and
 * resolves with its stdout. A failure names the command and carries its stderr, so a broken
 * setup says which step of it failed.
 */
export function runCmd(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => reject(new LoomError('FAILED_PRECONDITION', `${cmd}: ${e.message}`, { cause: e })));
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new LoomError('INTERNAL', `${cmd} ${args.join(' ')} failed (exit ${code}): ${err.trim() || out.trim()}`));
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** True when `cmd` can be started (found on PATH and executable). */
export async function haveCmd(cmd: string, args: string[] = ['--version']): Promise<boolean> {
  try {
    await runCmd(cmd, args);
    return true;
  } catch (err) {
    return (err as LoomError).code !== 'FAILED_PRECONDITION';
  }
}
