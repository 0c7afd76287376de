/**
 * A real registry for tests: Debian's docker-registry (distribution v2.8) on 127.0.0.1, with a temp
 * storage dir, optionally htpasswd basic auth, and the busybox test image pushed as busybox:latest
 * (by skopeo, so pull tests do not depend on loom's own push code).
 *
 * The test image is the upstream-built vector (shared/vectors/oci/busybox-multiarch-oci.tar) when it
 * is present: it is byte for byte the image the upstream daemon used to make the expected outputs.
 * Otherwise fixtures/make-base-image.sh builds an equivalent one (same files, modes and owners).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DOCKER_REGISTRY = '/usr/bin/docker-registry';

export interface TestRegistry {
  /** `127.0.0.1:PORT`: use it in references (`${host}/busybox:latest`). */
  host: string;
  /** `http://127.0.0.1:PORT`. */
  url: string;
  port: number;
  /** Where the registry keeps its data. */
  storage: string;
  auth?: { username: string; password: string };
  /** With `tls`: the self-signed certificate, to trust as a CA. */
  caFile?: string;
  stop(): Promise<void>;
}

export interface StartRegistryOptions {
  /** Require these basic credentials (htpasswd, bcrypt). */
  htpasswd?: { username: string; password: string };
  /** A fixed port (e.g. 5000 for the LLB vectors); default a free one. */
  port?: number;
  /** Push the test image as busybox:latest. Default true. */
  pushBaseImage?: boolean;
  /** Serve HTTPS with a fresh self-signed certificate for 127.0.0.1 (its PEM path is returned as `caFile`). */
  tls?: boolean;
}

/** The shared test vectors directory, if this checkout has one (CI: ../shared/vectors). */
export function vectorsDir(): string | undefined {
  const candidates = [process.env.LOOM_VECTORS, join(REPO_ROOT, '../shared/vectors')];
  return candidates.find((d): d is string => !!d && existsSync(join(d, 'README.md')));
}

/** The upstream-made busybox OCI archive from the vectors, if present. */
export function vectorBaseImage(): string | undefined {
  const v = vectorsDir();
  const p = v && join(v, 'oci', 'busybox-multiarch-oci.tar');
  return p && existsSync(p) ? p : undefined;
}

/**
 * A daemon config for the LLB vectors, which name `localhost:5000/busybox`: the daemon reaches
 * registry `r` (plain HTTP) as that host's mirror.
 */
export function vectorsRegistryConfig(r: TestRegistry): string {
  return [
    `[registry."localhost:5000"]`,
    `  mirrors = ["${r.host}"]`,
    `[registry."${r.host}"]`,
    `  http = true`,
    '',
  ].join('\n');
}

/** The fixture script's cache dir (outside the repo so nothing generated lands in git). */
export function fixtureCacheDir(): string {
  return process.env.LOOM_FIXTURE_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? tmpdir(), '.cache'), 'loom-fixtures');
}

/** Runs fixtures/make-base-image.sh (cached) and returns its OCI archive. */
export async function builtBaseImage(): Promise<string> {
  const out = join(fixtureCacheDir(), 'busybox-multiarch-oci.tar');
  if (!existsSync(out)) {
    await run('bash', [join(REPO_ROOT, 'fixtures/make-base-image.sh')], {
      env: { ...process.env, LOOM_FIXTURE_CACHE: fixtureCacheDir() },
      maxBuffer: 16 << 20,
    });
  }
  return out;
}

/** The OCI archive pushed as busybox:latest: the vector when present, else the script's image. */
export async function baseImageArchive(): Promise<string> {
  return vectorBaseImage() ?? (await builtBaseImage());
}

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? ok(addr.port) : fail(new Error('no port'))));
    });
  });
}

/** A bcrypt htpasswd line (docker-registry accepts only bcrypt), made with the system's crypt(3) via perl. */
async function htpasswdLine(username: string, password: string): Promise<string> {
  const salt = '$2b$05$' + Array.from({ length: 22 }, (_, i) => './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'[(i * 7 + 3) % 64]).join('');
  const { stdout } = await run('perl', ['-e', 'print crypt($ARGV[0], $ARGV[1])', password, salt]);
  if (!stdout.startsWith('$2b$')) throw new Error(`perl crypt() does not support bcrypt here: ${stdout}`);
  return `${username}:${stdout}\n`;
}

