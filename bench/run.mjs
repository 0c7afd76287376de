#!/usr/bin/env node
// npm run bench: whole-process timings of builds through loom's real socket.
// Starts its own daemon (temporary root) and a docker-registry with the test base image, then times
// each workload as a whole `buildctl build` process, several runs, and prints min/median/max.
// Needs root and `npm run build` (done by the npm script's pre step), like the integration tests.
//   npm run bench [-- --runs N] [-- --only NAME]
//   LOOM_BENCH_PROGRESS=/tmp/progress.txt npm run bench  (keep every build's progress output)
//   LOOM_BENCH_DAEMON_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' npm run bench  (profile the daemon)
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1] || 5) || 5;
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;


const work = mkdtempSync(join(tmpdir(), 'loom-bench-'));
const cleanup = [];
process.on('exit', () => {
  for (const c of cleanup.reverse()) {
    try {
      c();
    } catch {
      /* best effort */
    }
  }
  rmSync(work, { recursive: true, force: true });
});
process.on('SIGINT', () => process.exit(130));

function sh(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr || r.stdout}`);
  return r.stdout;
}

async function freePort() {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// A registry with the base image (the vectors' upstream-made busybox when present, else the fixture).
const regPort = await freePort();
const regDir = join(work, 'registry');
mkdirSync(regDir);
writeFileSync(
  join(regDir, 'config.yml'),
  `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${regDir}/data\nhttp:\n  addr: 127.0.0.1:${regPort}\n`,
);
const reg = spawn('docker-registry', ['serve', join(regDir, 'config.yml')], { stdio: 'ignore' });
cleanup.push(() => reg.kill());
for (let i = 0; i < 100; i++) {
  const ok = spawnSync('curl', ['-sf', `http://127.0.0.1:${regPort}/v2/`]).status === 0;
  if (ok) break;
  await new Promise((r) => setTimeout(r, 100));
}
const vectorImage = join(repo, '..', 'shared', 'vectors', 'oci', 'busybox-multiarch-oci.tar');
let image = vectorImage;
try {
  readFileSync(vectorImage, { flag: 'r' }).length;
} catch {
  sh(join(repo, 'fixtures', 'make-base-image.sh'), []);
  image = join(process.env.LOOM_FIXTURE_CACHE ?? join(process.env.HOME ?? '/root', '.cache', 'loom-fixtures'), 'busybox-multiarch-oci.tar');
}
sh('skopeo', ['copy', '--quiet', '--all', '--dest-tls-verify=false', `oci-archive:${image}`, `docker://127.0.0.1:${regPort}/busybox:latest`]);

