/**
 * A job's recent rate: finished items (done + failed) sampled over the last `windowMs`. One
 * computation for every ETA shown: the hub's job views (`server/job-view.ts`, so `GET /api/jobs`
 * and `jobs:updated`), the dashboard (samples of the hub's pushes, by the hub's clock) and the CLI's
 * progress bars (`server/cli-progress.ts`, samples of its polls). The rate since the job's start
 * counts the model download, benchmarks and the first shards' round trips: early in a job it made
 * the ETA twice what was left. The ETA is the items left at the recent rate.
 */
export class RecentRate {
  private readonly samples = new Map<string, { t: number; n: number }[]>();

  constructor(private readonly windowMs = 10_000) {}

  /** Records a job's finished count at hub time `t`. */
  observe(jobId: string, t: number, finished: number): void {
    let s = this.samples.get(jobId);
    if (!s) this.samples.set(jobId, (s = []));
    const last = s[s.length - 1];
    if (last && (finished < last.n || t < last.t)) s.length = 0; // went back: start over
    if (last && t === last.t) last.n = finished;
    else s.push({ t, n: finished });
    // Keep one sample at or before the window's start as the baseline.
    while (s.length > 2 && (s[1] as { t: number }).t <= t - this.windowMs) s.shift();
  }

  /**
   * Items per second over the window, or undefined with less than 2 s of samples (the rate since the
   * start is the better guess then).
   */
  rate(jobId: string): number | undefined {
    const s = this.samples.get(jobId);
    if (!s || s.length < 2) return undefined;
    const a = s[0] as { t: number; n: number };
    const b = s[s.length - 1] as { t: number; n: number };
    const span = b.t - a.t;
    return span >= 2000 ? ((b.n - a.n) * 1000) / span : undefined;
  }

  /** Seconds left for `left` items at the recent rate; undefined when it is not known or zero. */
  eta(jobId: string, left: number): number | undefined {
    const r = this.rate(jobId);
    return r !== undefined && r > 0 ? left / r : undefined;
  }

  /** The jobs it holds samples of. */
  jobs(): IterableIterator<string> {
    return this.samples.keys();
  }

  /** Forgets a job (it ended). */
  forget(jobId: string): void {
    this.samples.delete(jobId);
  }
}
