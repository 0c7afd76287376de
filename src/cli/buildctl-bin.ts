/**
 * loom's buildctl as a program: runs the command line, then exits. bin/buildctl.cjs loads this
 * module, or the bundle scripts/bundle-cli.mjs makes of it (no top-level await, so the bundle can
 * be a CommonJS script that V8 caches compiled).
 */
import { exitWhenFlushed, main } from './buildctl.js';

void main(process.argv.slice(2)).then(exitWhenFlushed);
