import { randomBytes } from 'node:crypto';
import { basename } from 'node:path';
import { bytesDuplex, type BytesMessageStream } from '../session/tunnel/bytes-duplex.js';
import { sessionMetadata } from '../session/tunnel/metadata.js';
import { serveSession, type SessionServices } from '../session/tunnel/server.js';
import type { ControlClient } from './control-client.js';

/** A random id as upstream's identity.NewID: 25 base-36 characters from 128 random bits. */
export function newId(): string {
  const n = BigInt('0x' + randomBytes(16).toString('hex'));
  return n.toString(36).padStart(25, '0').slice(-25);
}

/** Upstream names a build's session after the working directory. */
export function defaultSessionName(): string {
  try {
    return basename(process.cwd()) || 'unknown';
  } catch {
    return 'unknown';
  }
}

export interface ClientSession {
  readonly id: string;
  /** Resolves when the session's stream is gone. */
  readonly closed: Promise<void>;
  /** Half-closes the session (the daemon sees it end) and tears it down shortly after. */
  close(): void;
}

/**
 * Opens Control.Session and serves `services` on it: the client end of the tunnel. The daemon
 * finds the session by `id` (SolveRequest.Session); `sharedKey` lets it share cache mounts
 * between sessions of the same client.
 */
export function openSession(opts: {
  control: ControlClient;
  services: SessionServices;
  name?: string;
  sharedKey?: string;
  id?: string;
}): ClientSession {
  const id = opts.id ?? newId();
  const call = opts.control.session(
    sessionMetadata({ id, name: opts.name ?? defaultSessionName(), sharedKey: opts.sharedKey ?? '', methods: Object.keys(opts.services) }),
  );
  // The call's own error (CANCELLED when we close) is the end of the session, not a failure to report.
  call.on('error', () => undefined);
  const duplex = bytesDuplex(call as unknown as BytesMessageStream);
  const served = serveSession({ duplex, services: opts.services });
  let closing = false;
  return {
    id,
    closed: served.closed,
    close() {
      if (closing) return;
      closing = true;
      duplex.end();
      const t = setTimeout(() => served.close(), 1000);
      t.unref();
      void served.closed.then(() => clearTimeout(t));
    },
  };
}
