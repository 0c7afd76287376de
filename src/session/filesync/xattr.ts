import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Extended attributes of paths, never following a final symlink. Node has no xattr calls, so
 * the default goes through the `attr` package's tools when they are installed.
 */
export interface XattrIO {
  /** The xattrs of many paths at once (one process for all); paths without any are left out. */
  listMany(paths: readonly string[]): Promise<Map<string, Record<string, Uint8Array>>>;
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
    async listMany(paths) {
      const res = new Map<string, Record<string, Uint8Array>>();
      // Arguments stay well under the kernel's limit: a process per 1,000 paths.
      for (let i = 0; i < paths.length; i += 1000) {
        const chunk = paths.slice(i, i + 1000);
        let out: string;
        try {
          ({ stdout: out } = await run(getfattr, ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', '--', ...chunk], { maxBuffer: 256 << 20 }));
        } catch (err) {
          // getfattr exits non-zero when a path could not be read (gone, not permitted,
          // unsupported); what it printed for the others still holds.
          const e = err as { stdout?: string; code?: unknown };
          if (typeof e.stdout !== 'string' || typeof e.code !== 'number') throw err;
          out = e.stdout;
        }
        parseDump(out, res);
      }
      return res;
    },
    async set(path, name, value) {
      await run(setfattr, ['-h', '-n', name, '-v', '0x' + Buffer.from(value).toString('hex'), '--', path]);
    },
  };
}

/** getfattr's escaping of a path in `# file:` lines: octal `\NNN` for a backslash, control bytes and the like. */
function unescapePath(s: string): string {
  if (!s.includes('\\')) return s;
  const bytes: number[] = [];
  const raw = Buffer.from(s, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x5c && i + 3 < raw.length && /^[0-7]{3}$/.test(raw.subarray(i + 1, i + 4).toString('latin1'))) {
      bytes.push(parseInt(raw.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else {
      bytes.push(raw[i]!);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** `getfattr -d -e hex` output: `# file: PATH` then `name=0xHEX` lines, a blank line after each. */
function parseDump(out: string, res: Map<string, Record<string, Uint8Array>>): void {
  let cur: Record<string, Uint8Array> | undefined;
  for (const line of out.split('\n')) {
    if (line.startsWith('# file: ')) {
      cur = {};
      res.set(unescapePath(line.slice('# file: '.length)), cur);
      continue;
    }
    const m = /^([^#=][^=]*)=(?:0x([0-9a-fA-F]*))?$/.exec(line);
    if (m && cur) cur[m[1]!] = Buffer.from(m[2] ?? '', 'hex');
  }
  for (const [k, v] of res) if (Object.keys(v).length === 0) res.delete(k);
}
