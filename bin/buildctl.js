#!/usr/bin/env node
// Entry point of loom's buildctl; the code is TypeScript compiled to dist/ by `npm run build`, which
// also bundles it into dist/buildctl.mjs (one file starts much faster than ~230 modules). The bundle
// is used only when it is at least as new as tsc's output of the client's entry module.
import { statSync } from 'node:fs';

const mtime = (rel) => {
  try {
    return statSync(new URL(rel, import.meta.url)).mtimeMs;
  } catch {
    return -1;
  }
};
const bundled = mtime('../dist/buildctl.mjs');
await import(bundled >= 0 && bundled >= mtime('../dist/cli/buildctl.js') ? '../dist/buildctl.mjs' : '../dist/cli/buildctl.js');
