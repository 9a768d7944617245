/**
 * A native node's status on a terminal: one line at the bottom, redrawn every second, with what it
 * is doing (items done, current rate, running and queued items, the job it works on). Log lines are
 * written above it (`server/logger.ts` clears and redraws it around each). Only on a terminal:
 * piped output gets the log lines alone.
 */
import type { AgentStats } from '../worker/agent.ts';
import { setStatusLine, type StatusLine } from '../common/logger.ts';

/** The status line's text for a node's figures. */
export function statusText(s: AgentStats, job: { jobId: string; model: string } | undefined): string {
  const rate = s.rate >= 10 ? s.rate.toFixed(0) : s.rate.toFixed(1);
  const state = !s.connected
    ? 'connecting'
    : s.status === 'draining'
      ? 'draining'
      : s.paused
        ? 'paused'
        : s.running + s.queued > 0
          ? 'working'
          : 'idle';
  return [
    `[${state}]`,
    `${s.itemsDone} items done${s.itemsFailed ? ` (${s.itemsFailed} failed)` : ''}`,
    `${rate} items/s`,
    `${s.running} running, ${s.queued} queued`,
    ...(job && s.running + s.queued > 0 ? [`job ${job.jobId} (${job.model})`] : []),
  ].join(' · ');
}

/** The line itself, on a TTY stream. */
export class TerminalStatus implements StatusLine {
  private text = '';
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly out: NodeJS.WriteStream) {}

  /** Redraws `read()` every `everyMs` until {@link stop}. */
  start(read: () => string, everyMs = 1000): void {
    setStatusLine(this);
    const tick = () => this.set(read());
    tick();
    this.timer = setInterval(tick, everyMs);
    this.timer.unref();
  }

  set(text: string): void {
    // A terminal that reports no width (0 or none) is taken as 100 columns.
    const width = Math.max(20, (this.out.columns || 100) - 1);
    const next = text.length > width ? `${text.slice(0, width - 1)}…` : text;
    if (next === this.text) return;
    this.clear();
    this.text = next;
    this.redraw();
  }

  clear(): void {
    if (this.text) this.out.write('\r\x1b[2K');
  }

  redraw(): void {
    if (this.text) this.out.write(this.text);
  }

  /** Removes the line for good. */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.clear();
    this.text = '';
    setStatusLine(undefined);
  }
}
