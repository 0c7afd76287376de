import { create, fromBinary } from '@bufbuild/protobuf';
import { createHash, randomBytes } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import type { Definition } from '../../gen/buildkit/ops_pb.js';
import { createProgressDisplay } from '../../client/progress/display.js';
import { solve, type ExportEntry } from '../../client/solve.js';
import { parseSecretSpec, resolveSecrets } from '../../session/client/secrets.js';
import { parseSshSpec, resolveSshAgents } from '../../session/client/ssh.js';
import { errorMessage, InvalidArgumentError, LoomError } from '../../util/errors.js';
import { parseFlags, type FlagSpec } from './args.js';
import { attrMap, parseAllow, parseExportCache, parseImportCache, parseOutput } from './build-opts.js';
import { resolveClient, type CommandContext } from './common.js';
import { goIndentJson } from './go-format.js';

export const BUILD_FLAGS: FlagSpec[] = [
  { names: ['output', 'o'], kind: 'slice' },
  { names: ['progress'], kind: 'string', default: 'auto' },
  { names: ['trace'], kind: 'string', default: '' },
  { names: ['local'], kind: 'slice' },
  { names: ['oci-layout'], kind: 'slice' },
  { names: ['frontend'], kind: 'string', default: '' },
  { names: ['opt'], kind: 'slice' },
  { names: ['no-cache'], kind: 'bool' },
  { names: ['export-cache'], kind: 'slice' },
  { names: ['import-cache'], kind: 'slice' },
  { names: ['secret'], kind: 'slice' },
  { names: ['allow'], kind: 'slice' },
  { names: ['ssh'], kind: 'slice' },
  { names: ['metadata-file'], kind: 'string', default: '' },
  { names: ['source-policy-file'], kind: 'string', default: '' },
  { names: ['ref-file'], kind: 'string', default: '' },
];

/**
 * `buildctl build`: an LLB definition from stdin, or a frontend (`--frontend dockerfile.v0`) with
 * `--opt`s; locals, secrets, ssh and registry credentials served on the session; progress on
 * stderr; the exporter's response in `--metadata-file`.
 */
export async function build(ctx: CommandContext, args: string[], stdin: NodeJS.ReadStream = process.stdin): Promise<void> {
  const { values } = parseFlags(args, BUILD_FLAGS);
  const warn = (m: string): void => {
    ctx.stderr.write(m.endsWith('\n') ? m : m + '\n');
  };
  for (const f of ['trace', 'source-policy-file'] as const) {
    if (values[f]) throw new InvalidArgumentError(`--${f} is not supported by loom's buildctl`);
  }
  if ((values['oci-layout'] as string[]).length > 0) throw new InvalidArgumentError('invalid oci-layout: --oci-layout is not supported by loom\'s buildctl');

  const client = await resolveClient(ctx.global);
  try {
    const ssh = (values.ssh as string[]).length > 0 ? await resolveSshAgents((values.ssh as string[]).map(parseSshSpec)) : undefined;
    const secrets = (values.secret as string[]).length > 0 ? await resolveSecrets((values.secret as string[]).map(parseSecretSpec)) : undefined;
    const entitlements = parseAllow(values.allow as string[]);
    const exports: ExportEntry[] = (values.output as string[]).map((o) => parseOutput(o, ctx.stdout));
    const cacheExports = parseExportCache(values['export-cache'] as string[], process.env, warn);
    const cacheImports = parseImportCache(values['import-cache'] as string[], process.env, warn);
    let frontendAttrs: Record<string, string>;
    try {
      frontendAttrs = attrMap(values.opt as string[]);
    } catch (err) {
      throw new InvalidArgumentError(`invalid opt: ${errorMessage(err)}`, { cause: err });
    }
    let locals: Record<string, string>;
    try {
      locals = attrMap(values.local as string[]);
    } catch (err) {
      throw new InvalidArgumentError(`invalid local: ${errorMessage(err)}`, { cause: err });
    }
    const frontend = String(values.frontend ?? '');
    const noCache = Boolean(values['no-cache']);
    let definition: Definition | undefined;
    if (!frontend) {
      if (stdin.isTTY) throw new InvalidArgumentError('please specify --frontend or pipe LLB definition to stdin');
      definition = await readDefinition(await readAll(stdin), noCache);
      if (definition.def.length === 0) throw new InvalidArgumentError('empty definition sent to build. Specify --frontend instead?');
    } else if (noCache) {
      frontendAttrs['no-cache'] = '';
    }

    const ref = newRef();
    const display = createProgressDisplay({ mode: String(values.progress), out: ctx.stderr });
    let res;
    try {
      res = await solve({
        control: client,
        definition,
        frontend: frontend || undefined,
        frontendAttrs,
        exports,
        cacheExports,
        cacheImports,
        locals,
        secrets,
        ssh,
        auth: { warn },
        entitlements,
        signal: ctx.signal,
        onStatus: (s) => display.update(s),
        onWarning: warn,
        ref,
      });
    } finally {
      display.finish();
      if (values['ref-file']) await atomicWrite(String(values['ref-file']), ref).catch(() => undefined);
    }
    if (ctx.global.debug) for (const [k, v] of Object.entries(res.exporterResponse)) warn(`exporter response: ${k}=${v}`);
    if (values['metadata-file']) await writeMetadataFile(String(values['metadata-file']), res.exporterResponse);
    // A subrequest's answer, as upstream's buildctl prints it: result.txt, else every result.* key.
    const sub = res.subrequestMetadata;
    if (sub) {
      if (sub['result.txt']) ctx.stdout.write(Buffer.from(sub['result.txt']));
      else for (const [k, v] of Object.entries(sub)) if (k.startsWith('result.')) ctx.stdout.write(`${k}\n${Buffer.from(v).toString()}\n`);
    }
  } finally {
    client.close();
  }
}

