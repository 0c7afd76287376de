import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { UsageRecordSchema } from '../../../src/gen/buildkit/control_pb.js';
import { bytes, bytesShort, fixed } from '../../../src/client/progress/format.js';
import { formatGoDuration, parseFlags, parseGoDuration } from '../../../src/cli/buildctl/args.js';
import { attrMap, parseAllow, parseExportCache, parseImportCache, parseOutput } from '../../../src/cli/buildctl/build-opts.js';
import { writeMetadataFile } from '../../../src/cli/buildctl/build.js';
import { printTableHeader, printTableRow } from '../../../src/cli/buildctl/du.js';
import { goIndentJson, goTime, formatPlatform } from '../../../src/cli/buildctl/go-format.js';
import { TabWriter } from '../../../src/util/tabwriter.js';

function tw(text: string): string {
  let out = '';
  const w = new TabWriter((s) => (out += s));
  w.write(text);
  w.flush();
  return out;
}

describe('buildctl output formats', () => {
  it('aligns columns with tabs as Go tabwriter(1, 8, 1, \\t)', () => {
    // Captured from upstream buildctl debug workers / du against upstream buildkitd.
    expect(tw('ID\tPLATFORMS\ncip3fm3m0bocsnhjlit466oxg\tlinux/amd64,linux/386\n')).toBe(
      'ID\t\t\t\tPLATFORMS\ncip3fm3m0bocsnhjlit466oxg\tlinux/amd64,linux/386\n',
    );
    expect(tw('ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED\n')).toBe('ID\tRECLAIMABLE\tSIZE\tLAST ACCESSED\n');
    expect(tw('Reclaimable:\t0B\nTotal:\t0B\n')).toBe('Reclaimable:\t0B\nTotal:\t\t0B\n');
    // A line without a cell in a column ends that column's block.
    expect(tw('a\tb\nlonger-than-eight\tc\nx\ny\tz\n')).toBe('a\t\t\tb\nlonger-than-eight\tc\nx\ny\tz\n');
    expect(tw('Labels:\n\tk1:\tv\n\tlong-label-key:\tv2\n')).toBe('Labels:\n\tk1:\t\tv\n\tlong-label-key:\tv2\n');
  });

  it('prints du rows with upstream widths and markers', () => {
    let out = '';
    const w = new TabWriter((s) => (out += s));
    printTableHeader(w);
    printTableRow(w, create(UsageRecordSchema, { ID: 'abc', Mutable: true, InUse: false, Size: 1234n, Shared: true }));
    w.flush();
    const lines = out.split('\n');
    expect(lines[1]).toBe(`${'abc*'.padEnd(71)}\ttrue       \t1.23kB*\t`);
    expect(lines[0]).toBe(`ID\t\t\t\t\t\t\t\t\tRECLAIMABLE\tSIZE\tLAST ACCESSED`);
  });

  it('formats sizes, durations and times as Go does', () => {
    expect(bytes(0)).toBe('0B');
    expect(bytes(999)).toBe('999B');
    expect(bytes(1125)).toBe('1.12kB'); // ties round to even, as Go's big.Float
    expect(bytes(3_000_000)).toBe('3.00MB');
    expect(bytesShort(512_000_000)).toBe('512MB');
    expect(bytesShort(1_500_000_000)).toBe('1.5GB');
    expect(fixed(0.25, 1)).toBe('0.2');
    expect(formatGoDuration(parseGoDuration('48h'))).toBe('48h0m0s');
    expect(formatGoDuration(parseGoDuration('1m30s'))).toBe('1m30s');
    expect(formatGoDuration(parseGoDuration('1.5s'))).toBe('1.5s');
    // Both micro signs Go accepts (U+00B5 and U+03BC), as well as "us".
    for (const u of ['us', '\u00b5s', '\u03bcs']) expect(parseGoDuration(`1500${u}`)).toBe(1_500_000);
    expect(() => parseGoDuration('3 days')).toThrow('invalid value "3 days"');
    expect(goTime({ seconds: 1700000000n, nanos: 120000000 } as never)).toBe('2023-11-14 22:13:20.12 +0000 UTC');
    expect(goTime(undefined)).toBe('0001-01-01 00:00:00 +0000 UTC');
    expect(formatPlatform({ OS: 'linux', Architecture: 'arm', Variant: '' } as never)).toBe('linux/arm/v7');
    expect(formatPlatform({ OS: 'linux', Architecture: 'arm64', Variant: 'v8' } as never)).toBe('linux/arm64');
  });

  it('parses flags as Go flag: forms, repeats, bools, unknowns', () => {
    const specs = [
      { names: ['output', 'o'], kind: 'slice' as const },
      { names: ['no-cache'], kind: 'bool' as const },
      { names: ['progress'], kind: 'string' as const, default: 'auto' },
    ];
    const { values, rest } = parseFlags(['-o', 'type=tar', '--output=type=local,dest=x', '--no-cache', 'arg', '--progress', 'plain'], specs);
    expect(values.output).toEqual(['type=tar', 'type=local,dest=x']);
    expect(values['no-cache']).toBe(true);
    expect(values.progress).toBe('auto');
    expect(rest).toEqual(['arg', '--progress', 'plain']);
    expect(() => parseFlags(['--bogus'], specs)).toThrow('flag provided but not defined: -bogus');
  });

  it('parses --output as upstream, with its error messages', () => {
    const notTty = { isTTY: false } as NodeJS.WriteStream;
    expect(parseOutput('type=local,dest=/tmp/x', notTty)).toMatchObject({ type: 'local', outputDir: '/tmp/x', attrs: {} });
    const img = parseOutput('type=image,name=example.com/a:b,push=true', notTty);
    expect(img).toMatchObject({ type: 'image', attrs: { name: 'example.com/a:b', push: 'true' } });
    expect(img.output).toBeUndefined();
    expect(parseOutput('type=oci,dest=/tmp/o.tar', notTty).output).toBeTypeOf('function');
    expect(parseOutput('type=docker,tar=false,dest=/tmp/d', notTty).outputDir).toBe('/tmp/d');
    expect(parseOutput('"type=tar","dest=a,b.tar"', notTty).attrs).toEqual({});
    expect(() => parseOutput('dest=x', notTty)).toThrow('--output requires type=<type>');
    expect(() => parseOutput('type=tar,output=x', notTty)).toThrow('output=x not supported for --output, you meant dest=x?');
    expect(() => parseOutput('type=local', notTty)).toThrow('output directory is required for local exporter');
    expect(() => parseOutput('type=tar,dest=/tmp', notTty)).toThrow('destination file is a directory');
    expect(() => parseOutput('type=tar', { isTTY: true } as NodeJS.WriteStream)).toThrow('refusing to write to console');
    expect(() => parseOutput('type=image,dest=x', notTty)).toThrow('output x is not supported by image exporter');
  });

  it('parses caches, opts and entitlements', () => {
    expect(parseExportCache(['type=registry,ref=r/c'])).toEqual([{ type: 'registry', attrs: { ref: 'r/c', mode: 'min' } }]);
    expect(parseExportCache(['r/c'])).toEqual([{ type: 'registry', attrs: { mode: 'min', ref: 'r/c' } }]);
    expect(parseImportCache(['type=registry,ref=r/c'])).toEqual([{ type: 'registry', attrs: { ref: 'r/c' } }]);
    expect(() => parseImportCache(['type=gha'], {})).toThrow('cache with type gha requires url parameter or $ACTIONS_CACHE_URL');
    expect(attrMap(['build-arg:A=1=2', 'target='])).toEqual({ 'build-arg:A': '1=2', target: '' });
    expect(() => attrMap(['nokey'])).toThrow('invalid value nokey');
    expect(parseAllow(['network.host'])).toEqual(['network.host']);
    expect(() => parseAllow(['root'])).toThrow('unknown entitlement root');
  });

  it('writes the metadata file as upstream: base64 JSON objects inlined, indented, keys sorted', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loom-md-'));
    try {
      const desc = Buffer.from(JSON.stringify({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: 'sha256:ab', size: 12, annotations: { a: '<x>' } })).toString('base64');
      const p = join(dir, 'md.json');
      await writeMetadataFile(p, { 'image.name': 'example.com/a', 'containerimage.descriptor': desc, 'containerimage.buildinfo': 'e30=' });
      expect(await readFile(p, 'utf8')).toBe(
        [
          '{',
          '  "containerimage.buildinfo": "e30=",',
          '  "containerimage.descriptor": {',
          '    "mediaType": "application/vnd.oci.image.manifest.v1+json",',
          '    "digest": "sha256:ab",',
          '    "size": 12,',
          '    "annotations": {',
          '      "a": "\\u003cx\\u003e"',
          '    }',
          '  },',
          '  "image.name": "example.com/a"',
          '}',
        ].join('\n'),
      );
      expect(goIndentJson('{"a":[],"b":{}}')).toBe('{\n  "a": [],\n  "b": {}\n}');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
