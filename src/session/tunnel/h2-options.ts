import type { ClientSessionOptions, Http2Session, ServerOptions } from 'node:http2';

/**
 * HTTP/2 settings for both ends of the tunnel. Node's defaults (64 KiB windows) would cost a round
 * trip through the Control.Session stream per 64 KiB of a multi-MiB transfer; and Node refuses new
 * streams once a session buffers more than maxSessionMemory MiB.
 */
export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 16 * 1024 * 1024;

export const H2_SESSION_OPTIONS: ClientSessionOptions & ServerOptions = {
  settings: { initialWindowSize: STREAM_WINDOW, enablePush: false },
  maxSessionMemory: 256,
};

/** The connection-level window is not a SETTINGS value: it is raised once the session is up. */
export function widenConnectionWindow(s: Http2Session): void {
  const apply = (): void => {
    try {
      s.setLocalWindowSize(CONNECTION_WINDOW);
    } catch {
      // A session that died before connecting has nothing to widen.
    }
  };
  if (s.connecting) s.once('connect', apply);
  else apply();
}
