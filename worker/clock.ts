/**
 * Time as the worker side reads it and waits on it: the agent, its outbox and the sim backend take
 * a {@link Clock} (default {@link systemClock}), as the hub's scheduler takes its `clock`, so tests
 * drive time by hand (`test/helpers/clock.ts`) instead of sleeping to show that nothing happens.
 */

/** A source of time and of timers. */
export interface Clock {
  /** Milliseconds, fractional, never going back (epoch-based for the system clock). */
  now(): number;
  /**
   * Calls `fn` once, `ms` from now; returns what cancels it. With `unref`, the timer alone does
   * not keep a Node process alive.
   */
  after(ms: number, fn: () => void, opts?: { unref?: boolean }): () => void;
}

/** Real time: `performance` for now (sub-millisecond, monotonic), `setTimeout` for timers. */
export const systemClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  after(ms, fn, opts) {
    const timer = setTimeout(fn, ms);
    if (opts?.unref) (timer as { unref?: () => void }).unref?.();
    return () => clearTimeout(timer);
  },
};

/** Resolves after `ms` on `clock`; a `signal` that aborts ends the wait early. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      cancel();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const cancel = clock.after(ms, done);
    signal?.addEventListener('abort', done, { once: true });
  });
}
