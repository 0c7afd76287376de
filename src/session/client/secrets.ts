import { readFile, stat } from 'node:fs/promises';
import { Secrets } from '../../gen/session/secrets_pb.js';
import { InvalidArgumentError, LoomError, NotFoundError } from '../../util/errors.js';
import { methodPath } from '../tunnel/metadata.js';
import { unaryHandler, type SessionServices } from '../tunnel/server.js';

/** Upstream's limit on one secret (500 KiB). */
export const MAX_SECRET_SIZE = 500 * 1024;

/** One `--secret`: where its value comes from. Exactly one of file and env is set once resolved. */
export interface SecretSource {
  id: string;
  file?: string;
  env?: string;
}

/**
 * Parses `--secret id=x,src=path` / `id=x,env=VAR` / `type=env,id=x[,src=VAR]` (CSV fields, as
 * upstream). Errors name the offending field.
 */
export function parseSecretSpec(spec: string): SecretSource {
  const out: SecretSource = { id: '' };
  let type: string | undefined;
  for (const field of parseCsvLine(spec)) {
    const i = field.indexOf('=');
    if (i < 0) throw new InvalidArgumentError(`invalid field '${field}' must be a key=value pair`);
    const key = field.slice(0, i).toLowerCase();
    const value = field.slice(i + 1);
    switch (key) {
      case 'type':
        if (value !== 'file' && value !== 'env') throw new InvalidArgumentError(`unsupported secret type ${JSON.stringify(value)}`);
        type = value;
        break;
      case 'id':
        out.id = value;
        break;
      case 'source':
      case 'src':
        out.file = value;
        break;
      case 'env':
        out.env = value;
        break;
      default:
        throw new InvalidArgumentError(`unexpected key '${key}' in '${field}'`);
    }
  }
  if (type === 'env' && !out.env) {
    out.env = out.file;
    delete out.file;
  }
  return out;
}

/**
 * Resolves sources as upstream's store does: an id is required; without src or env, an env var
 * of that name if set, else a file of that name. Files must exist and fit the size limit now,
 * so a typo fails before the build starts.
 */
export async function resolveSecrets(sources: SecretSource[], env: NodeJS.ProcessEnv = process.env): Promise<Map<string, SecretSource>> {
  const m = new Map<string, SecretSource>();
  for (const s0 of sources) {
    const s = { ...s0 };
    if (!s.id) throw new InvalidArgumentError('secret missing ID');
    if (!s.env && !s.file) {
      if (Object.hasOwn(env, s.id)) s.env = s.id;
      else s.file = s.id;
    }
    if (s.file) {
      let size: number;
      try {
        size = (await stat(s.file)).size;
      } catch (err) {
        throw new NotFoundError(`failed to stat ${s.file}: ${(err as Error).message}`, { cause: err });
      }
      if (size > MAX_SECRET_SIZE) throw new InvalidArgumentError(`secret ${s.id} too big. max size 500KiB`);
    }
    m.set(s.id, s);
  }
  return m;
}

/**
 * moby.buildkit.secrets.v1.Secrets/GetSecret: the value of a known secret, read when asked (so a
 * file changed since the build started is read as it is now). Unknown ids answer NOT_FOUND,
 * which the daemon reports as a missing secret.
 */
export function secretsService(secrets: Map<string, SecretSource>, env: NodeJS.ProcessEnv = process.env): SessionServices {
  return {
    [methodPath(Secrets.method.getSecret)]: unaryHandler(Secrets.method.getSecret, async (req) => {
      const s = secrets.get(req.ID);
      if (!s) throw new NotFoundError('not found');
      let data: Buffer;
      if (s.env) data = Buffer.from(env[s.env] ?? '', 'utf8');
      else data = await readFile(s.file!);
      if (data.length > MAX_SECRET_SIZE) throw new LoomError('INVALID_ARGUMENT', `invalid secret size ${data.length}`);
      return { data };
    }),
  };
}

/** One line of CSV as Go's encoding/csv reads it: commas split, double quotes group and `""` escapes. */
export function parseCsvLine(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let i = 0;
  let quoted = false;
  let fieldStart = true;
  while (i < s.length) {
    const c = s[i]!;
    if (quoted) {
      if (c === '"') {
        if (s[i + 1] === '"') {
          cur += '"';
          i += 2;
          continue;
        }
        quoted = false;
        i++;
        continue;
      }
      cur += c;
      i++;
      continue;
    }
    if (c === '"' && fieldStart) {
      quoted = true;
      fieldStart = false;
      i++;
      continue;
    }
    if (c === ',') {
      out.push(cur);
      cur = '';
      fieldStart = true;
      i++;
      continue;
    }
    if (c === '"') throw new InvalidArgumentError(`bare " in non-quoted field: ${JSON.stringify(s)}`);
    cur += c;
    fieldStart = false;
    i++;
  }
  if (quoted) throw new InvalidArgumentError(`extraneous or missing " in quoted field: ${JSON.stringify(s)}`);
  out.push(cur);
  return out;
}
