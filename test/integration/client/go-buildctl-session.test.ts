import { create } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Control, ListWorkersResponseSchema, SolveResponseSchema } from '../../../src/gen/buildkit/control_pb.js';
import { Health } from '../../../src/gen/grpc/health_pb.js';
import { Auth } from '../../../src/gen/session/auth_pb.js';
import { FileSend, FileSync } from '../../../src/gen/session/filesync_pb.js';
import { Secrets } from '../../../src/gen/session/secrets_pb.js';
import { sendBytes } from '../../../src/session/filesync/bytes.js';
import { diffCopyMetadata } from '../../../src/session/filesync/metadata.js';
import { receiveDir } from '../../../src/session/filesync/receive.js';
import { bytesDuplex, type BytesMessageStream } from '../../../src/session/tunnel/bytes-duplex.js';
import { createSessionCaller, type TunnelSessionCaller } from '../../../src/session/tunnel/caller.js';
import { parseSessionMetadata } from '../../../src/session/tunnel/metadata.js';
import { grpcServiceDef } from '../../../src/util/grpc-def.js';

/**
 * The daemon end of the tunnel against upstream's Go client: a stand-in Control server (grpc-js)
 * takes upstream buildctl's session with createSessionCaller and calls every service the Go
 * client serves. Needs an upstream buildctl binary ($LOOM_UPSTREAM_BUILDCTL or
 * /opt/upstream/bin/buildctl, never part of loom); skipped without.
 */
const BUILDCTL = process.env.LOOM_UPSTREAM_BUILDCTL ?? '/opt/upstream/bin/buildctl';

describe.skipIf(!existsSync(BUILDCTL))('daemon end of the session against upstream buildctl (integration)', () => {
  let dir: string;
  let server: grpc.Server;
  let sock: string;
  const sessions = new Map<string, TunnelSessionCaller>();
  const waiters = new Map<string, (c: TunnelSessionCaller) => void>();
  let observed: Record<string, unknown> = {};
  let solveDone!: () => void;
  const solveFinished = new Promise<void>((r) => (solveDone = r));

  const getSession = (id: string): Promise<TunnelSessionCaller> =>
    sessions.has(id) ? Promise.resolve(sessions.get(id)!) : new Promise((r) => waiters.set(id, r));

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loom-gocli-'));
    sock = join(dir, 'd.sock');
    server = new grpc.Server();
    server.addService(grpcServiceDef(Control), {
      listWorkers: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
        cb(null, create(ListWorkersResponseSchema, { record: [{ ID: 'w0', platforms: [{ OS: 'linux', Architecture: 'amd64' }] }] })),
      session: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
        const id = parseSessionMetadata(call.metadata);
        const caller = createSessionCaller({ ...id, duplex: bytesDuplex(call as unknown as BytesMessageStream), healthIntervalMs: 1000 });
        sessions.set(id.id, caller);
        waiters.get(id.id)?.(caller);
        observed.sessionName = id.name;
        observed.methods = [...caller.methods].sort();
      },
      status: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        void solveFinished.then(() => call.end());
      },
      solve: (call: grpc.ServerUnaryCall<{ Session: string; Exporter: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        void (async () => {
          const s = await getSession(call.request.Session);
          observed.exporter = call.request.Exporter;
          observed.health = (await s.unary(Health.method.check, {})).status;
          const fs = await s.stream(FileSync.method.diffCopy, { metadata: diffCopyMetadata({ dirName: 'ctx' }) });
          const got = await receiveDir(fs, { dest: join(dir, 'received'), chown: false, xattrs: false });
          observed.received = got.files;
          observed.secret = Buffer.from((await s.unary(Secrets.method.getSecret, { ID: 'mysecret' })).data).toString();
          observed.unknownSecret = await s.unary(Secrets.method.getSecret, { ID: 'nope' }).catch((e: { code: string }) => e.code);
          const cred = await s.unary(Auth.method.credentials, { Host: 'example.com' });
          observed.cred = `${cred.Username}:${cred.Secret}`;
          const fsend = await s.stream(FileSend.method.diffCopy);
          const payload = Buffer.alloc(3 * 1024 * 1024, 0x61);
          await sendBytes(fsend, (async function* () {
            yield payload;
          })());
          cb(null, create(SolveResponseSchema, { ExporterResponse: { 'loom.test': 'ok' } }));
        })().catch((err: Error) => {
          observed.error = err.message;
          cb({ code: grpc.status.INTERNAL, details: err.message });
        }).finally(() => solveDone());
      },
    });
    // upstream buildctl runs its build through the gateway: hold its Ping until our Solve is done.
    server.addService(
      {
        ping: {
          path: '/moby.buildkit.v1.frontend.LLBBridge/Ping',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      } as grpc.ServiceDefinition,
      {
        ping: (_c: unknown, cb: grpc.sendUnaryData<Buffer>) => {
          void solveFinished.then(() => cb({ code: grpc.status.UNIMPLEMENTED, details: 'no gateway in this test' }));
        },
      },
    );
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  });

  afterAll(async () => {
    for (const s of sessions.values()) s.close();
    server?.forceShutdown();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('calls health, filesync, secrets, auth and filesend on the Go client', async () => {
    const ctx = join(dir, 'ctx');
    await mkdir(join(ctx, 'd'), { recursive: true });
    await writeFile(join(ctx, 'd', 'f.txt'), 'from go client');
    await writeFile(join(ctx, 'big'), Buffer.alloc(4 * 1024 * 1024, 3));
    await writeFile(join(dir, 'secret.txt'), 's3cr3t');
    const dockerDir = join(dir, 'docker');
    await mkdir(dockerDir);
    await writeFile(join(dockerDir, 'config.json'), JSON.stringify({ auths: { 'example.com': { auth: Buffer.from('alice:pw').toString('base64') } } }));
    const out = join(dir, 'out.tar');
    const proc = spawn(
      BUILDCTL,
      ['--addr', `unix://${sock}`, 'build', '--frontend', 'dockerfile.v0', '--progress', 'plain', '--local', `ctx=${ctx}`, '--secret', `id=mysecret,src=${join(dir, 'secret.txt')}`, '-o', `type=tar,dest=${out}`],
      { env: { ...process.env, DOCKER_CONFIG: dockerDir }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += String(d)));
    await new Promise((r) => proc.once('exit', r));
    expect(observed.error, stderr).toBeUndefined();
    expect(observed.exporter).toBe('tar');
    expect(observed.health).toBe(1);
    expect(observed.received).toBe(2);
    expect(await readFile(join(dir, 'received', 'd', 'f.txt'), 'utf8')).toBe('from go client');
    expect((await readFile(join(dir, 'received', 'big'))).length).toBe(4 * 1024 * 1024);
    expect(observed.secret).toBe('s3cr3t');
    expect(observed.unknownSecret).toBe('NOT_FOUND');
    expect(observed.cred).toBe('alice:pw');
    expect(observed.methods).toEqual(expect.arrayContaining(['/moby.filesync.v1.FileSync/DiffCopy', '/moby.filesync.v1.FileSend/DiffCopy', '/grpc.health.v1.Health/Check']));
    const tarBytes = await readFile(out);
    expect(tarBytes.length).toBe(3 * 1024 * 1024);
    expect(tarBytes.every((b) => b === 0x61)).toBe(true);
  }, 60_000);
});
