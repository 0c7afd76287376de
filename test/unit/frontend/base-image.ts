/**
 * A canned base image for conversion tests: the config a registry would return for
 * `localhost:5000/busybox` (per platform), so tests need no registry. Shaped like a real
 * BuildKit-built busybox config.
 */
import type { ResolveImageConfigOptions, ResolvedImageConfig } from '../../../src/frontend/dockerfile/convert.js';
import { NotFoundError } from '../../../src/util/errors.js';

export const BASE_INDEX_DIGEST = 'sha256:07eac32576e70ae8ad771287dc8dc6fb731b4d8cf49c3035a3375293286b71a1';

export function baseConfig(arch: string, extra: Record<string, unknown> = {}): Uint8Array {
  const cfg = {
    architecture: arch,
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], WorkingDir: '/', ...extra },
    created: '2026-01-01T00:00:00Z',
    history: [
      { created: '2026-01-01T00:00:00Z', created_by: `COPY busybox-${arch} /bin/busybox # buildkit`, comment: 'buildkit.dockerfile.v0' },
      { created: '2026-01-01T00:00:00Z', created_by: 'CMD ["sh"]', comment: 'buildkit.dockerfile.v0', empty_layer: true },
    ],
    rootfs: { type: 'layers', diff_ids: ['sha256:6808457c6623f804fa5681cbaeb3fede0c28620b2dfdde5329556332c23d7a06'] },
    container_config: { Hostname: 'dropped' },
  };
  return Buffer.from(JSON.stringify(cfg));
}

/** A resolver serving `localhost:5000/busybox` (and a few variants) for any platform; others are not found. */
export function cannedResolver(log?: { ref: string; opts: ResolveImageConfigOptions }[]) {
  return async (ref: string, opts: ResolveImageConfigOptions): Promise<ResolvedImageConfig> => {
    log?.push({ ref, opts });
    if (ref === 'localhost:5000/busybox:latest') return { digest: BASE_INDEX_DIGEST, config: baseConfig(opts.platform.architecture) };
    if (ref === 'localhost:5000/onbuild:latest') {
      return { digest: BASE_INDEX_DIGEST, config: baseConfig(opts.platform.architecture, { OnBuild: ['RUN echo from-onbuild-image', 'ENV TRIGGERED=1'] }) };
    }
    if (ref === 'localhost:5000/empty:latest') {
      return { digest: BASE_INDEX_DIGEST, config: Buffer.from(JSON.stringify({ architecture: opts.platform.architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} })) };
    }
    throw new NotFoundError(`${ref}: not found`);
  };
}
