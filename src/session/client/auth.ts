import { Auth } from '../../gen/session/auth_pb.js';
import { UnimplementedError } from '../../util/errors.js';
import { unaryHandler, type SessionServices } from '../tunnel/server.js';
import { loadDockerConfig, lookupAuth, type DockerConfig } from './docker-config.js';

/**
 * Auth's method paths, written out: reading them from the descriptors would build those on every
 * build (see scripts/bundle-cli.mjs). The unit tests hold them to the descriptors.
 */
export const AUTH_PATHS = {
  credentials: '/moby.filesync.v1.Auth/Credentials',
  fetchToken: '/moby.filesync.v1.Auth/FetchToken',
  getTokenAuthority: '/moby.filesync.v1.Auth/GetTokenAuthority',
  verifyTokenAuthority: '/moby.filesync.v1.Auth/VerifyTokenAuthority',
} as const;

export interface AuthServiceOptions {
  /** Default: ~/.docker/config.json (or $DOCKER_CONFIG), read once when the service is made. */
  config?: DockerConfig;
  /** Where warnings go (credential helpers this client cannot run). */
  warn?: (msg: string) => void;
}

/**
 * moby.filesync.v1.Auth: registry credentials from the docker config file.
 *
 * Credentials answers with the identity token as secret when there is one, else username and
 * password, and an empty answer for unknown hosts (the daemon then goes anonymous).
 * GetTokenAuthority, VerifyTokenAuthority and FetchToken answer UNIMPLEMENTED: this client keeps
 * no token-signing seed, and upstream's daemon takes UNIMPLEMENTED from GetTokenAuthority to mean
 * "fetch tokens yourself with the credentials", so it never calls FetchToken on us.
 */
export function authService(opts: AuthServiceOptions = {}): SessionServices {
  const cfg = opts.config ?? loadDockerConfig({ warn: opts.warn });
  let warned = false;
  const creds = (host: string): { Username: string; Secret: string } => {
    const helper = cfg.credHelpers?.[host] ?? cfg.credsStore;
    if (helper && !warned) {
      warned = true;
      opts.warn?.(
        `WARNING: credential helper "docker-credential-${helper}" in ${cfg.path} is not supported; only the "auths" entries are used`,
      );
    }
    const e = lookupAuth(cfg, host);
    if (e.identityToken) return { Username: '', Secret: e.identityToken };
    return { Username: e.username ?? '', Secret: e.password ?? '' };
  };
  const unimplemented = (what: string) => async (): Promise<never> => {
    throw new UnimplementedError(`${what} is not implemented by this client`);
  };
  return {
    [AUTH_PATHS.credentials]: unaryHandler(() => Auth.method.credentials, async (req) => creds(req.Host)),
    [AUTH_PATHS.fetchToken]: unaryHandler(() => Auth.method.fetchToken, unimplemented('FetchToken')),
    [AUTH_PATHS.getTokenAuthority]: unaryHandler(() => Auth.method.getTokenAuthority, unimplemented('GetTokenAuthority')),
    [AUTH_PATHS.verifyTokenAuthority]: unaryHandler(() => Auth.method.verifyTokenAuthority, unimplemented('VerifyTokenAuthority')),
  };
}
