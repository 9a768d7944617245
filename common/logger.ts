/**
 * The one structured logger (pino). JSON lines for machines; on a terminal, lines for people
 * formatted by pino-pretty (`12:34:56.789 WARN  hub: worker offline  {"workerId":"n-1",...}`).
 * User-supplied strings go through `clean()` so they can't forge log lines; tokens are redacted by
 * key wherever they appear; fractional numbers are rounded to what a person reads
 * (`itemsPerSec: 9.82`, not `9.821329425692623`).
 */
import { pino, type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';

/**
 * Something drawn on the terminal's last line (a node's status line): log lines are written above
 * it, so it is cleared before each and drawn again after.
 */
export interface StatusLine {
  clear(): void;
  redraw(): void;
}

let statusLine: StatusLine | undefined;

/** Sets (or removes) the status line log lines are written around. */
export function setStatusLine(s: StatusLine | undefined): void {
  statusLine = s;
}

/** A number as a person reads it: 3 significant digits, whole numbers from 100 on. */
export function roundForPeople(n: number): number {
  if (Number.isInteger(n) || !Number.isFinite(n)) return n;
  return Math.abs(n) >= 100 ? Math.round(n) : Number(n.toPrecision(3));
}

/** A log record's fields with fractional numbers rounded (one level of nesting too). */
function rounded(o: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(o)) {
    let r = v;
    if (typeof v === 'number') r = roundForPeople(v);
    else if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Error)) {
      const inner = v as Record<string, unknown>;
      if (Object.values(inner).some((x) => typeof x === 'number' && !Number.isInteger(x))) {
        r = Object.fromEntries(
          Object.entries(inner).map(([ik, iv]) => [ik, typeof iv === 'number' ? roundForPeople(iv) : iv]),
        );
      }
    }
    if (r !== v) (out ??= { ...o })[k] = r;
  }
  return out ?? o;
}

/**
 * One pino JSON line as a line for people (pino-pretty, on one line). The message is shown through
 * `clean()`, and other fields JSON-encoded, so a value cannot start a line of its own.
 */
export function humanFormatter(colorize = false): (json: string) => string {
  const pretty = prettyFactory({
    colorize,
    singleLine: true,
    translateTime: 'HH:MM:ss.l',
    ignore: 'pid,hostname,name',
    // Only `err` holds Error objects (printed with their stack); `error` fields here are messages,
    // which belong on the line with the rest.
    errorLikeObjectKeys: ['err'],
    messageFormat: (log: Record<string, unknown>, key: string) =>
      `${clean(String(log.name ?? ''))}: ${clean(String(log[key] ?? ''), 1000)}`,
  });
  return (json: string) => {
    try {
      JSON.parse(json);
    } catch {
      return json; // not a pino line: passed through as it came
    }
    return pretty(json);
  };
}

/**
 * Creates the process logger. `SHARDHUB_LOG_LEVEL` (or `LOG_LEVEL`) sets the level. Lines are JSON,
 * except on a terminal, where they are lines for people (`humanFormatter`);
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
    formatters: { log: rounded },
  };
  if (format !== 'human') return pino(options);
  const human = humanFormatter(process.stdout.isTTY === true);
  return pino(options, {
    write: (line: string) => {
      statusLine?.clear();
      process.stdout.write(human(line));
      statusLine?.redraw();
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
