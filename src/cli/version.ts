import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { VersionInfo } from '../control/types.js';
import { packageRoot } from '../util/package-root.js';

export const MODULE = 'github.com/loom-build/loom';

/** loom's version: package.json's, and the git revision of the checkout it runs from when known. */
export function versionInfo(): VersionInfo {
  const root = packageRoot();
  let version = '0.0.0';
  try {
    version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    /* keep the placeholder */
  }
  let revision = process.env.LOOM_REVISION ?? '';
  if (!revision) {
    try {
      revision = execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      revision = 'unknown';
    }
  }
  return { package: MODULE, version: `v${version}`, revision: revision || 'unknown' };
}