async function waitUntilUp(url: string, proc: ChildProcess, logs: () => string, caFile?: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  const ca = caFile ? readFileSync(caFile, 'utf8') : undefined;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`docker-registry exited with ${proc.exitCode}: ${logs()}`);
    try {
      const status = await new Promise<number>((ok, fail) => {
        const req = (url.startsWith('https:') ? httpsGet : httpGet)(`${url}/v2/`, { ca }, (res) => {
          res.resume();
          ok(res.statusCode ?? 0);
        });
        req.on('error', fail);
      });
      if (status === 200 || status === 401) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${url}: ${logs()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Copies an OCI archive into the registry with skopeo, all platforms, digests preserved; with
 * `arch`, that platform's image alone (a single-platform image).
 */
export async function skopeoPush(archive: string, dest: string, opts?: { creds?: { username: string; password: string }; arch?: string }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'loom-skopeo-'));
  try {
    const policy = join(dir, 'policy.json');
    writeFileSync(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    const args = ['--policy', policy, 'copy', ...(opts?.arch ? ['--override-arch', opts.arch] : ['--all']), '--preserve-digests', '--dest-tls-verify=false'];
    if (opts?.creds) args.push('--dest-creds', `${opts.creds.username}:${opts.creds.password}`);
    args.push(`oci-archive:${archive}`, `docker://${dest}`);
    await run('skopeo', args, { env: { ...process.env, TMPDIR: dir } });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** skopeo inspect of a registry image: `--raw` gives the manifest bytes, else its JSON summary. */
export async function skopeoInspect(
  ref: string,
  opts?: { raw?: boolean; config?: boolean; creds?: { username: string; password: string }; platform?: { os: string; arch: string } },
): Promise<string> {
  const args: string[] = [];
  if (opts?.platform) args.push('--override-os', opts.platform.os, '--override-arch', opts.platform.arch);
  args.push('inspect', '--tls-verify=false');
  if (opts?.raw) args.push('--raw');
  if (opts?.config) args.push('--config');
  if (opts?.creds) args.push('--creds', `${opts.creds.username}:${opts.creds.password}`);
  args.push(`docker://${ref}`);
  const { stdout } = await run('skopeo', args, { maxBuffer: 16 << 20 });
  return stdout;
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<TestRegistry> {
  if (!existsSync(DOCKER_REGISTRY)) throw new Error(`${DOCKER_REGISTRY} is missing: apt-get install docker-registry`);
  const dir = mkdtempSync(join(tmpdir(), 'loom-registry-'));
  const storage = join(dir, 'data');
  const port = opts.port ?? (await freePort());
  const lines = [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  let caFile: string | undefined;
  if (opts.tls) {
    caFile = join(dir, 'cert.pem');
    await run('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', caFile,
    ]);
    lines.push('  tls:', `    certificate: ${caFile}`, `    key: ${join(dir, 'key.pem')}`);
  }
  if (opts.htpasswd) {
    writeFileSync(join(dir, 'htpasswd'), await htpasswdLine(opts.htpasswd.username, opts.htpasswd.password));
    lines.push('auth:', '  htpasswd:', '    realm: loom-test', `    path: ${join(dir, 'htpasswd')}`);
  }
  writeFileSync(join(dir, 'config.yml'), lines.join('\n') + '\n');

  const proc = spawn(DOCKER_REGISTRY, ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
  proc.stderr!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-4000)));
  const exited = new Promise<void>((ok) => proc.once('exit', () => ok()));

  const host = `127.0.0.1:${port}`;
  const url = `${opts.tls ? 'https' : 'http'}://${host}`;
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitUntilUp(url, proc, () => output, caFile);
    if (opts.pushBaseImage !== false) {
      await skopeoPush(await baseImageArchive(), `${host}/busybox:latest`, { creds: opts.htpasswd });
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { host, url, port, storage, ...(opts.htpasswd ? { auth: opts.htpasswd } : {}), ...(caFile ? { caFile } : {}), stop };
}
