// Run by store.test.ts in a child process (vite-node): starts an ingest, writes half a blob, reports
// the ingest file, then waits to be SIGKILLed mid-write.
import { ContentStore } from '../../../src/content/store.js';

const [root, hexDigest, sizeStr] = process.argv.slice(2);
const store = new ContentStore({ root: root! });
const w = await store.ingest({ digest: `sha256:${hexDigest}`, size: Number(sizeStr) });
await w.write(Buffer.alloc(Number(sizeStr) / 2, 0x61));
process.stdout.write('half-written\n');
setInterval(() => undefined, 1000);
