import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Auth } from '../../../src/gen/session/auth_pb.js';
import { FileSend, FileSync } from '../../../src/gen/session/filesync_pb.js';
import { Secrets } from '../../../src/gen/session/secrets_pb.js';
import { SSH } from '../../../src/gen/session/ssh_pb.js';
import { Health } from '../../../src/gen/grpc/health_pb.js';
import { sendBytes } from '../../../src/session/filesync/bytes.js';
import { diffCopyMetadata } from '../../../src/session/filesync/metadata.js';
import { receiveDir } from '../../../src/session/filesync/receive.js';
import { clientSessionServices } from '../../../src/session/client/index.js';
import { loadDockerConfig, lookupAuth } from '../../../src/session/client/docker-config.js';
import { parseSecretSpec, resolveSecrets } from '../../../src/session/client/secrets.js';
import { loadAgentKey, KeyAgent } from '../../../src/session/client/ssh-key-agent.js';
import { parseSshSpec, resolveSshAgents } from '../../../src/session/client/ssh.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../src/session/tunnel/caller.js';
import { serveSession, type SessionServices } from '../../../src/session/tunnel/server.js';
import { duplexPair } from '../session/tunnel/duplex-pair.js';

const run = promisify(execFile);
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'loom-svc-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function connect(services: SessionServices): TunnelSessionCaller {
  const [a, b] = duplexPair();
  serveSession({ duplex: b, services });
  return createSessionCaller({ id: 's', name: 'n', sharedKey: '', methods: Object.keys(services), duplex: a, healthIntervalMs: 0 });
}

