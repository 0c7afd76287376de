#!/usr/bin/env node
// Entry point of loom's buildctl; the code is TypeScript compiled to dist/ by `npm run build`.
import '../dist/cli/buildctl.js';
