import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ControlClient } from '../../client/control-client.js';
import { InvalidArgumentError } from '../../util/errors.js';
import type { FlagSpec, FlagValues } from './args.js';
import { defaultAddress } from '../../client/address.js';

export const GLOBAL_FLAGS: FlagSpec[] = [
  { names: ['debug'], kind: 'bool' },
  { names: ['addr'], kind: 'string', default: defaultAddress() },
  { names: ['tlsservername'], kind: 'string', default: '' },
  { names: ['tlscacert'], kind: 'string', default: '' },
  { names: ['tlscert'], kind: 'string', default: '' },
  { names: ['tlskey'], kind: 'string', default: '' },
  { names: ['tlsdir'], kind: 'string', default: '' },
  { names: ['timeout'], kind: 'int', default: 5 },
  { names: ['help', 'h'], kind: 'bool' },
  { names: ['version', 'v'], kind: 'bool' },
];

/** What every command gets: the global flags and where to write. */
export interface CommandContext {
  global: FlagValues;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
  signal: AbortSignal;
}

/**
 * The daemon client from the global flags, as upstream's ResolveClient: --tlsdir supplies
 * ca.pem, cert.pem and key.pem (all must exist) and excludes the single-file flags; the server
 * name defaults to the address's host.
 */
export async function resolveClient(g: FlagValues): Promise<ControlClient> {
  const { ControlClient } = await import('../../client/control-client.js');
  const addr = String(g.addr ?? defaultAddress());
  let caCert = String(g.tlscacert ?? '');
  let cert = String(g.tlscert ?? '');
  let key = String(g.tlskey ?? '');
  const tlsDir = String(g.tlsdir ?? '');
  if (tlsDir) {
    for (const f of ['ca.pem', 'cert.pem', 'key.pem']) {
      if (!existsSync(join(tlsDir, f))) throw new InvalidArgumentError(`stat ${join(tlsDir, f)}: no such file or directory`);
    }
    if (caCert || cert || key) throw new InvalidArgumentError('cannot specify tlsdir and tlscacert/tlscert/tlskey at the same time');
    caCert = join(tlsDir, 'ca.pem');
    cert = join(tlsDir, 'cert.pem');
    key = join(tlsDir, 'key.pem');
  }
  let serverName = String(g.tlsservername ?? '');
  if (!serverName) {
    try {
      serverName = new URL(addr).hostname;
    } catch {
      serverName = '';
    }
  }
  const tls = caCert || cert || key ? { caCert: caCert || undefined, cert: cert || undefined, key: key || undefined, serverName: serverName || undefined } : undefined;
  return new ControlClient({ address: addr, tls });
}