function newRef(): string {
  const n = BigInt('0x' + randomBytes(16).toString('hex'));
  return n.toString(36).padStart(25, '0').slice(-25);
}

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as string));
  return Buffer.concat(chunks);
}

/**
 * A Definition as `llb.ReadFrom` reads it (binary protobuf). With --no-cache every op gets
 * ignore_cache in its metadata (keyed by the op's digest), as upstream's buildctl does. ops.proto's
 * descriptors are loaded here, for builds that send a definition (see client/control-codec.ts).
 */
export async function readDefinition(data: Uint8Array, noCache: boolean): Promise<Definition> {
  const { DefinitionSchema, OpMetadataSchema } = await import('../../gen/buildkit/ops_pb.js');
  let def: Definition;
  try {
    def = fromBinary(DefinitionSchema, data);
  } catch (err) {
    throw new InvalidArgumentError(`failed to parse input: ${errorMessage(err)}`, { cause: err });
  }
  if (noCache) {
    for (const dt of def.def) {
      const dgst = `sha256:${createHash('sha256').update(dt).digest('hex')}`;
      const md = def.metadata[dgst] ?? create(OpMetadataSchema, {});
      md.ignoreCache = true;
      def.metadata[dgst] = md;
    }
  }
  return def;
}

/**
 * `--metadata-file`: the exporter response as indented JSON; a value that is base64 of a JSON
 * object is embedded as that object (e.g. containerimage.descriptor), others stay strings.
 */
export async function writeMetadataFile(path: string, resp: Record<string, string>): Promise<void> {
  const parts: string[] = [];
  for (const k of Object.keys(resp).sort()) {
    const v = resp[k]!;
    let raw: string | undefined;
    if (/^[A-Za-z0-9+/]*={0,2}$/.test(v) && v.length % 4 === 0) {
      const dt = Buffer.from(v, 'base64').toString('utf8');
      try {
        const o = JSON.parse(dt) as unknown;
        if (typeof o === 'object' && o !== null && !Array.isArray(o) && Object.keys(o).length > 0) raw = dt;
      } catch {
        // not JSON: kept as the string it is
      }
    }
    parts.push(`${JSON.stringify(k)}:${raw ?? JSON.stringify(v)}`);
  }
  await atomicWrite(path, goIndentJson(`{${parts.join(',')}}`));
}

async function atomicWrite(path: string, data: string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, data, { mode: 0o666 });
    await rename(tmp, path);
  } catch (err) {
    throw new LoomError('INTERNAL', `failed to write ${path}: ${errorMessage(err)}`, { cause: err });
  }
}

