/**
 * The build information in a build's response (`containerimage.buildinfo`), as upstream v0.11.6's
 * solver writes it: checked against what upstream's daemon returned for the same builds.
 */
import { describe, expect, it } from 'vitest';
import { buildInfoAttrs, buildInfoSources, buildInfoValue } from '../../../src/control/build-info.js';

const INDEX = `sha256:${'7a'.repeat(32)}`;
const BLOB = `sha256:${'b1'.repeat(32)}`;

const AMD64 = { os: 'linux', architecture: 'amd64' };
const ARM64 = { os: 'linux', architecture: 'arm64' };
/** Sources read, each on the given platform (amd64 when none is given). */
const src = (entries: [string, string][], platforms: { os: string; architecture: string }[] = []) =>
  entries.map(([id, pin], i) => ({ id, pin, platform: platforms[i] ?? AMD64 }));

describe('build info', () => {
  it('records the frontend options that describe the build, not the host', () => {
    // The options upstream's daemon was given and what its response listed (image-resolve-mode
    // and platform left out, no-cache kept with its empty value).
    const attrs = buildInfoAttrs({
      'add-hosts': 'x=1.2.3.4',
      'build-arg:FOO': 'bar',
      'context:foo': 'docker-image://busybox',
      filename: 'Dockerfile.3',
      'force-network-mode': 'none',
      'image-resolve-mode': 'default',
      'label:a': 'b',
      'no-cache': '',
      platform: 'linux/amd64,linux/arm64',
      'cgroup-parent': 'x',
      'cache-imports': '[]',
      'attest:provenance': 'mode=min',
      'shm-size': '1000',
      target: 't',
    });
    expect(attrs).toEqual({
      'add-hosts': 'x=1.2.3.4',
      'build-arg:FOO': 'bar',
      'context:foo': 'docker-image://busybox',
      filename: 'Dockerfile.3',
      'force-network-mode': 'none',
      'label:a': 'b',
      'no-cache': '',
      'shm-size': '1000',
      target: 't',
    });
  });

  it('hides passwords in context URLs', () => {
    expect(buildInfoAttrs({ context: 'https://u:secret@example.com/x.git', 'context:a': 'https://u:pw@h/y', 'build-arg:U': 'https://u:kept@h/' })).toEqual({
      context: 'https://u:xxxxx@example.com/x.git',
      'context:a': 'https://u:xxxxx@h/y',
      'build-arg:U': 'https://u:kept@h/',
    });
  });

  it('lists images by their identifiers (a tag and a digest both kept, as upstream for an LLB definition), and downloads, sorted', () => {
    const [A, B] = [`sha256:${'a'.repeat(64)}`, `sha256:${'b'.repeat(64)}`];
    const read = src([
      [`docker-image://localhost:5000/busybox:latest@${INDEX}`, INDEX],
      ['docker-image://alpine', A],
      [`docker-image://example.com/only@${B}`, B],
      ['https://user:pw@files.example.com/a.tgz', BLOB],
      ['local://context', 'whatever'],
      ['git://github.com/x/y.git#main', 'abc'],
    ]);
    expect(buildInfoSources(read)).toEqual([
      { type: 'docker-image', ref: 'docker.io/library/alpine:latest', pin: A },
      { type: 'docker-image', ref: `example.com/only@${B}`, pin: B },
      { type: 'http', ref: 'https://user:xxxxx@files.example.com/a.tgz', pin: BLOB },
      { type: 'docker-image', ref: `localhost:5000/busybox:latest@${INDEX}`, pin: INDEX },
    ]);
  });

  it('lists the images a frontend resolved by the reference it asked for, not the pinned identifiers it then read', () => {
    // FROM busybox:latest, then COPY --from=busybox: both resolved as busybox:latest and read
    // pinned to its digest (the second without the tag).
    const read = src([
      [`docker-image://localhost:5000/busybox:latest@${INDEX}`, INDEX],
      [`docker-image://localhost:5000/busybox@${INDEX}`, INDEX],
    ]);
    const resolved = [{ ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: AMD64 }];
    expect(buildInfoSources(read, resolved)).toEqual([{ type: 'docker-image', ref: 'localhost:5000/busybox:latest', pin: INDEX }]);
    // FROM busybox:1.36@sha256:... written in the Dockerfile: resolved with its digest, listed so.
    const pinned = [{ ref: `localhost:5000/busybox:1.36@${INDEX}`, digest: INDEX, platform: AMD64 }];
    expect(buildInfoSources(src([[`docker-image://localhost:5000/busybox:1.36@${INDEX}`, INDEX]]), pinned)).toEqual([
      { type: 'docker-image', ref: `localhost:5000/busybox:1.36@${INDEX}`, pin: INDEX },
    ]);
  });

  it('lists an image read under two names that resolved to one digest once, by the first name (upstream merges the two steps)', () => {
    const read = src([
      [`docker-image://localhost:5000/busybox:latest@${INDEX}`, INDEX],
      [`docker-image://localhost:5000/busybox@${INDEX}`, INDEX],
    ]);
    expect(buildInfoSources(read)).toEqual([{ type: 'docker-image', ref: `localhost:5000/busybox:latest@${INDEX}`, pin: INDEX }]);
  });

  it('lists an image once per platform the build resolved it for (a build stage on the build platform, the result on another)', () => {
    // FROM --platform=$BUILDPLATFORM busybox AS build ... FROM busybox, built for arm64.
    const read = src(
      [
        [`docker-image://localhost:5000/busybox:latest@${INDEX}`, INDEX],
        [`docker-image://localhost:5000/busybox:latest@${INDEX}`, INDEX],
      ],
      [AMD64, ARM64],
    );
    const resolved = [
      { ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: AMD64 },
      { ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: ARM64 },
      { ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: { ...ARM64, variant: 'v8' } },
    ];
    const one = { type: 'docker-image', ref: 'localhost:5000/busybox:latest', pin: INDEX };
    // arm64/v8 is arm64 (platforms are normalized before upstream's provenance compares them).
    expect(buildInfoSources(read, resolved)).toEqual([one, one]);
    expect(buildInfoSources(read, resolved.slice(0, 1))).toEqual([one]);
  });

  it("lists, for each platform of a multi-platform result, an image resolved for every platform by that platform's resolve only", () => {
    const resolved = [
      { ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: AMD64 },
      { ref: 'localhost:5000/busybox:latest', digest: INDEX, platform: ARM64 },
      // Resolved for the build platform only (a build stage): kept in both.
      { ref: 'localhost:5000/tools:1', digest: INDEX, platform: AMD64 },
    ];
    const busybox = { type: 'docker-image', ref: 'localhost:5000/busybox:latest', pin: INDEX };
    const tools = { type: 'docker-image', ref: 'localhost:5000/tools:1', pin: INDEX };
    expect(buildInfoSources([], resolved, { platforms: [AMD64, ARM64], current: ARM64 })).toEqual([busybox, tools]);
    expect(buildInfoSources([], resolved, { platforms: [AMD64, ARM64], current: AMD64 })).toEqual([busybox, tools]);
    // Without the scope (one result): both resolves.
    expect(buildInfoSources([], resolved)).toEqual([busybox, busybox, tools]);
  });

  it('encodes the JSON in upstream field order and leaves empty fields out', () => {
    const decode = (v: string) => Buffer.from(v, 'base64').toString();
    expect(decode(buildInfoValue({ sources: [] }))).toBe('{}');
    expect(decode(buildInfoValue({ frontend: 'dockerfile.v0', attrs: { b: '2', a: '1' }, sources: [{ type: 'docker-image', ref: 'r', pin: INDEX }] }))).toBe(
      `{"frontend":"dockerfile.v0","attrs":{"a":"1","b":"2"},"sources":[{"type":"docker-image","ref":"r","pin":"${INDEX}"}]}`,
    );
  });
});
