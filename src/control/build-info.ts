/**
 * The build information upstream's solver adds to a build's response (`containerimage.buildinfo`,
 * `containerimage.buildinfo/<platform>` for each platform of a multi-platform result), base64 JSON
 * that `buildctl --metadata-file` and buildx's metadata file show decoded: the frontend, the
 * frontend options it was given (those that describe the build rather than the host), and the
 * sources the build read with what they resolved to. Deprecated upstream (provenance replaces it),
 * kept for the clients that still read it.
 */
import { goJSON } from '../content/go-json.js';
import { maskPassword } from '../util/mask-password.js';
import { formatReference, parseNormalizedNamed } from '../registry/reference.js';

/** A URL with its password hidden, as upstream's urlutil.RedactCredentials. */
export function redactCredentials(s: string): string {
  return maskPassword(s, 'xxxxx');
}

/** Frontend options that describe the host rather than the build (upstream's provenance FilterArgs). */
const HOST_SPECIFIC = new Set(['cgroup-parent', 'image-resolve-mode', 'platform', 'cache-imports']);

/** The frontend options build information records: host-specific ones and attest:* left out, context URLs redacted. */
export function buildInfoAttrs(attrs: Record<string, string>): Record<string, string> {
  const contextKey = attrs.contextkey || 'context';
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (HOST_SPECIFIC.has(k) || k.startsWith('attest:')) continue;
    out[k] = k === contextKey || k.startsWith('context:') ? redactCredentials(v) : v;
  }
  return out;
}

interface Source {
  type: 'docker-image' | 'http';
  ref: string;
  pin: string;
}

/**
 * The sources of a build, as upstream's provenance capture lists them: first the images the
 * frontend resolved (ResolveImageConfig, through the gateway or the built-in frontend), by the
 * reference it asked for (`busybox:latest`, or `busybox:1.36@sha256:...` when the Dockerfile
 * pinned it), then what the build's source ops read: images by their identifier (an LLB
 * definition's `name:tag@digest` keeps both), downloads by URL (password hidden) and content
 * digest. An image op whose digest a resolved reference already lists is not listed again (the
 * frontend pins the references it resolved: `busybox:latest` becomes an op reading
 * `busybox:latest@<digest>`, and `COPY --from=busybox` one reading the same digest). Sorted by
 * reference, as upstream's.
 */
export function buildInfoSources(read: ReadonlyMap<string, string>, resolved: ReadonlyMap<string, string> = new Map()): Source[] {
  const out: Source[] = [];
  const seen = new Set<string>();
  const add = (s: Source): void => {
    if (seen.has(`${s.type} ${s.ref}`)) return;
    seen.add(`${s.type} ${s.ref}`);
    if (s.type === 'docker-image') seen.add(`pin ${s.pin}`);
    out.push(s);
  };
  const imageRef = (name: string): string | undefined => {
    try {
      // reference.TagNameOnly: a bare name gets `latest`; a tag and a digest are both kept.
      const r = parseNormalizedNamed(name);
      return formatReference(r.tag || r.digest ? r : { ...r, tag: 'latest' });
    } catch {
      return undefined;
    }
  };
  const isDigest = (pin: string): boolean => /^sha256:[0-9a-f]{64}$/.test(pin);
  for (const [name, pin] of resolved) {
    const ref = imageRef(name);
    if (ref !== undefined && isDigest(pin)) add({ type: 'docker-image', ref, pin });
  }
  for (const [id, pin] of read) {
    if (id.startsWith('docker-image://')) {
      const ref = imageRef(id.slice('docker-image://'.length));
      // Images read under two names that resolved to one digest are one source: upstream's solver
      // merges their steps (one cache key), and its build info lists the first.
      if (ref !== undefined && isDigest(pin) && !seen.has(`pin ${pin}`)) add({ type: 'docker-image', ref, pin });
    } else if (/^https?:\/\//.test(id) && isDigest(pin)) {
      add({ type: 'http', ref: redactCredentials(id), pin });
    }
  }
  return out.sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
}

/** The response value: base64 of the JSON in upstream's field order, empty fields left out. */
export function buildInfoValue(o: { frontend?: string; attrs?: Record<string, string>; sources: Source[] }): string {
  const info: Record<string, unknown> = {};
  if (o.frontend) info.frontend = o.frontend;
  if (o.attrs && Object.keys(o.attrs).length) info.attrs = Object.fromEntries(Object.entries(o.attrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  if (o.sources.length) info.sources = o.sources;
  return Buffer.from(goJSON(info)).toString('base64');
}
