// Which inputs of a step may be keyed by their content (the solver's second key, upstream's
// content-based cache keys), and by which paths: a wrong answer here is a wrong cache hit.
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import type { RefManager } from '../../../src/cache/ref-manager.js';
import {
  ExecOpSchema,
  FileActionCopySchema,
  FileActionMkFileSchema,
  FileActionSchema,
  FileOpSchema,
  MetaSchema,
  MountSchema,
  MountType,
} from '../../../src/gen/buildkit/ops_pb.js';
import { ExecOp, type ExecSupport } from '../../../src/ops/exec-op.js';
import { FileOpImpl } from '../../../src/ops/file-op.js';

const copy = (input: number, secondary: number, c: MessageInitShape<typeof FileActionCopySchema>) =>
  create(FileActionSchema, {
    input: BigInt(input),
    secondaryInput: BigInt(secondary),
    output: 0n,
    action: { case: 'copy', value: create(FileActionCopySchema, { dest: '/dst', followSymlink: true, ...c }) },
  });
const fileOp = (...actions: ReturnType<typeof copy>[]) => new FileOpImpl({ refs: {} as RefManager }, create(FileOpSchema, { actions }));

describe('content selectors of a file op', () => {
  it('keys a copy source by the paths copied, never the tree copied onto', () => {
    const op = fileOp(copy(0, 1, { src: '/out/a' }), copy(-1, 1, { src: '/out/b' }));
    expect(op.contentSelectors()).toEqual([null, { paths: ['/out/a', '/out/b'], followSymlinks: true }]);
  });

  it('keys a wildcard by its pattern (what it matches), include/exclude patterns by what they keep, a literal glob source not at all', () => {
    expect(fileOp(copy(0, 1, { src: '/d/sub/x*.txt', allowWildcard: true }), copy(0, 1, { src: '/e' }))
      .contentSelectors()[1]).toEqual({ paths: ['/d/sub/x*.txt', '/e'], followSymlinks: true, wildcards: true });
    expect(fileOp(copy(0, 1, { src: '*.txt', allowWildcard: true })).contentSelectors()[1]).toEqual({ paths: ['*.txt'], followSymlinks: true, wildcards: true });
    expect(fileOp(copy(0, 1, { src: '/a[1]', allowWildcard: false })).contentSelectors()[1]).toBeNull();
    const filtered = { paths: ['/app'], followSymlinks: false, patterns: { '/app': { include: ['*.js'], exclude: [] } } };
    expect(fileOp(copy(0, 1, { src: '/app', includePatterns: ['*.js'], followSymlink: false })).contentSelectors()[1]).toEqual(filtered);
    expect(fileOp(copy(0, 1, { src: '/app', includePatterns: ['*.js'], followSymlink: false })).inputSelectors()[1]).toEqual(filtered);
    expect(fileOp(copy(0, 1, { src: '/d/*', allowWildcard: true, excludePatterns: ['*.md'] })).inputSelectors()[1]).toEqual({
      paths: ['/d/*'], followSymlinks: true, wildcards: true, patterns: { '/d/*': { include: [], exclude: ['*.md'] } },
    });
  });

  it('keys a path copied twice with different patterns by each set (COPY --parents a/./x a/./y), whole when one copy takes it whole', () => {
    expect(fileOp(copy(0, 1, { src: '/app', excludePatterns: ['*.md'] }), copy(-1, 1, { src: '/app' })).inputSelectors()[1]).toEqual({ paths: ['/app'], followSymlinks: true });
    expect(fileOp(copy(0, 1, { src: '/app' }), copy(-1, 1, { src: '/app', excludePatterns: ['*.md'] })).inputSelectors()[1]).toEqual({ paths: ['/app'], followSymlinks: true });
    expect(fileOp(copy(0, 1, { src: '/app', excludePatterns: ['*.md'] }), copy(-1, 1, { src: '/app', excludePatterns: ['*.txt'] }), copy(-1, 1, { src: '/app', excludePatterns: ['*.md'] })).inputSelectors()[1]).toEqual({
      paths: ['/app'], followSymlinks: true, patterns: { '/app': [{ include: [], exclude: ['*.md'] }, { include: [], exclude: ['*.txt'] }] },
    });
    expect(fileOp(copy(0, 1, { src: '/app', excludePatterns: ['*.md'] }), copy(-1, 1, { src: '/lib' })).inputSelectors()[1]).toEqual({
      paths: ['/app', '/lib'], followSymlinks: true, patterns: { '/app': { include: [], exclude: ['*.md'] } },
    });
  });

  it('gives up on an input also changed by an action, or copied both with and without following links', () => {
    const mkfile = create(FileActionSchema, { input: 1n, secondaryInput: -1n, output: -1n, action: { case: 'mkfile', value: create(FileActionMkFileSchema, { path: '/f' }) } });
    expect(new FileOpImpl({ refs: {} as RefManager }, create(FileOpSchema, { actions: [copy(0, 1, { src: '/a' }), mkfile] })).contentSelectors()[1]).toBeNull();
    expect(fileOp(copy(0, 1, { src: '/a' }), copy(-1, 1, { src: '/b', followSymlink: false })).contentSelectors()[1]).toBeNull();
  });
});

describe('content selectors of an exec op', () => {
  const exec = (...mounts: MessageInitShape<typeof MountSchema>[]) =>
    new ExecOp({} as ExecSupport, create(ExecOpSchema, { meta: create(MetaSchema, { args: ['true'] }), mounts: mounts.map((m) => create(MountSchema, m)) }));

  it('keys read-only mounts and writable mounts whose changes are dropped by content, not the root or a kept mount', () => {
    const op = exec(
      { input: 0n, dest: '/', output: 0n },
      { input: 1n, dest: '/m', selector: 'd', readonly: true, output: -1n },
      { input: 2n, dest: '/w', output: -1n },
      { input: 3n, dest: '/kept', output: 1n },
      { input: -1n, dest: '/cache', mountType: MountType.CACHE, output: -1n },
    );
    expect(op.contentSelectors()).toEqual([null, { paths: ['/d'], followSymlinks: true }, { paths: ['/'], followSymlinks: true }, null]);
  });

  it('takes every path an input is mounted at, and gives up when one mount of it is kept', () => {
    expect(exec({ input: 0n, dest: '/', output: 0n }, { input: 1n, dest: '/a', selector: '/x', readonly: true, output: -1n }, { input: 1n, dest: '/b', readonly: true, output: -1n }).contentSelectors()[1]).toEqual({
      paths: ['/x', '/'],
      followSymlinks: true,
    });
    expect(exec({ input: 0n, dest: '/', output: 0n }, { input: 1n, dest: '/a', readonly: true, output: -1n }, { input: 1n, dest: '/b', output: 1n }).contentSelectors()[1]).toBeNull();
  });

  it('leaves out a path below another path of the same input, as upstream (a mount of data/x beside one of data fails as it runs when x is not there)', () => {
    const op = exec(
      { input: 0n, dest: '/', output: 0n },
      { input: 1n, dest: '/b', selector: 'data/two.json', readonly: true, output: -1n },
      { input: 1n, dest: '/a', selector: 'data', readonly: true, output: -1n },
      { input: 1n, dest: '/c', selector: 'database', readonly: true, output: -1n },
    );
    expect(op.contentSelectors()[1]).toEqual({ paths: ['/data', '/database'], followSymlinks: true });
    expect(op.inputSelectors()[1]).toEqual({ paths: ['data', 'database'], followSymlinks: true });
  });
});
