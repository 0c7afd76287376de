import { describe, expect, it } from 'vitest';
import {
  defaultPlatform,
  formatPlatform,
  normalizePlatform,
  orderByPlatform,
  parsePlatform,
  platformMatcher,
  platformsEqual,
  type Platform,
} from '../../../src/util/platform.js';
import {
  convertLayerMediaType,
  isNondistributable,
  layerCompression,
  MediaType,
} from '../../../src/util/media-types.js';

const p = (os: string, architecture: string, variant?: string): Platform => ({ os, architecture, ...(variant ? { variant } : {}) });

describe('platform parsing and normalization (containerd rules)', () => {
  it('parses and formats os/arch/variant', () => {
    expect(parsePlatform('linux/amd64')).toEqual(p('linux', 'amd64'));
    expect(parsePlatform('linux/arm64/v8')).toEqual(p('linux', 'arm64', 'v8'));
    expect(parsePlatform('linux/aarch64')).toEqual(p('linux', 'arm64'));
    expect(parsePlatform('linux/x86_64')).toEqual(p('linux', 'amd64'));
    expect(parsePlatform('linux/armhf')).toEqual(p('linux', 'arm')); // v7 is arm's default: dropped
    expect(parsePlatform('linux/arm')).toEqual(p('linux', 'arm'));
    expect(parsePlatform('linux/arm/7')).toEqual(p('linux', 'arm', 'v7'));
    expect(parsePlatform('linux/armel')).toEqual(p('linux', 'arm', 'v6'));
    expect(parsePlatform('linux/i386')).toEqual(p('linux', '386'));
    expect(parsePlatform('Linux/AMD64')).toEqual(p('linux', 'amd64'));
    expect(parsePlatform('linux')).toEqual({ ...defaultPlatform(), os: 'linux' });
    expect(parsePlatform('arm64').architecture).toBe('arm64');
    expect(formatPlatform(parsePlatform('linux/arm64/v8'))).toBe('linux/arm64/v8');
    expect(formatPlatform(p('linux', 'amd64'))).toBe('linux/amd64');
    expect(formatPlatform(p('', ''))).toBe('unknown');
  });

  it('rejects bad specifiers naming them', () => {
    expect(() => parsePlatform('linux/*')).toThrow(/"linux\/\*": wildcards not yet supported/);
    expect(() => parsePlatform('linux/am d64')).toThrow(/"am d64" is an invalid component/);
    expect(() => parsePlatform('a/b/c/d')).toThrow(/cannot parse platform specifier/);
    expect(() => parsePlatform('nonsense')).toThrow(/unknown operating system or architecture/);
  });

  it('normalizes as containerd: arm64/v8 is arm64, arm is arm/v7, amd64/v1 is amd64', () => {
    expect(normalizePlatform(p('linux', 'arm64', 'v8'))).toEqual(p('linux', 'arm64'));
    expect(normalizePlatform(p('linux', 'aarch64'))).toEqual(p('linux', 'arm64'));
    expect(normalizePlatform(p('linux', 'arm'))).toEqual(p('linux', 'arm', 'v7'));
    expect(normalizePlatform(p('linux', 'amd64', 'v1'))).toEqual(p('linux', 'amd64'));
    expect(normalizePlatform(p('linux', 'amd64', 'v3'))).toEqual(p('linux', 'amd64', 'v3'));
    expect(platformsEqual(p('linux', 'arm64'), p('linux', 'arm64', 'v8'))).toBe(true);
  });

  it('gives the host platform, normalized', () => {
    const host = defaultPlatform();
    expect(host.os).toBe('linux');
    expect(host.architecture).toBe(process.arch === 'x64' ? 'amd64' : process.arch);
  });
});

describe('platform matching', () => {
  it('matches arm64 with arm64/v8 and prefers the exact platform', () => {
    const m = platformMatcher(p('linux', 'arm64'));
    expect(m.match(p('linux', 'arm64', 'v8'))).toBe(true);
    expect(m.match(p('linux', 'arm64'))).toBe(true);
    expect(m.match(p('linux', 'arm', 'v7'))).toBe(true); // arm64 runs 32-bit arm, as a fallback
    expect(m.match(p('linux', 'amd64'))).toBe(false);
    expect(m.less(p('linux', 'arm64'), p('linux', 'arm', 'v7'))).toBe(true);
    expect(m.less(p('linux', 'arm', 'v7'), p('linux', 'arm64'))).toBe(false);
  });

  it('lets amd64 fall back to 386 and amd64/v3 to v2', () => {
    const m = platformMatcher(p('linux', 'amd64', 'v3'));
    expect(m.match(p('linux', 'amd64', 'v2'))).toBe(true);
    expect(m.match(p('linux', 'amd64'))).toBe(true);
    expect(m.match(p('linux', '386'))).toBe(true);
    expect(m.match(p('linux', 'amd64', 'v4'))).toBe(false);
    expect(platformMatcher(p('linux', 'amd64')).match(p('linux', 'amd64', 'v2'))).toBe(false);
    expect(platformMatcher(p('linux', 'amd64')).match(p('windows', 'amd64'))).toBe(false);
  });

  it('picks the best index entry; entries without a platform come last', () => {
    const entries = [
      { id: 'none' },
      { id: 'armv7', platform: p('linux', 'arm', 'v7') },
      { id: 'amd64', platform: p('linux', 'amd64') },
      { id: 'arm64v8', platform: p('linux', 'arm64', 'v8') },
      { id: 'attest', platform: p('unknown', 'unknown') },
    ];
    expect(orderByPlatform(entries, p('linux', 'arm64')).map((e) => e.id)).toEqual(['arm64v8', 'armv7', 'none']);
    expect(orderByPlatform(entries, parsePlatform('linux/arm64/v8')).map((e) => e.id)).toEqual(['arm64v8', 'armv7', 'none']);
    expect(orderByPlatform(entries, p('linux', 'amd64')).map((e) => e.id)).toEqual(['amd64', 'none']);
    expect(orderByPlatform(entries, p('linux', 's390x')).map((e) => e.id)).toEqual(['none']);
  });
});

describe('media types', () => {
  it('knows layer compressions and converts between families', () => {
    expect(layerCompression(MediaType.OciLayerGzip)).toBe('gzip');
    expect(layerCompression(MediaType.DockerLayerZstd)).toBe('zstd');
    expect(layerCompression(MediaType.OciLayer)).toBe('uncompressed');
    expect(layerCompression(MediaType.OciManifest)).toBeUndefined();
    expect(convertLayerMediaType(MediaType.DockerLayerGzip, true)).toBe(MediaType.OciLayerGzip);
    expect(convertLayerMediaType(MediaType.OciLayerGzip, false)).toBe(MediaType.DockerLayerGzip);
    expect(convertLayerMediaType(MediaType.OciLayerZstd, false)).toBe(MediaType.DockerLayerZstd);
    expect(convertLayerMediaType(MediaType.DockerForeignLayerGzip, true)).toBe(MediaType.OciLayerNondistributableGzip);
    expect(convertLayerMediaType(MediaType.OciConfig, false)).toBe(MediaType.OciConfig);
    expect(isNondistributable(MediaType.DockerForeignLayerGzip)).toBe(true);
    expect(isNondistributable(MediaType.OciLayerGzip)).toBe(false);
  });
});
