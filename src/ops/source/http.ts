import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chown, utimes } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Transform } from 'node:stream';
import { Agent, interceptors, request, type Dispatcher } from 'undici';
import type { MetadataStore } from '../../cache/metadata.js';
import type { RefManager } from '../../cache/ref-manager.js';
import { Upload } from '../../gen/session/upload_pb.js';
import { UPLOAD_HOST } from '../../session/types.js';
import type { OpContext, OpImpl, Ref } from '../../solver/types.js';
import { InvalidArgumentError, isAbortError, LoomError } from '../../util/errors.js';
import { isDigest } from '../../util/digest.js';
import { goUrlError } from '../../util/go-net-error.js';

/**
 * `https://...` / `http://...` sources: one file, named by `http.filename`, the response's
 * Content-Disposition or the URL's last path element, with mode `http.perm` (default 0600), owner
 * `http.uid`/`http.gid`, and the Last-Modified time (else the epoch), as upstream writes it.
 * With `http.checksum` the content is verified and the checksum is the cache key; without, the
 * download's digest is.
 */
export class HttpSourceOp implements OpImpl {
  readonly #refs: RefManager;
  readonly #metadata: MetadataStore | undefined;
  readonly #url: string;
  /** The URL's bytes come from the client's session (see #fromSession), never revalidated. */
  readonly #session: boolean;
  readonly #attrs: Record<string, string>;
  /** The download for the key; without a ref when the server said the file did not change (304). */
  #fetched: Promise<{ ref?: Ref; digest: string }> | undefined;

  /** `metadata` keeps the ETags of earlier downloads (see #revalidate); without it, every key downloads. */
  constructor(deps: { refs: RefManager; metadata?: MetadataStore }, identifier: string, attrs: Record<string, string>) {
    this.#refs = deps.refs;
    this.#metadata = deps.metadata;
    this.#url = identifier;
    this.#attrs = attrs;
    try {
      const u = new URL(identifier);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http');
    } catch {
      throw new InvalidArgumentError(`invalid http identifier ${identifier}`);
    }
    this.#session = new URL(identifier).host === UPLOAD_HOST;
    const sum = attrs['http.checksum'];
    if (sum && !isDigest(sum)) throw new InvalidArgumentError(`invalid http.checksum ${JSON.stringify(sum)} for ${identifier}`);
    const fname = attrs['http.filename'];
    if (fname !== undefined && fname !== '' && (fname.includes('/') || fname === '.' || fname === '..')) {
      throw new InvalidArgumentError(`invalid http.filename ${JSON.stringify(fname)} for ${identifier}: must be a plain file name`);
    }
  }

