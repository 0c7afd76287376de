import { afterEach, describe, expect, it, vi } from 'vitest';
import { byteStatus, ProgressBus, type ProgressEvent } from '../../../src/util/progress.js';

afterEach(() => vi.useRealTimers());

function statuses(bus: ProgressBus): { current: number; total: number; completed: boolean }[] {
  const out: ProgressEvent[] = [];
  bus.subscribe((b) => b && out.push(...b));
  bus.close();
  return out.flatMap((e) => (e.kind === 'status' ? [{ current: e.status.current, total: e.status.total, completed: e.status.completed !== undefined }] : []));
}

describe('byteStatus', () => {
  it('starts at 0, reports at most every 100 ms, always when a known total is reached, and completes', () => {
    vi.useFakeTimers();
    const bus = new ProgressBus();
    const s = byteStatus(bus, 'v', 'sha256:abc', 1000);
    s.update(10); // first update: reported
    s.update(20); // within 100 ms: dropped
    vi.advanceTimersByTime(150);
    s.update(30);
    s.update(1000); // the total: reported at once
    s.done(1000);
    expect(statuses(bus)).toEqual([
      { current: 0, total: 1000, completed: false },
      { current: 10, total: 1000, completed: false },
      { current: 30, total: 1000, completed: false },
      { current: 1000, total: 1000, completed: false },
      { current: 1000, total: 1000, completed: true },
    ]);
  });

  it('with no known total only the time limits the updates', () => {
    vi.useFakeTimers();
    const bus = new ProgressBus();
    const s = byteStatus(bus, 'v', 'transferring context:');
    s.update(5);
    s.update(6);
    s.done(6);
    expect(statuses(bus)).toEqual([
      { current: 0, total: 0, completed: false },
      { current: 5, total: 0, completed: false },
      { current: 6, total: 0, completed: true },
    ]);
  });
});
