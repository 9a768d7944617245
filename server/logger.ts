/**
 * The one structured logger (pino). User-supplied strings go through `clean()` so they can't forge
 * log lines; tokens are redacted by key wherever they appear.
 */
import { pino, type Logger } from 'pino';

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO',
  40: 'WARN',
  50: 'ERROR',
  60: 'FATAL',
};

/**
 * One pino JSON line as a line for people: `12:34:56.789 WARN  hub: worker offline  workerId=n-1
 * reason=...`. Strings with anything but printable ASCII are shown JSON-quoted, so a value cannot
 * forge a line; a line that is not JSON is passed through.
 */
export function humanLine(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { level, time, msg, name, pid: _pid, hostname: _host, ...rest } = o;
  const at = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
  const lvl = (LEVEL_NAMES[level as number] ?? String(level)).padEnd(5);
  const show = (v: unknown) =>
    typeof v === 'string' && /^[\x20-\x7e]*$/.test(v) && !v.includes(' ') ? v : JSON.stringify(v);
  const extra = Object.entries(rest)
    .map(([k, v]) => `${k}=${show(v)}`)
    .join(' ');
  return `${at} ${lvl} ${String(name ?? '')}: ${show(msg ?? '').replace(/^"|"$/g, '')}${extra ? `  ${extra}` : ''}\n`;
}

/**
 * Creates the process logger. `SHARDHUB_LOG_LEVEL` (or `LOG_LEVEL`) sets the level. Lines are JSON,
 * except on a terminal, where they are short lines for people (`humanLine`);
 * `SHARDHUB_LOG_FORMAT=json` or `=human` chooses.
 */
export function createLogger(name: string, level?: string): Logger {
  const format = process.env.SHARDHUB_LOG_FORMAT ?? (process.stdout.isTTY ? 'human' : 'json');
  const options = {
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
  };
  if (format !== 'human') return pino(options);
  return pino(options, { write: (line: string) => void process.stdout.write(humanLine(line)) });
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
