/**
 * The daemon's life as users see it (root; real sockets): --version, TLS with client
 * certificates over TCP, a session that never comes, credentials asked of the client, and SIGTERM.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { spawn } from 'node:child_process';
import http2 from 'node:http2';
import { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { ListWorkersRequestSchema, ListWorkersResponseSchema } from '../../../src/gen/buildkit/control_pb.js';
import { encodeFrame } from '../../../src/util/grpc-frame.js';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient } from '../../../src/client/control-client.js';
import { DefinitionSchema } from '../../../src/gen/buildkit/ops_pb.js';
import { image, local, marshal, mkfile, scratch } from '../../../src/llb/builder.js';
import { BUILDCTL, BUILDKITD, buildctl, removeDir, run, startDaemon } from '../../helpers/daemon.js';
import { freePort, REPO_ROOT as REPO, startRegistry, type TestRegistry } from '../../helpers/registry.js';

const d = describe.runIf(process.getuid?.() === 0);

let work: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'loom-life-'));
});
afterAll(() => {
  if (work) removeDir(work);
});

describe('buildkitd --version', () => {
  it('prints exactly four fields', async () => {
    const r = await run(process.execPath, [BUILDKITD, '--version']);
    expect(r.code).toBe(0);
    const fields = r.stdout.trim().split(' ');
    expect(fields).toHaveLength(4);
    expect(fields[0]).toBe('buildkitd');
    expect(fields[2]).toMatch(/^v\d+\.\d+\.\d+/);
  });

  it("buildctl --version names the package's version, from the bundled client as from tsc's output", async () => {
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
    // npm run build (the test command's first step) makes the bundle; bin/buildctl.cjs prefers it,
    // and the second run through bin/ uses the compiled-code cache the first one left.
    expect(existsSync(join(REPO, 'dist', 'buildctl.cjs'))).toBe(true);
    const bin = join(REPO, 'bin', 'buildctl.js');
    const runs = [bin, bin, join(REPO, 'dist', 'buildctl.cjs'), join(REPO, 'dist', 'cli', 'buildctl-bin.js')].map((entry) => run(process.execPath, [entry, '--version']));
    // The installed command (the shell wrapper), through a symlink as npm and the image install it.
    const link = join(work, 'buildctl-link');
    symlinkSync(BUILDCTL, link);
    runs.push(run(link, ['--version'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: '/no/such/bundle.pem' } }));
    for (const r of await Promise.all(runs)) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim().split(' ').slice(0, 3)).toEqual(['buildctl', 'github.com/loom-build/loom', `v${pkg.version}`]);
      // Node warns about an unreadable NODE_EXTRA_CA_CERTS at start-up: the wrapper moved it aside.
      expect(r.stderr).toBe('');
    }
  });
});

describe('buildctl without a daemon', () => {
  it('words a failed dial as grpc-go does, for a unix socket and a tcp port', async () => {
    const sock = join(work, 'no-daemon.sock');
    const unix = await buildctl(`unix://${sock}`, ['debug', 'workers']);
    expect(unix.code).toBe(1);
    expect(unix.stderr.trim()).toBe(`error: failed to list workers: Unavailable: connection error: desc = "transport: error while dialing: dial unix ${sock}: connect: no such file or directory"`);
    const port = await freePort();
    const tcp = await buildctl(`tcp://127.0.0.1:${port}`, ['du']);
    expect(tcp.code).toBe(1);
    expect(tcp.stderr).toContain(`failed to call diskusage: Unavailable: connection error: desc = "transport: error while dialing: dial tcp 127.0.0.1:${port}: connect: connection refused"`);
  });
});

d('daemon lifecycle', () => {
  it('serves TCP with mutual TLS and refuses clients without a certificate', async () => {
    const tls = join(work, 'tls');
    mkdirSync(tls);
    const ssl = (args: string[]) => run('openssl', args, { cwd: tls });
    await ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=loom test CA']);
    for (const who of ['server', 'client']) {
      await ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=${who}`]);
      writeFileSync(join(tls, `${who}.ext`), who === 'server' ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' : 'extendedKeyUsage=clientAuth\n');
      const r = await ssl(['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${who}.pem`, '-days', '1', '-extfile', `${who}.ext`]);
      expect(r.code, r.stderr).toBe(0);
    }
    const port = await freePort();
    const daemon = await startDaemon({
      args: ['--addr', `tcp://127.0.0.1:${port}`, '--tlscert', join(tls, 'server.pem'), '--tlskey', join(tls, 'server.key'), '--tlscacert', join(tls, 'ca.pem')],
    });
    try {
      const addr = `tcp://127.0.0.1:${port}`;
      const ok = await buildctl(addr, ['--tlscacert', join(tls, 'ca.pem'), '--tlscert', join(tls, 'client.pem'), '--tlskey', join(tls, 'client.key'), 'debug', 'workers']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(ok.stdout).toMatch(/linux\/amd64/);
      const noCert = await buildctl(addr, ['--tlscacert', join(tls, 'ca.pem'), 'debug', 'workers'], { timeoutMs: 30_000 });
      expect(noCert.code).not.toBe(0);
      // Without --tlscacert the default roots apply, NODE_EXTRA_CA_CERTS's included (bin/buildctl
      // moves the variable aside at start-up and the client reads the file when it connects).
      const clientCert = ['--tlscert', join(tls, 'client.pem'), '--tlskey', join(tls, 'client.key'), 'debug', 'workers'];
      const { NODE_EXTRA_CA_CERTS: _, LOOM_EXTRA_CA_CERTS: __, ...bareEnv } = process.env;
      const extraCa = await buildctl(addr, clientCert, { env: { ...bareEnv, NODE_EXTRA_CA_CERTS: join(tls, 'ca.pem') }, timeoutMs: 30_000 });
      expect(extraCa.code, extraCa.stderr).toBe(0);
      expect(extraCa.stdout).toMatch(/linux\/amd64/);
      const noCa = await buildctl(addr, clientCert, { env: bareEnv, timeoutMs: 30_000 });
      expect(noCa.code).not.toBe(0);
      // buildx's remote driver makes the TLS connection itself, offering no ALPN protocol, then
      // speaks HTTP/2 with prior knowledge (upstream's grpc-go serves it; Node's HTTP/2 server
      // alone would drop it). Its client certificate is still required.
      const dialNoAlpn = (withCert: boolean) =>
        tlsConnect({
          host: '127.0.0.1',
          port,
          servername: 'localhost',
          ca: readFileSync(join(tls, 'ca.pem')),
          ...(withCert ? { cert: readFileSync(join(tls, 'client.pem')), key: readFileSync(join(tls, 'client.key')) } : {}),
        });
      const sock = dialNoAlpn(true);
      await new Promise((resolve, reject) => sock.once('secureConnect', resolve).once('error', reject));
      expect(sock.alpnProtocol).toBe(false);
      expect(await rawListWorkers(sock)).toContain('amd64');
      await expect(rawListWorkers(dialNoAlpn(false))).rejects.toThrow();
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('fails a build whose session never comes, naming the session', async () => {
    const daemon = await startDaemon();
    const client = new ControlClient({ address: daemon.addr });
    try {
      const def = marshal(local('context'));
      await expect(client.solve({ Ref: 'nosession-build', Definition: def, Session: 'no-such-session' })).rejects.toThrow(/no active session for no-such-session/);
      const w = await client.listWorkers();
      expect(w.record.length).toBe(1);
    } finally {
      client.close();
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('asks the client for registry credentials (htpasswd registry: 401 without, success with)', async () => {
    const auth = { username: 'loom', password: 's3cret-pw' };
    const reg: TestRegistry = await startRegistry({ htpasswd: auth });
    const daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
    try {
      const def = Buffer.from(toBinary(DefinitionSchema, marshal(image(`${reg.host}/busybox:latest`))));
      const home = join(work, 'home');
      mkdirSync(join(home, '.docker'), { recursive: true });
      const anon = await buildctl(daemon.addr, ['build'], { stdin: def, env: { ...process.env, HOME: home, DOCKER_CONFIG: join(home, '.docker') } });
      expect(anon.code).not.toBe(0);
      expect(anon.stderr).toMatch(/401|unauthorized|authoriz/i);
      writeFileSync(
        join(home, '.docker', 'config.json'),
        JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${auth.username}:${auth.password}`).toString('base64') } } }),
      );
      const withCreds = await buildctl(daemon.addr, ['build'], { stdin: def, env: { ...process.env, HOME: home, DOCKER_CONFIG: join(home, '.docker') } });
      expect(withCreds.code, withCreds.stderr).toBe(0);
      // The secret never reaches the daemon's log.
      expect(daemon.logs()).not.toContain(auth.password);
    } finally {
      await daemon.stop();
      await reg.stop();
      removeDir(daemon.dir);
    }
  });

  it('drains on SIGTERM: exits 0 and removes its socket', async () => {
    const daemon = await startDaemon();
    const sock = daemon.addr.slice('unix://'.length);
    expect(existsSync(sock)).toBe(true);
    const code = await daemon.stop();
    expect(code).toBe(0);
    expect(existsSync(sock)).toBe(false);
    removeDir(daemon.dir);
  });
});


d('configuration and transports', () => {
  it('reads platforms, GC policy and entitlements from buildkitd.toml and logs JSON when asked', async () => {
    const daemon = await startDaemon({
      args: ['--log-format', 'json', '--debug'],
      config: [
        'insecure-entitlements = ["network.host"]',
        '[worker.oci]',
        '  platforms = ["linux/amd64", "linux/arm64"]',
        '  [[worker.oci.gcpolicy]]',
        '    keepBytes = 123000000',
        '    keepDuration = 3600',
        '    filters = ["type==source.local"]',
        '',
      ].join('\n'),
    });
    try {
      const r = await buildctl(daemon.addr, ['debug', 'workers', '-v']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/Platforms:\s+linux\/amd64,linux\/arm64\n/);
      expect(r.stdout).toMatch(/Filters:\s+type==source\.local/);
      expect(r.stdout).toMatch(/Keep Duration:\s+1h0m0s/);
      expect(r.stdout).toMatch(/Keep Bytes:\s+123MB/);
      // network.host is allowed by the config, so asking for it is fine.
      const def = Buffer.from(toBinary(DefinitionSchema, marshal(scratch().file(mkfile('/x', 0o644, 'x')))));
      const ok = await buildctl(daemon.addr, ['build', '--allow', 'network.host'], { stdin: def });
      expect(ok.code, ok.stderr).toBe(0);
      const line = daemon.logs().split('\n').find((l) => l.includes('running server'));
      expect(() => JSON.parse(line!)).not.toThrow();
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('carries raw gRPC over buildctl dial-stdio (the docker-container driver connection)', async () => {
    const daemon = await startDaemon();
    const child = spawn(BUILDCTL, ['--addr', daemon.addr, 'dial-stdio'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const conn = Duplex.from({ readable: child.stdout!, writable: child.stdin! });
      expect(await rawListWorkers(conn)).toContain('amd64');
    } finally {
      child.kill();
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });

  it('serves Prometheus metrics at --debugaddr: builds, steps cached and run, cache bytes, prunes', async () => {
    const port = await freePort();
    const daemon = await startDaemon({ args: ['--debugaddr', `127.0.0.1:${port}`] });
    try {
      const def = Buffer.from(toBinary(DefinitionSchema, marshal(scratch().file(mkfile('/m', 0o644, 'metrics')))));
      expect((await buildctl(daemon.addr, ['build'], { stdin: def })).code).toBe(0);
      expect((await buildctl(daemon.addr, ['build'], { stdin: def })).code).toBe(0);
      const scrape = async () => {
        const res = await fetch(`http://127.0.0.1:${port}/metrics`);
        expect(res.status).toBe(200);
        const text = await res.text();
        return (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
      };
      let m = await scrape();
      expect(m('loom_builds_total')).toBe(2);
      expect(m('loom_steps_run_total')).toBe(1);
      expect(m('loom_steps_cached_total')).toBe(1);
      expect(m('loom_cache_bytes')).toBeGreaterThan(0);
      expect((await buildctl(daemon.addr, ['prune', '--all'])).code).toBe(0);
      m = await scrape();
      expect(m('loom_prune_runs_total')).toBe(1);
      expect(m('loom_prune_freed_bytes_total')).toBeGreaterThan(0);
      expect(m('loom_cache_bytes')).toBe(0);
    } finally {
      await daemon.stop();
      removeDir(daemon.dir);
    }
  });
});

/** Control.ListWorkers as raw gRPC over HTTP/2 on `conn`; the workers' architectures. */
async function rawListWorkers(conn: Duplex): Promise<string[]> {
  const session = http2.connect('http://localhost', { createConnection: () => conn as never });
  try {
    const failed = new Promise<never>((_, reject) => {
      session.on('error', reject);
      session.on('close', () => reject(new Error('connection closed')));
      conn.on('error', reject);
    });
    const req = session.request({ ':method': 'POST', ':path': '/moby.buildkit.v1.Control/ListWorkers', 'content-type': 'application/grpc', te: 'trailers' });
    req.on('error', () => {});
    req.end(encodeFrame(toBinary(ListWorkersRequestSchema, create(ListWorkersRequestSchema, {}))));
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    const trailersP = new Promise<http2.IncomingHttpHeaders>((resolve) => req.on('trailers', resolve));
    const ended = new Promise((r) => req.on('end', r));
    const [trailers] = await Promise.race([Promise.all([trailersP, ended]), failed]);
    expect(trailers['grpc-status']).toBe('0');
    const body = Buffer.concat(chunks);
    const resp = fromBinary(ListWorkersResponseSchema, body.subarray(5, 5 + body.readUInt32BE(1)));
    return resp.record[0]!.platforms.map((p) => p.Architecture);
  } finally {
    session.destroy();
  }
}
