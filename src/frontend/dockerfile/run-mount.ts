/**
 * `RUN --mount=...` values: CSV `key=value` fields with upstream's keys, defaults and checks
 * (instructions/commands_runmount.go). A mount is parsed twice, as upstream does: once when the
 * Dockerfile is read, without variable expansion (only `from` is taken, to know which stages a RUN
 * depends on), and again at dispatch with the stage's variables.
 */
import { parseGoBool, parseGoUint, ramInBytes, readCSVRecord, suggest } from './go-compat.js';

export type MountType = 'bind' | 'cache' | 'tmpfs' | 'secret' | 'ssh';
export type MountSharing = 'shared' | 'private' | 'locked';

export interface Mount {
  type: MountType;
  from: string;
  source: string;
  target: string;
  readOnly: boolean;
  sizeLimit: number;
  cacheId: string;
  cacheSharing: MountSharing | '';
  required: boolean;
  mode?: number;
  uid?: number;
  gid?: number;
}

const MOUNT_TYPES = ['bind', 'cache', 'tmpfs', 'secret', 'ssh'];
const SHARING = ['shared', 'private', 'locked'];
const ALL_KEYS = ['type', 'from', 'source', 'target', 'readonly', 'id', 'sharing', 'required', 'mode', 'uid', 'gid', 'src', 'dst', 'ro', 'rw', 'readwrite'];

/**
 * Parses one `--mount` value. Without `expand` (parse time) only `from` is read and checked to be
 * free of variables; with it every field is expanded and validated.
 */
export function parseMount(value: string, expand: ((word: string) => string) | undefined): Mount {
  if (value === '') throw new Error('failed to parse csv mounts: EOF');
  let fields: string[];
  try {
    fields = readCSVRecord(value);
  } catch (err) {
    throw new Error(`failed to parse csv mounts: ${(err as Error).message}`);
  }
  const m: Mount = { type: 'bind', from: '', source: '', target: '', readOnly: false, sizeLimit: 0, cacheId: '', cacheSharing: '', required: false };
  let roAuto = true;

  for (const field of fields) {
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).toLowerCase();
    if (eq < 0) {
      if (!expand) continue;
      switch (key) {
        case 'readonly':
        case 'ro':
          m.readOnly = true;
          roAuto = false;
          continue;
        case 'readwrite':
        case 'rw':
          m.readOnly = false;
          roAuto = false;
          continue;
        case 'required':
          if (m.type === 'secret' || m.type === 'ssh') {
            m.required = true;
            continue;
          }
          throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
      }
      throw new Error(`invalid field '${field}' must be a key=value pair`);
    }
    let v = field.slice(eq + 1);
    if (expand) {
      v = expand(v);
    } else if (key === 'from') {
      if (/\$[^\n]/.test(v)) throw new Error(`'${key}' doesn't support variable expansion, define alias stage instead`);
    } else {
      continue;
    }
    const bool = (): boolean => {
      const b = parseGoBool(v);
      if (b === undefined) throw new Error(`invalid value for ${key}: ${v}`);
      return b;
    };
    switch (key) {
      case 'type': {
        const t = v.toLowerCase();
        if (!MOUNT_TYPES.includes(t)) throw new Error(suggest(`unsupported mount type ${JSON.stringify(v)}`, v, MOUNT_TYPES, true));
        m.type = t as MountType;
        break;
      }
      case 'from':
        m.from = v;
        break;
      case 'source':
      case 'src':
        m.source = v;
        break;
      case 'target':
      case 'dst':
      case 'destination':
        m.target = v;
        break;
      case 'readonly':
      case 'ro':
        m.readOnly = bool();
        roAuto = false;
        break;
      case 'readwrite':
      case 'rw':
        m.readOnly = !bool();
        roAuto = false;
        break;
      case 'required':
        if (m.type !== 'secret' && m.type !== 'ssh') throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
        m.required = bool();
        break;
      case 'size':
        if (m.type !== 'tmpfs') throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
        try {
          m.sizeLimit = ramInBytes(v);
        } catch {
          throw new Error(`invalid value for ${key}: ${v}`);
        }
        break;
      case 'id':
        m.cacheId = v;
        break;
      case 'sharing': {
        const s = v.toLowerCase();
        if (!SHARING.includes(s)) throw new Error(`unsupported sharing value ${JSON.stringify(v)}`);
        m.cacheSharing = s as MountSharing;
        break;
      }
      case 'mode': {
        const n = parseGoUint(v, 8, 32);
        if (n === undefined) throw new Error(`invalid value ${v} for mode`);
        m.mode = Number(n);
        break;
      }
      case 'uid': {
        const n = parseGoUint(v, 10, 32);
        if (n === undefined) throw new Error(`invalid value ${v} for uid`);
        m.uid = Number(n);
        break;
      }
      case 'gid': {
        const n = parseGoUint(v, 10, 32);
        if (n === undefined) throw new Error(`invalid value ${v} for gid`);
        m.gid = Number(n);
        break;
      }
      default:
        throw new Error(suggest(`unexpected key '${key}' in '${field}'`, key, ALL_KEYS, true));
    }
  }

  const fileInfoAllowed = m.type === 'secret' || m.type === 'ssh' || m.type === 'cache';
  if (m.mode !== undefined && !fileInfoAllowed) throw new Error(`mode not allowed for ${JSON.stringify(m.type)} type mounts`);
  if (m.uid !== undefined && !fileInfoAllowed) throw new Error(`uid not allowed for ${JSON.stringify(m.type)} type mounts`);
  if (m.gid !== undefined && !fileInfoAllowed) throw new Error(`gid not allowed for ${JSON.stringify(m.type)} type mounts`);
  if (roAuto) m.readOnly = !(m.type === 'cache' || m.type === 'tmpfs');
  if (m.cacheSharing !== '' && m.type !== 'cache') throw new Error(`invalid cache sharing set for ${m.type} mount`);
  if (m.type === 'secret') {
    if (m.from !== '') throw new Error('secret mount should not have a from');
    if (m.cacheSharing !== '') throw new Error('secret mount should not define sharing');
    if (m.source === '' && m.target === '' && m.cacheId === '') throw new Error('invalid secret mount. one of source, target required');
    if (m.source !== '' && m.cacheId !== '') throw new Error("both source and id can't be set");
  }
  return m;
}
