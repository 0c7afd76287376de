import { Auth } from '../../gen/session/auth_pb.js';
import { UnimplementedError } from '../../util/errors.js';
import { methodPath } from '../tunnel/metadata.js';
import { unaryHandler, type SessionServices } from '../tunnel/server.js';
import { loadDockerConfig, lookupAuth, type DockerConfig } from './docker-config.js';

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
    [methodPath(Auth.method.credentials)]: unaryHandler(Auth.method.credentials, async (req) => creds(req.Host)),
    [methodPath(Auth.method.fetchToken)]: unaryHandler(Auth.method.fetchToken, unimplemented('FetchToken')),
    [methodPath(Auth.method.getTokenAuthority)]: unaryHandler(Auth.method.getTokenAuthority, unimplemented('GetTokenAuthority')),
    [methodPath(Auth.method.verifyTokenAuthority)]: unaryHandler(Auth.method.verifyTokenAuthority, unimplemented('VerifyTokenAuthority')),
  };
}
