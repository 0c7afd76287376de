import { describe, expect, it } from 'vitest';
import { fromBinary } from '@bufbuild/protobuf';
import { MountType, NetMode, OpSchema, SecurityMode, CacheSharingOpt, type Definition, type Op } from '../../../src/gen/buildkit/ops_pb.js';
import { dockerfileToLLB, type ConvertOptions } from '../../../src/frontend/dockerfile/convert.js';
import { DockerfileError } from '../../../src/frontend/dockerfile/errors.js';
import { parseDockerignore } from '../../../src/util/patterns.js';
import { parsePlatform } from '../../../src/util/platform.js';
import { sha256 } from '../../../src/util/digest.js';
import { LoomError } from '../../../src/util/errors.js';
import { CORPUS } from './corpus.js';
import { LLBBuilder } from '../../../src/frontend/dockerfile/llb-state.js';
import { parseImageConfig } from '../../../src/frontend/dockerfile/image-config.js';
import { BASE_INDEX_DIGEST, baseConfig, cannedResolver } from './base-image.js';
import { UPSTREAM_CONFIGS, UPSTREAM_HEAD_DIGESTS } from './upstream-expected.js';

interface DecodedOp {
  digest: string;
  op: Op;
  name: string | undefined;
  md: Definition['metadata'][string] | undefined;
}

function decode(def: Definition): { ops: DecodedOp[]; head: string } {
  const ops = def.def.slice(0, -1).map((b) => {
    const digest = sha256(b);
    const md = def.metadata[digest];
    return { digest, op: fromBinary(OpSchema, b), name: md?.description['llb.customname'], md };
  });
  const term = fromBinary(OpSchema, def.def[def.def.length - 1]!);
  return { ops, head: term.inputs[0]!.digest };
}

function byName(ops: DecodedOp[], name: string): DecodedOp {
  const o = ops.find((x) => x.name === name);
  if (!o) throw new Error(`no op named ${name}; have: ${ops.map((x) => x.name).join(' | ')}`);
  return o;
}

async function convert(dockerfile: string, opts: Partial<ConvertOptions> = {}) {
  return dockerfileToLLB({ dockerfile, sessionId: 's', resolveImageConfig: cannedResolver(), ...opts });
}

describe('dockerfileToLLB on the corpus', () => {
  for (const c of CORPUS) {
    it(`${c.name}: LLB byte-identical to upstream's converter`, async () => {
      const ign = c.files?.['.dockerignore'] ? parseDockerignore(String(c.files['.dockerignore'])) : undefined;
      const res = await convert(c.dockerfile, {
        buildArgs: c.buildArgs,
        target: c.target,
        excludes: ign,
        targetPlatform: c.platform ? parsePlatform(c.platform) : undefined,
        buildPlatforms: [{ os: 'linux', architecture: 'amd64' }],
      });
      expect(decode(res.definition).head).toBe(UPSTREAM_HEAD_DIGESTS[c.name]);
      const want = UPSTREAM_CONFIGS[c.name];
      if (want) expect(Buffer.from(res.config).toString()).toBe(want);
    });
  }
});

