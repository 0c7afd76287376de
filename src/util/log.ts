import { pino, type Logger } from 'pino';

/**
 * The one logger. Subsystems take a child: `log.child({ sub: 'solver' })`.
 * The daemon reconfigures level and format at start (cli/buildkitd.ts); tests keep it quiet.
 */
export let log: Logger = pino({ level: process.env.LOOM_LOG_LEVEL ?? 'warn' }, pino.destination(2));

export function configureLogger(opts: { level: string; format: 'text' | 'json' }): Logger {
  const dest = pino.destination({ fd: 2, sync: true });
  if (opts.format === 'json') {
    log = pino({ level: opts.level, timestamp: pino.stdTimeFunctions.isoTime }, dest);
  } else {
    // A compact text line, as upstream's logrus text format: time, level, message, fields.
    log = pino(
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
  }
  return log;
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
