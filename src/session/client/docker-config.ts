import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** One registry's credentials as docker's config.json stores them (the `auth` field decoded). */
export interface AuthEntry {
  username?: string;
  password?: string;
  identityToken?: string;
  registryToken?: string;
}

export interface DockerConfig {
  /** Where it was read from (for messages). */
  path: string;
  auths: Record<string, AuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

/** $DOCKER_CONFIG, else ~/.docker (docker/cli's config.Dir). */
export function dockerConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_CONFIG || join(homedir(), '.docker');
}

/**
 * Reads config.json as docker/cli's LoadDefaultConfigFile: a missing file is an empty config;
 * an unreadable or malformed one is reported through `warn` and treated as empty, so a build
 * that needs no credentials still runs.
 */
export function loadDockerConfig(opts: { dir?: string; warn?: (msg: string) => void } = {}): DockerConfig {
  const path = join(opts.dir ?? dockerConfigDir(), 'config.json');
  const empty: DockerConfig = { path, auths: {} };
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') opts.warn?.(`WARNING: Error loading config file: ${path}: ${(err as Error).message}`);
    return empty;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    opts.warn?.(`WARNING: Error loading config file: ${path}: ${(err as Error).message}`);
    return empty;
  }
  if (typeof raw !== 'object' || raw === null) return empty;
  const o = raw as Record<string, unknown>;
  const auths: Record<string, AuthEntry> = {};
  if (typeof o.auths === 'object' && o.auths !== null) {
    for (const [host, v] of Object.entries(o.auths as Record<string, unknown>)) {
      if (typeof v !== 'object' || v === null) continue;
      const e = v as Record<string, unknown>;
      const entry: AuthEntry = {};
      if (typeof e.username === 'string') entry.username = e.username;
      if (typeof e.password === 'string') entry.password = e.password;
      if (typeof e.auth === 'string' && e.auth) {
        const dec = Buffer.from(e.auth, 'base64').toString('utf8');
        const i = dec.indexOf(':');
        if (i < 0) {
          opts.warn?.(`WARNING: Error loading config file: ${path}: invalid auth configuration file`);
          return empty;
        }
        entry.username = dec.slice(0, i);
        entry.password = dec.slice(i + 1);
      }
      if (typeof e.identitytoken === 'string') entry.identityToken = e.identitytoken;
      if (typeof e.registrytoken === 'string') entry.registryToken = e.registrytoken;
      auths[host] = entry;
    }
  }
  const cfg: DockerConfig = { path, auths };
  if (typeof o.credsStore === 'string' && o.credsStore) cfg.credsStore = o.credsStore;
  if (typeof o.credHelpers === 'object' && o.credHelpers !== null) cfg.credHelpers = o.credHelpers as Record<string, string>;
  return cfg;
}

/** docker/cli's ConvertToHostname: the host part of a legacy `https://host/v1/` key. */
export function convertToHostname(url: string): string {
  let s = url;
  if (s.startsWith('http://')) s = s.slice(7);
  else if (s.startsWith('https://')) s = s.slice(8);
  return s.split('/')[0]!;
}

/**
 * The entry for a registry host: the exact key first, then any key whose host part matches
 * (docker/cli's file store lookup). Docker Hub's registry host is stored under its v1 index URL.
 */
export function lookupAuth(cfg: DockerConfig, host: string): AuthEntry {
  const key = host === 'registry-1.docker.io' ? 'https://index.docker.io/v1/' : host;
  if (Object.hasOwn(cfg.auths, key)) return cfg.auths[key]!;
  for (const [k, v] of Object.entries(cfg.auths)) {
    if (convertToHostname(k) === key) return v;
  }
  return {};
}
