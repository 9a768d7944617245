/**
 * Worker weights: how many items per second a worker does on a model. A benchmark gives the first
 * figure; observed completions then take over through a time-based exponentially weighted average,
 * so a worker that slows down (throttled laptop, hidden tab, busy server) loses share within seconds.
 * Before any figure exists, a table of known GPUs gives a relative prior.
 */

/** Relative speed of known GPUs (RTX 3090 = 1). Matched against the device name in order. */
export const GPU_PRIORS: readonly [RegExp, number][] = [
  [/H200/i, 3.0],
  [/H100/i, 2.5],
  [/A100/i, 1.8],
  [/L40S?/i, 1.6],
  [/4090/i, 1.5],
  [/4080/i, 1.2],
  [/3090/i, 1.0],
  [/A10G?\b/i, 0.7],
  [/4070/i, 0.8],
  [/3080/i, 0.9],
  [/3070/i, 0.6],
  [/T4\b/i, 0.35],
  [/apple|M[1-4]\b/i, 0.4],
  [/swiftshader/i, 0.02],
];

/** The prior relative weight of a device (unknown devices: 1). */
export function priorWeight(deviceName: string | undefined): number {
  if (!deviceName) return 1;
  for (const [re, w] of GPU_PRIORS) if (re.test(deviceName)) return w;
  return 1;
}

/** Knobs of the observed-rate estimate. */
export interface RateOptions {
  /** Time constant of the average (seconds): older samples fade with exp(-age/tau). */
  tauS: number;
  /** Busy time that makes one sample (seconds). */
  windowS: number;
  /**
   * Silence allowed on top of three report intervals before a busy worker is marked down (seconds):
   * its first results of a job come after a transfer and a first batch, whatever its rate.
   */
  graceS: number;
}

export const DEFAULT_RATE_OPTIONS: RateOptions = { tauS: 1.0, windowS: 0.25, graceS: 0.25 };

/** Weight of the newest report in the average size of a worker's reports. */
const BATCH_EWMA = 0.25;

/**
 * One worker's rate on one model. Only busy time counts (time holding work), so a worker starved
 * by the hub is not mistaken for a slow one.
 */
export class RateEstimate {
  bench: number | undefined;
  observed: number | undefined;
  private windowDone = 0;
  private windowBusyMs = 0;
  private busySince: number | undefined;
  /** When it last reported results, or became busy since: its silence is counted from there. */
  private heardAt: number | undefined;
  /** Average results per report: a node that sends 32 at a time is silent between them. */
  private batch: number | undefined;

  constructor(private readonly opts: RateOptions = DEFAULT_RATE_OPTIONS) {}

  /**
   * The best current figure: observed once known, else the benchmark times `benchScale`, the other
   * workers' ratio of observed to benchmarked rate: a job's items may cost more or less than the
   * calibration item the benchmark ran, and a figure in benchmark items must not be weighed against
   * figures in job items.
   */
  figure(benchScale = 1): number | undefined {
    return this.observed ?? (this.bench === undefined ? undefined : this.bench * benchScale);
  }

  /**
   * The figure at `now`, lowered when a busy worker has been silent for much longer than its rate
   * and the size of its reports predict (a straggler is noticed before its slow items finish).
   * Allowed: three report intervals plus a grace. Past that the figure falls in proportion to the
   * silence, from the full rate at the limit.
   */
  at(now: number, benchScale = 1): number | undefined {
    const v = this.figure(benchScale);
    if (v === undefined || this.heardAt === undefined || this.busySince === undefined) return v;
    const allowedS = (3 * (this.batch ?? 1)) / v + this.opts.graceS;
    const silentS = (now - this.heardAt) / 1000;
    return silentS <= allowedS ? v : (v * allowedS) / silentS;
  }

  /** The worker started holding work at `now`. */
  busy(now: number): void {
    if (this.busySince !== undefined) return;
    this.busySince = now;
    this.heardAt = now;
  }

  /** The worker holds nothing any more. */
  idle(now: number): void {
    if (this.busySince !== undefined) this.windowBusyMs += now - this.busySince;
    this.busySince = undefined;
  }

  /** `n` items completed at `now` (one report). The first sample is averaged with the scaled benchmark. */
  done(n: number, now: number, benchScale = 1): void {
    this.heardAt = now;
    this.batch = this.batch === undefined ? n : this.batch + BATCH_EWMA * (n - this.batch);
    this.windowDone += n;
    let busy = this.windowBusyMs;
    if (this.busySince !== undefined) busy += now - this.busySince;
    if (busy < this.opts.windowS * 1000) return;
    const sample = this.windowDone / (busy / 1000);
    const prev = this.figure(benchScale);
    if (prev === undefined) this.observed = sample;
    else {
      const k = 1 - Math.exp(-busy / 1000 / this.opts.tauS);
      this.observed = prev + k * (sample - prev);
    }
    this.windowDone = 0;
    this.windowBusyMs = 0;
    if (this.busySince !== undefined) this.busySince = now;
  }
}
