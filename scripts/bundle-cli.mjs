#!/usr/bin/env node
// Part of `npm run build`, after tsc: bundles loom's buildctl (dist/cli/buildctl.js and everything
// it imports, dependencies included) into one file, dist/buildctl.mjs. A client process pays its
// start-up on every command, and Node resolving, reading and compiling ~230 separate ES modules
// was most of it (see bench/README.md). bin/buildctl.js runs the bundle when it is at least as new
// as tsc's output and falls back to dist/cli/buildctl.js otherwise, so a bare `tsc` never leaves a
// stale client behind. Native addons stay outside the bundle.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(repo, 'dist', 'cli', 'buildctl.js')],
  outfile: join(repo, 'dist', 'buildctl.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['node-pty', 'better-sqlite3'],
  // The CommonJS dependencies (grpc-js) call require() for Node's own modules.
  banner: { js: "import { createRequire as __loomRequire } from 'node:module'; const require = __loomRequire(import.meta.url);" },
  legalComments: 'none',
  logLevel: 'warning',
});