describe('dockerfileToLLB details', () => {
  it('names a RUN with the stage\'s variables filled in, but leaves a command with a modifier upstream v0.11 did not know as written (as upstream v0.11.6 showed them)', async () => {
    const res = await dockerfileToLLB({
      dockerfile: [
        'FROM localhost:5000/busybox',
        'ENV V=val',
        'ARG EMPTY=',
        'RUN echo $V ${V:-d} ${U:-d} $U',
        'RUN echo $V "[${U-unset}] [${EMPTY-unset}]"',
        'RUN echo $V ${V#v} ${V%l} ${V/a/b} ${V+set}',
        'RUN echo $V ${U?x}',
        '',
      ].join('\n'),
      sessionId: 'sess',
      resolveImageConfig: cannedResolver(),
    });
    const names = decode(res.definition).ops.map((o) => o.name).filter((n) => n.includes('RUN'));
    expect(names.sort()).toEqual([
      '[2/5] RUN echo val val ${U:-d} $U',
      '[3/5] RUN echo $V "[${U-unset}] [${EMPTY-unset}]"',
      '[4/5] RUN echo $V ${V#v} ${V%l} ${V/a/b} ${V+set}',
      '[5/5] RUN echo val ${U?x}',
    ]);
  });

  it('names vertices and resolves base images as upstream does', async () => {
    const log: Parameters<typeof cannedResolver>[0] = [];
    const res = await dockerfileToLLB({
      dockerfile: 'FROM localhost:5000/busybox\nWORKDIR /app\nCOPY . .\nRUN echo hi\n',
      sessionId: 'sess',
      resolveImageConfig: cannedResolver(log),
    });
    expect(log.map((l) => [l.ref, l.opts.logName])).toEqual([
      ['localhost:5000/busybox:latest', '[internal] load metadata for localhost:5000/busybox:latest'],
    ]);
    const { ops } = decode(res.definition);
    const names = ops.map((o) => o.name);
    expect(names).toContain(`[1/4] FROM localhost:5000/busybox@${BASE_INDEX_DIGEST}`);
    expect(names).toContain('[2/4] WORKDIR /app');
    expect(names).toContain('[3/4] COPY . .');
    expect(names).toContain('[4/4] RUN echo hi');
    const ctx = byName(ops, '[internal] load build context');
    expect(ctx.op.op.case).toBe('source');
    if (ctx.op.op.case === 'source') {
      expect(ctx.op.op.value.identifier).toBe('local://context');
      // COPY . needs the whole context: no follow paths.
      expect(ctx.op.op.value.attrs).toEqual({ 'local.session': 'sess', 'local.sharedkeyhint': 'context' });
    }
    const run = byName(ops, '[4/4] RUN echo hi');
    expect(run.md?.description['com.docker.dockerfile.v1.command']).toBe('RUN echo hi');
    if (run.op.op.case !== 'exec') throw new Error('not exec');
    expect(run.op.op.value.meta?.args).toEqual(['/bin/sh', '-c', 'echo hi']);
    expect(run.op.op.value.meta?.cwd).toBe('/app');
    expect(run.op.platform?.Architecture).toBeTruthy();
  });

  it('sends only the context paths the steps read, with .dockerignore excludes', async () => {
    const res = await convert('FROM scratch\nCOPY a.txt dir/ /x/\nADD https://example.com/f /f\nADD b.tar /\n', { excludes: ['*.log', '!keep.log'] });
    const ctx = byName(decode(res.definition).ops, '[internal] load build context');
    if (ctx.op.op.case !== 'source') throw new Error('not a source');
    expect(ctx.op.op.value.attrs['local.followpaths']).toBe('["a.txt","b.tar","dir"]');
    expect(ctx.op.op.value.attrs['local.excludepatterns']).toBe('["*.log","!keep.log"]');
  });

  it('turns RUN mounts of every type into exec mounts', async () => {
    const res = await convert(`FROM localhost:5000/busybox AS base
FROM localhost:5000/busybox
WORKDIR /w
RUN --mount=type=cache,target=/c,id=x,sharing=private --mount=type=bind,from=base,source=/etc,target=rel,rw --mount=type=tmpfs,target=/t,size=1m --mount=type=secret,id=tok,target=/run/tok,mode=0440 --mount=type=ssh,id=gh --network=host --security=insecure true
`);
    const run = decode(res.definition).ops.find((o) => o.op.op.case === 'exec')!;
    if (run.op.op.case !== 'exec') throw new Error('not exec');
    const e = run.op.op.value;
    expect(e.network).toBe(NetMode.HOST);
    expect(e.security).toBe(SecurityMode.INSECURE);
    const m = Object.fromEntries(e.mounts.map((x) => [x.dest, x]));
    expect(Object.keys(m)).toEqual(['/', '/c', '/t', '/w/rel', '/run/tok', '/run/buildkit/ssh_agent.0']);
    expect(m['/']!.output).toBe(0n);
    expect(m['/c']!.mountType).toBe(MountType.CACHE);
    expect(m['/c']!.cacheOpt?.ID).toBe('/x');
    expect(m['/c']!.cacheOpt?.sharing).toBe(CacheSharingOpt.PRIVATE);
    expect(m['/c']!.output).toBe(-1n);
    expect(m['/t']!.mountType).toBe(MountType.TMPFS);
    expect(m['/t']!.TmpfsOpt?.size).toBe(1048576n);
    expect(m['/t']!.input).toBe(-1n);
    expect(m['/w/rel']!.selector).toBe('/etc');
    expect(m['/w/rel']!.readonly).toBe(false);
    expect(m['/w/rel']!.output).toBe(-1n); // rw bind mounts are not outputs
    expect(m['/run/tok']!.mountType).toBe(MountType.SECRET);
    expect(m['/run/tok']!.secretOpt).toMatchObject({ ID: 'tok', mode: 0o440, optional: true });
    expect(m['/run/buildkit/ssh_agent.0']!.SSHOpt).toMatchObject({ ID: 'gh', mode: 0o600, optional: true });
    expect(e.meta?.env).toContain('SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0');
  });

  it('builds each platform with TARGET* args and prefixed names', async () => {
    const df = 'FROM --platform=$BUILDPLATFORM localhost:5000/busybox AS b\nARG TARGETARCH\nRUN echo $TARGETARCH\nFROM localhost:5000/busybox\nCOPY --from=b / /\n';
    const res = await convert(df, {
      targetPlatform: { os: 'linux', architecture: 'arm64' },
      buildPlatforms: [{ os: 'linux', architecture: 'amd64' }],
      prefixPlatform: true,
    });
    const { ops } = decode(res.definition);
    const run = byName(ops, '[linux/amd64->arm64 b 2/2] RUN echo arm64');
    if (run.op.op.case !== 'exec') throw new Error('not exec');
    expect(run.op.platform).toMatchObject({ OS: 'linux', Architecture: 'amd64' });
    expect(run.op.op.value.meta?.env).toContain('TARGETARCH=arm64');
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect([img.os, img.architecture]).toEqual(['linux', 'arm64']);
  });

  it('applies no-cache to all or named stages', async () => {
    const df = 'FROM localhost:5000/busybox AS a\nRUN echo a\nFROM a AS b\nRUN echo b\n';
    const all = decode((await convert(df, { ignoreCache: [] })).definition).ops.filter((o) => o.op.op.case === 'exec');
    expect(all.map((o) => o.md?.ignoreCache)).toEqual([true, true]);
    const named = decode((await convert(df, { ignoreCache: ['B'] })).definition).ops.filter((o) => o.op.op.case === 'exec');
    expect(named.map((o) => [o.name, o.md?.ignoreCache])).toEqual([
      ['[a 2/2] RUN echo a', false],
      ['[b 1/1] RUN echo b', true],
    ]);
  });

  it('applies no-cache to a COPY --link through its merge, as upstream (its copy onto scratch carries only the progress group)', async () => {
    const df = 'FROM localhost:5000/busybox\nCOPY --link a /a\n';
    const of = async (ignoreCache?: string[]) => {
      const ops = decode((await convert(df, { ignoreCache })).definition).ops;
      return ['merge', 'file'].map((k) => ops.filter((o) => o.op.op.case === k).map((o) => [o.name, o.md?.ignoreCache ?? false]));
    };
    expect(await of([])).toEqual([[['[2/2] LINK COPY --link a /a', true]], [[undefined, false]]]);
    expect(await of()).toEqual([[['[2/2] LINK COPY --link a /a', false]], [[undefined, false]]]);
  });

  it('runs ONBUILD triggers of a base image and drops them from the result', async () => {
    const res = await convert('FROM localhost:5000/onbuild\nRUN echo after\n');
    const { ops } = decode(res.definition);
    const execs = ops.filter((o) => o.op.op.case === 'exec').map((o) => (o.op.op.case === 'exec' ? o.op.op.value.meta!.args[2] : ''));
    expect(execs).toEqual(['echo from-onbuild-image', 'echo after']);
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect(img.config.OnBuild).toBeNull();
    expect(img.config.Env).toContain('TRIGGERED=1');
  });

  it('treats a base image without layers as scratch and adds labels from the client', async () => {
    const res = await convert('FROM localhost:5000/empty\nLABEL a=1\n', { labels: { 'org.example': 'x' } });
    expect(res.state.output).toBeUndefined();
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect(img.config.Labels).toEqual({ a: '1', 'org.example': 'x' });
    expect(img.config.Env).toEqual(['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']);
  });

  it('uses named contexts for base images and COPY --from images', async () => {
    const seen: string[] = [];
    const b = new LLBBuilder({ defaultPlatform: { os: 'linux', architecture: 'amd64' } });
    const res = await convert('FROM alpine AS base\nRUN echo hi\nFROM scratch\nCOPY --from=deps /x /x\nCOPY --from=base /y /y\n', {
      contextByName: async (name) => {
        seen.push(name);
        if (name === 'docker.io/library/alpine:latest') return { state: b.local('alpine-dir', { sessionId: 's' }), image: parseImageConfig(baseConfig('amd64')) };
        if (name === 'docker.io/library/deps:latest') return { state: b.local('deps-dir', { sessionId: 's' }) };
        return undefined;
      },
    });
    expect(seen).toEqual(expect.arrayContaining(['base', 'docker.io/library/alpine:latest', 'docker.io/library/deps:latest']));
    const ids = decode(res.definition).ops.flatMap((o) => (o.op.op.case === 'source' ? [o.op.op.value.identifier] : []));
    expect(ids.sort()).toEqual(['local://alpine-dir', 'local://deps-dir']);
  });

  it('passes build args, proxy args and extra hosts to RUN', async () => {
    const res = await convert('FROM localhost:5000/busybox\nARG A\nRUN echo $A\n', {
      buildArgs: { A: 'from-cli', HTTP_PROXY: 'http://proxy:3128' },
      extraHosts: [{ host: 'db', ip: '10.0.0.2' }],
      shmSize: 1 << 20,
      hostname: 'builder',
    });
    const run = decode(res.definition).ops.find((o) => o.op.op.case === 'exec')!;
    if (run.op.op.case !== 'exec') throw new Error('not exec');
    const meta = run.op.op.value.meta!;
    expect(meta.env).toContain('A=from-cli');
    expect(meta.env.some((e) => e.startsWith('HTTP_PROXY'))).toBe(false);
    expect(meta.proxyEnv?.httpProxy).toBe('http://proxy:3128');
    expect(meta.extraHosts.map((h) => [h.Host, h.IP])).toEqual([['db', '10.0.0.2']]);
    expect(meta.hostname).toBe('builder');
    expect(run.op.op.value.mounts.map((m) => m.dest)).toContain('/dev/shm');
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect(img.history.at(-1).created_by).toBe('RUN |1 A=from-cli /bin/sh -c echo $A # buildkit');
  });

  it('COPY --parents and --exclude: history names --parents, --chown and --chmod as every upstream with those flags does; --exclude patterns are not expanded (upstream v0.24 with them built in)', async () => {
    const res = await convert('FROM scratch\nARG EX=*.md\nARG O=7\nCOPY --parents --chown=$O:$O --chmod=0640 a/./b /x/\nCOPY --exclude=$EX --chown=$O docs /d/\nCOPY --chown=$O --chmod=0640 c /c\n');
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect(img.history.slice(-3).map((h: { created_by: string }) => h.created_by)).toEqual([
      'COPY --parents --chown=7:7 --chmod=0640 a/./b /x/ # buildkit',
      'COPY --chown=7 docs /d/ # buildkit',
      // Without those flags, upstream v0.11.6's words (no flags named).
      'COPY c /c # buildkit',
    ]);
    const copies = decode(res.definition).ops.filter((o) => o.op.op.case === 'file');
    const actions = copies.flatMap((o) => (o.op.op.case === 'file' ? o.op.op.value.actions : []));
    const cp = actions.map((a) => (a.action.case === 'copy' ? a.action.value : null)).filter((a) => a !== null);
    expect(cp.find((a) => a.src === '/docs')?.excludePatterns).toEqual(['$EX']);
    expect(cp.find((a) => a.src === '/a')?.includePatterns).toEqual(['b']);
  });

  it('--exclude reaches every copy of the instruction, a URL\'s and a heredoc\'s too (as upstream v0.24)', async () => {
    const res = await convert('FROM scratch\nADD --exclude=*.md https://example.com/f.txt /f\nCOPY --exclude=*.md <<EOT /h\nx\nEOT\n');
    const actions = decode(res.definition).ops.flatMap((o) => (o.op.op.case === 'file' ? o.op.op.value.actions : []));
    const cp = actions.map((a) => (a.action.case === 'copy' ? a.action.value : null)).filter((a) => a !== null);
    expect(cp.map((a) => [a.src, a.excludePatterns])).toEqual([['/f.txt', ['*.md']], ['/EOT', ['*.md']]]);
  });

  it('records SOURCE_DATE_EPOCH as the history time', async () => {
    const res = await convert('FROM scratch\nENV A=1\n', { sourceDateEpoch: new Date(1700000000 * 1000) });
    const img = JSON.parse(Buffer.from(res.config).toString());
    expect(img.history[0].created).toBe('2023-11-14T22:13:20Z');
  });

  it('emits a source map pointing ops at their Dockerfile lines', async () => {
    const data = Buffer.from('FROM localhost:5000/busybox\n\nRUN echo \\\n  two-lines\n');
    const res = await convert(data.toString(), { sourceMap: { filename: 'Dockerfile', data } });
    const run = decode(res.definition).ops.find((o) => o.op.op.case === 'exec')!;
    const loc = res.definition.Source!.locations[run.digest]!.locations[0]!;
    expect(res.definition.Source!.infos[loc.sourceIndex]!.filename).toBe('Dockerfile');
    expect(loc.ranges.map((r) => r.start!.line)).toEqual([3, 4]);
  });
});