// The daemon.
const sock = join(work, 'buildkitd.sock');
const addr = `unix://${sock}`;
const cfg = join(work, 'buildkitd.toml');
writeFileSync(cfg, `[registry."localhost:5000"]\n  mirrors = ["127.0.0.1:${regPort}"]\n[registry."127.0.0.1:${regPort}"]\n  http = true\n`);
// LOOM_BENCH_DAEMON_NODE_ARGS adds node flags to the daemon (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`
// to see where a workload's time goes; the profile is written when the daemon stops).
const daemonNodeArgs = (process.env.LOOM_BENCH_DAEMON_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
// LOOM_BENCH_BUILDKITD=PATH times another daemon taking buildkitd's flags instead of loom's (for a
// side-by-side figure on the same machine); LOOM_BENCH_BUILDCTL=PATH drives the builds with another
// client taking buildctl's flags. Neither is needed: by default both are loom's own.
const otherDaemon = process.env.LOOM_BENCH_BUILDKITD;
// Cold runs start a daemon on a new, empty root, and the roots are removed only when the bench
// ends: on a file system that scans recently freed inodes when it allocates new ones (ext4 without
// a journal, as this VM's root), creating thousands of files right after deleting thousands
// (`buildctl prune` before the build) costs up to a millisecond of kernel time per file, so a
// prune-then-build figure measures that scan more than the build. LOOM_BENCH_COLD=prune times
// the prune-then-build sequence instead.
const coldByPrune = process.env.LOOM_BENCH_COLD === 'prune';
let daemon;
let roots = 0;
async function startDaemon() {
  const root = join(work, `root${roots++}`);
  rmSync(sock, { force: true });
  daemon = otherDaemon
    ? spawn(otherDaemon, ['--root', root, '--addr', addr, '--config', cfg], { stdio: 'ignore' })
    : spawn(process.execPath, [...daemonNodeArgs, join(repo, 'bin', 'buildkitd.js'), '--root', root, '--addr', addr, '--config', cfg], { stdio: 'ignore' });
  const exited = new Promise((resolve) => daemon.on('exit', resolve));
  daemon.stop = () => {
    daemon.kill('SIGTERM');
    return exited;
  };
  for (let i = 0; i < 200; i++) {
    if (spawnSync(join(repo, 'bin', 'buildctl'), ['--addr', addr, 'debug', 'workers']).status === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  // Whatever a daemon does right after it starts (filling its network namespace pool) is done
  // before a timed build.
  await new Promise((r) => setTimeout(r, 1000));
}
async function coldDaemon() {
  if (coldByPrune) {
    buildctl(['prune', '--all']);
    return;
  }
  await daemon.stop();
  await startDaemon();
}
await startDaemon();
cleanup.push(() => daemon.kill('SIGTERM'));

const client = process.env.LOOM_BENCH_BUILDCTL ? [process.env.LOOM_BENCH_BUILDCTL] : [join(repo, 'bin', 'buildctl')];
function buildctl(argv, stdin) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(client[0], [...client.slice(1), '--addr', addr, ...argv], { input: stdin, encoding: 'utf8', maxBuffer: 64 << 20 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`buildctl ${argv.join(' ')} failed:\n${r.stderr}`);
  // LOOM_BENCH_PROGRESS=FILE appends each build's progress output (per-step times) to FILE.
  if (process.env.LOOM_BENCH_PROGRESS) appendFileSync(process.env.LOOM_BENCH_PROGRESS, `== buildctl ${argv.join(' ')}: ${ms.toFixed(0)} ms\n${r.stderr}\n`);
  return ms;
}

// Workload definitions, made with loom's LLB builder.
const llb = await import(join(repo, 'dist', 'llb', 'builder.js'));
const { toBinary } = await import('@bufbuild/protobuf');
const { DefinitionSchema } = await import(join(repo, 'dist', 'gen', 'buildkit', 'ops_pb.js'));
const def = (state) => Buffer.from(toBinary(DefinitionSchema, llb.marshal(state)));

// A context of 2,000 small files and one 16 MiB file, copied into the busybox image.
const ctx = join(work, 'ctx');
for (let d = 0; d < 20; d++) {
  mkdirSync(join(ctx, 'src', `pkg${d}`), { recursive: true });
  for (let f = 0; f < 100; f++) writeFileSync(join(ctx, 'src', `pkg${d}`, `file${f}.js`), `export const v${f} = ${d * 100 + f};\n`);
}
writeFileSync(join(ctx, 'blob.bin'), randomBytes(16 << 20));
const base = llb.image('localhost:5000/busybox:latest');
const context = llb.local('context', { sharedKeyHint: 'bench' });
const ctxBuild = def(base.file(llb.copy(context, '/', '/app/', { copyDirContentsOnly: true, createDestPath: true })));
const vectorsDir = join(repo, '..', 'shared', 'vectors', 'llb');
let mergeDiff;
try {
  mergeDiff = readFileSync(join(vectorsDir, 'merge-diff.llb'));
} catch {
  mergeDiff = def(llb.merge([base, llb.diff(base, base.file(llb.mkfile('/a.txt', 0o644, 'a')))]));
}

// Dockerfile workloads, through the built-in frontend as buildx and buildctl users run them.
function dockerfileDir(name, dockerfile, files = {}) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Dockerfile'), dockerfile);
  for (const [f, data] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    writeFileSync(join(dir, f), data);
  }
  return dir;
}
const dfBuild = (dir, extra = []) => buildctl(['build', '--frontend', 'dockerfile.v0', '--local', `context=${dir}`, '--local', `dockerfile=${dir}`, ...extra]);
const tenSteps = dockerfileDir('ten', ['FROM localhost:5000/busybox:latest', ...Array.from({ length: 10 }, (_, i) => `RUN echo ${i} > /step${i}`), ''].join('\n'));
// One new step on a cached parent: each run appends `RUN true N` with a new N (a new cache key,
// nothing else changes), next to the same build without it, fully cached.
const trivialBase = dockerfileDir('trivial-base', 'FROM localhost:5000/busybox:latest\nRUN echo base > /base\n');
const trivial = dockerfileDir('trivial', '');
let trivialRun = 0;
const newTrivialStep = () => writeFileSync(join(trivial, 'Dockerfile'), `FROM localhost:5000/busybox:latest\nRUN echo base > /base\nRUN true ${Date.now()}-${trivialRun++}\n`);
const big = dockerfileDir('big', 'FROM localhost:5000/busybox:latest\nRUN head -c 33554432 /dev/urandom > /big.bin\n');
// The service-shaped workload: 2,000 small files and one 16 MiB file, a few RUN steps, COPY --from.
const svcFiles = {};
for (let d = 0; d < 20; d++) for (let f = 0; f < 100; f++) svcFiles[`src/pkg${d}/file${f}.js`] = `export const v${f} = ${d * 100 + f};\n`;
svcFiles['assets/blob.bin'] = randomBytes(16 << 20);
const service = dockerfileDir(
  'service',
  [
    'FROM localhost:5000/busybox:latest AS build',
    'WORKDIR /src',
    'COPY src/ ./src/',
    'RUN find src -type f | wc -l > /count && cat src/pkg0/file0.js > /first',
    'COPY assets/ ./assets/',
    'RUN ls -l assets > /assets.txt',
    'FROM localhost:5000/busybox:latest',
    'COPY --from=build /count /first /assets.txt /out/',
    'COPY --from=build /src/src /app/src',
    'RUN echo ready > /app/ready',
    'CMD ["sh"]',
    '',
  ].join('\n'),
  svcFiles,
);
// COPY --link onto a large stage: the 2,000 files and 16 MiB of the service's context copied in,
// then three small COPY --link steps and a RUN that reads the merged tree; each run changes the
// file of the last COPY --link, so only its copy, its merge and the RUN are built.
const linkFiles = { ...svcFiles, 'link/a': 'a\n', 'link/b': 'b\n', 'link/c': 'c\n' };
const linked = dockerfileDir(
  'linked',
  [
    'FROM localhost:5000/busybox:latest',
    'COPY src/ /src/',
    'COPY assets/ /assets/',
    'COPY --link link/a /a',
    'COPY --link link/b /b',
    'COPY --link link/c /c',
    'RUN cat /a /b /c > /abc',
    '',
  ].join('\n'),
  linkFiles,
);

const out = join(work, 'out.tar');
const workloads = [
  {
    name: 'cold: merge-diff vector (pull, unpack, 2 file ops, diff, merge), tar export',
    before: coldDaemon,
    run: () => buildctl(['build', '--output', `type=tar,dest=${out}`], mergeDiff),
  },
  {
    name: 'warm: merge-diff vector fully cached, tar export',
    before: () => {},
    run: () => buildctl(['build', '--output', `type=tar,dest=${out}`], mergeDiff),
  },
  {
    name: 'context: 2,000 files + 16 MiB copied onto busybox, cold cache, no export',
    before: coldDaemon,
    run: () => buildctl(['build', '--local', `context=${ctx}`], ctxBuild),
  },
  {
    name: 'context: same, fully cached',
    before: () => {},
    run: () => buildctl(['build', '--local', `context=${ctx}`], ctxBuild),
  },
  {
    name: 'exec: 10 RUN steps on busybox, none cached',
    before: () => {},
    run: () => dfBuild(tenSteps, ['--no-cache']),
  },
  {
    name: 'exec: one trivial step (RUN true) on a cached parent, whole build',
    before: newTrivialStep,
    run: () => dfBuild(trivial),
  },
  {
    name: 'exec: a comparable build fully cached (subtract from the line above for the step overhead)',
    before: () => {},
    run: () => dfBuild(trivialBase),
  },
  {
    name: 'exec: one step writing 32 MiB, exported as an OCI archive (layer size below)',
    before: () => {},
    run: () => dfBuild(big, ['--no-cache', '--output', `type=oci,dest=${out}`]),
    after: () => {
      const listing = sh('tar', ['-tvf', out]);
      const sizes = listing.split('\n').filter((l) => l.includes('blobs/sha256/')).map((l) => Number(l.split(/\s+/)[2]));
      return `largest blob ${(Math.max(...sizes) / 1048576).toFixed(1)} MiB`;
    },
  },
  {
    name: 'dockerfile service: cold (2,000 files + 16 MiB context, RUN steps, COPY --from), empty cache',
    before: coldDaemon,
    run: () => dfBuild(service),
  },
  {
    name: 'dockerfile service: fully cached rebuild',
    before: () => {},
    run: () => dfBuild(service),
  },
  {
    name: 'dockerfile service: rebuild after changing one context file',
    before: () => writeFileSync(join(service, 'src', 'pkg7', 'file7.js'), `export const changed = ${Date.now()};\n`),
    run: () => dfBuild(service),
  },
  {
    name: 'dockerfile COPY --link: rebuild after changing the last linked file (stage of 2,000 files + 16 MiB)',
    before: () => writeFileSync(join(linked, 'link', 'c'), `c ${Date.now()}\n`),
    run: () => dfBuild(linked),
  },
  // The team-shared cache: the service workload's cache exported to the registry (a new repository
  // each run, so every blob is uploaded), then imported by a daemon with an empty cache.
  {
    name: 'cache: service build fully cached + export of its cache to the registry (mode=max)',
    before: () => {
      cacheRepo = `127.0.0.1:${regPort}/bench-cache-${++cacheRuns}:svc`;
    },
    run: () => dfBuild(service, ['--export-cache', `type=registry,ref=${cacheRepo},mode=max`]),
    after: () => {
      const [repo, tag] = cacheRepo.slice(cacheRepo.indexOf('/') + 1).split(':');
      const list = JSON.parse(sh('curl', ['-sf', '-H', 'Accept: application/vnd.oci.image.index.v1+json', `http://127.0.0.1:${regPort}/v2/${repo}/manifests/${tag}`]));
      const bytes = list.manifests.reduce((n, m) => n + m.size, 0);
      return `cache ${(bytes / 1048576).toFixed(1)} MiB in ${list.manifests.length - 1} layers + config`;
    },
  },
  {
    name: 'cache: the same build on a daemon with an empty cache, importing that cache',
    before: coldDaemon,
    run: () => dfBuild(service, ['--import-cache', `type=registry,ref=${cacheRepo}`]),
  },
];
let cacheRuns = 0;
let cacheRepo = '';

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0], median: s[Math.floor(s.length / 2)], max: s[s.length - 1] };
};
console.log(`loom bench: ${runs} runs each (after one warm-up), wall time of a whole buildctl process`);
console.log(`daemon: ${otherDaemon ?? 'loom'}; client: ${process.env.LOOM_BENCH_BUILDCTL ?? "loom's buildctl"}; cold: ${coldByPrune ? 'prune --all' : 'a new daemon root'}`);
for (const w of workloads) {
  if (only && !w.name.startsWith(only)) continue;
  await w.before();
  w.run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    await w.before();
    times.push(w.run());
  }
  const s = stats(times);
  const extra = w.after ? `  ${w.after()}` : '';
  console.log(`${w.name}\n  median ${s.median.toFixed(0)} ms  (min ${s.min.toFixed(0)}, max ${s.max.toFixed(0)})${extra}`);
}
process.exit(0);
