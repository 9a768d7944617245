/**
 * A clock that moves only when a test says so (`advance`), for code that takes a `Clock`
 * (`worker/clock.ts`): the agent, its outbox, the sim backend and the stager. A test shows that
 * nothing happens in a span of time by advancing past it, with no real time spent.
 */
import type { Clock } from '../../worker/clock.ts';

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
}

/** A {@link Clock} driven by hand; see the file comment. */
export class ManualClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly timers = new Set<Timer>();

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn };
    this.timers.add(timer);
    return () => {
      this.timers.delete(timer);
    };
  }

  /** Timers waiting to fire. */
  get pending(): number {
    return this.timers.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way, in order, each at its
   * own time; after each, real I/O and promises get a turn (timers set by what ran fire too if they
   * fall due within `ms`).
   */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await turn();
    for (;;) {
      let next: Timer | undefined;
      for (const timer of this.timers)
        if (
          timer.at <= end &&
          (!next || timer.at < next.at || (timer.at === next.at && timer.seq < next.seq))
        )
          next = timer;
      if (!next) break;
      this.timers.delete(next);
      this.t = Math.max(this.t, next.at);
      next.fn();
      await turn();
    }
    this.t = end;
    await turn();
  }
}

/** Lets pending promise callbacks and I/O callbacks run. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
