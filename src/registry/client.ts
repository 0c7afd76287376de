/**
 * An OCI distribution client on undici: resolve a reference to a platform's manifest and config,
 * fetch blobs into the content store (verified by digest), push blobs and manifests.
 *
 * Every request has a headers timeout and a body idle timeout and honours the caller's AbortSignal.
 * Endpoints come from hosts.ts (mirrors first for pulls); auth from auth.ts.
 */
import { Transform, type Readable } from 'node:stream';
import { request, type Dispatcher } from 'undici';
import type { ContentStore } from '../content/store.js';
import {
  detectManifestType,
  parseImageConfig,
  parseIndex,
  parseManifest,
  type Descriptor,
  type ImageConfig,
  type Index,
  type Manifest,
} from '../content/oci.js';
import { sha256, type Digest } from '../util/digest.js';
import {
  InvalidArgumentError,
  isAbortError,
  LoomError,
  NotFoundError,
  throwIfAborted,
  UnimplementedError,
} from '../util/errors.js';
import { log } from '../util/log.js';
import { isIndexType, isManifestType, isNondistributable, isSchema1Type, MANIFEST_ACCEPT } from '../util/media-types.js';
import { defaultPlatform, normalizePlatform, orderByPlatform, platformMatcher, type Platform } from '../util/platform.js';
import { AgentPool } from './agents.js';
import { Authorizer, parseChallenges, repositoryScope, type GetCredentials } from './auth.js';
import { RegistryTransportError, redactURL, statusError, statusLine, transportError } from './errors.js';
import { endpointsFor, endpointURL, type Endpoint, type RegistryHostsConfig } from './hosts.js';
import { formatReference, parseNormalizedNamed, withDefaultTag, type ImageReference } from './reference.js';

export type ProgressFn = (desc: Descriptor, current: number, total: number) => void;

export interface RegistryClientOptions {
  /** Where fetched manifests, configs and layers are written, and pushed blobs read from. */
  store: ContentStore;
  /** buildkitd.toml `[registry."host"]` sections. */
  hosts?: RegistryHostsConfig;
  getCredentials?: GetCredentials;
  /** Milliseconds to connect and to wait for response headers. Default 30 000. */
  timeoutMs?: number;
  /** Milliseconds a response body may stay idle. Default 60 000. */
  bodyTimeoutMs?: number;
  userAgent?: string;
  /**
   * Connection pools to use (the daemon's, shared by every build; see agents.ts). Without one the
   * client keeps pools of its own, closed by close().
   */
  agents?: AgentPool;
}

export interface ResolvedImage {
  /** The normalized reference: `docker.io/library/busybox:latest` (or `...@sha256:...`). */
  name: string;
  ref: ImageReference;
  /** What the reference points at: an index / manifest list, or a manifest. */
  rootDescriptor: Descriptor;
  /** Set when the reference points at an index: its digest (equal to rootDescriptor.digest). */
  indexDigest?: Digest;
  index?: Index;
  /** The digest of the manifest chosen for the platform. */
  digest: Digest;
  manifestDescriptor: Descriptor;
  manifest: Manifest;
  configDescriptor: Descriptor;
  config: ImageConfig;
  /** The config blob as the registry served it (what BuildKit's ResolveImageConfig returns). */
  configBytes: Buffer;
  /** The image's platform, from its config, normalized. */
  platform: Platform;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface TransferOptions extends RequestOptions {
  onProgress?: ProgressFn;
}

export type PushBlobResult = 'exists' | 'mounted' | 'uploaded';

const MANIFEST_LIMIT = 8 << 20;
const CONFIG_LIMIT = 32 << 20;
const GENERIC_TYPES = new Set(['', 'application/json', 'text/plain', 'application/octet-stream', 'binary/octet-stream']);

interface Ctx {
  /** `host/repository` (or with reference) for error messages. */
  what: string;
  scopes: string[];
}

interface Req {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT';
  url: string;
  headers?: Record<string, string>;
  /** Called for each attempt: a retried request (after a 401) needs a fresh body stream. */
  body?: () => Promise<Buffer | Readable | string | undefined> | Buffer | string | undefined;
  followRedirects?: boolean;
}

export class RegistryClient {
  readonly #store: ContentStore;
  readonly #hosts: RegistryHostsConfig;
  readonly #timeout: number;
  readonly #bodyTimeout: number;
  readonly #userAgent: string;
  readonly #auth: Authorizer;
  readonly #agents: AgentPool;
  readonly #ownAgents: boolean;
  /** Loopback hosts whose HTTPS attempt failed at the connection level: go straight to HTTP. */
  readonly #plainHttp = new Set<string>();
  /** Blob fetches in flight, by digest: concurrent pulls of a shared layer transfer it once. */
  readonly #fetching = new Map<string, Promise<Descriptor>>();
  readonly #log = log.child({ sub: 'registry' });

