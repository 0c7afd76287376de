// loom's buildctl, the program: bin/buildctl (the installed command) runs this file, and
// bin/buildctl.js is the same for `node bin/buildctl.js`. CommonJS, as the bundle it loads: an ES
// module entry costs every command Node's ES module loader (~8 ms here).
//
// `npm run build` compiles the TypeScript to dist/ and bundles the client into one script,
// dist/buildctl.cjs; this runs the bundle when it is at least as new as tsc's output (else
// dist/cli/buildctl-bin.js, so a bare `tsc` never leaves a stale client), and keeps V8's compiled
// code of it in dist/buildctl.cjs.<mtime>-<size>.<command>.v8cache: a client pays its start-up on
// every command, and compiling the bundle was the largest part of it. A cache is named by the
// bundle's mtime and size (V8 itself checks little more than the source's length) and by the
// command (it holds the functions that command's run compiled, so `build` has its own), is written
// once, atomically, by the first run that finds none or finds it rejected, and a cache that cannot
// be written (a read-only install) only costs the compile.
'use strict';
const { readFileSync, renameSync, statSync, writeFileSync } = require('node:fs');
const Module = require('node:module');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');
const vm = require('node:vm');

// bin/buildctl moved NODE_EXTRA_CA_CERTS aside so that Node would not load it at start-up; the
// processes the client starts get it back (client/address.ts reads the file itself when a TLS
// connection needs the default roots).
if (process.env.LOOM_EXTRA_CA_CERTS && !process.env.NODE_EXTRA_CA_CERTS) process.env.NODE_EXTRA_CA_CERTS = process.env.LOOM_EXTRA_CA_CERTS;

const dist = join(__dirname, '..', 'dist');
const stat = (path) => statSync(path, { throwIfNoEntry: false }) ?? null;

const COMMANDS = new Set(['build', 'b', 'du', 'prune', 'debug', 'dial-stdio']);
const bundlePath = join(dist, 'buildctl.cjs');
const bundle = stat(bundlePath);
const compiledPath = join(dist, 'cli', 'buildctl-bin.js');
const compiled = stat(compiledPath);
if (!bundle || (compiled && bundle.mtimeMs < compiled.mtimeMs)) {
  import(pathToFileURL(compiledPath).href).catch((err) => {
    process.stderr.write(`error: cannot load loom's buildctl: ${err.message} (run npm run build)\n`);
    process.exit(1);
  });
} else {
  const command = process.argv.slice(2).find((a) => COMMANDS.has(a)) ?? 'other';
  const cachePath = `${bundlePath}.${Math.trunc(bundle.mtimeMs)}-${bundle.size}.${command === 'b' ? 'build' : command}.v8cache`;
  let cachedData;
  try {
    cachedData = readFileSync(cachePath);
  } catch {
    /* first run of this bundle */
  }
  // ASCII (scripts/bundle-cli.mjs checks): read as latin1, without decoding UTF-8.
  const script = new vm.Script(Module.wrap(readFileSync(bundlePath, 'latin1')), { filename: bundlePath, cachedData });
  if (!cachedData || script.cachedDataRejected) {
    process.once('exit', () => {
      try {
        const tmp = `${cachePath}.${process.pid}.tmp`;
        writeFileSync(tmp, script.createCachedData());
        renameSync(tmp, cachePath);
      } catch {
        /* read-only: run uncached */
      }
    });
  }
  const mod = new Module(bundlePath, null);
  mod.filename = bundlePath;
  mod.paths = Module._nodeModulePaths(dist);
  script.runInThisContext().call(mod.exports, mod.exports, Module.createRequire(bundlePath), mod, bundlePath, dist);
}
