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
}

export const DEFAULT_RATE_OPTIONS: RateOptions = { tauS: 1.0, windowS: 0.25 };

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

  constructor(private readonly opts: RateOptions = DEFAULT_RATE_OPTIONS) {}

  /** The best current figure: observed once known, else the benchmark. */
  get value(): number | undefined {
    return this.observed ?? this.bench;
  }

  /**
   * The figure at `now`, lowered when a busy worker has gone quiet for much longer than its rate
   * predicts (a straggler is noticed before its slow items finish).
   */
  at(now: number): number | undefined {
    const v = this.value;
    if (v === undefined || this.busySince === undefined) return v;
    const busyS = (this.windowBusyMs + now - this.busySince) / 1000;
    if (busyS * v < 3 * (this.windowDone + 1)) return v;
    return Math.min(v, (this.windowDone + 1) / busyS);
  }

  /** The worker started holding work at `now`. */
  busy(now: number): void {
    this.busySince ??= now;
  }

  /** The worker holds nothing any more. */
  idle(now: number): void {
    if (this.busySince !== undefined) this.windowBusyMs += now - this.busySince;
    this.busySince = undefined;
  }

  /** `n` items completed at `now`. */
  done(n: number, now: number): void {
    this.windowDone += n;
    let busy = this.windowBusyMs;
    if (this.busySince !== undefined) busy += now - this.busySince;
    if (busy < this.opts.windowS * 1000) return;
    const sample = this.windowDone / (busy / 1000);
    const prev = this.observed ?? this.bench;
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
