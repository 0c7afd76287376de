import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { ControlServer } from '../../../src/control/server.js';
import type { ControlBackend } from '../../../src/control/controller.js';
import { CONNECTION_WINDOW, STREAM_WINDOW } from '../../../src/session/tunnel/h2-options.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-flow-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('ControlServer HTTP/2 flow control', () => {
  // A client sending a context through Control.Session is paced by these windows: with Node's
  // defaults (64 KiB) it waits for a WINDOW_UPDATE every 32 KiB.
  test('offers the tunnel\'s stream window and raises the connection window', async () => {
    // The transport is under test, not the handlers: no call reaches the backend.
    const server = new ControlServer({ backend: {} as ControlBackend, gateway: {} });
    const sock = join(dir, 'control.sock');
    await server.listen(`unix://${sock}`);
    const session = http2.connect('http://localhost', { createConnection: () => net.connect(sock) });
    try {
      const settings = await new Promise<http2.Settings>((resolve, reject) => {
        session.once('remoteSettings', resolve);
        session.once('error', reject);
      });
      expect(settings.initialWindowSize).toBe(STREAM_WINDOW);
      // The connection window grows by a WINDOW_UPDATE the server sends once the session is up.
      for (let i = 0; i < 50 && (session.state.remoteWindowSize ?? 0) < CONNECTION_WINDOW; i++) await new Promise((r) => setTimeout(r, 20));
      expect(session.state.remoteWindowSize).toBeGreaterThanOrEqual(CONNECTION_WINDOW);
    } finally {
      session.destroy();
      await server.close(100);
    }
  });
});
