/**
 * Starts loom's own daemon (bin/buildkitd.js, the compiled dist/) on a temporary root and unix
 * socket, and drives it with loom's buildctl (bin/buildctl), as a user would. Both need
 * `npm run build` first (the test command does it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './registry.js';

export const BUILDKITD = join(REPO_ROOT, 'bin', 'buildkitd.js');
/** loom's buildctl as installed: bin/buildctl, the shell wrapper that runs bin/buildctl.cjs. */
export const BUILDCTL = join(REPO_ROOT, 'bin', 'buildctl');

export interface TestDaemon {
  addr: string;
  root: string;
  dir: string;
  proc: ChildProcess;
  logs(): string;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export interface StartDaemonOptions {
  /** buildkitd.toml contents. */
  config?: string;
  args?: string[];
  /** Reuse a state dir (restart tests). */
  root?: string;
  dir?: string;
}

export async function startDaemon(opts: StartDaemonOptions = {}): Promise<TestDaemon> {
  if (!existsSync(join(REPO_ROOT, 'dist', 'cli', 'buildkitd.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'loom-daemon-'));
  const root = opts.root ?? join(dir, 'root');
  const sock = join(dir, 'buildkitd.sock');
  const args = ['--root', root, '--addr', `unix://${sock}`, ...(opts.args ?? [])];
  if (opts.config !== undefined) {
    const cfg = join(dir, 'buildkitd.toml');
    writeFileSync(cfg, opts.config);
    args.push('--config', cfg);
  }
  // A socket left by a killed daemon must not pass for the new one being up.
  rmSync(sock, { force: true });
  const proc = spawn(process.execPath, [BUILDKITD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOOM_LOG_LEVEL: 'debug' } });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 20_000;
  while (!existsSync(sock)) {
    if (proc.exitCode !== null) throw new Error(`buildkitd exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`buildkitd did not listen within 20s:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    addr: `unix://${sock}`,
    root,
    dir,
    proc,
    logs: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      return exited;
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (proc.exitCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** Removes a test's directory, first unmounting anything a daemon left mounted under it. */
export function removeDir(dir: string): void {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(dir + '/')))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  rmSync(dir, { recursive: true, force: true });
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs loom's buildctl against `addr`, with optional stdin bytes. */
export function buildctl(addr: string, args: string[], opts: { stdin?: Uint8Array; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult> {
  return run(BUILDCTL, ['--addr', addr, ...args], opts);
}

export function run(cmd: string, args: string[], opts: { stdin?: Uint8Array; timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
    // A command that exits without reading stdin closes the pipe: that is not a test failure.
    p.stdin.on('error', () => {});
    p.stdin.end(opts.stdin ?? Buffer.alloc(0));
  });
}

/**
 * A tar's listing in the vectors' format: `mode owner/group size path [-> target]`, sorted by path,
 * busybox applet links under bin/, sbin/, usr/bin/, usr/sbin/ left out (see shared/vectors/README.md).
 */
export async function tarListing(file: string): Promise<string> {
  const r = await run('tar', ['-tvf', file, '--numeric-owner']);
  if (r.code !== 0) throw new Error(`tar -tvf ${file}: ${r.stderr}`);
  const rows = r.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(/\s+/);
      const rest = f.slice(5).join(' ');
      return { path: rest.replace(/ (->|link to) .*$/, ''), row: `${f[0]} ${f[1]} ${f[2]} ${rest}`.trimEnd() };
    })
    .filter((r) => !/^[lh]/.test(r.row) || !/^(bin|sbin|usr\/bin|usr\/sbin)\/[^/]+$/.test(r.path));
  rows.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return rows.map((r) => r.row).join('\n') + '\n';
}
