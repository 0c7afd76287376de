import type { StatusResponse } from '../../gen/buildkit/control_pb.js';
import { InvalidArgumentError } from '../../util/errors.js';
import { errorLogs, PlainPrinter } from './plain.js';
import { statusGoJSON } from './rawjson.js';
import { Trace } from './trace.js';
import { TtyDisplay } from './tty.js';

export type ProgressMode = 'auto' | 'plain' | 'tty' | 'rawjson';

export interface ProgressDisplay {
  /** Feed one Control.Status message. */
  update(s: StatusResponse): void;
  /** The build is over: print the rest and the error summary. */
  finish(): void;
}

/**
 * The progress writer buildctl uses: `auto` is tty when `out` is a terminal, else plain
 * ($BUILDKIT_PROGRESS overrides auto, as upstream); `rawjson` writes every status message as it
 * comes, as upstream buildctl v0.13+ does. Output is throttled as upstream's
 * (at most every 100 ms, and a 150 ms tick so a quiet step still gets its turn).
 */
export function createProgressDisplay(opts: { mode: string; out: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean } }): ProgressDisplay {
  let mode = opts.mode;
  if (mode === 'auto' && process.env.BUILDKIT_PROGRESS) mode = process.env.BUILDKIT_PROGRESS;
  const out = opts.out;
  const isTty = Boolean((out as NodeJS.WriteStream).isTTY);
  let tty = false;
  switch (mode) {
    case 'auto':
    case '':
      tty = isTty;
      break;
    case 'tty':
      if (!isTty) throw new InvalidArgumentError('failed to get console: output is not a terminal');
      tty = true;
      break;
    case 'plain':
      break;
    case 'rawjson':
      return {
        update: (s) => void out.write(`${statusGoJSON(s)}\n`),
        finish: () => {},
      };
    default:
      throw new InvalidArgumentError(`invalid progress mode ${mode}`);
  }
  const write = (s: string): void => {
    out.write(s);
  };
  const trace = new Trace();
  const plain = new PlainPrinter({ write });
  const ttyView = tty
    ? new TtyDisplay({
        write,
        width: () => (out as NodeJS.WriteStream).columns ?? 80,
        height: () => (out as NodeJS.WriteStream).rows ?? 10,
      })
    : undefined;
  let lastPrint = 0;
  let finished = false;
  const render = (final: boolean): void => {
    lastPrint = Date.now();
    if (ttyView) ttyView.print(trace, final);
    else plain.print(trace);
  };
  const ticker = setInterval(() => {
    if (Date.now() - lastPrint >= 100) render(false);
  }, 150);
  ticker.unref();
  return {
    update(s) {
      if (finished) return;
      trace.update(s);
      if (Date.now() - lastPrint >= 100) render(false);
    },
    finish() {
      if (finished) return;
      finished = true;
      clearInterval(ticker);
      render(true);
      write(errorLogs(trace, ttyView ? 'tty' : 'plain'));
    },
  };
}