  constructor(opts: RegistryClientOptions) {
    this.#store = opts.store;
    this.#hosts = opts.hosts ?? {};
    this.#timeout = opts.timeoutMs ?? 30_000;
    this.#bodyTimeout = opts.bodyTimeoutMs ?? 60_000;
    this.#userAgent = opts.userAgent ?? 'loom/0.1';
    this.#ownAgents = !opts.agents;
    this.#agents = opts.agents ?? new AgentPool();
    this.#auth = new Authorizer({
      getCredentials: opts.getCredentials,
      request: (url, init) =>
        this.#raw(url, { method: init.method, headers: init.headers, body: init.body }, init.signal, this.#dispatcherForURL(url)),
    });
  }

  /** Closes the client's own pooled connections (shared pools stay open: their owner closes them). */
  async close(): Promise<void> {
    if (this.#ownAgents) await this.#agents.close();
  }

  // ---------------------------------------------------------------- pull

  /**
   * Resolves a reference to the manifest and config for `platform` (default: the host's). An index is
   * followed to the best matching manifest as containerd does; a plain manifest is taken as is.
   * The index, manifest and config are written to the content store.
   */
  async resolve(reference: string | ImageReference, opts?: RequestOptions & { platform?: Platform }): Promise<ResolvedImage> {
    const ref = toRef(reference);
    const name = formatReference(ref);
    const wanted = normalizePlatform(opts?.platform ?? defaultPlatform());
    const top = await this.fetchManifest(ref, opts);
    const root = top.descriptor;

    let index: Index | undefined;
    let mdesc: Descriptor;
    let manifest: Manifest;
    if (isIndexType(root.mediaType)) {
      index = parseIndex(top.bytes, `index ${root.digest} of ${name}`, root.mediaType);
      const candidates = orderByPlatform(
        index.manifests.filter((d) => isManifestType(d.mediaType) || isIndexType(d.mediaType)),
        wanted,
      );
      const chosen = candidates[0];
      if (!chosen || isIndexType(chosen.mediaType)) {
        throw new NotFoundError(`no match for platform in manifest ${root.digest}: not found`);
      }
      mdesc = chosen;
      const mbytes = await this.#fetchByDigest(ref, chosen, MANIFEST_LIMIT, opts?.signal);
      manifest = parseManifest(mbytes, `manifest ${chosen.digest} of ${name}`, chosen.mediaType);
    } else {
      mdesc = root;
      manifest = parseManifest(top.bytes, `manifest ${root.digest} of ${name}`, root.mediaType);
    }

    const cdesc = manifest.config;
    const cbytes = await this.#fetchByDigest(ref, cdesc, CONFIG_LIMIT, opts?.signal);
    const config = parseImageConfig(cbytes, `image config ${cdesc.digest} of ${name}`);
    const platform = normalizePlatform({
      os: config.os,
      architecture: config.architecture,
      ...(config.variant ? { variant: config.variant } : {}),
    });
    // An index entry without a platform is accepted only if its config matches (containerd does the same).
    if (index && !mdesc.platform && !platformMatcher(wanted).match(platform)) {
      throw new NotFoundError(`no match for platform in manifest ${root.digest}: not found`);
    }
    return {
      name,
      ref,
      rootDescriptor: root,
      ...(index ? { indexDigest: root.digest, index } : {}),
      digest: mdesc.digest,
      manifestDescriptor: { mediaType: mdesc.mediaType, digest: mdesc.digest, size: mdesc.size, ...(mdesc.platform ? { platform: mdesc.platform } : {}) },
      manifest,
      configDescriptor: cdesc,
      config,
      configBytes: cbytes,
      platform,
    };
  }

  /** resolve() and then every (distributable) layer fetched into the store. */
  async pull(reference: string | ImageReference, opts?: TransferOptions & { platform?: Platform }): Promise<ResolvedImage> {
    const img = await this.resolve(reference, opts);
    for (const layer of img.manifest.layers) {
      if (isNondistributable(layer.mediaType)) continue;
      await this.fetchBlob(img.ref, layer, opts);
    }
    return img;
  }

  /**
   * The document a reference points at (by tag or digest), written to the store. Its digest is the
   * sha256 of the bytes; for a digest reference a mismatch is an error.
   */
  async fetchManifest(reference: string | ImageReference, opts?: RequestOptions): Promise<{ descriptor: Descriptor; bytes: Buffer }> {
    const ref = toRef(reference);
    const name = formatReference(ref);
    const object = ref.digest ?? ref.tag ?? 'latest';
    if (ref.digest) {
      const held = await this.#fromStore(ref.digest, name);
      if (held) return held;
    }
    return this.#withEndpoints(ref, 'pull', opts?.signal, async (ep) => {
      let url = endpointURL(ep, `/${ref.path}/manifests/${object}`);
      const ctx = this.#ctx(ep, ref, false);
      // A tag is resolved with a HEAD first, as containerd's resolver does: registries do not
      // count a HEAD as a pull (Docker Hub's rate limit counts manifest GETs), and the digest it
      // answers mostly names a manifest the store already holds (every build's FROM resolves its
      // tag again), which then needs no GET at all. Otherwise the manifest is fetched by that
      // digest. A HEAD without a usable digest, or answered with an error other than not-found,
      // falls back to a GET by tag. (undici closes the connection after a HEAD unless the server
      // says keep-alive: one more connection per resolve, the price of the above.)
      let expect = ref.digest;
      if (!ref.digest) {
        let head: Dispatcher.ResponseData | undefined;
        try {
          head = await this.#send(ep, ctx, {
            method: 'HEAD',
            url,
            headers: { accept: [...MANIFEST_ACCEPT, '*/*'].join(', ') },
            followRedirects: true,
          }, opts?.signal);
        } catch (err) {
          // Refused credentials and the like: the GET below says so with the registry's own words
          // (a HEAD's answer has no body). A registry that cannot be reached fails here.
          if (!(err instanceof LoomError) || err instanceof RegistryTransportError || err.code === 'CANCELLED' || err.code === 'DEADLINE_EXCEEDED') throw err;
        }
        if (head?.statusCode === 404) throw await statusError(head, { method: 'HEAD', url }, { ...ctx, notFoundName: name });
        await head?.body.dump();
        const d = head?.statusCode === 200 ? headerString(head.headers['docker-content-digest']) : undefined;
        if (d && /^sha256:[0-9a-f]{64}$/.test(d)) {
          const held = await this.#fromStore(d as Digest, name);
          if (held) return held;
          url = endpointURL(ep, `/${ref.path}/manifests/${d}`);
          expect = d as Digest;
        }
      }
      const res = await this.#send(ep, ctx, {
        method: 'GET',
        url,
        headers: { accept: [...MANIFEST_ACCEPT, '*/*'].join(', ') },
        followRedirects: true,
      }, opts?.signal);
      if (res.statusCode !== 200) {
        const e = await statusError(res, { method: 'GET', url }, { ...ctx, notFoundName: name });
        if (res.statusCode === 404 || res.statusCode < 400) throw e;
        throw new LoomError(e.code, `pulling from host ${ep.host} failed with status code [manifests ${object}]: ${statusLine(res.statusCode)}`, { cause: e });
      }
      const bytes = await readLimited(res, MANIFEST_LIMIT, `manifest of ${name}`, { method: 'GET', url }, opts?.signal);
      const digest = sha256(bytes);
      if (expect && digest !== expect) {
        throw new LoomError('FAILED_PRECONDITION', `manifest of ${name}: content digest mismatch: got ${digest}, expected ${expect}`);
      }
      const header = headerString(res.headers['docker-content-digest']);
      if (!ref.digest && header && header !== digest) {
        this.#log.warn({ ref: name, header, digest }, 'registry Docker-Content-Digest differs from the manifest bytes; using the bytes');
      }
      const mediaType = manifestMediaType(headerString(res.headers['content-type']), bytes, name);
      checkReadable(mediaType, name);
      // A tag resolved again (every build's FROM) mostly names a manifest the store holds.
      const have = await this.#store.info(digest);
      if (!have || have.size !== bytes.length) await this.#store.writeBlob(bytes, { digest, size: bytes.length, mediaType });
      return { descriptor: { mediaType, digest, size: bytes.length }, bytes };
    });
  }

  /** A manifest the store holds, by digest (checked against its bytes), or undefined. */
  async #fromStore(digest: Digest, name: string): Promise<{ descriptor: Descriptor; bytes: Buffer } | undefined> {
    const info = await this.#store.info(digest);
    if (!info) return undefined;
    const bytes = await this.#store.readAll(digest);
    if (sha256(bytes) !== digest) return undefined;
    const mediaType = detectManifestType(bytes, `manifest ${digest} of ${name}`);
    checkReadable(mediaType, name);
    return { descriptor: { mediaType, digest, size: bytes.length }, bytes };
  }

  /**
   * Fetches a blob into the store unless it is there already, verifying size and digest (a mismatch
   * is an error naming the digest). Concurrent calls for one digest share a transfer.
   */
  async fetchBlob(reference: string | ImageReference, desc: Descriptor, opts?: TransferOptions): Promise<Descriptor> {
    const ref = toRef(reference);
    const have = await this.#store.info(desc.digest);
    if (have && have.size === desc.size) {
      opts?.onProgress?.(desc, desc.size, desc.size);
      return desc;
    }
    const running = this.#fetching.get(desc.digest);
    if (running) return running;
    const p = this.#fetchBlob(ref, desc, opts).finally(() => this.#fetching.delete(desc.digest));
    this.#fetching.set(desc.digest, p);
    return p;
  }

  async #fetchBlob(ref: ImageReference, desc: Descriptor, opts?: TransferOptions): Promise<Descriptor> {
    return this.#withEndpoints(ref, 'pull', opts?.signal, async (ep) => {
      const url = endpointURL(ep, `/${ref.path}/blobs/${desc.digest}`);
      const ctx = this.#ctx(ep, ref, false);
      const res = await this.#send(ep, ctx, { method: 'GET', url, followRedirects: true }, opts?.signal);
      if (res.statusCode !== 200) {
        throw await statusError(res, { method: 'GET', url }, { ...ctx, notFoundName: `${ep.host}/${ref.path}@${desc.digest}` });
      }
      try {
        await this.#store.writeStream(
          res.body,
          { digest: desc.digest, size: desc.size, mediaType: desc.mediaType },
          { signal: opts?.signal, onProgress: (n) => opts?.onProgress?.(desc, n, desc.size) },
        );
      } catch (err) {
        res.body.destroy();
        const e = err instanceof LoomError && err.code !== 'INTERNAL' ? err : transportError(err, { method: 'GET', url }, opts?.signal);
        if (e.code === 'CANCELLED') throw e;
        throw new LoomError(e.code, `failed to fetch ${desc.digest} from ${ep.host}/${ref.path}: ${e.message}`, { cause: err });
      }
      return desc;
    });
  }

  /** A child manifest or config by digest: from the store when present, else fetched and stored. */
  async #fetchByDigest(ref: ImageReference, desc: Descriptor, limit: number, signal?: AbortSignal): Promise<Buffer> {
    if (desc.size > limit) {
      throw new InvalidArgumentError(`${desc.mediaType} ${desc.digest} of ${formatReference(ref)} is too large (${desc.size} bytes)`);
    }
    const have = await this.#store.info(desc.digest);
    if (!have || have.size !== desc.size) {
      if (isManifestType(desc.mediaType) || isIndexType(desc.mediaType)) {
        await this.#fetchManifestBlob(ref, desc, signal);
      } else {
        await this.fetchBlob(ref, desc, { signal });
      }
    }
    return this.#store.readAll(desc.digest);
  }

  /** Child manifests are served under /manifests/, not /blobs/, by most registries. */
  async #fetchManifestBlob(ref: ImageReference, desc: Descriptor, signal?: AbortSignal): Promise<void> {
    await this.#withEndpoints(ref, 'pull', signal, async (ep) => {
      const url = endpointURL(ep, `/${ref.path}/manifests/${desc.digest}`);
      const ctx = this.#ctx(ep, ref, false);
      const res = await this.#send(ep, ctx, {
        method: 'GET',
        url,
        headers: { accept: [desc.mediaType, ...MANIFEST_ACCEPT.filter((t) => t !== desc.mediaType), '*/*'].join(', ') },
        followRedirects: true,
      }, signal);
      if (res.statusCode !== 200) {
        throw await statusError(res, { method: 'GET', url }, { ...ctx, notFoundName: `${ep.host}/${ref.path}@${desc.digest}` });
      }
      const bytes = await readLimited(res, MANIFEST_LIMIT, `manifest ${desc.digest}`, { method: 'GET', url }, signal);
      try {
        await this.#store.writeBlob(bytes, { digest: desc.digest, size: desc.size, mediaType: desc.mediaType });
      } catch (err) {
        const e = err as LoomError;
        throw new LoomError(e.code ?? 'INTERNAL', `failed to fetch ${desc.digest} from ${ep.host}/${ref.path}: ${e.message}`, { cause: err });
      }
    });
  }

  // ---------------------------------------------------------------- push

  /**
   * Pushes one blob from the store: nothing when the registry has it (HEAD), a cross-repository mount
   * when `mountFrom` (a repository path on the same registry) has it, else a monolithic upload.
   */
  async pushBlob(
    reference: string | ImageReference,
    desc: Descriptor,
    opts?: TransferOptions & { mountFrom?: string },
  ): Promise<PushBlobResult> {
    const ref = toRef(reference);
    const info = await this.#store.info(desc.digest);
    if (!info) throw new NotFoundError(`content ${desc.digest}: not found (pushing to ${formatReference(ref)})`);
    if (info.size !== desc.size) {
      throw new InvalidArgumentError(`content ${desc.digest}: size ${info.size} in the store, descriptor says ${desc.size}`);
    }
    return this.#withEndpoints(ref, 'push', opts?.signal, async (ep) => {
      const ctx = this.#ctx(ep, ref, true);
      if (opts?.mountFrom) ctx.scopes.push(repositoryScope(opts.mountFrom, false));
      const blobURL = endpointURL(ep, `/${ref.path}/blobs/${desc.digest}`);
      const head = await this.#send(ep, ctx, { method: 'HEAD', url: blobURL, followRedirects: true }, opts?.signal);
      await head.body.dump();
      if (head.statusCode === 200) {
        opts?.onProgress?.(desc, desc.size, desc.size);
        return 'exists';
      }
      if (head.statusCode !== 404) throw await statusError(head, { method: 'HEAD', url: blobURL }, ctx);

      let uploadURL = endpointURL(ep, `/${ref.path}/blobs/uploads/`);
      if (opts?.mountFrom) {
        uploadURL += `?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(opts.mountFrom)}`;
      }
      const start = await this.#send(ep, ctx, { method: 'POST', url: uploadURL, headers: { 'content-length': '0' } }, opts?.signal);
      if (start.statusCode === 201 && opts?.mountFrom) {
        await start.body.dump();
        opts?.onProgress?.(desc, desc.size, desc.size);
        return 'mounted';
      }
      if (start.statusCode !== 202) throw await statusError(start, { method: 'POST', url: uploadURL }, ctx);
      await start.body.dump();
      const location = headerString(start.headers.location);
      if (!location) throw new LoomError('INTERNAL', `${ctx.what}: upload started without a Location header`);
      const put = new URL(location, uploadURL);
      put.searchParams.set('digest', desc.digest);
      const putURL = put.toString();
      const res = await this.#send(ep, ctx, {
        method: 'PUT',
        url: putURL,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) },
        body: async () => {
          const src = await this.#store.read(desc.digest);
          return src.pipe(progressCounter((n) => opts?.onProgress?.(desc, n, desc.size)));
        },
      }, opts?.signal);
      if (res.statusCode !== 201 && res.statusCode !== 204) {
        throw await statusError(res, { method: 'PUT', url: putURL }, { what: `${ctx.what}: upload of ${desc.digest}` });
      }
      await res.body.dump();
      return 'uploaded';
    });
  }

  /** Puts a manifest or index under the reference's tag (or digest). Returns its descriptor. */
  async pushManifest(
    reference: string | ImageReference,
    bytes: Uint8Array,
    mediaType: string,
    opts?: RequestOptions,
  ): Promise<Descriptor> {
    const ref = toRef(reference);
    const digest = sha256(bytes);
    if (ref.digest && ref.digest !== digest) {
      throw new InvalidArgumentError(`pushing ${formatReference(ref)}: manifest bytes have digest ${digest}`);
    }
    const object = ref.tag ?? ref.digest ?? digest;
    await this.#withEndpoints(ref, 'push', opts?.signal, async (ep) => {
      const ctx = this.#ctx(ep, ref, true);
      const url = endpointURL(ep, `/${ref.path}/manifests/${object}`);
      const res = await this.#send(ep, ctx, {
        method: 'PUT',
        url,
        headers: { 'content-type': mediaType, 'content-length': String(bytes.byteLength) },
        body: () => Buffer.from(bytes),
      }, opts?.signal);
      if (res.statusCode !== 201 && res.statusCode !== 200 && res.statusCode !== 204) {
        throw await statusError(res, { method: 'PUT', url }, { what: `${ctx.what}: manifest ${digest}` });
      }
      await res.body.dump();
      const header = headerString(res.headers['docker-content-digest']);
      if (header && header !== digest) {
        this.#log.warn({ ref: formatReference(ref), header, digest }, 'registry reports another digest for the pushed manifest');
      }
    });
    return { mediaType, digest, size: bytes.byteLength };
  }

  /**
   * Pushes an image from the store: for an index, each child manifest (by digest) with its config and
   * layers, then the index under the reference; for a manifest, its blobs then itself. Blobs shared
   * between manifests are pushed once. Nondistributable layers are skipped, as upstream does.
   */
  async push(reference: string | ImageReference, root: Descriptor, opts?: TransferOptions): Promise<Descriptor> {
    const ref = toRef(reference);
    const blobs = new Map<string, Promise<PushBlobResult>>();
    const pushBlobOnce = (d: Descriptor): Promise<PushBlobResult> => {
      let p = blobs.get(d.digest);
      if (!p) {
        p = this.pushBlob(ref, d, opts);
        blobs.set(d.digest, p);
      }
      return p;
    };
    const pushManifestTree = async (desc: Descriptor, target: ImageReference): Promise<Descriptor> => {
      throwIfAborted(opts?.signal);
      const bytes = await this.#store.readAll(desc.digest);
      if (isIndexType(desc.mediaType)) {
        const idx = parseIndex(bytes, `index ${desc.digest}`, desc.mediaType);
        for (const child of idx.manifests) {
          await pushManifestTree(child, { domain: ref.domain, path: ref.path, digest: child.digest });
        }
      } else if (isManifestType(desc.mediaType)) {
        const m = parseManifest(bytes, `manifest ${desc.digest}`, desc.mediaType);
        const layers = m.layers.filter((l) => !isNondistributable(l.mediaType));
        await runLimited([m.config, ...layers], 3, pushBlobOnce);
      } else {
        throw new InvalidArgumentError(`cannot push ${desc.digest}: media type ${desc.mediaType} is not a manifest or index`);
      }
      return this.pushManifest(target, bytes, desc.mediaType, opts);
    };
    const target: ImageReference = ref.tag ? { domain: ref.domain, path: ref.path, tag: ref.tag } : { ...ref, digest: root.digest };
    const d = await pushManifestTree(root, target);
    return { ...d, ...(root.annotations ? { annotations: root.annotations } : {}) };
  }

  // ---------------------------------------------------------------- plumbing

  #ctx(ep: Endpoint, ref: ImageReference, push: boolean): Ctx {
    return { what: `${ep.host}/${ref.path}`, scopes: [repositoryScope(ref.path, push)] };
  }

  /**
   * Runs `fn` against each endpoint in order until one succeeds: mirrors fall through on any error,
   * a loopback HTTPS attempt only when it could not connect. The last endpoint's error is thrown.
   */
  async #withEndpoints<T>(ref: ImageReference, purpose: 'pull' | 'push', signal: AbortSignal | undefined, fn: (ep: Endpoint) => Promise<T>): Promise<T> {
    const eps = endpointsFor(ref.domain, this.#hosts, purpose).filter(
      (ep) => !(ep.tryNextOnConnectError && this.#plainHttp.has(ep.host)),
    );
    let lastErr: unknown;
    /** The HTTPS transport failure of a loopback host whose HTTP twin is being tried. */
    let httpsErr: { host: string; err: LoomError } | undefined;
    for (let i = 0; i < eps.length; i++) {
      const ep = eps[i]!;
      throwIfAborted(signal);
      try {
        const out = await fn(ep);
        // Only once plain HTTP worked is the host remembered as HTTP-only.
        if (httpsErr && httpsErr.host === ep.host && ep.scheme === 'http') this.#plainHttp.add(ep.host);
        return out;
      } catch (caught) {
        if (signal?.aborted || isAbortError(caught)) throw caught;
        let err = caught;
        if (httpsErr && httpsErr.host === ep.host && ep.scheme === 'http' && err instanceof LoomError) {
          const said = `${err.message} ${err.cause instanceof Error ? err.cause.message : ''}`;
          const speaksHttp = !(err instanceof RegistryTransportError) && !/HTTP request to an HTTPS server/i.test(said);
          if (speaksHttp) {
            // An HTTP answer (even 404 or 500) settles the scheme for this host.
            this.#plainHttp.add(ep.host);
          } else if (!(err instanceof RegistryTransportError)) {
            // A TLS server refused plain HTTP: the HTTPS reason (an untrusted certificate, say) is
            // likely the real one. (Nothing listening at all reads as upstream's: the HTTP attempt.)
            err = new LoomError(err.code, `${err.message} (over https: ${httpsErr.err.message})`, { cause: err });
          }
        }
        httpsErr = undefined;
        lastErr = err;
        if (ep.tryNextOnConnectError) {
          if (err instanceof RegistryTransportError) {
            httpsErr = { host: ep.host, err };
          } else {
            // The host speaks HTTPS: its plain-HTTP twin, next in the list, is skipped.
            i++;
          }
        }
        if (i >= eps.length - 1) throw err;
        this.#log.debug({ host: ep.host, scheme: ep.scheme, err: (err as Error).message }, 'endpoint failed, trying the next');
      }
    }
    throw lastErr;
  }

  /** One logical request: cached auth, one retry after answering a 401 challenge, redirects followed. */
  async #send(ep: Endpoint, ctx: Ctx, req: Req, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    const dispatcher = this.#dispatcher(ep);
    let authHeader = this.#auth.cached(ep.host, ctx.scopes);
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { ...req.headers };
      if (authHeader) headers.authorization = authHeader;
      let url = req.url;
      let res = await this.#raw(url, { method: req.method, headers, body: await req.body?.() }, signal, dispatcher);
      // Redirects (blob storage backends) keep auth only on the same origin.
      for (let hops = 0; req.followRedirects && isRedirect(res.statusCode); hops++) {
        const loc = headerString(res.headers.location);
        await res.body.dump();
        if (!loc || hops >= 5) throw new LoomError('FAILED_PRECONDITION', `${ctx.what}: too many or empty redirects from ${redactURL(url)}`);
        const next = new URL(loc, url);
        const sameOrigin = next.origin === new URL(url).origin;
        const h = { ...headers };
        if (!sameOrigin) delete h.authorization;
        url = next.toString();
        res = await this.#raw(url, { method: req.method, headers: h }, signal, sameOrigin ? dispatcher : this.#dispatcherForURL(url));
      }
      if (res.statusCode !== 401) return res;
      const challenges = parseChallenges(res.headers['www-authenticate']);
      if (attempt > 0) {
        // What we just got from answering the challenge was refused too.
        const detail = (await statusError(res, { method: req.method, url }, ctx)).message.replace(/^.*?401 Unauthorized:? ?/, '');
        throw this.#auth.rejected(ep.host, ctx.scopes, authHeader ?? '', ctx.what, detail);
      }
      await res.body.dump();
      authHeader = await this.#auth.authorize(ep.host, ctx.scopes, challenges, ctx.what, signal, authHeader);
    }
  }

  /** A single HTTP exchange; transport failures become LoomErrors naming the URL. */
  async #raw(
    url: string,
    init: { method: string; headers: Record<string, string>; body?: Buffer | Readable | string | undefined },
    signal: AbortSignal | undefined,
    dispatcher: Dispatcher,
  ): Promise<Dispatcher.ResponseData> {
    throwIfAborted(signal);
    try {
      return await request(url, {
        method: init.method as Dispatcher.HttpMethod,
        headers: { 'user-agent': this.#userAgent, ...init.headers },
        body: init.body,
        signal,
        dispatcher,
        headersTimeout: this.#timeout,
        bodyTimeout: this.#bodyTimeout,
      });
    } catch (err) {
      if (init.body && typeof init.body === 'object' && 'destroy' in init.body) (init.body as Readable).destroy();
      throw transportError(err, { method: init.method, url }, signal);
    }
  }

  #dispatcher(ep: Endpoint): Dispatcher {
    return this.#agent(ep.scheme === 'https' && ep.insecureTLS, ep.scheme === 'https' ? ep.ca : []);
  }

  /** For token realms and redirect targets: the TLS settings of that host's own config, if any. */
  #dispatcherForURL(url: string): Dispatcher {
    const u = new URL(url);
    const cfg = this.#hosts[u.host];
    return this.#agent(u.protocol === 'https:' && cfg?.insecure === true, u.protocol === 'https:' ? (cfg?.ca ?? []) : []);
  }

  #agent(insecure: boolean, ca: string[]): Dispatcher {
    return this.#agents.get({ insecure, ca, timeoutMs: this.#timeout, bodyTimeoutMs: this.#bodyTimeout });
  }
}

