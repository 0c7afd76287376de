import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/**
 * The directory of loom's package.json: the repository or the installed package. Found by walking
 * up from this module, so it holds whether the code runs from dist/ file by file or from a bundle
 * (dist/buildctl.cjs) one level higher.
 */
export function packageRoot(): string {
  if (cached !== undefined) return cached;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'loom') return (cached = dir);
    } catch {
      /* not here */
    }
    if (dirname(dir) === dir) return (cached = join(start, '..', '..'));
  }
}
