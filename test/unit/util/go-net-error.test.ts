import net from 'node:net';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { goUrlError } from '../../../src/util/go-net-error.js';

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((ok) => srv.close(() => ok()));
  return port;
}

describe("request failures in Go's words (what upstream's daemon prints)", () => {
  it('words a refused connection as net/http does', async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}/v2/x/manifests/latest`;
    const err = await request(url, { method: 'HEAD' }).then(() => undefined, (e: unknown) => e);
    expect(goUrlError('HEAD', url, err)).toBe(`Head "${url}": dial tcp 127.0.0.1:${port}: connect: connection refused`);
  });

  it('words an unknown host as the resolver does, and hides a password as net/http does', () => {
    const err = Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.invalid'), { code: 'ENOTFOUND', hostname: 'nowhere.invalid' });
    expect(goUrlError('GET', 'https://u:secret@nowhere.invalid/f', err)).toMatch(/^Get "https:\/\/u:\*\*\*@nowhere\.invalid\/f": dial tcp: lookup nowhere\.invalid( on \S+:53)?: no such host$/);
  });

  it('keeps the message of failures Go has no other words for', () => {
    expect(goUrlError('PUT', 'https://h/x', new Error('socket hang up'))).toBe('Put "https://h/x": socket hang up');
  });
});
