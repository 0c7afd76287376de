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
import { formatReference, parseNormalizedNamed, referenceName } from '../registry/reference.js';
import { normalizePlatform, platformMatcher, type Platform } from '../util/platform.js';

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

/** A source op the build read: its identifier, what pinned it, the platform it ran for. */
export interface ReadSource {
  id: string;
  pin: string;
  platform?: Platform;
}
/** An image reference the build's frontend resolved (ResolveImageConfig) and the digest it named. */
export interface ResolvedImage {
  ref: string;
  digest: string;
  /** The platform the frontend asked for (none when it asked for none). */
  platform?: Platform;
}

/** The result's platforms, for the build info of one platform of a multi-platform result. */
export interface PlatformScope {
  platforms: Platform[];
  current: Platform;
}

interface ImageEntry {
  ref: string;
  pin: string;
  platform?: Platform;
}

/**
 * Upstream's provenance: one image per reference and platform (two without a platform are one),
 * platforms compared normalized (`linux/arm64/v8` is `linux/arm64`), as they reach it.
 */
function samePlatform(a: Platform | undefined, b: Platform | undefined): boolean {
  if (!a || !b) return a === b;
  const [x, y] = [normalizePlatform(a), normalizePlatform(b)];
  return x.os === y.os && x.architecture === y.architecture && (x.variant ?? '') === (y.variant ?? '');
}

/** reference.TagNameOnly: a bare name gets `latest`; a tag and a digest are both kept. Undefined when it does not parse. */
function imageRef(name: string): string | undefined {
  try {
    const r = parseNormalizedNamed(name);
    return formatReference(r.tag || r.digest ? r : { ...r, tag: 'latest' });
  } catch {
    return undefined;
  }
}

/** `name:tag` of a reference (`latest` without a tag) and whether it names a digest, as upstream's parseRefName. */
function nameTag(ref: string): { nameTag: string; canonical: boolean } | undefined {
  try {
    const r = parseNormalizedNamed(ref);
    return { nameTag: `${referenceName(r)}:${r.tag || 'latest'}`, canonical: r.digest !== undefined };
  } catch {
    return undefined;
  }
}

/**
 * The sources of a build, as upstream's provenance capture lists them. Images: those the build's
 * source ops read (an LLB definition's `name:tag@digest` keeps both), then those the frontend
 * resolved (ResolveImageConfig) by the reference it asked for, each reference once per platform
 * (a stage built for another platform lists its image again). Source ops that read the same
 * digest on one platform under two names are one (upstream's solver merges the two steps: same
 * cache key), listed by the first name. A digest reference whose `name:tag` another listed
 * reference names without a digest is left out (the frontend pins what it resolved:
 * `busybox:latest` becomes an op reading `busybox:latest@<digest>`). For one platform of a
 * multi-platform result, a resolved reference that was resolved for every platform lists only
 * the current platform's. Then downloads by URL (password hidden) and content digest. Sorted by
 * reference, as upstream's.
 */
export function buildInfoSources(read: readonly ReadSource[], resolved: readonly ResolvedImage[] = [], scope?: PlatformScope): Source[] {
  const isDigest = (pin: string): boolean => /^sha256:[0-9a-f]{64}$/.test(pin);
  const images: ImageEntry[] = [];
  const addImage = (i: ImageEntry): void => {
    if (!images.some((x) => x.ref === i.ref && samePlatform(x.platform, i.platform))) images.push(i);
  };
  const opPins: { pin: string; platform?: Platform }[] = [];
  for (const s of read) {
    if (!s.id.startsWith('docker-image://') || !isDigest(s.pin)) continue;
    const ref = imageRef(s.id.slice('docker-image://'.length));
    if (ref === undefined || opPins.some((o) => o.pin === s.pin && samePlatform(o.platform, s.platform))) continue;
    opPins.push({ pin: s.pin, platform: s.platform });
    addImage({ ref, pin: s.pin, platform: s.platform });
  }
  let frontendImages: ImageEntry[] = [];
  for (const r of resolved) {
    const ref = imageRef(r.ref);
    if (ref !== undefined && isDigest(r.digest)) frontendImages.push({ ref, pin: r.digest, platform: r.platform });
  }
  if (scope && scope.platforms.length > 0) frontendImages = filterImagePlatforms(frontendImages, scope);
  for (const i of frontendImages) addImage(i);
  // OptimizeImageSources.
  const tags = images.map((i) => nameTag(i.ref));
  const named = new Set(tags.filter((n) => n !== undefined && !n.canonical).map((n) => n!.nameTag));
  const out: Source[] = [];
  images.forEach((i, k) => {
    const n = tags[k];
    if (!(n?.canonical && named.has(n.nameTag))) out.push({ type: 'docker-image', ref: i.ref, pin: i.pin });
  });
  const urls = new Set<string>();
  for (const s of read) {
    if (!/^https?:\/\//.test(s.id) || !isDigest(s.pin)) continue;
    const ref = redactCredentials(s.id);
    if (urls.has(ref)) continue;
    urls.add(ref);
    out.push({ type: 'http', ref, pin: s.pin });
  }
  return out.sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
}

/** Upstream's filterImagePlatforms: a reference resolved for every platform of the result keeps only the current platform's. */
function filterImagePlatforms(imgs: ImageEntry[], scope: PlatformScope): ImageEntry[] {
  const everywhere = new Set<string>();
  for (const img of imgs) {
    if (everywhere.has(img.ref)) continue;
    const all = scope.platforms.every((p) => {
      const m = platformMatcher(p);
      return imgs.some((o) => o.ref === img.ref && o.platform !== undefined && m.match(o.platform));
    });
    if (all) everywhere.add(img.ref);
  }
  return imgs.filter((img) => {
    if (!everywhere.has(img.ref)) return true;
    return img.platform !== undefined && img.platform.os === scope.current.os && img.platform.architecture === scope.current.architecture;
  });
}

/** The response value: base64 of the JSON in upstream's field order, empty fields left out. */
export function buildInfoValue(o: { frontend?: string; attrs?: Record<string, string>; sources: Source[] }): string {
  const info: Record<string, unknown> = {};
  if (o.frontend) info.frontend = o.frontend;
  if (o.attrs && Object.keys(o.attrs).length) info.attrs = Object.fromEntries(Object.entries(o.attrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  if (o.sources.length) info.sources = o.sources;
  return Buffer.from(goJSON(info)).toString('base64');
}
