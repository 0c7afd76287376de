import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { detailsSources, formatSource } from '../../../src/client/error-source.js';
import { toServiceError } from '../../../src/control/grpc-status.js';
import { InvalidArgumentError, withSources, type ErrorSource } from '../../../src/util/errors.js';

const CORPUS = join(import.meta.dirname, '../../../fixtures/dockerfile-corpus');

function source(entry: string, line: number): ErrorSource {
  return {
    filename: 'Dockerfile',
    data: readFileSync(join(CORPUS, entry, 'context', 'Dockerfile')),
    language: 'Dockerfile',
    ranges: [{ start: { line, character: 0 }, end: { line, character: 0 } }],
  };
}

/** The snippet upstream's buildctl printed for the entry (its error.txt, from "Dockerfile:N" to the frame's end). */
function upstreamSnippet(entry: string): string {
  const text = readFileSync(join(CORPUS, entry, 'expected', 'error.txt'), 'utf8');
  const start = text.indexOf('Dockerfile:');
  const end = text.indexOf('--------------------\n', text.indexOf('--------------------\n', start) + 1) + '--------------------\n'.length;
  return text.slice(start, end);
}

describe('errdefs.Source in error details', () => {
  it('travels in grpc-status-details-bin as upstream encodes it and comes back whole', () => {
    const src = source('fail-unknown-instruction', 3);
    const e = toServiceError(withSources(new InvalidArgumentError('dockerfile parse error on line 3: unknown instruction: FROBNICATE'), [src]));
    const back = detailsSources(e.metadata!.get('grpc-status-details-bin')[0] as Buffer);
    expect(back).toHaveLength(1);
    expect(back[0]!.filename).toBe('Dockerfile');
    expect(Buffer.from(back[0]!.data).equals(Buffer.from(src.data))).toBe(true);
    expect(back[0]!.ranges).toEqual(src.ranges);
  });

  it('prints the lines of the error exactly as upstream buildctl printed them', () => {
    expect(formatSource(source('fail-unknown-instruction', 3))).toBe(upstreamSnippet('fail-unknown-instruction'));
    expect(formatSource(source('fail-run-exit', 4))).toBe(upstreamSnippet('fail-run-exit'));
    expect(formatSource(source('fail-copy-missing', 4))).toBe(upstreamSnippet('fail-copy-missing'));
  });

  it('sends no details for an error without a source', () => {
    const e = toServiceError(new InvalidArgumentError('plain'));
    expect(e.metadata?.get('grpc-status-details-bin')).toEqual([]);
  });
});
