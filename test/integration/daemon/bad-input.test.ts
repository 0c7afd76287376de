/**
 * Bad input through the real socket (root, a real docker-registry): each gets a clear error naming
 * the offender, and the daemon keeps answering afterwards.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DefinitionSchema,
  ExecOpSchema,
  FileActionMkDirSchema,
  FileActionSchema,
  FileOpSchema,
  InputSchema,
  MetaSchema,
  MountSchema,
  OpSchema,
  SourceOpSchema,
  type Op,
} from '../../../src/gen/buildkit/ops_pb.js';
import { image, marshal } from '../../../src/llb/builder.js';
import { ControlClient } from '../../../src/client/control-client.js';
import { PolicyAction } from '../../../src/gen/buildkit/policy_pb.js';
import { sha256 } from '../../../src/util/digest.js';
import { buildctl, removeDir, startDaemon, type TestDaemon } from '../../helpers/daemon.js';
import { startRegistry, type TestRegistry } from '../../helpers/registry.js';

const d = describe.runIf(process.getuid?.() === 0);

let daemon: TestDaemon;
let reg: TestRegistry;
let work: string;

function defOf(ops: Op[], result?: Uint8Array): Buffer {
  const bytes = ops.map((o) => toBinary(OpSchema, o));
  const last = result ?? bytes[bytes.length - 1]!;
  const terminal = create(OpSchema, { inputs: [create(InputSchema, { digest: sha256(last), index: 0n })] });
  return Buffer.from(toBinary(DefinitionSchema, create(DefinitionSchema, { def: [...bytes, toBinary(OpSchema, terminal)] })));
}

const source = (id: string) => create(OpSchema, { op: { case: 'source', value: create(SourceOpSchema, { identifier: id }) } });
const mkdir = (inputs: { digest: string; index: bigint }[], secondaryInput = -1n) =>
  create(OpSchema, {
    inputs: inputs.map((i) => create(InputSchema, i)),
    op: {
      case: 'file',
      value: create(FileOpSchema, {
        actions: [create(FileActionSchema, { input: 0n, secondaryInput, output: 0n, action: { case: 'mkdir', value: create(FileActionMkDirSchema, { path: '/x', mode: 0o755 }) } })],
      }),
    },
  });

async function expectFailure(args: string[], stdin: Buffer | undefined, pattern: RegExp): Promise<void> {
  const r = await buildctl(daemon.addr, args, { stdin });
  expect(r.code, r.stdout + r.stderr).not.toBe(0);
  expect(r.stderr).toMatch(pattern);
  // The daemon still answers.
  const w = await buildctl(daemon.addr, ['debug', 'workers']);
  expect(w.code).toBe(0);
  expect(w.stdout).toMatch(/linux\/amd64/);
}

d('bad input', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-bad-'));
    reg = await startRegistry();
    daemon = await startDaemon({ config: `[registry."${reg.host}"]\n  http = true\n` });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await reg?.stop();
    if (daemon) removeDir(daemon.dir);
    if (work) removeDir(work);
  });

  it('names a digest that points nowhere', async () => {
    const missing = `sha256:${'ab'.repeat(32)}`;
    await expectFailure(['build'], defOf([mkdir([{ digest: missing, index: 0n }])]), new RegExp(`error: failed to solve: invalid missing input digest ${missing}`));
  });

  it('names an op of an unknown kind', async () => {
    // Field 9 of Op is not an op BuildKit (or loom) knows: the oneof stays empty.
    const unknown = Buffer.from([0x4a, 0x02, 0x08, 0x01]);
    const term = create(OpSchema, { inputs: [create(InputSchema, { digest: sha256(unknown), index: 0n })] });
    const def = Buffer.from(toBinary(DefinitionSchema, create(DefinitionSchema, { def: [unknown, toBinary(OpSchema, term)] })));
    await expectFailure(['build'], def, new RegExp(`error: failed to solve: invalid op ${sha256(unknown)}: unknown or empty operation`));
  });

  it('names an input index out of range', async () => {
    const src = source('docker-image://busybox:latest');
    const srcDigest = sha256(toBinary(OpSchema, src));
    await expectFailure(['build'], defOf([src, mkdir([{ digest: srcDigest, index: 3n }])]), /error: failed to solve: invalid input index 3 .*has 1 output/);
  });

  it('names a file action index out of range, even one the action does not read (found by llb-fuzz)', async () => {
    const src = source('docker-image://busybox:latest');
    const srcDigest = sha256(toBinary(OpSchema, src));
    // A mkdir reads no secondary input; 2^53 once sized an array in the key's selectors (RangeError).
    const op = mkdir([{ digest: srcDigest, index: 0n }], 2n ** 53n);
    const digest = sha256(toBinary(OpSchema, op));
    await expectFailure(['build'], defOf([src, op]), new RegExp(`error: failed to solve: invalid op ${digest}: file action #0 \\(mkdir\\): secondary input 9007199254740992 out of range`));
  });

  it('words a source identifier without a scheme, or with an unknown one, as upstream', async () => {
    await expectFailure(['build'], defOf([source('/proc/self')]), /^error: failed to solve: failed to load cache key: failed to parse \/proc\/self: invalid$/m);
    await expectFailure(['build'], defOf([source('foo://bar')]), /^error: failed to solve: failed to load cache key: unknown schema foo: not found$/m);
  });

  it('names an unknown enum value', async () => {
    const exec = create(OpSchema, {
      op: {
        case: 'exec',
        value: create(ExecOpSchema, {
          meta: create(MetaSchema, { args: ['/bin/true'], cwd: '/' }),
          mounts: [create(MountSchema, { input: -1n, dest: '/', output: 0n })],
          network: 7,
        }),
      },
    });
    await expectFailure(['build'], defOf([exec]), new RegExp(`error: failed to solve: invalid op ${sha256(toBinary(OpSchema, exec))}: unknown network mode 7`));
  });

  it('refuses an unknown frontend and an unknown exporter', async () => {
    await expectFailure(['build', '--frontend', 'nosuch.v0'], undefined, /invalid frontend: nosuch\.v0/);
    const def = Buffer.from(toBinary(DefinitionSchema, marshal(image(`${reg.host}/busybox:latest`))));
    await expectFailure(['build', '--output', 'type=nosuch'], def, /exporter "nosuch" could not be found/);
  });

  it('refuses what it cannot honour instead of ignoring it: a source policy, exporters chosen through the session', async () => {
    const control = new ControlClient({ address: daemon.addr });
    try {
      const def = marshal(image(`${reg.host}/busybox:latest`));
      const policy = { version: 1n, rules: [{ action: PolicyAction.DENY, selector: { identifier: 'docker-image://*' } }] };
      await expect(control.solve({ Ref: 'policy-1', Definition: def, SourcePolicy: policy })).rejects.toThrow(/source policies are not supported by loom yet/);
      await expect(control.solve({ Ref: 'session-exporter-1', Definition: def, EnableSessionExporter: true })).rejects.toThrow(/EnableSessionExporter/);
      // The same build without them goes through.
      await control.solve({ Ref: 'policy-2', Definition: def });
    } finally {
      control.close();
    }
  });

  it('reports a registry 404 with the reference', async () => {
    const def = Buffer.from(toBinary(DefinitionSchema, marshal(image(`${reg.host}/nothere:latest`))));
    await expectFailure(['build'], def, new RegExp(`${reg.host.replace(/\./g, '\\.')}/nothere:latest: not found`));
  });

  it('reports an unreachable registry', async () => {
    const def = Buffer.from(toBinary(DefinitionSchema, marshal(image('127.0.0.1:1/busybox:latest'))));
    await expectFailure(['build'], def, /127\.0\.0\.1:1/);
  });

  it('names a file a RUN left whose name is not UTF-8 by its path in the build, not the daemon\'s', async () => {
    const ctx = join(work, 'non-utf8');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${reg.host}/busybox:latest\nRUN mkdir /n && touch "/n/$(printf 'lat\\351n')"\n`);
    const args = ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`, '--output', `type=tar,dest=${join(work, 'out.tar')}`];
    await expectFailure(args, undefined, /error: failed to solve: .*a file name is not valid UTF-8 \(shown with U\+FFFD\): \/n\/lat\uFFFDn: loom cannot store such names yet/);
    const r = await buildctl(daemon.addr, args);
    expect(r.stderr).not.toContain(daemon.dir);
  });

  it('refuses an entitlement the daemon does not allow', async () => {
    const def = Buffer.from(toBinary(DefinitionSchema, marshal(image(`${reg.host}/busybox:latest`))));
    await expectFailure(['build', '--allow', 'network.host'], def, /granting entitlement network\.host is not allowed by build daemon configuration/);
  });

  it('keeps nothing held after a failed build: steps that finish after the failure are pruned by prune --all', async () => {
    const ctx = join(work, 'failed-holds');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'empty'), '');
    writeFileSync(join(ctx, 'x'), 'x\n');
    // Stage b fails at once (no user "nobody" in scratch) while stage a's linked copies may still run.
    writeFileSync(
      join(ctx, 'Dockerfile'),
      'FROM scratch AS a\nCOPY --link empty /dv/\nCOPY --link x /dv2/\nFROM scratch AS b\nCOPY --chown=nobody x /x\nFROM scratch\nCOPY --from=a /dv /dv\nCOPY --from=b /x /x\n',
    );
    for (let i = 0; i < 3; i++) {
      const r = await buildctl(daemon.addr, ['build', '--frontend', 'dockerfile.v0', '--local', `context=${ctx}`, '--local', `dockerfile=${ctx}`]);
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(/invalid user index: -1/);
      expect((await buildctl(daemon.addr, ['prune', '--all'])).code).toBe(0);
      const du = await buildctl(daemon.addr, ['du', '-v']);
      expect(du.code).toBe(0);
      expect(du.stdout, `records left after prune --all (run ${i + 1})`).not.toMatch(/^ID:/m);
    }
  });
});