  #int(key: string, def: number): number {
    const v = this.#attrs[key];
    if (v === undefined || v === '') return def;
    const n = /^0[0-7]+$/.test(v) ? parseInt(v, 8) : /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : Number(v);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`invalid ${key} ${JSON.stringify(v)} for ${this.#url}`);
    return n;
  }

  /**
   * Downloads the file, once. `conditional`: the GET names the ETags of earlier downloads, as
   * upstream's does after its HEAD, and a 304 gives the earlier download's digest without a ref.
   */
  #fetch(ctx: OpContext, conditional = true): Promise<{ ref?: Ref; digest: string }> {
    this.#fetched ??= (async () => {
      const perm = this.#int('http.perm', 0o600) || 0o600;
      const uid = this.#int('http.uid', 0);
      const gid = this.#int('http.gid', 0);
      // Upstream fetches while computing the step's cache key: its failures read `failed to load
      // cache key: ...` and are plain errors (gRPC Unknown), so clients print no code before them.
      const known = conditional ? this.#known() : [];
      const res = await this.#get(ctx, known.map((e) => e.etag));
      if ('notModified' in res) {
        const earlier = earlierDownload(known, res.etag, true);
        if (!earlier) throw new LoomError('UNKNOWN', `failed to load cache key: invalid not-modified ETag: ${res.etag ?? ''}`);
        return { digest: earlier.digest };
      }
      const name = fileName(this.#url, this.#attrs['http.filename'], header(res.headers['content-disposition']));
      const w = await this.#refs.prepare(null, { signal: ctx.signal });
      try {
        const file = join(w.dir, name);
        const h = createHash('sha256');
        const total = Number(header(res.headers['content-length']) ?? 0);
        const id = `downloading ${this.#url}`;
        const started = new Date();
        let n = 0;
        const tap = new Transform({
          transform(chunk: Buffer, _e, cb) {
            h.update(chunk);
            n += chunk.length;
            cb(null, chunk);
          },
        });
        await pipeline(res.body, tap, createWriteStream(file, { mode: perm, flags: 'wx' }));
        const done = new Date();
        ctx.progress.status({ id, vertex: ctx.vertex.digest, name: id, current: n, total: total || n, timestamp: done, started, completed: done });
        const digest = `sha256:${h.digest('hex')}`;
        const want = this.#attrs['http.checksum'];
        if (want && want !== digest) throw new InvalidArgumentError(`digest mismatch ${digest}: ${want}`);
        if (uid !== 0 || gid !== 0) await chown(file, uid, gid);
        const lm = header(res.headers['last-modified']);
        const mtime = lm && !Number.isNaN(Date.parse(lm)) ? new Date(lm) : new Date(0);
        await utimes(file, mtime, mtime);
        const ref = await w.commit({ description: `http url ${this.#url}`, recordType: 'regular' });
        this.#remember(header(res.headers['etag']), digest);
        return { ref, digest };
      } catch (err) {
        await w.discard();
        throw err;
      }
    })();
    return this.#fetched;
  }

  /**
   * The response to a GET of the URL: from the server, or from the client's session for a
   * `buildkit-session` URL. With `etags`, the GET is conditional: a 304 is `notModified`.
   */
  async #get(
    ctx: OpContext,
    etags: readonly string[] = [],
  ): Promise<{ body: Readable; headers: Record<string, string | string[] | undefined> } | { notModified: true; etag?: string }> {
    if (this.#session) return { body: await this.#fromSession(ctx), headers: {} };
    const headers = etags.length ? { 'if-none-match': etags.join(', ') } : undefined;
    const res = await request(this.#url, { method: 'GET', headers, dispatcher: redirecting(), signal: ctx.signal, headersTimeout: 30_000, bodyTimeout: 60_000 }).catch((err: Error) => {
      if (isAbortError(err) || ctx.signal?.aborted) throw err;
      throw new LoomError('UNKNOWN', `failed to load cache key: ${goUrlError('GET', this.#url, err)}`, { cause: err });
    });
    if (res.statusCode === 304 && etags.length) {
      await res.body.dump();
      return { notModified: true, etag: header(res.headers['etag']) };
    }
    if (res.statusCode < 200 || res.statusCode >= 300) {
      await res.body.dump();
      throw new LoomError('UNKNOWN', `failed to load cache key: invalid response status ${res.statusCode} from ${this.#url}`);
    }
    return res;
  }

  /**
   * `http://buildkit-session/<id>`: bytes the client holds (buildx's `-` context, a tar on its
   * stdin), pulled through its session's Upload service with the URL's path and host as call
   * metadata, as upstream's HTTP source does. The client gives each upload once.
   */
  async #fromSession(ctx: OpContext): Promise<Readable> {
    const session = await ctx.session();
    if (!session.supports(Upload.method.pull)) {
      throw new LoomError('UNKNOWN', `failed to load cache key: the client's session serves no uploads (moby.upload.v1.Upload) for ${this.#url}`);
    }
    const u = new URL(this.#url);
    const call = await session.stream(Upload.method.pull, { metadata: { urlpath: [u.pathname], urlhost: [u.host] }, signal: ctx.signal });
    const url = this.#url;
    return Readable.from(
      (async function* () {
        try {
          for await (const m of call.recv() as AsyncIterable<{ data: Uint8Array }>) yield Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
        } catch (err) {
          if (isAbortError(err) || ctx.signal?.aborted) throw err;
          throw new LoomError('UNKNOWN', `failed to load cache key: ${url}: ${(err as Error).message}`, { cause: err });
        } finally {
          call.close();
        }
      })(),
    );
  }

  async cacheKey(ctx: OpContext): Promise<string> {
    const sum = this.#attrs['http.checksum'];
    if (sum) return sum;
    return (await this.#revalidate(ctx)) ?? (await this.#fetch(ctx)).digest;
  }

  /** The ETags of this URL's earlier downloads, newest first, with the digests they gave. */
  #known(): { etag: string; digest: string }[] {
    const raw = this.#metadata?.kvGet(NS_HTTP_ETAG, this.#url);
    if (!raw) return [];
    try {
      const v = JSON.parse(raw) as unknown;
      return Array.isArray(v) ? v.filter((e): e is { etag: string; digest: string } => typeof e?.etag === 'string' && isDigest(e?.digest)) : [];
    } catch {
      return [];
    }
  }

  #remember(etag: string | undefined, digest: string): void {
    if (!etag || !this.#metadata || this.#session) return;
    const kept = this.#known().filter((e) => e.etag !== etag);
    this.#metadata.kvPut(NS_HTTP_ETAG, this.#url, JSON.stringify([{ etag, digest }, ...kept].slice(0, MAX_ETAGS)));
  }

  /**
   * As upstream's HTTP source: when earlier downloads of the URL had ETags, a HEAD asks with
   * If-None-Match first, and a response naming one of them (304 or 200) gives that download's
   * digest as the key without fetching the body (a later build of an unchanged remote context or
   * ADD is cached without downloading it). Anything else, or a failed HEAD (some servers answer
   * no HEAD), leaves it to the download's conditional GET (see #fetch).
   */
  async #revalidate(ctx: OpContext): Promise<string | undefined> {
    if (this.#session) return undefined;
    const known = this.#known();
    if (known.length === 0) return undefined;
    try {
      const res = await request(this.#url, {
        method: 'HEAD',
        headers: { 'if-none-match': known.map((e) => e.etag).join(', ') },
        dispatcher: redirecting(),
        signal: ctx.signal,
        headersTimeout: 30_000,
      });
      await res.body.dump();
      if (res.statusCode !== 200 && res.statusCode !== 304) return undefined;
      return earlierDownload(known, header(res.headers['etag']), res.statusCode === 304)?.digest;
    } catch (err) {
      if (isAbortError(err) || ctx.signal?.aborted) throw err;
      return undefined;
    }
  }

  async run(ctx: OpContext): Promise<Ref[]> {
    const f = await this.#fetch(ctx);
    if (f.ref) return [f.ref];
    // The key came from a 304, but the earlier download is not in the cache (pruned): download.
    this.#fetched = undefined;
    return [(await this.#fetch(ctx, false)).ref!];
  }
}

/** Metadata namespace: by URL, the ETags of earlier downloads and their digests. */
const NS_HTTP_ETAG = 'http.etag';
const MAX_ETAGS = 8;

/** An ETag compared as upstream does: a weak one (W/) equals its strong form. */
function etagValue(v: string | undefined): string {
  return (v ?? '').replace(/^W\//, '');
}

/**
 * The earlier download a response's ETag names; a 304 without an ETag, to a request that named
 * only one, is about that one.
 */
function earlierDownload<T extends { etag: string }>(known: readonly T[], etag: string | undefined, notModified: boolean): T | undefined {
  let got = etagValue(etag);
  if (!got && notModified && known.length === 1) got = etagValue(known[0]!.etag);
  return got ? known.find((e) => etagValue(e.etag) === got) : undefined;
}

let agent: Dispatcher | undefined;

/** One shared connection pool that follows redirects (undici 7 does so only through an interceptor). */
function redirecting(): Dispatcher {
  agent ??= new Agent().compose(interceptors.redirect({ maxRedirections: 10 }));
  return agent;
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** upstream's choice of name: the attr, else Content-Disposition's filename, else the URL's base. */
export function fileName(url: string, manual: string | undefined, disposition: string | undefined): string {
  if (manual) return manual;
  if (disposition) {
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
    if (m && m[1] && !m[1].endsWith('/')) {
      const base = posix.basename(m[1].replace(/\\/g, '/'));
      if (base && base !== '.' && base !== '..') return base;
    }
  }
  try {
    const base = posix.basename(new URL(url).pathname);
    const name = base ? decodeURIComponent(base) : '';
    if (name && name !== '.' && name !== '..' && !name.includes('/')) return name;
  } catch {
    /* fall through */
  }
  return 'download';
}
