import type { SessionServices } from '../tunnel/server.js';
import { authService, type AuthServiceOptions } from './auth.js';
import { contentStoreService } from './content-store.js';
import { fileSendService, type ExportTarget } from './file-send.js';
import { fileSyncService } from './file-sync.js';
import { healthService } from './health.js';
import { secretsService, type SecretSource } from './secrets.js';
import { sshService, type resolveSshAgents } from './ssh.js';
import { uploadService } from './upload.js';
import type { Readable } from 'node:stream';

export { authService, type AuthServiceOptions } from './auth.js';
export { fileSendService, type ExportTarget } from './file-send.js';
export { checkLocalDirs, fileSyncService } from './file-sync.js';
export { healthService } from './health.js';
export { parseCsvLine, parseSecretSpec, resolveSecrets, secretsService, type SecretSource } from './secrets.js';
export { parseSshSpec, resolveSshAgents, sshService, type SshSpec } from './ssh.js';
export { loadDockerConfig, lookupAuth, type DockerConfig } from './docker-config.js';
export { uploadService, uploadURL } from './upload.js';

/**
 * Everything a build client serves on its session, from what the user shared. Health is always
 * served (the daemon's keepalive); the rest only when there is something to serve, so the method
 * list the daemon sees says exactly what this client offers.
 */
export function clientSessionServices(opts: {
  locals?: Record<string, string>;
  /** Where exports land: one, or one per exporter of the request, in its order (undefined for one the client receives nothing from). */
  exportTarget?: ExportTarget | readonly (ExportTarget | undefined)[];
  auth?: AuthServiceOptions | false;
  secrets?: Map<string, SecretSource>;
  ssh?: Awaited<ReturnType<typeof resolveSshAgents>>;
  /** Content stores served to the daemon (local cache export/import): store id to directory. */
  contentStores?: Map<string, string>;
  /** Streams the daemon fetches as http://buildkit-session/<id> (uploadURL), by id; each is given once. */
  uploads?: Map<string, () => Readable>;
}): SessionServices {
  return {
    ...healthService(),
    ...(opts.locals && Object.keys(opts.locals).length > 0 ? fileSyncService(opts.locals) : {}),
    ...(opts.exportTarget && (!Array.isArray(opts.exportTarget) || opts.exportTarget.some((t) => t !== undefined)) ? fileSendService(opts.exportTarget) : {}),
    ...(opts.auth === false ? {} : authService(opts.auth ?? {})),
    ...(opts.secrets && opts.secrets.size > 0 ? secretsService(opts.secrets) : {}),
    ...(opts.ssh && opts.ssh.size > 0 ? sshService(opts.ssh) : {}),
    ...(opts.contentStores && opts.contentStores.size > 0 ? contentStoreService({ stores: opts.contentStores }) : {}),
    ...(opts.uploads && opts.uploads.size > 0 ? uploadService(opts.uploads) : {}),
  };
}
