/**
 * Image references as docker/distribution parses and normalizes them (reference.ParseNormalizedNamed,
 * ParseDockerRef, FamiliarString): `busybox` is `docker.io/library/busybox:latest`, a first component
 * with a dot, a colon or equal to `localhost` is a registry host, names must be lower case.
 */
import { InvalidArgumentError } from '../util/errors.js';
import { isDigest, type Digest } from '../util/digest.js';

export interface ImageReference {
  /** Registry host with optional port: `docker.io`, `localhost:5000`. */
  domain: string;
  /** Repository path inside the registry: `library/busybox`. */
  path: string;
  tag?: string;
  digest?: Digest;
}

export const DEFAULT_DOMAIN = 'docker.io';
const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
const OFFICIAL_REPO = 'library';
export const DEFAULT_TAG = 'latest';
const NAME_TOTAL_LENGTH_MAX = 255;

// The grammar of distribution's regexp.go, written so that JavaScript's backtracking engine stays
// linear: the separator alternatives never match the empty string.
const NAME_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = `${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*(?::[0-9]+)?`;
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const NAME = `(?:${DOMAIN}/)?${NAME_COMPONENT}(?:/${NAME_COMPONENT})*`;

const REFERENCE_RE = new RegExp(`^(${NAME})(?::(${TAG}))?(?:@(${DIGEST}))?$`);
const ANCHORED_NAME_RE = new RegExp(`^(?:(${DOMAIN})/)?(${NAME_COMPONENT}(?:/${NAME_COMPONENT})*)$`);
const TAG_RE = new RegExp(`^${TAG}$`);
const IDENTIFIER_RE = /^[a-f0-9]{64}$/;
const MAX_INPUT = 4096;

function invalid(s: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid reference ${JSON.stringify(s)}: ${why}`);
}

/** distribution's reference.Parse on an already-normalized string. */
function parseStrict(original: string, s: string): ImageReference {
  if (s.length > MAX_INPUT) throw invalid(original, 'invalid reference format');
  const m = REFERENCE_RE.exec(s);
  if (!m) {
    if (s === '') throw invalid(original, 'repository name must have at least one component');
    if (REFERENCE_RE.test(s.toLowerCase())) throw invalid(original, 'invalid reference format: repository name must be lowercase');
    throw invalid(original, 'invalid reference format');
  }
  const name = m[1]!;
  if (name.length > NAME_TOTAL_LENGTH_MAX) {
    throw invalid(original, `repository name must not be more than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }
  const nm = ANCHORED_NAME_RE.exec(name)!;
  const ref: ImageReference = { domain: nm[1] ?? '', path: nm[2]! };
  if (m[2]) ref.tag = m[2];
  if (m[3]) {
    const [alg, hex] = m[3].split(':') as [string, string];
    if (alg !== 'sha256') throw invalid(original, `unsupported digest algorithm ${JSON.stringify(alg)}`);
    const d = `sha256:${hex}`;
    if (!isDigest(d)) throw invalid(original, 'invalid checksum digest format');
    ref.digest = d;
  }
  return ref;
}

function splitDockerDomain(name: string): [string, string] {
  const i = name.indexOf('/');
  let domain: string;
  let remainder: string;
  if (i === -1 || (!/[.:]/.test(name.slice(0, i)) && name.slice(0, i) !== 'localhost')) {
    domain = DEFAULT_DOMAIN;
    remainder = name;
  } else {
    domain = name.slice(0, i);
    remainder = name.slice(i + 1);
  }
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !remainder.includes('/')) remainder = `${OFFICIAL_REPO}/${remainder}`;
  return [domain, remainder];
}

/** reference.ParseNormalizedNamed: full domain and path, tag and digest only as written. */
export function parseNormalizedNamed(s: string): ImageReference {
  if (IDENTIFIER_RE.test(s)) {
    throw invalid(s, 'invalid repository name, cannot specify 64-byte hexadecimal strings');
  }
  const [domain, remainder] = splitDockerDomain(s);
  const tagSep = remainder.indexOf(':');
  const remoteName = tagSep > -1 ? remainder.slice(0, tagSep) : remainder;
  if (remoteName.toLowerCase() !== remoteName) {
    throw invalid(s, 'invalid reference format: repository name must be lowercase');
  }
  return parseStrict(s, `${domain}/${remainder}`);
}

/**
 * reference.ParseDockerRef: normalized, `latest` added when there is neither tag nor digest, and the
 * tag dropped when a digest pins the image (the digest is what gets pulled).
 */
export function parseReference(s: string): ImageReference {
  const r = parseNormalizedNamed(s);
  if (r.digest) return { domain: r.domain, path: r.path, digest: r.digest };
  return withDefaultTag(r);
}

/** reference.TagNameOnly: adds `latest` to a bare name. */
export function withDefaultTag(r: ImageReference): ImageReference {
  if (r.tag === undefined && r.digest === undefined) return { ...r, tag: DEFAULT_TAG };
  return { ...r };
}

/** `domain/path`, the repository's full name. */
export function referenceName(r: ImageReference): string {
  return `${r.domain}/${r.path}`;
}

/** The full reference string: `docker.io/library/busybox:latest`, `host/x@sha256:...`. */
export function formatReference(r: ImageReference): string {
  let s = referenceName(r);
  if (r.tag) s += `:${r.tag}`;
  if (r.digest) s += `@${r.digest}`;
  return s;
}

/** reference.FamiliarString: `docker.io/library/` shortened away, as `docker images` shows names. */
export function familiarString(r: ImageReference): string {
  let domain = r.domain;
  let path = r.path;
  if (domain === DEFAULT_DOMAIN) {
    domain = '';
    const parts = path.split('/');
    if (parts.length === 2 && parts[0] === OFFICIAL_REPO) path = parts[1]!;
  }
  let s = domain ? `${domain}/${path}` : path;
  if (r.tag) s += `:${r.tag}`;
  if (r.digest) s += `@${r.digest}`;
  return s;
}

/**
 * The value of `org.opencontainers.image.ref.name` for an image name, as containerd's archive
 * exporter computes it: the part after the repository (the tag, or `@digest`, or `tag@digest`).
 */
export function ociRefName(name: string): string {
  if (name.includes('://')) return name;
  const slash = name.indexOf('/');
  if (slash <= 0) return name; // no host: containerd's parser refuses it and keeps the name as is
  const path = name.slice(slash);
  const i = path.search(/[:@]/);
  if (i === -1) return '';
  const obj = path.slice(i);
  return obj.startsWith(':') ? obj.slice(1) : obj;
}

/** True when `s` is a valid tag. */
export function isValidTag(s: string): boolean {
  return TAG_RE.test(s);
}
