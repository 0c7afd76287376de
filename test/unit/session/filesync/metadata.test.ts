import { describe, expect, test } from 'vitest';
import {
  diffCopyMetadata,
  exporterMetadata,
  goQueryEscape,
  goQueryUnescape,
  parseDiffCopyMetadata,
  parseExporterMetadata,
} from '../../../../src/session/filesync/metadata.js';

describe('DiffCopy request headers', () => {
  test('upstream header names; undefined lists left out', () => {
    expect(diffCopyMetadata({ dirName: 'context', includePatterns: ['src'], excludePatterns: ['*.log', '!keep.log'], followPaths: ['Dockerfile'] })).toEqual({
      'dir-name': ['context'],
      'include-patterns': ['src'],
      'exclude-patterns': ['*.log', '!keep.log'],
      followpaths: ['Dockerfile'],
    });
    expect(diffCopyMetadata({ dirName: 'dockerfile', overrideExcludes: true })).toEqual({ 'dir-name': ['dockerfile'], 'override-excludes': ['true'] });
  });

  test('non-ASCII values are escaped and flagged, and come back as they were', () => {
    const md = diffCopyMetadata({ dirName: 'ctx', excludePatterns: ['héllo wörld/*', 'plain'] });
    expect(md['exclude-patterns']).toEqual(['h%C3%A9llo+w%C3%B6rld%2F%2A', 'plain']);
    expect(md['exclude-patterns-encoded']).toEqual(['1']);
    expect(md['dir-name-encoded']).toBeUndefined();
    expect(parseDiffCopyMetadata(md)).toEqual({
      dirName: 'ctx',
      excludePatterns: ['héllo wörld/*', 'plain'],
      includePatterns: undefined,
      followPaths: undefined,
      overrideExcludes: false,
    });
  });

  test('parsing what a v0.11 daemon sends', () => {
    expect(parseDiffCopyMetadata({ 'dir-name': ['context'], 'exclude-patterns': ['a+b'], 'override-excludes': ['true'] })).toMatchObject({
      dirName: 'context',
      excludePatterns: ['a+b'],
      overrideExcludes: true,
    });
    expect(parseDiffCopyMetadata({}).dirName).toBe('');
  });

  test('Go query escaping', () => {
    expect(goQueryEscape("a b~-_.!*'()/é")).toBe('a+b~-_.%21%2A%27%28%29%2F%C3%A9');
    expect(goQueryUnescape('a+b%2F%C3%A9')).toBe('a b/é');
    expect(goQueryUnescape('bad%zz')).toBe('');
  });
});

describe('exporter headers on FileSend', () => {
  test('values go as exporter-md-<key>, joined with commas when several', () => {
    const md = exporterMetadata({ 'containerimage.digest': 'sha256:abc', 'image.name': 'x/y:1' });
    expect(md).toEqual({ 'exporter-md-containerimage.digest': ['sha256:abc'], 'exporter-md-image.name': ['x/y:1'] });
    expect(parseExporterMetadata({ ...md, 'exporter-md-multi': ['a', 'b'], other: ['x'] })).toEqual({
      values: { 'containerimage.digest': 'sha256:abc', 'image.name': 'x/y:1', multi: 'a,b' },
      exporterId: undefined,
      multiPlatform: false,
    });
  });

  test('newer clients: exporter id and multi-platform flag', () => {
    const md = exporterMetadata({}, { exporterId: 2, multiPlatform: true });
    expect(md).toEqual({ 'buildkit-attachable-exporter-id': ['2'], 'buildkit-exporter-multi-platform': ['1'] });
    expect(parseExporterMetadata(md)).toEqual({ values: {}, exporterId: 2, multiPlatform: true });
  });
});
