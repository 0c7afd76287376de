#!/usr/bin/env node
// Part of `npm run build`, after tsc: bundles loom's buildctl (dist/cli/buildctl-bin.js and all it
// imports, dependencies included) into one CommonJS script, dist/buildctl.cjs. A client pays its
// start-up on every command: Node resolving, reading and compiling ~230 separate ES modules was
// most of it, and one script also lets bin/buildctl.cjs keep V8's compiled code of it between runs
// (see bin/buildctl.cjs). Native addons stay outside the bundle.
import { build } from 'esbuild';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');

// `@bufbuild/protobuf/wkt` re-exports every well-known type, and loading each of their files builds
// its descriptors (api, type, struct, plugin, the language features...): a few ms of every command
// for files the client never uses. The bundle takes the few loom uses from their own modules.
function wktSubset() {
  const esm = join(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', '@bufbuild', 'protobuf', 'dist', 'esm', 'wkt');
  const files = ['timestamp.js', 'duration.js', 'any.js', 'google/protobuf/any_pb.js', 'google/protobuf/duration_pb.js', 'google/protobuf/empty_pb.js', 'google/protobuf/field_mask_pb.js', 'google/protobuf/timestamp_pb.js'];
  return {
    name: 'wkt-subset',
    setup(b) {
      b.onResolve({ filter: /^@bufbuild\/protobuf\/wkt$/ }, () => ({ path: 'wkt-subset', namespace: 'wkt-subset' }));
      b.onLoad({ filter: /.*/, namespace: 'wkt-subset' }, () => ({
        contents: files.map((f) => `export * from ${JSON.stringify(join(esm, f))};`).join('\n'),
        resolveDir: esm,
        loader: 'js',
      }));
    },
  };
}
// Every generated `*_pb.js` module builds its descriptors when it is loaded, and the first one to do
// so boots descriptor.proto itself: ~10 ms of every command that imports any of them, although a
// build's hot messages (the Control calls, filesync packets, the health check) have hand codecs and
// need no descriptor. In the bundle, each top-level descriptor of such a module is made on its first
// use instead: `export const X = fileDesc(...)` (or messageDesc, enumDesc, serviceDesc, extDesc,
// boot) becomes a proxy that calls it then. The generated code writes each on one line; a module
// where one does not match is left as it is. LOOM_TRACE_DESCRIPTORS=1 prints each descriptor as it
// is made (test/e2e checks that a cached build makes none).
const LAZY_DESC = /^export const (\w+) = \/\*@__PURE__\*\/ (fileDesc|messageDesc|enumDesc|serviceDesc|extDesc|boot)\((.*)\);$/gm;
function lazyDescriptors() {
  const helper = `
const trace = process.env.LOOM_TRACE_DESCRIPTORS === '1';
export function lazyDesc(name, make) {
  let real;
  const get = () => {
    if (real === undefined) {
      if (trace) process.stderr.write('loom: descriptor ' + name + '\\n');
      real = make();
    }
    return real;
  };
  return new Proxy({}, {
    get: (_, k) => Reflect.get(get(), k),
    has: (_, k) => Reflect.has(get(), k),
    set: (_, k, v) => Reflect.set(get(), k, v),
    ownKeys: () => Reflect.ownKeys(get()),
    getOwnPropertyDescriptor: (_, k) => {
      const d = Reflect.getOwnPropertyDescriptor(get(), k);
      if (d) d.configurable = true;
      return d;
    },
    getPrototypeOf: () => Reflect.getPrototypeOf(get()),
  });
}
`;
  return {
    name: 'lazy-descriptors',
    setup(b) {
      b.onResolve({ filter: /^loom-lazy-desc$/ }, () => ({ path: 'loom-lazy-desc', namespace: 'loom-lazy-desc' }));
      b.onLoad({ filter: /.*/, namespace: 'loom-lazy-desc' }, () => ({ contents: helper, loader: 'js' }));
      b.onLoad({ filter: /_pb\.js$/ }, (args) => {
        const src = readFileSync(args.path, 'utf8');
        let n = 0;
        const out = src.replace(LAZY_DESC, (_, name, fn, rest) => {
          n++;
          return `export const ${name} = /*@__PURE__*/ __loomLazyDesc(${JSON.stringify(name)}, () => ${fn}(${rest}));`;
        });
        if (n === 0) return undefined;
        return { contents: `import { lazyDesc as __loomLazyDesc } from 'loom-lazy-desc';\n${out}`, loader: 'js', resolveDir: dirname(args.path) };
      });
    },
  };
}
// Compiled-code caches of an earlier bundle are useless now.
for (const f of readdirSync(dist)) if (/^buildctl\.cjs\..*\.v8cache$/.test(f) || f === 'buildctl.mjs') rmSync(join(dist, f), { force: true });
await build({
  entryPoints: [join(dist, 'cli', 'buildctl-bin.js')],
  outfile: join(dist, 'buildctl.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['node-pty', 'better-sqlite3'],
  // The ES modules' import.meta.url, for the few that find files next to them (util/package-root.ts).
  define: { 'import.meta.url': '__loomModuleUrl' },
  banner: { js: "const __loomModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  legalComments: 'none',
  // Smaller source to read and parse on every command (~10 ms here); names are kept, as error
  // classes and stack traces (--debug) show them.
  // (LOOM_NO_MINIFY=1 leaves it readable, for CPU profiles of the client.)
  minify: !process.env.LOOM_NO_MINIFY,
  keepNames: true,
  logLevel: 'warning',
  plugins: [wktSubset(), lazyDescriptors()],
});
// bin/buildctl.cjs reads the bundle as latin1, which is only right for ASCII (and cheaper than
// decoding UTF-8 on every command): a non-ASCII character in a source must be written as an escape.
const bundled = readFileSync(join(dist, 'buildctl.cjs'));
const at = bundled.findIndex((b) => b > 0x7f);
if (at >= 0) {
  const line = bundled.subarray(0, at).toString('latin1').split('\n').length;
  console.error(`bundle-cli: dist/buildctl.cjs line ${line} has a non-ASCII character; write it as an escape (\\uXXXX) in its source`);
  process.exit(1);
}
