import { readFileSync } from 'node:fs';

/**
 * A small text file read synchronously, or '' when it cannot be read (missing, unreadable): for
 * files of a few lines read on a step's path (the host's resolv.conf, the runc shim's report).
 */
export function readTextOrEmpty(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
