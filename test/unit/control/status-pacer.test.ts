import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { StatusPacer } from '../../../src/control/status-pacer.js';
import type { ProgressEvent } from '../../../src/util/progress.js';

const vtx = (digest: string, completed = false): ProgressEvent => ({ kind: 'vertex', vertex: { digest, inputs: [], name: digest, started: new Date(), ...(completed ? { completed: new Date() } : {}) } });
const log = (vertex: string, text: string): ProgressEvent => ({ kind: 'log', log: { vertex, stream: 1, data: Buffer.from(text), timestamp: new Date() } });
const show = (ev: ProgressEvent) => (ev.kind === 'vertex' ? `${ev.vertex.digest}${ev.vertex.completed ? ' done' : ''}` : ev.kind === 'log' ? `${ev.log.vertex}: ${Buffer.from(ev.log.data).toString()}` : ev.kind);

describe('StatusPacer', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function pacer() {
    const writes: string[][] = [];
    let ended = false;
    const p = new StatusPacer({ write: (evs) => writes.push(evs.map(show)), end: () => (ended = true), holdMs: 150 });
    return { p, writes, ended: () => ended };
  }

  it('holds the output of a step that just started, and what follows it, until the client can have numbered the step', () => {
    const { p, writes } = pacer();
    p.push([vtx('a'), log('a', 'hello'), vtx('a', true)]);
    // The step's start goes at once; its output and its end wait, in order.
    expect(writes).toEqual([['a']]);
    vi.advanceTimersByTime(149);
    expect(writes).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(writes[1]).toEqual(['a: hello', 'a done']);
  });

  it('starts the next step of a chain after the held end of the one before it, with what that step sends meanwhile', () => {
    const { p, writes } = pacer();
    p.push([vtx('a')]);
    vi.advanceTimersByTime(60);
    p.push([log('a', 'hello'), vtx('a', true)]);
    p.push([vtx('b'), log('b', 'second'), vtx('b', true)]);
    // Sent as they came, b's start would reach the client before a's end, and upstream's printer
    // would show b first (it orders steps completed together by end time, a before b, but numbers
    // them as it first prints them).
    expect(writes).toEqual([['a']]);
    vi.advanceTimersByTime(90);
    expect(writes[1]).toEqual(['a: hello', 'a done', 'b']);
    vi.advanceTimersByTime(150);
    expect(writes[2]).toEqual(['b: second', 'b done']);
  });

  it('keeps a chain of quick steps with output in order: each starts after the output of the one before', () => {
    const { p, writes } = pacer();
    const all = () => writes.flat();
    p.push([vtx('a')]);
    vi.advanceTimersByTime(10);
    p.push([log('a', '1'), vtx('a', true), vtx('b')]);
    vi.advanceTimersByTime(10);
    p.push([log('b', '2'), vtx('b', true), vtx('c')]);
    vi.advanceTimersByTime(10);
    p.push([log('c', '3'), vtx('c', true), vtx('d')]);
    vi.advanceTimersByTime(1000);
    expect(all()).toEqual(['a', 'a: 1', 'a done', 'b', 'b: 2', 'b done', 'c', 'c: 3', 'c done', 'd']);
    // Each step's output waited for the client to have shown the step (150 ms after its start went).
    expect(writes).toEqual([['a'], ['a: 1', 'a done', 'b'], ['b: 2', 'b done', 'c'], ['c: 3', 'c done', 'd']]);
  });

  it('lets a step that has run for a while log while another step starts', () => {
    const { p, writes } = pacer();
    p.push([vtx('long')]);
    vi.advanceTimersByTime(1000);
    p.push([vtx('quick'), log('quick', 'q'), log('long', 'still going')]);
    expect(writes).toEqual([['long'], ['quick', 'long: still going']]);
  });

  it('ends a step that ends at once after the held output of a step that started before it (the cache summary after a quick last RUN)', () => {
    const { p, writes } = pacer();
    p.push([vtx('run')]);
    vi.advanceTimersByTime(50);
    p.push([log('run', 'a'), vtx('run', true), vtx('summary', true)]);
    expect(writes).toEqual([['run']]);
    vi.advanceTimersByTime(100);
    expect(writes[1]).toEqual(['run: a', 'run done', 'summary done']);
  });

  it('lets output of a step shown a while ago through at once', () => {
    const { p, writes } = pacer();
    p.push([vtx('a')]);
    vi.advanceTimersByTime(200);
    p.push([log('a', 'later')]);
    expect(writes).toEqual([['a'], ['a: later']]);
  });

  it('flushes what it holds before the stream ends, and writes nothing after close', () => {
    const { p, writes, ended } = pacer();
    p.push([vtx('a'), log('a', 'last words')]);
    p.end();
    expect(writes).toEqual([['a'], ['a: last words']]);
    expect(ended()).toBe(true);
    const q = pacer();
    q.p.push([vtx('x'), log('x', 'gone')]);
    q.p.close();
    vi.advanceTimersByTime(1000);
    expect(q.writes).toEqual([['x']]);
  });
});
