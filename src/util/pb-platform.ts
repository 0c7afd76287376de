import { create } from '@bufbuild/protobuf';
import { PlatformSchema, type Platform as PbPlatform } from '../gen/buildkit/ops_pb.js';
import type { Platform } from './platform.js';

/** OCI's platform object (lower-case JSON names) to LLB's pb.Platform and back. */
export function toPbPlatform(p: Platform): PbPlatform {
  return create(PlatformSchema, {
    OS: p.os,
    Architecture: p.architecture,
    Variant: p.variant ?? '',
    OSVersion: p['os.version'] ?? '',
    OSFeatures: p['os.features'] ?? [],
  });
}

export function fromPbPlatform(p: PbPlatform): Platform {
  const out: Platform = { os: p.OS, architecture: p.Architecture };
  if (p.Variant) out.variant = p.Variant;
  if (p.OSVersion) out['os.version'] = p.OSVersion;
  if (p.OSFeatures.length) out['os.features'] = [...p.OSFeatures];
  return out;
}