/** A reference given as a string, as containerd's resolver takes it: a tag and a digest both kept (the digest is fetched), `latest` added to a bare name. */
function toRef(r: string | ImageReference): ImageReference {
  return typeof r === 'string' ? withDefaultTag(parseNormalizedNamed(r)) : r;
}

function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308;
}

function headerString(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** The content type to trust: the header unless it is generic, else what the body says it is. */
function manifestMediaType(contentType: string | undefined, bytes: Buffer, name: string): string {
  const ct = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (!GENERIC_TYPES.has(ct)) return ct;
  return detectManifestType(bytes, `manifest of ${name}`);
}

function checkReadable(mediaType: string, name: string): void {
  if (isSchema1Type(mediaType)) {
    throw new UnimplementedError(`${name}: Docker schema1 manifests (${mediaType}) are not supported`);
  }
  if (!isManifestType(mediaType) && !isIndexType(mediaType)) {
    throw new UnimplementedError(`${name}: unsupported manifest media type ${mediaType}`);
  }
}

async function readLimited(
  res: Dispatcher.ResponseData,
  limit: number,
  what: string,
  req: { method: string; url: string },
  signal?: AbortSignal,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of res.body) {
      n += (chunk as Buffer).length;
      if (n > limit) {
        res.body.destroy();
        throw new InvalidArgumentError(`${what}: larger than ${limit} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    throw transportError(err, req, signal);
  }
  // The body can end before undici has given the connection back to its pool: a request sent at
  // once (the next manifest of a resolve) would open another connection. One turn of the event
  // loop lets the release happen first.
  await new Promise((r) => setImmediate(r));
  return Buffer.concat(chunks);
}

function progressCounter(onBytes: (n: number) => void): Transform {
  let n = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      onBytes(n);
      cb(null, chunk);
    },
  });
}

async function runLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  });
  await Promise.all(workers);
}
