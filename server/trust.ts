/**
 * Trust in workers, as volunteer-computing systems keep it: a worker earns trust with results
 * that checks confirm (canaries, quorums) and loses it with results they refute. New and untrusted
 * workers' items are replicated; proven workers' only now and then (spot checks). A worker that
 * fails checks is quarantined: it gets no more work and its unconfirmed results are computed again.
 */
import type { TrustRecord, TrustStore } from './store/trust-store.ts';

/** Trust policy knobs. */
export interface TrustOptions {
  /** Confirmed results in a row after which a worker counts as proven. */
  trustAfter: number;
  /** Probability that a proven browser worker's item is replicated anyway. */
  spotCheck: number;
  /** Failed checks that quarantine a worker (a wrong canary quarantines at once). */
  strikesToQuarantine: number;
  /**
   * Native nodes joined with the join token start proven (their operator vouches for them). Off by
   * default: every worker proves itself with replicated results first.
   */
  trustNative: boolean;
  /** Canaries per job: this fraction of its items, within [min, max]. */
  canaryFraction: number;
  minCanaries: number;
  maxCanaries: number;
}

export const DEFAULT_TRUST_OPTIONS: TrustOptions = {
  trustAfter: 10,
  spotCheck: 0.05,
  strikesToQuarantine: 2,
  trustNative: false,
  canaryFraction: 0.01,
  minCanaries: 2,
  maxCanaries: 20,
};

/** The verdict of one failed check. */
export type Strike = { quarantined: boolean; record: TrustRecord };

export class TrustBook {
  private readonly cache = new Map<string, TrustRecord>();

  constructor(
    private readonly store: TrustStore,
    readonly opts: TrustOptions = DEFAULT_TRUST_OPTIONS,
    private readonly random: () => number = Math.random,
  ) {
    for (const r of store.allTrust()) this.cache.set(r.workerId, r);
  }

  /** A worker's record (a fresh one for a worker never seen). */
  record(workerId: string): TrustRecord {
    return (
      this.cache.get(workerId) ?? {
        workerId,
        validated: 0,
        streak: 0,
        strikes: 0,
        quarantined: false,
        reason: null,
        at: 0,
      }
    );
  }

  private put(r: TrustRecord): TrustRecord {
    this.cache.set(r.workerId, r);
    this.store.putTrust(r);
    return r;
  }

  isQuarantined(workerId: string): boolean {
    return this.cache.get(workerId)?.quarantined ?? false;
  }

  /** Whether a worker's results may be accepted without a second opinion. */
  isProven(workerId: string, kind: 'browser' | 'native'): boolean {
    const r = this.record(workerId);
    if (r.quarantined) return false;
    if (kind === 'native' && this.opts.trustNative && r.strikes === 0) return true;
    return r.streak >= this.opts.trustAfter;
  }

  /**
   * Whether this result needs another worker's result before it is accepted: always for an unproven
   * worker; for a proven browser worker now and then (a spot check). Proven native nodes are checked
   * by canaries only: a spot check would hold a fast node's item for a slower one to confirm.
   */
  needsReplica(workerId: string, kind: 'browser' | 'native', redundancy: number): boolean {
    if (redundancy > 1) return true;
    if (!this.isProven(workerId, kind)) return true;
    if (kind === 'native') return false;
    return this.random() < this.opts.spotCheck;
  }

  /** Results confirmed by a check. */
  confirmed(workerId: string, n = 1): void {
    const r = this.record(workerId);
    this.put({ ...r, validated: r.validated + n, streak: r.streak + n, at: Date.now() });
  }

  /** A failed check: a strike, and quarantine at the threshold (at once for a wrong canary). */
  refuted(workerId: string, reason: string, severe: boolean): Strike {
    const r = this.record(workerId);
    const strikes = r.strikes + 1;
    const quarantined = r.quarantined || severe || strikes >= this.opts.strikesToQuarantine;
    const record = this.put({
      ...r,
      strikes,
      streak: 0,
      quarantined,
      reason: quarantined ? reason : r.reason,
      at: Date.now(),
    });
    return { quarantined: quarantined && !r.quarantined, record };
  }

  /** Lifts a quarantine (operator action). */
  release(workerId: string): void {
    const r = this.record(workerId);
    this.put({ ...r, quarantined: false, strikes: 0, streak: 0, reason: null, at: Date.now() });
  }
}