describe('client session services', () => {
  it('serves a --local dir by dir-name and refuses unshared names', async () => {
    const src = join(dir, 'src');
    await mkdir(join(src, 'x'), { recursive: true });
    await writeFile(join(src, 'x', 'a.txt'), 'alpha');
    await writeFile(join(src, 'skip.log'), 'no');
    const c = connect(clientSessionServices({ locals: { context: src }, auth: false }));
    expect(c.supports(FileSync.method.diffCopy)).toBe(true);
    expect(c.supports(FileSend.method.diffCopy)).toBe(false);
    expect(c.supports(Health.method.check)).toBe(true);
    const s = await c.stream(FileSync.method.diffCopy, { metadata: diffCopyMetadata({ dirName: 'context', excludePatterns: ['*.log'] }) });
    await receiveDir(s, { dest: join(dir, 'got'), chown: false, xattrs: false });
    expect(await readFile(join(dir, 'got', 'x', 'a.txt'), 'utf8')).toBe('alpha');
    await expect(readFile(join(dir, 'got', 'skip.log'))).rejects.toThrow();
    const bad = await c.stream(FileSync.method.diffCopy, { metadata: diffCopyMetadata({ dirName: 'secret-dir' }) });
    await expect(receiveDir(bad, { dest: join(dir, 'bad'), chown: false, xattrs: false })).rejects.toThrow('no access allowed to dir "secret-dir"');
    c.close();
  });

  it('receives an exported file through FileSend with the exporter values', async () => {
    const chunks: Buffer[] = [];
    let seen: Record<string, string> = {};
    const { Writable } = await import('node:stream');
    const c = connect(
      clientSessionServices({
        auth: false,
        exportTarget: {
          kind: 'file',
          open: (values) => {
            seen = values;
            return new Writable({ write: (ch: Buffer, _e, cb) => (chunks.push(ch), cb()) });
          },
        },
      }),
    );
    const s = await c.stream(FileSend.method.diffCopy, { metadata: { 'exporter-md-image.name': ['a/b'] } });
    await sendBytes(s, (async function* () {
      yield Buffer.from('tar-');
      yield Buffer.from('bytes');
    })());
    expect(Buffer.concat(chunks).toString()).toBe('tar-bytes');
    expect(seen).toEqual({ 'image.name': 'a/b' });
    c.close();
  });

  it('answers secrets by id from files and env, NOT_FOUND otherwise', async () => {
    const f = join(dir, 'tok');
    await writeFile(f, 'file-secret');
    expect(parseSecretSpec('id=a,src=/x')).toEqual({ id: 'a', file: '/x' });
    expect(parseSecretSpec('type=env,id=b,src=VAR')).toEqual({ id: 'b', env: 'VAR' });
    expect(() => parseSecretSpec('id=a,bogus=1')).toThrow("unexpected key 'bogus' in 'bogus=1'");
    await expect(resolveSecrets([{ id: 'x', file: join(dir, 'missing') }])).rejects.toThrow(`failed to stat ${join(dir, 'missing')}`);
    await expect(resolveSecrets([{ id: '' }])).rejects.toThrow('secret missing ID');
    const env = { MYVAR: 'env-secret' };
    const secrets = await resolveSecrets([parseSecretSpec(`id=a,src=${f}`), parseSecretSpec('id=MYVAR')], env);
    const c = connect({ ...clientSessionServices({ auth: false }), ...(await import('../../../src/session/client/secrets.js')).secretsService(secrets, env) });
    expect(Buffer.from((await c.unary(Secrets.method.getSecret, { ID: 'a' })).data).toString()).toBe('file-secret');
    expect(Buffer.from((await c.unary(Secrets.method.getSecret, { ID: 'MYVAR' })).data).toString()).toBe('env-secret');
    await expect(c.unary(Secrets.method.getSecret, { ID: 'zzz' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    c.close();
  });

  it('reads docker config credentials and answers token calls UNIMPLEMENTED', async () => {
    const cfgDir = join(dir, 'docker');
    await mkdir(cfgDir);
    await writeFile(
      join(cfgDir, 'config.json'),
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: Buffer.from('hub:pw:with:colons').toString('base64') },
          'https://reg.example.com/v2/': { username: 'u', password: 'p' },
          'tok.example.com': { identitytoken: 'idt' },
        },
        credsStore: 'desktop',
      }),
    );
    const warnings: string[] = [];
    const cfg = loadDockerConfig({ dir: cfgDir });
    expect(lookupAuth(cfg, 'registry-1.docker.io')).toMatchObject({ username: 'hub', password: 'pw:with:colons' });
    const c = connect(clientSessionServices({ auth: { config: cfg, warn: (m) => warnings.push(m) } }));
    expect(await c.unary(Auth.method.credentials, { Host: 'reg.example.com' })).toMatchObject({ Username: 'u', Secret: 'p' });
    expect(await c.unary(Auth.method.credentials, { Host: 'tok.example.com' })).toMatchObject({ Username: '', Secret: 'idt' });
    expect(await c.unary(Auth.method.credentials, { Host: 'other.example.com' })).toMatchObject({ Username: '', Secret: '' });
    await expect(c.unary(Auth.method.getTokenAuthority, { Host: 'x' })).rejects.toMatchObject({ code: 'UNIMPLEMENTED' });
    await expect(c.unary(Auth.method.fetchToken, { Host: 'x' })).rejects.toMatchObject({ code: 'UNIMPLEMENTED' });
    expect(warnings.join('\n')).toMatch(/docker-credential-desktop/);
    const bad = join(dir, 'baddocker');
    await mkdir(bad);
    await writeFile(join(bad, 'config.json'), '{nope');
    const w2: string[] = [];
    expect(loadDockerConfig({ dir: bad, warn: (m) => w2.push(m) }).auths).toEqual({});
    expect(w2[0]).toMatch(/WARNING: Error loading config file/);
    c.close();
  });

  it('serves key files as an agent that ssh-add lists and ssh-keygen signs with', async () => {
    const keys: string[] = [];
    for (const t of ['ed25519', 'rsa', 'ecdsa']) {
      const k = join(dir, `id_${t}`);
      await run('ssh-keygen', ['-q', '-t', t, '-N', '', '-C', `key-${t}`, '-f', k]);
      keys.push(k);
    }
    const pem = join(dir, 'id_pem');
    await run('ssh-keygen', ['-q', '-t', 'rsa', '-b', '2048', '-m', 'PEM', '-N', '', '-f', pem]);
    keys.push(pem);
    const agent = new KeyAgent(await Promise.all(keys.map(loadAgentKey)));
    const sockPath = join(dir, 'agent.sock');
    const srv: Server = createServer((sock) => {
      const conn = agent.connection();
      void (async () => {
        for await (const r of conn.replies()) sock.write(r);
      })();
      sock.on('data', (d) => conn.push(d));
      sock.on('end', () => conn.end());
    });
    await new Promise<void>((r) => srv.listen(sockPath, r));
    try {
      const env = { ...process.env, SSH_AUTH_SOCK: sockPath };
      const { stdout } = await run('ssh-add', ['-L'], { env });
      for (const k of keys) {
        const pub = (await readFile(`${k}.pub`, 'utf8')).split(' ').slice(0, 2).join(' ');
        expect(stdout).toContain(pub);
      }
      for (const k of keys) {
        const msg = join(dir, `msg-${k.split('/').pop()}`);
        await writeFile(msg, 'sign me');
        await run('ssh-keygen', ['-Y', 'sign', '-n', 'file', '-f', `${k}.pub`, msg], { env });
        const pub = await readFile(`${k}.pub`, 'utf8');
        const allowed = join(dir, 'allowed');
        await writeFile(allowed, `me ${pub}`);
        const { stdout: ok } = await promisify(execFile)('sh', ['-c', `ssh-keygen -Y verify -f ${allowed} -I me -n file -s ${msg}.sig < ${msg}`]);
        expect(ok).toMatch(/Good "file" signature for me/);
      }
    } finally {
      srv.close();
    }
  }, 60_000);

  it('proxies ForwardAgent to the agent socket and checks ids', async () => {
    // A stand-in agent socket: answers every request with a fixed reply.
    const sockPath = join(dir, 'fake-agent.sock');
    const srv = createServer((s) => s.on('data', () => s.write(Buffer.from([0, 0, 0, 1, 5]))));
    await new Promise<void>((r) => srv.listen(sockPath, r));
    try {
      const agents = await resolveSshAgents([parseSshSpec('default'), parseSshSpec(`other=${sockPath}`)], { SSH_AUTH_SOCK: sockPath });
      await expect(resolveSshAgents([parseSshSpec('default')], {})).rejects.toThrow('make sure SSH_AUTH_SOCK is set');
      const c = connect(clientSessionServices({ auth: false, ssh: agents }));
      await c.unary(SSH.method.checkAgent, { ID: '' });
      await c.unary(SSH.method.checkAgent, { ID: 'other' });
      await expect(c.unary(SSH.method.checkAgent, { ID: 'missing' })).rejects.toThrow('unset ssh forward key missing');
      const s = await c.stream(SSH.method.forwardAgent, { metadata: { 'buildkit.ssh.id': ['other'] } });
      await s.send({ data: Buffer.from([0, 0, 0, 1, 11]) });
      const it = s.recv()[Symbol.asyncIterator]();
      const first = await it.next();
      expect(Buffer.from(first.value.data)).toEqual(Buffer.from([0, 0, 0, 1, 5]));
      s.end();
      c.close();
    } finally {
      srv.close();
    }
  });
});
