import { describe, expect, it } from 'vitest';
import {
  familiarString,
  formatReference,
  ociRefName,
  parseNormalizedNamed,
  parseReference,
} from '../../../src/registry/reference.js';

const HEX = 'a'.repeat(64);

describe('parseReference (docker ParseDockerRef)', () => {
  const cases: Array<[string, string]> = [
    ['busybox', 'docker.io/library/busybox:latest'],
    ['busybox:1.36', 'docker.io/library/busybox:1.36'],
    ['library/busybox', 'docker.io/library/busybox:latest'],
    ['docker.io/busybox', 'docker.io/library/busybox:latest'],
    ['index.docker.io/busybox', 'docker.io/library/busybox:latest'],
    ['docker.io/library/busybox:latest', 'docker.io/library/busybox:latest'],
    ['foo/bar', 'docker.io/foo/bar:latest'],
    ['localhost/x', 'localhost/x:latest'],
    ['localhost:5000/x', 'localhost:5000/x:latest'],
    ['127.0.0.1:5000/a/b/c:v1', '127.0.0.1:5000/a/b/c:v1'],
    ['example.com/foo_bar/baz-qux.x__y:v1.0-rc_1', 'example.com/foo_bar/baz-qux.x__y:v1.0-rc_1'],
    [`busybox@sha256:${HEX}`, `docker.io/library/busybox@sha256:${HEX}`],
    // A tag next to a digest is dropped: the digest is what gets pulled.
    [`localhost:5000/busybox:1@sha256:${HEX}`, `localhost:5000/busybox@sha256:${HEX}`],
  ];
  for (const [input, want] of cases) {
    it(`${input} -> ${want}`, () => {
      expect(formatReference(parseReference(input))).toBe(want);
    });
  }

  it('splits domain, path, tag and digest', () => {
    expect(parseReference('localhost:5000/team/app:v2')).toEqual({ domain: 'localhost:5000', path: 'team/app', tag: 'v2' });
    expect(parseNormalizedNamed(`x:t@sha256:${HEX}`)).toEqual({
      domain: 'docker.io',
      path: 'library/x',
      tag: 't',
      digest: `sha256:${HEX}`,
    });
    expect(parseNormalizedNamed('busybox')).toEqual({ domain: 'docker.io', path: 'library/busybox' });
  });

  const bad: Array<[string, RegExp]> = [
    ['', /invalid reference format/],
    ['Busybox', /repository name must be lowercase/],
    ['docker.io/Foo/bar', /repository name must be lowercase/],
    [HEX, /cannot specify 64-byte hexadecimal strings/],
    ['busybox:', /invalid reference format/],
    ['busybox@sha256:abc', /invalid reference format/],
    ['a//b', /invalid reference format/],
    ['-leading/dash', /invalid reference format/],
    [`busybox@sha512:${'b'.repeat(128)}`, /unsupported digest algorithm "sha512"/],
    [`x/${'a'.repeat(260)}`, /must not be more than 255 characters/],
  ];
  for (const [input, re] of bad) {
    it(`rejects ${JSON.stringify(input.slice(0, 40))}, naming it`, () => {
      expect(() => parseReference(input)).toThrow(re);
      expect(() => parseReference(input)).toThrow(`invalid reference ${JSON.stringify(input)}`);
    });
  }

  it('stays fast on pathological input', () => {
    const t0 = Date.now();
    expect(() => parseReference('a'.repeat(3000) + '!')).toThrow(/invalid reference format/);
    expect(() => parseReference(('a-'.repeat(1500)) + '!')).toThrow(/invalid reference format/);
    expect(Date.now() - t0).toBeLessThan(500);
  });
});

describe('familiarString and ociRefName', () => {
  it('shortens Docker Hub names as docker does', () => {
    expect(familiarString(parseReference('busybox'))).toBe('busybox:latest');
    expect(familiarString(parseReference('foo/bar:1'))).toBe('foo/bar:1');
    expect(familiarString(parseReference('localhost:5000/x'))).toBe('localhost:5000/x:latest');
    expect(familiarString(parseReference(`busybox@sha256:${HEX}`))).toBe(`busybox@sha256:${HEX}`);
  });

  it('gives the tag part as containerd names OCI layout entries', () => {
    expect(ociRefName('docker.io/library/busybox:latest')).toBe('latest');
    expect(ociRefName('localhost:5000/app:v1')).toBe('v1');
    expect(ociRefName(`docker.io/library/app@sha256:${HEX}`)).toBe(`@sha256:${HEX}`);
    expect(ociRefName(`docker.io/library/app:v1@sha256:${HEX}`)).toBe(`v1@sha256:${HEX}`);
    expect(ociRefName('docker.io/library/app')).toBe('');
  });
});
