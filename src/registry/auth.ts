/**
 * Registry authorization: Basic, and Bearer tokens from the realm a `WWW-Authenticate` challenge
 * names (the distribution token protocol), as containerd's docker authorizer does:
 *   - with credentials: POST the realm as an OAuth2 password grant; if the realm does not support it
 *     (404, 401, 400, or 405 with a username) GET it with Basic credentials;
 *   - without: GET it anonymously.
 * Tokens are cached per host and scope set until they expire; Basic headers per host.
 */
import type { Dispatcher } from 'undici';
import { isAbortError, UnauthenticatedError } from '../util/errors.js';
import { log } from '../util/log.js';

export interface Credentials {
  username: string;
  /** A password, or an identity (refresh) token when username is empty. */
  secret: string;
}

/**
 * Asked for the credentials of a registry host (`registry-1.docker.io`, `localhost:5000`). The daemon
 * answers by asking the client's Auth session service. Undefined means anonymous.
 */
export type GetCredentials = (host: string) => Promise<Credentials | undefined>;

export interface Challenge {
  /** Lower case: `bearer`, `basic`. */
  scheme: string;
  params: Record<string, string>;
}

/** Parses every challenge of one or more WWW-Authenticate header values (RFC 7235 syntax). */
export function parseChallenges(headers: string | string[] | undefined): Challenge[] {
  const values = headers === undefined ? [] : Array.isArray(headers) ? headers : [headers];
  const out: Challenge[] = [];
  for (const v of values) {
    let i = 0;
    let current: Challenge | undefined;
    const skipWS = (): void => {
      while (i < v.length && (v[i] === ' ' || v[i] === '\t')) i++;
    };
    while (i < v.length) {
      skipWS();
      if (v[i] === ',') {
        i++;
        continue;
      }
      const tokStart = i;
      while (i < v.length && !/[\s,=]/.test(v[i]!)) i++;
      const tok = v.slice(tokStart, i);
      if (!tok) break;
      skipWS();
      if (v[i] === '=' && current) {
        i++;
        skipWS();
        let value = '';
        if (v[i] === '"') {
          i++;
          while (i < v.length && v[i] !== '"') {
            if (v[i] === '\\' && i + 1 < v.length) i++;
            value += v[i];
            i++;
          }
          i++; // closing quote
        } else {
          const vs = i;
          while (i < v.length && v[i] !== ',') i++;
          value = v.slice(vs, i).trim();
        }
        current.params[tok.toLowerCase()] = value;
      } else {
        current = { scheme: tok.toLowerCase(), params: {} };
        out.push(current);
      }
    }
  }
  return out;
}

/** A scope for one repository: `repository:library/busybox:pull` or `...:pull,push`. */
export function repositoryScope(path: string, push: boolean): string {
  return `repository:${path}:${push ? 'pull,push' : 'pull'}`;
}

