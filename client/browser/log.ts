/**
 * The page's logger: a {@link WorkerLogger} keeping the last entries in memory for the page to show,
 * mirrored to the browser console only when asked (`?log=1`; the tests turn it on to see a page's
 * story). Objects are kept as given; the page renders them as text, never as HTML.
 */
import type { WorkerLogger } from '../../worker/backend.ts';

/** One log entry. */
export interface LogEntry {
  at: number;
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  data: object;
}

/** The page logger; see the file comment. */
export class PageLogger implements WorkerLogger {
  private readonly entries: LogEntry[] = [];
  private readonly listeners = new Set<(e: LogEntry) => void>();

  constructor(private readonly opts: { keep?: number; console?: boolean; debug?: boolean } = {}) {}

  /** The kept entries, oldest first. */
  get recent(): readonly LogEntry[] {
    return this.entries;
  }

  /** Subscribes to new entries; returns the function that unsubscribes. */
  subscribe(fn: (e: LogEntry) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  debug(obj: object, msg?: string): void {
    if (this.opts.debug) this.add('debug', obj, msg);
  }
  info(obj: object, msg?: string): void {
    this.add('info', obj, msg);
  }
  warn(obj: object, msg?: string): void {
    this.add('warn', obj, msg);
  }
  error(obj: object, msg?: string): void {
    this.add('error', obj, msg);
  }

  private add(level: LogEntry['level'], data: object, msg = ''): void {
    const entry: LogEntry = { at: Date.now(), level, msg, data };
    this.entries.push(entry);
    if (this.entries.length > (this.opts.keep ?? 200)) this.entries.shift();
    if (this.opts.console) {
      // The one console sink, opt-in (?log=1): structured, one line per entry.
      // eslint-disable-next-line no-console
      console[level === 'debug' ? 'debug' : level](`[shardhub] ${msg} ${safeJson(data)}`);
    }
    for (const l of this.listeners) l(entry);
  }
}

/** JSON for a log line, never throwing (cycles, BigInt). */
export function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? '';
  } catch {
    return String(v);
  }
}
