import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DockerfileFrontend } from '../../../src/frontend/dockerfile/frontend.js';
import { cannedResolver } from './base-image.js';
import { caseDir, fakeDaemon } from './fake-daemon.js';

const LINT_CASES = join(__dirname, '../../../fixtures/lint');

/** result.json without the sources' definition, whose bytes carry the session's id. */
const withoutDefinition = (json: string) => {
  const v = JSON.parse(json) as { sources: { definition?: unknown }[] };
  for (const s of v.sources) delete s.definition;
  return v;
};

describe('frontend.lint (docker buildx build --check)', () => {
  // The fixtures' Dockerfiles name the base image as the registry they were recorded with.
  const canned = cannedResolver();
  const resolver = (ref: string, opts: Parameters<typeof canned>[1]) => canned(ref.replace('127.0.0.1:5055/', 'localhost:5000/'), opts);
  const cases = readdirSync(LINT_CASES).filter((n) => existsSync(join(LINT_CASES, n, 'Dockerfile')));

  it('has recorded cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(10);
  });

  for (const c of cases) {
    it(`reports ${c} as upstream's Dockerfile frontend 1.8.1 did`, async () => {
      const dir = join(LINT_CASES, c);
      const expected = join(dir, 'expected');
      const opts = existsSync(join(dir, 'opts.json')) ? (JSON.parse(readFileSync(join(dir, 'opts.json'), 'utf8')) as Record<string, string>) : {};
      const d = fakeDaemon({ context: dir, dockerfile: dir }, { ...opts, requestid: 'frontend.lint' }, resolver);
      const res = await new DockerfileFrontend().solve(d.ctx);
      expect(res.subrequest).toBe(true);
      expect(d.solved, 'linting builds nothing').toEqual([]);
      const json = Buffer.from(res.metadata['result.json']!).toString();
      expect(withoutDefinition(json)).toEqual(withoutDefinition(readFileSync(join(expected, 'lint.json'), 'utf8')));
      expect(Buffer.from(res.metadata['result.txt']!).toString()).toBe(readFileSync(join(expected, 'lint.txt'), 'utf8'));
      expect(Buffer.from(res.metadata['result.statuscode']!).toString()).toBe(readFileSync(join(expected, 'lint.statuscode'), 'utf8'));
      expect(Buffer.from(res.metadata.version!).toString()).toBe('1.0.0');
      // The source's definition is the LLB that loaded the Dockerfile, as Go encodes a pb.Definition.
      const def = (JSON.parse(json) as { sources: { definition: { def: string[]; metadata: Record<string, unknown>; Source: unknown } }[] }).sources[0]!.definition;
      expect(def.def).toHaveLength(2);
      expect(Object.keys(def.metadata)).toHaveLength(2);
    });
  }
});

describe('a # check= directive in a build', () => {
  const resolver = cannedResolver();

  it('reports violations as build warnings, without failing the build', async () => {
    const dir = caseDir({ name: 'x', dockerfile: '# check=skip=MaintainerDeprecated\nFROM localhost:5000/busybox\nMAINTAINER me\nENV A 1\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {}, resolver);
    await new DockerfileFrontend().solve(d.ctx);
    const lint = d.warnings.filter((w) => w.short.startsWith('LegacyKeyValueFormat') || w.short.startsWith('MaintainerDeprecated'));
    expect(lint.map((w) => w.short)).toEqual(['LegacyKeyValueFormat: "ENV key=value" should be used instead of legacy "ENV key value" format (line 4)']);
    expect(lint[0]!.url).toBe('https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/');
    expect(lint[0]!.location).toEqual([{ start: { line: 4, character: 0 }, end: { line: 4, character: 0 } }]);
  });

  it('fails the build with error=true, naming the rules', async () => {
    const dir = caseDir({ name: 'x', dockerfile: '# check=error=true\nFROM localhost:5000/busybox\nENV A 1\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {}, resolver);
    await expect(new DockerfileFrontend().solve(d.ctx)).rejects.toThrow('lint violation found for rules: LegacyKeyValueFormat');
    expect(d.solved).toEqual([]);
  });

  it('does not lint a build without the directive (as upstream v0.11)', async () => {
    const dir = caseDir({ name: 'x', dockerfile: 'FROM localhost:5000/busybox\nENV A 1\nmaintainer me\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {}, resolver);
    await new DockerfileFrontend().solve(d.ctx);
    expect(d.warnings.filter((w) => /LegacyKeyValueFormat|MaintainerDeprecated|ConsistentInstructionCasing/.test(w.short))).toEqual([]);
  });

  it('refuses a bad check option', async () => {
    const dir = caseDir({ name: 'x', dockerfile: '# check=skip=A;colour=red\nFROM localhost:5000/busybox\n' });
    const d = fakeDaemon({ context: dir, dockerfile: dir }, {}, resolver);
    await expect(new DockerfileFrontend().solve(d.ctx)).rejects.toThrow('failed to parse check options: invalid check option "colour"');
  });
});
