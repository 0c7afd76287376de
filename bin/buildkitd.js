#!/usr/bin/env node
// Entry point of the loom daemon; the code is TypeScript compiled to dist/ by `npm run build`.
import '../dist/cli/buildkitd.js';
