import { describe, expect, it } from 'vitest';
import { buildCacheConfig, buildInlineCache, chainFor, linksRecords, mergeCacheConfigs, parseCacheConfig, parseInlineCache, recordDigest, recordOf } from '../../../src/cache/remote/cache-config.js';
import type { ChainLayer } from '../../../src/cache/unpack-chain.js';

const layer = (n: number): ChainLayer => ({
  mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
  digest: `sha256:${String(n).repeat(64).slice(0, 64)}`,
  diffId: `sha256:${String(n + 5).repeat(64).slice(0, 64)}`,
  size: 100 + n,
});
const none = () => undefined;
const at = new Date('2026-01-01T00:00:00Z');

describe('cache config', () => {
  it('shares the common prefix of chains and gives each record its own chain back', () => {
    const { config, layers } = buildCacheConfig([
      { key: 'k1#0', layers: [layer(1), layer(2)], createdAt: at },
      { key: 'k2#0', layers: [layer(1), layer(3)], createdAt: at },
      { key: 'k3#0', layers: [layer(1)], createdAt: at },
    ]);
    expect(config.layers).toHaveLength(3);
    expect(layers.map((l) => l.digest)).toEqual([layer(1).digest, layer(2).digest, layer(3).digest]);
    expect(chainFor(config, 'k1#0', none, 't')).toEqual([layer(1), layer(2)]);
    expect(chainFor(config, 'k2#0', none, 't')).toEqual([layer(1), layer(3)]);
    expect(chainFor(config, 'k3#0', none, 't')).toEqual([layer(1)]);
    expect(chainFor(config, 'other#0', none, 't')).toBeUndefined();
    // Records are named by loom's own digest of the key, never the key itself.
    expect(config.records!.map((r) => r.digest)).toContain(recordDigest('k1#0'));
  });

  it('merging keeps the records of both and lets the newer one win', () => {
    const a = buildCacheConfig([{ key: 'a#0', layers: [layer(1), layer(2)], createdAt: at }]).config;
    const b = buildCacheConfig([
      { key: 'b#0', layers: [layer(1), layer(3)], createdAt: at },
      { key: 'a#0', layers: [layer(4)], createdAt: at },
    ]).config;
    const { config, blobs } = mergeCacheConfigs(a, b, 't');
    expect(chainFor(config, 'a#0', none, 't')).toEqual([layer(4)]);
    expect(chainFor(config, 'b#0', none, 't')).toEqual([layer(1), layer(3)]);
    expect([...blobs].sort()).toEqual([layer(1).digest, layer(3).digest, layer(4).digest].sort());
  });

  it('names known outputs by key alone, without a result; a merge keeps them but never lets one replace a result', () => {
    const { config, layers } = buildCacheConfig([{ key: 'a#0', layers: [layer(1)], createdAt: at }], ['a#0', 'k#0', 'k#0', 'src#0']);
    expect(layers.map((l) => l.digest)).toEqual([layer(1).digest]);
    // The output with a result is not named twice; each known key once, with no layers.
    expect(config.records).toEqual([
      { digest: recordDigest('a#0'), layers: [{ layer: 0, createdAt: at.toISOString() }] },
      { digest: recordDigest('k#0') },
      { digest: recordDigest('src#0') },
    ]);
    const parsed = parseCacheConfig(Buffer.from(JSON.stringify(config)), 't');
    expect(recordOf(parsed, 'k#0')).toEqual({ digest: recordDigest('k#0') });
    expect(recordOf(parsed, 'other#0')).toBeUndefined();
    // Known, but nothing to materialize.
    expect(chainFor(parsed, 'k#0', none, 't')).toBeUndefined();
    expect(chainFor(parsed, 'a#0', none, 't')).toEqual([layer(1)]);

    // A later build that only knew a#0 by key does not drop its result; a key gains a result.
    const later = buildCacheConfig([{ key: 'k#0', layers: [layer(2)], createdAt: at }], ['a#0', 'n#0']).config;
    const merged = mergeCacheConfigs(parsed, later, 't').config;
    expect(chainFor(merged, 'a#0', none, 't')).toEqual([layer(1)]);
    expect(chainFor(merged, 'k#0', none, 't')).toEqual([layer(2)]);
    expect(recordOf(merged, 'src#0')).toEqual({ digest: recordDigest('src#0') });
    expect(recordOf(merged, 'n#0')).toEqual({ digest: recordDigest('n#0') });
    expect(merged.records).toHaveLength(4);
  });

  it("writes an inline cache in upstream's shape (records alone, results by the image's layer index) and reads it, upstream's and loom's older shape", () => {
    const img = [layer(1), layer(2), layer(3)];
    const ck = { content: 'sha256:c', shape: 'shape:sha256:s' };
    const bytes = buildInlineCache(
      [
        { key: 'top#0', layers: img, createdAt: at, content: ck },
        { key: 'mid#0', layers: img.slice(0, 2), createdAt: at },
        { key: 'empty#0', layers: [], createdAt: at },
      ],
      ['top#0', 'stage#0'],
    )!;
    const list = JSON.parse(bytes.toString()) as Record<string, unknown>[];
    // BuildKit reads the field as []CacheRecord: a list; loom's content keys ride on the first
    // record under a name BuildKit ignores.
    expect(list).toEqual([
      { digest: recordDigest('top#0'), layers: [{ layer: 2, createdAt: at.toISOString() }], 'loom.contentKeys': { top: ck } },
      { digest: recordDigest('mid#0'), layers: [{ layer: 1, createdAt: at.toISOString() }] },
      { digest: recordDigest('stage#0') },
    ]);
    const describe = (blob: string) => img.find((l) => l.digest === blob);
    const back = parseInlineCache(bytes, img, 't');
    expect(chainFor(back, 'top#0', describe, 't')).toEqual(img);
    expect(chainFor(back, 'mid#0', describe, 't')).toEqual(img.slice(0, 2));
    expect(recordOf(back, 'stage#0')).toEqual({ digest: recordDigest('stage#0') });
    expect(chainFor(back, 'stage#0', describe, 't')).toBeUndefined();
    expect(back.contentKeys).toEqual({ top: ck });
    // Nothing with a layer: no inline cache.
    expect(buildInlineCache([{ key: 'e#0', layers: [], createdAt: at }], ['x#0'])).toBeUndefined();

    // Upstream's own inline cache (inputs, chained results, an index past the image) reads without error.
    const upstream = Buffer.from(
      JSON.stringify([
        { digest: 'sha256:aa' },
        { layers: [{ layer: 1, createdAt: '2026-01-01T00:00:00Z' }], digest: 'sha256:bb', inputs: [[{ link: 0 }], [{ selector: 'sha256:cc', link: 0 }]] },
        { chains: [{ layers: [{ layer: 0 }] }], digest: 'sha256:dd' },
        { layers: [{ layer: 7 }], digest: 'sha256:ee' },
      ]),
    );
    const up = parseInlineCache(upstream, img, 't');
    expect(up.layers).toEqual([
      { blob: layer(1).digest, parent: -1 },
      { blob: layer(2).digest, parent: 0 },
      { blob: layer(3).digest, parent: 1 },
    ]);
    expect(up.records).toEqual([{ digest: 'sha256:aa' }, { digest: 'sha256:bb', layers: [{ layer: 1, createdAt: '2026-01-01T00:00:00Z' }] }, { digest: 'sha256:dd' }, { digest: 'sha256:ee' }]);
    // What loom wrote before (the whole config object) still reads.
    const old = buildCacheConfig([{ key: 'k#0', layers: img.slice(0, 1), createdAt: at }]).config;
    expect(chainFor(parseInlineCache(Buffer.from(JSON.stringify(old)), img, 't'), 'k#0', describe, 't')).toEqual(img.slice(0, 1));
    expect(() => parseInlineCache(Buffer.from('[{"layers":[]}]'), img, 'img')).toThrow('img: inline cache record 0 has no digest');
  });

  it("tells BuildKit's caches (records linked by inputs, which a merge would break) from loom's", () => {
    expect(linksRecords(buildCacheConfig([{ key: 'a#0', layers: [layer(1)], createdAt: at }], ['b#0']).config)).toBe(false);
    const upstream = parseCacheConfig(
      Buffer.from(JSON.stringify({ layers: [{ blob: layer(1).digest, parent: -1 }], records: [{ digest: 'sha256:aa' }, { digest: 'sha256:bb', layers: [{ layer: 0 }], inputs: [[{ link: 0 }]] }] })),
      't',
    );
    expect(linksRecords(upstream)).toBe(true);
  });

  it("carries steps' content keys by step key, through a round trip and a merge that drops them only with their records", () => {
    const ck = (n: number) => ({ content: `sha256:c${n}`, shape: `shape:sha256:s${n}` });
    const a = buildCacheConfig([
      { key: 'a#0', layers: [layer(1)], createdAt: at, content: ck(1) },
      { key: 'e#0', layers: [], createdAt: at, content: ck(9) },
    ]).config;
    // A step with no layer has no record, so nothing for its content key to name.
    expect(a.contentKeys).toEqual({ a: ck(1) });
    expect(parseCacheConfig(Buffer.from(JSON.stringify(a)), 't').contentKeys).toEqual({ a: ck(1) });
    const b = buildCacheConfig([{ key: 'b#0', layers: [layer(2)], createdAt: at, content: ck(2) }]).config;
    expect(mergeCacheConfigs(a, b, 't').config.contentKeys).toEqual({ a: ck(1), b: ck(2) });
    const orphan = { ...b, contentKeys: { ...b.contentKeys, gone: ck(3) } };
    expect(mergeCacheConfigs(a, orphan, 't').config.contentKeys).toEqual({ a: ck(1), b: ck(2) });
    expect(buildCacheConfig([{ key: 'x#0', layers: [layer(1)], createdAt: at }]).config.contentKeys).toBeUndefined();
    expect(() => parseCacheConfig(Buffer.from(JSON.stringify({ contentKeys: { a: 'sha256:x' } })), 'cfg')).toThrow(
      'cfg: cache config contentKeys must map step keys to their content key and shape',
    );
  });

  it('takes layer facts from the manifest when the config lacks them (upstream-shaped configs)', () => {
    const cfg = { layers: [{ blob: layer(1).digest, parent: -1 }], records: [{ digest: recordDigest('x#0'), layers: [{ layer: 0 }] }] };
    const l = layer(1);
    expect(chainFor(cfg, 'x#0', () => ({ mediaType: l.mediaType, size: l.size, diffId: l.diffId }), 't')).toEqual([l]);
    expect(() => chainFor(cfg, 'x#0', none, 'cache T')).toThrow(/cache T: cache layer .* lacks its media type/);
  });

  it('refuses malformed configs naming the source and the offending part', () => {
    expect(() => parseCacheConfig(Buffer.from('nope'), 'reg/c:1')).toThrow(/reg\/c:1: cache config is not JSON/);
    expect(() => parseCacheConfig(Buffer.from('{"layers":[{"blob":"sha256:x","parent":7}]}'), 'reg/c:1')).toThrow(/cache layer 0 has an invalid parent 7/);
    expect(() => parseCacheConfig(Buffer.from('{"layers":[],"records":[{"digest":"sha256:a","layers":[{"layer":3}]}]}'), 'c')).toThrow(/points at layer 3/);
    // A parent cycle is caught while walking, not looped on forever.
    const cyc = { layers: [{ blob: layer(1).digest, parent: 1, annotations: { mediaType: 'm', diffID: layer(1).diffId, size: 1 } }, { blob: layer(2).digest, parent: 0, annotations: { mediaType: 'm', diffID: layer(2).diffId, size: 1 } }], records: [{ digest: recordDigest('c#0'), layers: [{ layer: 1 }] }] };
    expect(() => chainFor(cyc, 'c#0', none, 'c')).toThrow(/cycle/);
  });
});
