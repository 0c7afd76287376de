/**
 * The build information upstream's solver adds to a build's response (`containerimage.buildinfo`,
 * `containerimage.buildinfo/<platform>` for each platform of a multi-platform result), base64 JSON
 * that `buildctl --metadata-file` and buildx's metadata file show decoded: the frontend, the
 * frontend options it was given (those that describe the build rather than the host), and the
 * sources the build read with what they resolved to. Deprecated upstream (provenance replaces it),
 * kept for the clients that still read it.
 */
import { goJSON } from '../content/go-json.js';
import { formatReference, parseNormalizedNamed } from '../registry/reference.js';

/** A URL with its password hidden, as upstream's urlutil.RedactCredentials. */
export function redactCredentials(s: string): string {
  try {
    const u = new URL(s);
    if (!u.password) return s;
    u.password = 'xxxxx';
    return u.toString();
  } catch {
    return s;
  }
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
 * The sources of a build from its source ops' identifiers and pins: images by their full reference
 * and the digest they resolved to, downloads by URL (password hidden) and content digest. Sorted by
 * reference, as upstream's.
 */
export function buildInfoSources(read: ReadonlyMap<string, string>): Source[] {
  const out: Source[] = [];
  const seen = new Set<string>();
  for (const [id, pin] of read) {
    let s: Source | undefined;
    if (id.startsWith('docker-image://')) {
      let ref: string;
      try {
        const r = parseNormalizedNamed(id.slice('docker-image://'.length));
        // As upstream's image identifier: a bare name gets `latest`; a name with a tag is shown
        // without the digest it was pinned to (the pin carries it).
        ref = formatReference(r.tag ? { ...r, digest: undefined } : r.digest ? r : { ...r, tag: 'latest' });
      } catch {
        continue;
      }
      if (/^sha256:[0-9a-f]{64}$/.test(pin)) s = { type: 'docker-image', ref, pin };
    } else if (/^https?:\/\//.test(id) && /^sha256:[0-9a-f]{64}$/.test(pin)) {
      s = { type: 'http', ref: redactCredentials(id), pin };
    }
    if (!s || seen.has(`${s.type} ${s.ref}`)) continue;
    // Images read under two names that resolved to one digest are one source: upstream's solver
    // merges their steps (one cache key), and its build info lists the first.
    if (s.type === 'docker-image' && seen.has(`pin ${s.pin}`)) continue;
    seen.add(`${s.type} ${s.ref}`);
    if (s.type === 'docker-image') seen.add(`pin ${s.pin}`);
    out.push(s);
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
