/**
 * The operator commands' progress bars (`submit`, `jobs --wait`, `ocr`): one look for all of them,
 * drawn by cli-progress on stderr. A bar shows a phase, items done of all, the recent rate, the
 * time elapsed and an ETA from the recent rate (`protocol/recent-rate.ts`, the one the hub and the
 * dashboard use), and ends saying how the phase ended (`completed`, `failed`, `cancelled`).
 */
import { Presets, SingleBar } from 'cli-progress';
import { RecentRate } from '../protocol/recent-rate.ts';

/** `75 s`, `4 min 05 s`, `1 h 02 min`. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '-';
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/** `12.3 MB`. */
export function formatBytes(n: number): string {
  return n >= 1e9
    ? `${(n / 1e9).toFixed(1)} GB`
    : n >= 1e6
      ? `${(n / 1e6).toFixed(1)} MB`
      : `${Math.round(n / 1e3)} kB`;
}

/** The key of a bar's one series in its {@link RecentRate}. */
const SERIES = 'bar';

/**
 * One phase's progress bar: redrawn in place on a terminal, a line every 5 s otherwise (so a log
 * file shows progress too).
 */
export class Progress {
  private readonly bar: SingleBar;
  private readonly started = Date.now();
  private readonly recent = new RecentRate();
  private readonly tty: boolean;
  private value = 0;
  private note = '';
  private stopped = false;

  /** `unit` names what is counted (`items`, `pages`). */
  constructor(
    private readonly phase: string,
    total: number,
    private readonly stream: NodeJS.WritableStream,
    private readonly unit = 'items',
  ) {
    this.tty = (stream as NodeJS.WriteStream).isTTY === true;
    this.bar = new SingleBar(
      {
        format: `${phase.padEnd(11)} {bar} {value}/{total} ${unit}  {rate}  {elapsedText} elapsed  {tail}{note}`,
        stream,
        barsize: 24,
        hideCursor: true,
        noTTYOutput: true,
        notTTYSchedule: 5000,
        fps: 5,
        // A line logged above the bar clears it; the next frame draws it again even if unchanged.
        forceRedraw: true,
      },
      Presets.shades_classic,
    );
    this.bar.start(Math.max(1, total), 0, this.payload(0, ''));
  }

  /** Sets the count (and the total, if it changed); `note` is shown after the ETA. */
  update(value: number, total?: number, note = ''): void {
    if (this.stopped) return;
    this.value = value;
    this.note = note;
    this.recent.observe(SERIES, Date.now(), value);
    if (total !== undefined) this.bar.setTotal(Math.max(1, total));
    this.bar.update(value, this.payload(value, note, total));
  }

  /**
   * Writes one line above the bar (a retry, a result), then draws the bar again under it. `to` is
   * where the line goes (stdout for results), the bar's stream by default.
   */
  log(line: string, to: { write(s: string): unknown } = this.stream): void {
    if (this.stopped || !this.tty) {
      to.write(`${line}\n`);
      return;
    }
    // Clear the bar's row, write the line there, and save the cursor at the start of the row below
    // (ESC 7), where the bar goes on: cli-progress returns to the saved position when it stops.
    this.stream.write('\r\x1b[2K');
    to.write(`${line}\n`);
    this.stream.write('\x1b7');
    this.bar.render();
  }

  private payload(value: number, note: string, total?: number) {
    const rate = this.recent.rate(SERIES) ?? 0;
    const left = (total ?? this.bar.getTotal()) - value;
    return {
      rate: rate > 0 ? `${rate.toFixed(rate >= 10 ? 0 : 1)} ${this.unit}/s` : `- ${this.unit}/s`,
      elapsedText: formatDuration(this.elapsedS),
      tail: `eta ${rate > 0 ? formatDuration(left / rate) : '-'}`,
      note: note ? `  ${note}` : '',
    };
  }

  /**
   * Stops the bar, leaving its last state on screen; with `end` (how the phase ended: `completed`,
   * `failed`, `cancelled`), the bar's last draw says it in place of the ETA.
   */
  stop(end?: string): void {
    if (this.stopped) return;
    if (end !== undefined) {
      this.bar.update(this.value, { ...this.payload(this.value, ''), tail: end });
    }
    this.stopped = true;
    this.bar.stop();
  }

  /** Seconds since the bar started. */
  get elapsedS(): number {
    return (Date.now() - this.started) / 1000;
  }

  /** The last note (for tests and messages). */
  get lastNote(): string {
    return this.note;
  }

  toString(): string {
    return this.phase;
  }
}
