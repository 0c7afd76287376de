import { createWriteStream, statSync } from 'node:fs';
import { Writable } from 'node:stream';
import type { CacheOptionsEntry, ExportEntry } from '../../client/solve.js';
import { parseCsvLine } from '../../session/client/secrets.js';
import { InvalidArgumentError } from '../../util/errors.js';

/** `k=v` list into a map, as upstream's attrMap (`invalid value X`). */
export function attrMap(list: string[]): Record<string, string> {
  const m: Record<string, string> = {};
  for (const v of list) {
    const i = v.indexOf('=');
    if (i < 0) throw new InvalidArgumentError(`invalid value ${v}`);
    m[v.slice(0, i)] = v.slice(i + 1);
  }
  return m;
}

function csvEntry(s: string, flag: string): { type: string; attrs: Record<string, string> } {
  const attrs: Record<string, string> = {};
  let type = '';
  for (const field of parseCsvLine(s)) {
    const i = field.indexOf('=');
    if (i < 0) throw new InvalidArgumentError(`invalid value ${field}`);
    const key = field.slice(0, i).toLowerCase();
    const value = field.slice(i + 1);
    if (key === 'type') type = value;
    else attrs[key] = value;
  }
  if (!type) throw new InvalidArgumentError(`--${flag} requires type=<type>`);
  return { type, attrs };
}

/**
 * `--output type=...,k=v`: the exporter, and where its result goes here. tar (and oci/docker
 * unless tar=false) write one file: `dest=path`, or stdout when dest is empty or `-` and stdout is
 * not a terminal. local writes a directory (`dest` required). Other exporters take no dest.
 */
export function parseOutput(s: string, stdout: NodeJS.WriteStream = process.stdout): ExportEntry {
  const { type, attrs } = csvEntry(s, 'output');
  if (attrs.output !== undefined) throw new InvalidArgumentError(`output=${attrs.output} not supported for --output, you meant dest=${attrs.output}?`);
  const dest = attrs.dest ?? '';
  let supportFile = false;
  let supportDir = false;
  switch (type) {
    case 'local':
      supportDir = true;
      break;
    case 'tar':
      supportFile = true;
      break;
    case 'oci':
    case 'docker': {
      const tar = parseGoBool(attrs.tar);
      supportFile = tar ?? true;
      supportDir = !(tar ?? true);
      break;
    }
  }
  const ex: ExportEntry = { type, attrs };
  if (supportDir) {
    if (!dest) throw new InvalidArgumentError(`invalid output option: output: output directory is required for ${type} exporter`);
    ex.outputDir = dest;
  } else if (supportFile) {
    if (dest && dest !== '-') {
      let isDir = false;
      try {
        isDir = statSync(dest).isDirectory();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          throw new InvalidArgumentError(`invalid output option: output: invalid destination file: ${dest}: ${(err as Error).message}`);
        }
      }
      if (isDir) throw new InvalidArgumentError('invalid output option: output: destination file is a directory');
      ex.output = () => createWriteStream(dest);
    } else {
      if (stdout.isTTY) {
        throw new InvalidArgumentError(`invalid output option: output: output file is required for ${type} exporter. refusing to write to console`);
      }
      ex.output = () => stdoutSink(stdout);
    }
  } else if (dest) {
    throw new InvalidArgumentError(`invalid output option: output: output ${dest} is not supported by ${type} exporter`);
  }
  if (ex.output || ex.outputDir) delete attrs.dest;
  return ex;
}

/** stdout cannot be ended; this sink forwards to it and finishes once it has flushed. */
function stdoutSink(stdout: NodeJS.WriteStream): Writable {
  return new Writable({
    write(chunk: Buffer, _e, cb) {
      if (stdout.write(chunk)) cb();
      else stdout.once('drain', () => cb());
    },
    final(cb) {
      stdout.write('', () => cb());
    },
  });
}

function parseGoBool(v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  if (/^(1|t|T|TRUE|true|True)$/.test(v)) return true;
  if (/^(0|f|F|FALSE|false|False)$/.test(v)) return false;
  return undefined;
}

/** `--export-cache`: CSV with type= (mode=min by default), or a bare ref (deprecated: registry). */
export function parseExportCache(list: string[], env: NodeJS.ProcessEnv = process.env, warn?: (m: string) => void): CacheOptionsEntry[] {
  return list.map((s) => {
    if (!s.includes('type=')) {
      warn?.('--export-cache <ref> is deprecated. Please use --export-cache type=registry,ref=<ref>,<opt>=<optval>[,<opt>=<optval>] instead');
      return { type: 'registry', attrs: { mode: 'min', ref: s } };
    }
    const e = csvEntry(s, 'export-cache');
    if (e.attrs.mode === undefined) e.attrs.mode = 'min';
    return e.type === 'gha' ? githubEnv(e, env) : e;
  });
}

/** `--import-cache`: CSV with type=, or a bare ref (deprecated: registry). */
export function parseImportCache(list: string[], env: NodeJS.ProcessEnv = process.env, warn?: (m: string) => void): CacheOptionsEntry[] {
  return list.map((s) => {
    if (!s.includes('type=')) {
      warn?.('--import-cache <ref> is deprecated. Please use --import-cache type=registry,ref=<ref>,<opt>=<optval>[,<opt>=<optval>] instead.');
      return { type: 'registry', attrs: { ref: s } };
    }
    const e = csvEntry(s, 'import-cache');
    return e.type === 'gha' ? githubEnv(e, env) : e;
  });
}

function githubEnv(e: CacheOptionsEntry, env: NodeJS.ProcessEnv): CacheOptionsEntry {
  if (e.attrs.url === undefined) {
    if (env.ACTIONS_CACHE_URL === undefined) throw new InvalidArgumentError('cache with type gha requires url parameter or $ACTIONS_CACHE_URL');
    e.attrs.url = env.ACTIONS_CACHE_URL;
  }
  if (e.attrs.token === undefined) {
    if (env.ACTIONS_RUNTIME_TOKEN === undefined) throw new InvalidArgumentError('cache with type gha requires token parameter or $ACTIONS_RUNTIME_TOKEN');
    e.attrs.token = env.ACTIONS_RUNTIME_TOKEN;
  }
  return e;
}

const ENTITLEMENTS = new Set(['security.insecure', 'network.host']);

/** `--allow`: only the entitlements upstream knows. */
export function parseAllow(list: string[]): string[] {
  for (const e of list) if (!ENTITLEMENTS.has(e)) throw new InvalidArgumentError(`unknown entitlement ${e}`);
  return [...list];
}
