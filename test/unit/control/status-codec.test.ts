/**
 * The status stream kept with a build record (upstream's application/vnd.buildkit.status.v0 blob:
 * little-endian uint32 lengths, each followed by a StatusResponse) written and read back.
 */
import { fromBinary } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StatusResponseSchema } from '../../../src/gen/buildkit/control_pb.js';
import { decodeStatusStream, encodeStatusStream } from '../../../src/control/status-codec.js';
import type { ProgressEvent } from '../../../src/util/progress.js';

const t = (ms: number) => new Date(Date.UTC(2026, 11, 5, 12, 0, 0, ms));

describe('status stream of a build record', () => {
  it('reads back every event, in the order written, across kinds', () => {
    const events: ProgressEvent[] = [
      { kind: 'vertex', vertex: { digest: 'sha256:a', inputs: [], name: '[1/2] RUN echo hi', started: t(1) } },
      { kind: 'log', log: { vertex: 'sha256:a', stream: 1, data: Buffer.from('hi\n'), timestamp: t(2) } },
      { kind: 'status', status: { id: 'pull', vertex: 'sha256:a', name: 'pulling', current: 5, total: 10, timestamp: t(3), started: t(3) } },
      { kind: 'log', log: { vertex: 'sha256:a', stream: 2, data: Buffer.from('oops\n'), timestamp: t(4) } },
      { kind: 'vertex', vertex: { digest: 'sha256:a', inputs: [], name: '[1/2] RUN echo hi', started: t(1), completed: t(5), error: 'exit code: 1' } },
      { kind: 'warning', warning: { vertex: 'sha256:a', level: 1, short: 'careful', detail: ['one', 'two'], url: 'https://example.com' } },
      { kind: 'vertex', vertex: { digest: 'sha256:b', inputs: ['sha256:a'], name: '[2/2] COPY', cached: true, started: t(6), completed: t(6), progressGroup: { id: 'g', name: 'group', weak: true } } },
    ];
    const data = encodeStatusStream(events);
    expect(decodeStatusStream(data, 'test')).toEqual(events);
  });

  it("is upstream's framing: a length, then a StatusResponse, as many times as needed", () => {
    const events: ProgressEvent[] = [
      { kind: 'log', log: { vertex: 'sha256:a', stream: 1, data: Buffer.from('first\n'), timestamp: t(1) } },
      // A vertex after a log: a StatusResponse carries vertexes before logs, so a second one starts.
      { kind: 'vertex', vertex: { digest: 'sha256:b', inputs: [], name: 'b', started: t(2) } },
    ];
    const data = encodeStatusStream(events);
    const first = data.readUInt32LE(0);
    const one = fromBinary(StatusResponseSchema, data.subarray(4, 4 + first));
    expect(one.logs.map((l) => Buffer.from(l.msg).toString())).toEqual(['first\n']);
    const second = data.readUInt32LE(4 + first);
    expect(4 + first + 4 + second).toBe(data.length);
    expect(fromBinary(StatusResponseSchema, data.subarray(8 + first)).vertexes.map((v) => v.name)).toEqual(['b']);
  });

  it('splits a long log over several StatusResponses and keeps every byte', () => {
    const chunk = Buffer.alloc(300 << 10, 'x');
    const events: ProgressEvent[] = Array.from({ length: 8 }, (_, i) => ({ kind: 'log', log: { vertex: 'sha256:a', stream: 1, data: chunk, timestamp: t(i) } }) as ProgressEvent);
    const data = encodeStatusStream(events);
    let messages = 0;
    for (let off = 0; off < data.length; off += 4 + data.readUInt32LE(off)) messages++;
    expect(messages).toBeGreaterThan(1);
    const back = decodeStatusStream(data, 'test');
    expect(back).toHaveLength(8);
    expect(back.reduce((n, ev) => n + (ev.kind === 'log' ? ev.log.data.byteLength : 0), 0)).toBe(8 * chunk.length);
  });

  it('names the stream when it is cut short', () => {
    const data = encodeStatusStream([{ kind: 'vertex', vertex: { digest: 'sha256:a', inputs: [], name: 'a' } }]);
    expect(() => decodeStatusStream(data.subarray(0, data.length - 1), 'progress of build r1 (/x/y)')).toThrow('progress of build r1 (/x/y): truncated status stream at byte 0');
    expect(decodeStatusStream(Buffer.alloc(0), 'empty')).toEqual([]);
  });
});
