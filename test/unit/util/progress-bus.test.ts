import { describe, expect, it } from 'vitest';
import { byteStatus, inVertex, oneOff, ProgressBus, type ProgressEvent } from '../../../src/util/progress.js';

/** Every event written, in order, once the bus is closed. */
function events(bus: ProgressBus): ProgressEvent[] {
  const out: ProgressEvent[] = [];
  bus.subscribe((b) => b && out.push(...b));
  bus.close();
  return out;
}

const line = (e: ProgressEvent): string =>
  e.kind === 'vertex'
    ? `vertex ${e.vertex.name}${e.vertex.completed ? ` done${e.vertex.error ? `: ${e.vertex.error}` : ''}` : ''}`
    : e.kind === 'status'
      ? `status ${e.status.name}${e.status.completed ? ' done' : ''}`
      : e.kind;

describe('ProgressBus', () => {
  it('ends a step\'s open statuses before the step, as upstream (its printer shows ERROR only then)', async () => {
    const bus = new ProgressBus();
    await expect(
      inVertex(bus, { name: 'exporting to image', id: 'x' }, async (v) => {
        oneOff(bus, v, 'exporting layers')();
        oneOff(bus, v, 'pushing layers');
        throw new Error('failed to push');
      }),
    ).rejects.toThrow('failed to push');
    expect(events(bus).map(line)).toEqual([
      'vertex exporting to image',
      'status exporting layers',
      'status exporting layers done',
      'status pushing layers',
      'status pushing layers done',
      'vertex exporting to image done: failed to push',
    ]);
  });

  it('shows a context transfer once bytes move (no empty line first, as upstream), a download at once with 0 bytes', () => {
    const bus = new ProgressBus();
    const download = byteStatus(bus, 'v', 'sha256:abc', 10);
    const transfer = byteStatus(bus, 'v', 'transferring context:', 0, { announce: false });
    transfer.done(26);
    download.done(10);
    const statuses = events(bus).flatMap((e) => (e.kind === 'status' ? [`${e.status.name} ${e.status.current}${e.status.completed ? ' done' : ''}`] : []));
    expect(statuses).toEqual(['sha256:abc 0', 'transferring context: 26 done', 'sha256:abc 10 done']);
  });

  it('ends the steps still running as context canceled when told (a failed build), and only those', () => {
    const bus = new ProgressBus();
    const started = new Date();
    bus.vertex({ digest: 'a', inputs: [], name: 'done step', started });
    bus.vertex({ digest: 'a', inputs: [], name: 'done step', started, completed: new Date() });
    bus.vertex({ digest: 'b', inputs: [], name: 'failed step', started });
    bus.vertex({ digest: 'b', inputs: [], name: 'failed step', started, completed: new Date(), error: 'exit code: 3' });
    bus.vertex({ digest: 'c', inputs: [], name: 'running step', started });
    bus.vertex({ digest: 'd', inputs: [], name: 'never started' });
    bus.cancelOpen();
    const out = events(bus).map(line);
    expect(out.filter((l) => l.includes('context canceled'))).toEqual(['vertex running step done: context canceled']);
    expect(out).toContain('vertex failed step done: exit code: 3');
  });

  it("mirrors one vertex's events to another build's bus, those already written first, under that build's name, until told to stop", () => {
    const runner = new ProgressBus();
    const waiter = new ProgressBus();
    const started = new Date();
    runner.vertex({ digest: 'sha256:a', inputs: [], name: '[2/2] RUN make', started });
    runner.log('sha256:a', 1, Buffer.from('early\n'));
    runner.vertex({ digest: 'sha256:b', inputs: [], name: 'other step', started });
    const stop = runner.mirror('sha256:a', waiter, { digest: 'sha256:a', inputs: ['sha256:base'], name: '[stage-1 3/3] RUN make' });
    runner.log('sha256:a', 2, Buffer.from('late\n'));
    runner.log('sha256:b', 1, Buffer.from('not mine\n'));
    runner.vertex({ digest: 'sha256:a', inputs: [], name: '[2/2] RUN make', started, completed: new Date() });
    stop();
    runner.log('sha256:a', 1, Buffer.from('after stop\n'));
    const seen = events(waiter).map((e) => (e.kind === 'log' ? `log ${Buffer.from(e.log.data).toString().trim()}` : e.kind === 'vertex' ? `${line(e)} ${e.vertex.inputs.join(',')} ${e.vertex.started === started}` : line(e)));
    expect(seen).toEqual(['vertex [stage-1 3/3] RUN make sha256:base true', 'log early', 'log late', 'vertex [stage-1 3/3] RUN make done sha256:base true']);
  });

  it("keeps no output of a step that read secrets, nor any output holding a secret's value, for the build record; live readers still see it", () => {
    const bus = new ProgressBus();
    const live: ProgressEvent[] = [];
    bus.subscribe((b) => b && live.push(...b));
    const waiter = new ProgressBus();
    bus.vertex({ digest: 'sha256:s', inputs: [], name: '[2/3] RUN --mount=type=secret,id=tok cat /run/secrets/tok', started: new Date() });
    bus.mirror('sha256:s', waiter, { digest: 'sha256:s', inputs: [], name: 'the same step in another build' });
    bus.secretRead('sha256:s', Buffer.from('tok-value-123'));
    bus.log('sha256:s', 1, Buffer.from('tok-value-123\n'));
    bus.log('sha256:s', 1, Buffer.from('more output\n'));
    bus.log('sha256:o', 1, Buffer.from('an echo of tok-value-123 elsewhere\n'));
    bus.log('sha256:o', 1, Buffer.from('harmless\n'));
    const logs = (evs: ProgressEvent[]) => evs.flatMap((e) => (e.kind === 'log' ? [`${e.log.vertex} ${Buffer.from(e.log.data).toString().trim()}`] : []));
    expect(logs(bus.kept())).toEqual(['sha256:s [output not kept with the build record: the step read secrets or printed one]', 'sha256:o [output not kept with the build record: the step read secrets or printed one]', 'sha256:o harmless']);
    expect(bus.kept().filter((e) => e.kind === 'vertex')).toHaveLength(1);
    expect(logs(waiter.kept())).toEqual(['sha256:s [output not kept with the build record: the step read secrets or printed one]']);
    expect(logs(events(bus))).toContain('sha256:s tok-value-123');
    expect(logs(live)).toContain('sha256:o an echo of tok-value-123 elsewhere');
  });
});
