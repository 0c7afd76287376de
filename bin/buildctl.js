#!/usr/bin/env node
// `node bin/buildctl.js`: loom's buildctl (see bin/buildctl.cjs; the installed command is bin/buildctl).
import './buildctl.cjs';
