import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { StatusResponseSchema, type StatusResponse } from '../../../src/gen/buildkit/control_pb.js';
import { PlainPrinter, errorLogs } from '../../../src/client/progress/plain.js';
import { Trace } from '../../../src/client/progress/trace.js';
import { createProgressDisplay } from '../../../src/client/progress/display.js';

const T0 = 1_700_000_000;
const ts = (ms: number) => ({ seconds: BigInt(T0 + Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });

function status(s: Parameters<typeof create<typeof StatusResponseSchema>>[1]): StatusResponse {
  return create(StatusResponseSchema, s);
}

function run(updates: StatusResponse[]): string {
  let out = '';
  const t = new Trace();
  const p = new PlainPrinter({ write: (s) => (out += s) });
  for (const u of updates) {
    t.update(u);
    p.print(t);
  }
  out += errorLogs(t, 'plain');
  return out;
}

describe('plain progress', () => {
  it('prints steps, logs, status bytes, DONE, CACHED and ERROR as upstream', () => {
    const out = run([
      status({ vertexes: [{ digest: 'sha256:a', name: '[1/3] FROM busybox', started: ts(0) }] }),
      status({
        statuses: [{ ID: 'sha256:layer', vertex: 'sha256:a', current: 1_500_000n, total: 3_000_000n, timestamp: ts(100), started: ts(0) }],
      }),
      status({
        statuses: [{ ID: 'sha256:layer', vertex: 'sha256:a', current: 3_000_000n, total: 3_000_000n, timestamp: ts(1200), started: ts(0), completed: ts(1200) }],
        vertexes: [{ digest: 'sha256:a', name: '[1/3] FROM busybox', started: ts(0), completed: ts(1250) }],
      }),
      status({ vertexes: [{ digest: 'sha256:b', name: '[2/3] RUN echo hi', started: ts(1300) }] }),
      status({ logs: [{ vertex: 'sha256:b', timestamp: ts(1423), stream: 1n, msg: Buffer.from('hi\nthere\n') }] }),
      status({ vertexes: [{ digest: 'sha256:b', name: '[2/3] RUN echo hi', started: ts(1300), completed: ts(1700) }] }),
      status({ vertexes: [{ digest: 'sha256:c', name: '[3/3] COPY x y', started: ts(1800), completed: ts(1800), cached: true }] }),
      status({ vertexes: [{ digest: 'sha256:d', name: '[4/3] RUN false', started: ts(1900) }] }),
      status({ logs: [{ vertex: 'sha256:d', timestamp: ts(1950), stream: 2n, msg: Buffer.from('boom\n') }] }),
      status({ vertexes: [{ digest: 'sha256:d', name: '[4/3] RUN false', started: ts(1900), completed: ts(2000), error: 'process "/bin/sh -c false" did not complete successfully: exit code: 1' }] }),
    ]);
    expect(out).toBe(
      [
        '#1 [1/3] FROM busybox',
        '#1 sha256:layer 1.50MB / 3.00MB 0.1s',
        '#1 sha256:layer 3.00MB / 3.00MB 1.2s done',
        '#1 DONE 1.2s',
        '',
        '#2 [2/3] RUN echo hi',
        '#2 0.123 hi',
        '#2 0.123 there',
        '#2 DONE 0.4s',
        '',
        '#3 [3/3] COPY x y',
        '#3 CACHED',
        '',
        '#4 [4/3] RUN false',
        '#4 0.050 boom',
        '#4 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1',
        '------',
        ' > [4/3] RUN false:',
        '#4 0.050 boom',
        '------',
        '',
      ].join('\n'),
    );
  });

  it('switches away from an unfinished step with "#N ..." and joins partial log lines', () => {
    const out = run([
      status({ vertexes: [{ digest: 'sha256:a', name: 'step a', started: ts(0) }] }),
      status({ logs: [{ vertex: 'sha256:a', timestamp: ts(10), stream: 1n, msg: Buffer.from('par') }] }),
      status({ logs: [{ vertex: 'sha256:a', timestamp: ts(20), stream: 1n, msg: Buffer.from('tial\n') }] }),
      status({ vertexes: [{ digest: 'sha256:b', name: 'step b', started: ts(30), completed: ts(40), cached: true }] }),
      status({ vertexes: [{ digest: 'sha256:a', name: 'step a', started: ts(0), completed: ts(5000) }] }),
    ]);
    expect(out).toBe(['#1 step a', '#1 0.010 partial', '#1 ...', '', '#2 step b', '#2 CACHED', '', '#1 step a', '#1 DONE 5.0s', ''].join('\n'));
  });

  it('refuses an unknown progress mode and a tty mode without a terminal', () => {
    expect(() => createProgressDisplay({ mode: 'fancy', out: { write: () => true } })).toThrow('invalid progress mode fancy');
    expect(() => createProgressDisplay({ mode: 'tty', out: { write: () => true, isTTY: false } })).toThrow('failed to get console');
  });

  it('redraws a tty view with the build header', () => {
    let out = '';
    const d = createProgressDisplay({ mode: 'tty', out: { write: (s: string) => (out += s), isTTY: true, columns: 80, rows: 20 } as never });
    d.update(status({ vertexes: [{ digest: 'sha256:a', name: 'step a', started: ts(0), completed: ts(300) }] }));
    d.finish();
    expect(out).toMatch(/\[\+\] Building [\d.]+s \(1\/1\) FINISHED/);
    expect(out).toMatch(/ => step a +0\.3s/);
  });
});

describe('rawjson progress', () => {
  it('prints each status message as upstream buildctl v0.13+ does (Go field names, omitempty, times, base64, HTML escapes)', () => {
    const lines: string[] = [];
    const d = createProgressDisplay({ mode: 'rawjson', out: { write: (s: string) => lines.push(s) } });
    const t = (seconds: number, nanos: number) => ({ seconds: BigInt(seconds), nanos });
    d.update(
      status({
        vertexes: [
          { digest: 'sha256:aa', name: '[2/2] LINK COPY --link a /b', progressGroup: { id: 'g', name: '[2/2] COPY --link a /b' } },
          { digest: 'sha256:bb', inputs: ['sha256:aa'], name: 'copy /a /b', started: t(1700000000, 120000000), completed: t(1700000001, 5), cached: true, error: 'x <y>', progressGroup: { id: 'g', name: 'n', weak: true } },
        ],
        statuses: [{ ID: 'transferring context:', vertex: 'sha256:bb', current: 0n, total: 7n }],
        logs: [{ vertex: 'sha256:bb', stream: 2n, msg: new TextEncoder().encode('hi\n'), timestamp: t(1700000000, 0) }, { vertex: 'sha256:bb', stream: 1n, msg: new Uint8Array() }],
        warnings: [{ vertex: 'sha256:bb', level: 1n, short: new TextEncoder().encode('w'), detail: [new TextEncoder().encode('d')], url: 'https://x', ranges: [{ start: { line: 2, character: 0 }, end: { line: 2, character: 0 } }] }],
      }),
    );
    d.finish();
    expect(lines).toEqual([
      '{"vertexes":[{"digest":"sha256:aa","name":"[2/2] LINK COPY --link a /b","progressGroup":{"id":"g","name":"[2/2] COPY --link a /b"}},' +
        '{"digest":"sha256:bb","inputs":["sha256:aa"],"name":"copy /a /b","started":"2023-11-14T22:13:20.12Z","completed":"2023-11-14T22:13:21.000000005Z","cached":true,"error":"x \\u003cy\\u003e","progressGroup":{"id":"g","name":"n","weak":true}}],' +
        '"statuses":[{"id":"transferring context:","vertex":"sha256:bb","total":7,"current":0,"timestamp":"1970-01-01T00:00:00Z"}],' +
        '"logs":[{"vertex":"sha256:bb","stream":2,"data":"aGkK","timestamp":"2023-11-14T22:13:20Z"},{"vertex":"sha256:bb","stream":1,"data":null,"timestamp":"1970-01-01T00:00:00Z"}],' +
        '"warnings":[{"vertex":"sha256:bb","level":1,"short":"dw==","detail":["ZA=="],"url":"https://x","range":[{"start":{"line":2},"end":{"line":2}}]}]}\n',
    ]);
  });
});