describe('dockerfileToLLB errors', () => {
  const cases: [string, string, Partial<ConvertOptions>, string, number[]][] = [
    ['unknown instruction', 'FROM scratch\nFOO bar\n', {}, 'dockerfile parse error on line 2: unknown instruction: FOO (did you mean FROM?)', [2]],
    ['bad flag', 'FROM scratch\nCOPY --chwn=1 a b\n', {}, 'dockerfile parse error on line 2: unknown flag: chwn (did you mean chown?)', [2]],
    ['unknown target', 'FROM scratch\n', { target: 'nope' }, 'target stage nope could not be found', []],
    ['circular', 'FROM scratch AS a\nCOPY --from=b / /\nFROM scratch AS b\nCOPY --from=a / /\n', {}, 'circular dependency detected on stage: a', []],
    ['bad stage index', 'FROM scratch\nCOPY --from=3 / /\n', {}, 'invalid stage index 3', []],
    ['unknown image', 'FROM localhost:5000/busybx\n', {}, 'localhost:5000/busybx: localhost:5000/busybx:latest: not found', [1]],
    ['blank base', 'ARG X\nFROM $X\n', {}, 'base name ($X) should not be blank', [2]],
    ['expansion error', 'FROM scratch\nENV A=${B:?must_be_set}\n', {}, 'failed to process "${B:?must_be_set}": B: must_be_set', [2]],
    ['bad signal', 'FROM scratch\nSTOPSIGNAL NOPE\n', {}, 'invalid signal: NOPE', [2]],
    ['empty file', '', {}, 'the Dockerfile cannot be empty', []],
    ['no instructions', '# only a comment\n', {}, 'file with no instructions', [1]],
    ['mount target /', 'FROM scratch\nRUN --mount=type=bind,target=/ true\n', {}, 'invalid mount target "/"', [2]],
  ];
  for (const [name, df, opts, msg, lines] of cases) {
    it(name, async () => {
      const err = await convert(df, opts).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(LoomError);
      expect((err as Error).message).toBe(msg);
      const loc = (err as DockerfileError).location ?? [];
      expect(loc.map((r) => r.start.line)).toEqual(lines);
    });
  }
});
