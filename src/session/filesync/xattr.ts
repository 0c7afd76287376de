import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Extended attributes of one path, never following a final symlink. Node has no xattr calls, so
 * the default goes through the `attr` package's tools when they are installed.
 */
export interface XattrIO {
  list(path: string): Promise<Record<string, Uint8Array>>;
  set(path: string, name: string, value: Uint8Array): Promise<void>;
}

let detected: Promise<XattrIO | undefined> | undefined;

/** The system's xattr tools (getfattr/setfattr), or undefined when they are not installed. */
export function systemXattrs(): Promise<XattrIO | undefined> {
  detected ??= (async () => {
    const get = await which('getfattr');
    const set = await which('setfattr');
    return get && set ? toolXattrs(get, set) : undefined;
  })();
  return detected;
}

async function which(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

function toolXattrs(getfattr: string, setfattr: string): XattrIO {
  return {
    async list(path) {
      let out: string;
      try {
        ({ stdout: out } = await run(getfattr, ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', '--', path], { maxBuffer: 64 << 20 }));
      } catch (err) {
        // Unsupported file systems report an error: such files simply have no attributes.
        if ((err as { stderr?: string }).stderr?.includes('Operation not supported')) return {};
        throw err;
      }
      const res: Record<string, Uint8Array> = {};
      for (const line of out.split('\n')) {
        const m = /^([^#=][^=]*)=(?:0x([0-9a-fA-F]*))?$/.exec(line);
        if (m) res[m[1]!] = Buffer.from(m[2] ?? '', 'hex');
      }
      return res;
    },
    async set(path, name, value) {
      await run(setfattr, ['-h', '-n', name, '-v', '0x' + Buffer.from(value).toString('hex'), '--', path]);
    },
  };
}
