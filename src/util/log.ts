import { createRequire } from 'node:module';
import type { Logger } from 'pino';

type Pino = typeof import('pino');

/**
 * The one logger. Subsystems take a child: `log.child({ sub: 'solver' })`.
 * The daemon reconfigures level and format at start (cli/buildkitd.ts); tests keep it quiet.
 *
 * pino itself is loaded the first time something is logged at an enabled level. The client
 * (buildctl) shares the session code that takes these children, and loading pino (~64 KB of
 * modules, a worker-capable destination) was ~5-10 ms of every command for debug lines it never
 * prints. Children made before the daemon configures the logger (most are made as their modules
 * load) come from the configured root when they first log, so `--debug` and `--log-format` reach
 * them too.
 */
const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };
let root: Logger | undefined;
/** The root before the daemon configures one (the client's, and tests'). */
function defaultRoot(): Logger {
  const { pino } = loadPino();
  return pino({ level: process.env.LOOM_LOG_LEVEL || 'warn' }, pino.destination(2));
}
let threshold = levelValue(process.env.LOOM_LOG_LEVEL || 'warn');

function loadPino(): Pino {
  // Not a static import: bundled into the client, it would be loaded by every command.
  return createRequire(import.meta.url)('pino') as Pino;
}

function levelValue(level: string): number {
  return LEVELS[level] ?? (level === 'silent' ? Infinity : LEVELS.info!);
}

const noop = (): void => {};

/**
 * A Logger that makes its pino logger (via `make`) when first asked for more than a child or a
 * disabled level. The root asks `make` every time (the daemon replaces the root when it configures
 * logging); a child keeps the logger it made.
 */
function lazyLogger(make: () => Logger, isRoot = false): Logger {
  let real: Logger | undefined;
  const get = (): Logger => (isRoot ? make() : (real ??= make()));
  return new Proxy({} as Logger, {
    get(_target, prop) {
      if (!real && !(isRoot && root)) {
        if (prop === 'child') return (bindings: Record<string, unknown>, opts?: object) => lazyLogger(() => get().child(bindings, opts));
        if (typeof prop === 'string' && LEVELS[prop] !== undefined && LEVELS[prop]! < threshold) return noop;
      }
      const r = get();
      const v = Reflect.get(r, prop, r) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(r) : v;
    },
    set(_target, prop, value) {
      return Reflect.set(get(), prop, value);
    },
  });
}

export const log: Logger = lazyLogger(() => (root ??= defaultRoot()), true);

export function configureLogger(opts: { level: string; format: 'text' | 'json' }): Logger {
  const { pino } = loadPino();
  const dest = pino.destination({ fd: 2, sync: true });
  threshold = levelValue(opts.level);
  root =
    opts.format === 'json'
      ? pino({ level: opts.level, timestamp: pino.stdTimeFunctions.isoTime }, dest)
      : // A compact text line, as upstream's logrus text format: time, level, message, fields.
        pino(
          {
            level: opts.level,
            base: undefined,
            timestamp: false,
            formatters: { level: (label) => ({ level: label }) },
            hooks: {
              streamWrite: (line: string) => textLine(line),
            },
          },
          dest,
        );
  return root;
}

function textLine(json: string): string {
  try {
    const o = JSON.parse(json) as Record<string, unknown>;
    const { level, msg, time: _t, ...rest } = o;
    const fields = Object.entries(rest)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v)}`)
      .join(' ');
    return `time="${new Date().toISOString()}" level=${String(level)} msg=${JSON.stringify(msg ?? '')}${fields ? ' ' + fields : ''}\n`;
  } catch {
    return json;
  }
}
