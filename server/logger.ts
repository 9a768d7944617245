/**
 * The one structured logger (pino). User-supplied strings go through `clean()` so they can't forge
 * log lines; tokens are redacted by key wherever they appear.
 */
import { pino, type Logger } from 'pino';

/** Creates the process logger. `SHARDHUB_LOG_LEVEL` (or `LOG_LEVEL`) sets the level. */
export function createLogger(name: string, level?: string): Logger {
  return pino({
    name,
    level: level ?? process.env.SHARDHUB_LOG_LEVEL ?? process.env.LOG_LEVEL ?? 'info',
    redact: {
      paths: [
        'token',
        '*.token',
        'auth.token',
        'operatorToken',
        'joinToken',
        'workerSecret',
        '*.workerSecret',
      ],
      censor: '[redacted]',
    },
  });
}

/**
 * Makes a user-supplied string safe to log: control characters escaped, length bounded.
 * pino already JSON-escapes values; this also keeps pretty-printed and plain-text sinks honest.
 */
export function clean(s: unknown, max = 200): string {
  const str = typeof s === 'string' ? s : String(s);
  const escaped = str.replace(
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
  return escaped.length > max ? `${escaped.slice(0, max)}…(${escaped.length - max} more)` : escaped;
}

export type { Logger };
