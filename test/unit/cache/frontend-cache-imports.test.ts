import { describe, expect, it } from 'vitest';
import { frontendCacheImports, newCacheEntries } from '../../../src/cache/remote/build-cache.js';

describe('cache imports named in frontend options', () => {
  it('reads cache-imports (as buildctl and buildx send it) and the older cache-from', () => {
    expect(
      frontendCacheImports({
        'cache-imports': '[{"Type":"registry","Attrs":{"ref":"r:5000/c:1"}},{"Type":"local","Attrs":{"digest":"sha256:ab","src":"/d"}}]',
        'cache-from': 'r:5000/a,r:5000/b',
      }),
    ).toEqual([
      { Type: 'registry', Attrs: { ref: 'r:5000/c:1' } },
      { Type: 'local', Attrs: { digest: 'sha256:ab', src: '/d' } },
      { Type: 'registry', Attrs: { ref: 'r:5000/a' } },
      { Type: 'registry', Attrs: { ref: 'r:5000/b' } },
    ]);
    expect(frontendCacheImports({ 'cache-imports': 'null', 'cache-from': '' })).toEqual([]);
  });

  it('names the option when its JSON is bad', () => {
    expect(() => frontendCacheImports({ 'cache-imports': '{not json' })).toThrow(/failed to unmarshal cache-imports \("\{not json"\)/);
    expect(() => frontendCacheImports({ 'cache-imports': '{"Type":"registry"}' })).toThrow(/cache-imports .*not a list/);
  });

  it('adds only what the build does not import already, whatever the order of attributes', () => {
    const have = [{ Type: 'registry', Attrs: { ref: 'r/c:1', 'registry.insecure': 'true' } }];
    const extra = [
      { Type: 'registry', Attrs: { 'registry.insecure': 'true', ref: 'r/c:1' } },
      { Type: 'registry', Attrs: { ref: 'r/c:2' } },
      { Type: 'registry', Attrs: { ref: 'r/c:2' } },
    ];
    expect(newCacheEntries(have, extra)).toEqual([{ Type: 'registry', Attrs: { ref: 'r/c:2' } }]);
  });
});