/** The HTTP function the authorizer uses to reach token realms (the client's, with its TLS and timeouts). */
export type TokenRequest = (
  url: string,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<Dispatcher.ResponseData>;

interface CachedToken {
  header: string;
  expiresAt: number;
}

export interface AuthorizerOptions {
  getCredentials?: GetCredentials;
  request: TokenRequest;
  /** OAuth client_id sent with password grants; upstream sends `buildkit-client`. */
  clientId?: string;
  now?: () => number;
}

export class Authorizer {
  readonly #getCredentials: GetCredentials | undefined;
  readonly #request: TokenRequest;
  readonly #clientId: string;
  readonly #now: () => number;
  readonly #tokens = new Map<string, CachedToken>();
  /** Token fetches in flight, shared by concurrent requests for the same host and scopes. */
  readonly #inflight = new Map<string, Promise<string>>();
  readonly #basic = new Map<string, string>();
  readonly #log = log.child({ sub: 'registry-auth' });

  constructor(opts: AuthorizerOptions) {
    this.#getCredentials = opts.getCredentials;
    this.#request = opts.request;
    this.#clientId = opts.clientId ?? 'buildkit-client';
    this.#now = opts.now ?? Date.now;
  }

  /** The Authorization header to send before any challenge, if one is known for this host and scopes. */
  cached(host: string, scopes: readonly string[]): string | undefined {
    const t = this.#tokens.get(tokenKey(host, scopes));
    if (t && t.expiresAt > this.#now()) return t.header;
    return this.#basic.get(host);
  }

  /**
   * Answers a 401: returns the Authorization header to retry with, or throws UnauthenticatedError
   * naming `what` (host/repository) when no supported scheme can be satisfied. `sent` is the
   * Authorization header the refused request carried, if any.
   */
  async authorize(
    host: string,
    scopes: readonly string[],
    challenges: Challenge[],
    what: string,
    signal?: AbortSignal,
    sent?: string,
  ): Promise<string> {
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      const realm = bearer.params.realm;
      if (!realm) throw new UnauthenticatedError(`failed to authorize: ${what}: bearer challenge without a realm`);
      const all = new Set(scopes);
      for (const s of (bearer.params.scope ?? '').split(' ')) if (s) all.add(s);
      const scopeList = [...all].sort();
      const key = tokenKey(host, scopes);
      this.#tokens.delete(key);
      let p = this.#inflight.get(key);
      if (!p) {
        p = this.#fetchToken(host, realm, bearer.params.service ?? '', scopeList, signal).finally(() => {
          this.#inflight.delete(key);
        });
        this.#inflight.set(key, p);
      }
      try {
        return await p;
      } catch (err) {
        if (isAbortError(err)) throw err;
        throw new UnauthenticatedError(`failed to authorize: ${what}: ${(err as Error).message}`, { cause: err });
      }
    }
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (basic) {
      const creds = await this.#credentials(host);
      if (!creds || !creds.username) {
        throw new UnauthenticatedError(
          `failed to authorize: ${what}: the registry requires basic auth credentials and none were given (401 Unauthorized)`,
        );
      }
      const header = 'Basic ' + Buffer.from(`${creds.username}:${creds.secret}`).toString('base64');
      // Refused although the request carried exactly these. (Another request to the host may have
      // learnt them meanwhile: one sent without them, as concurrent pushes' first requests are,
      // retries with them.)
      if (sent === header) {
        throw new UnauthenticatedError(
          `failed to authorize: ${what}: basic auth credentials for user ${JSON.stringify(creds.username)} were rejected (401 Unauthorized)`,
        );
      }
      this.#basic.set(host, header);
      return header;
    }
    const schemes = challenges.map((c) => c.scheme).join(', ') || 'none';
    throw new UnauthenticatedError(`failed to authorize: ${what}: 401 Unauthorized, unsupported auth schemes: ${schemes}`);
  }

  /**
   * The error for a 401 that answered a request already carrying `header`: forgets the header and
   * says which credentials were refused. `detail` is the registry's own message.
   */
  rejected(host: string, scopes: readonly string[], header: string, what: string, detail: string): UnauthenticatedError {
    this.#tokens.delete(tokenKey(host, scopes));
    if (header.startsWith('Basic ')) {
      this.#basic.delete(host);
      const user = Buffer.from(header.slice(6), 'base64').toString('utf8').split(':')[0] ?? '';
      return new UnauthenticatedError(
        `failed to authorize: ${what}: basic auth credentials for user ${JSON.stringify(user)} were rejected (401 Unauthorized)${detail ? `: ${detail}` : ''}`,
      );
    }
    return new UnauthenticatedError(`failed to authorize: ${what}: the registry refused the token it challenged for (401 Unauthorized)${detail ? `: ${detail}` : ''}`);
  }

  async #credentials(host: string): Promise<Credentials | undefined> {
    if (!this.#getCredentials) return undefined;
    const c = await this.#getCredentials(host);
    if (!c || (!c.username && !c.secret)) return undefined;
    return c;
  }

  async #fetchToken(host: string, realm: string, service: string, scopes: string[], signal?: AbortSignal): Promise<string> {
    let realmURL: URL;
    try {
      realmURL = new URL(realm);
    } catch {
      throw new Error(`invalid token auth challenge realm ${JSON.stringify(realm)}`);
    }
    const creds = await this.#credentials(host);
    let token: { token: string; expiresIn: number };
    if (creds) {
      try {
        token = await this.#oauth(realmURL, service, scopes, creds, signal);
      } catch (err) {
        const status = (err as TokenStatusError).status;
        const fallback = status === 404 || status === 401 || status === 400 || (status === 405 && creds.username !== '');
        if (!(err instanceof TokenStatusError) || !fallback) {
          throw new Error(`failed to fetch oauth token: ${(err as Error).message}`, { cause: err });
        }
        this.#log.debug({ realm, status }, 'oauth token POST refused, trying GET with basic credentials');
        token = await this.#get(realmURL, service, scopes, creds, signal).catch((e: unknown) => {
          throw new Error(`failed to fetch token: ${(e as Error).message}`, { cause: e });
        });
      }
    } else {
      token = await this.#get(realmURL, service, scopes, undefined, signal).catch((e: unknown) => {
        throw new Error(`failed to fetch anonymous token: ${(e as Error).message}`, { cause: e });
      });
    }
    const header = `Bearer ${token.token}`;
    // Tokens live at least 60 s per the token spec; renew a little early.
    const ttl = Math.max(token.expiresIn || 60, 60) * 1000;
    this.#tokens.set(tokenKey(host, scopes), { header, expiresAt: this.#now() + ttl - 5000 });
    return header;
  }

  async #oauth(realm: URL, service: string, scopes: string[], creds: Credentials, signal?: AbortSignal) {
    const form = new URLSearchParams();
    if (scopes.length) form.set('scope', scopes.join(' '));
    form.set('service', service);
    form.set('client_id', this.#clientId);
    if (creds.username === '') {
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', creds.secret);
    } else {
      form.set('grant_type', 'password');
      form.set('username', creds.username);
      form.set('password', creds.secret);
    }
    const res = await this.#request(realm.toString(), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
      body: form.toString(),
      signal,
    });
    const body = await readToken(res, 'POST', realm);
    const token = typeof body.access_token === 'string' ? body.access_token : '';
    if (!token) throw new Error('authorization server did not include a token in the response');
    return { token, expiresIn: typeof body.expires_in === 'number' ? body.expires_in : 0 };
  }

  async #get(realm: URL, service: string, scopes: string[], creds: Credentials | undefined, signal?: AbortSignal) {
    const url = new URL(realm.toString());
    if (service) url.searchParams.append('service', service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const headers: Record<string, string> = {};
    if (creds?.secret) headers.authorization = 'Basic ' + Buffer.from(`${creds.username}:${creds.secret}`).toString('base64');
    const res = await this.#request(url.toString(), { method: 'GET', headers, signal });
    const body = await readToken(res, 'GET', url);
    const token =
      typeof body.access_token === 'string' && body.access_token
        ? body.access_token
        : typeof body.token === 'string'
          ? body.token
          : '';
    if (!token) throw new Error('authorization server did not include a token in the response');
    return { token, expiresIn: typeof body.expires_in === 'number' ? body.expires_in : 0 };
  }
}

class TokenStatusError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function readToken(res: Dispatcher.ResponseData, method: string, url: URL): Promise<Record<string, unknown>> {
  if (res.statusCode < 200 || res.statusCode >= 400) {
    const text = (await res.body.text().catch(() => '')).slice(0, 512).trim();
    const shown = new URL(url.toString());
    shown.search = '';
    throw new TokenStatusError(
      res.statusCode,
      `unexpected status from ${method} request to ${shown.toString()}: ${res.statusCode}${text ? `: ${text}` : ''}`,
    );
  }
  try {
    const v = (await res.body.json()) as unknown;
    if (typeof v !== 'object' || v === null) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw new Error(`unable to decode token response: ${(err as Error).message}`);
  }
}

function tokenKey(host: string, scopes: readonly string[]): string {
  return `${host} ${[...scopes].sort().join(' ')}`;
}
