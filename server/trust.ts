/**
 * Trust in workers, as volunteer-computing systems keep it: a worker earns trust with results
 * that checks confirm (canaries, quorums) and loses it with results they refute. New and untrusted
 * workers' items are replicated; proven workers' only now and then (spot checks). A worker that
 * fails checks is quarantined: it gets no more work and its unconfirmed results are computed again.
 */
import type { TrustRecord, TrustStore } from './store/trust-store.ts';

/** Where the book's records come from and go (the hub's `TrustCache`, or a `TrustStore`). */
export type TrustBookStore = Pick<TrustStore, 'allTrust' | 'putTrust'>;

/** Trust policy knobs. */
export interface TrustOptions {
  /** Confirmed results in a row after which a worker counts as proven. */
  trustAfter: number;
  /**
   * Probability that a proven worker's item is replicated anyway (a spot check), before its record
   * lowers it (see `spotRate`).
   */
  spotCheck: number;
  /** Least spot-check probability, however long a proven worker's record: never zero. */
  minSpotCheck: number;
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
  spotCheck: 0.07,
  minSpotCheck: 0.02,
  strikesToQuarantine: 2,
  trustNative: false,
  canaryFraction: 0.01,
  minCanaries: 2,
  maxCanaries: 20,
};

/**
 * Confirmed results in a row after a strike before a worker's spot checks ease off from every
 * result (then they fall as DOUBT_STREAK / streak; see `spotRate`).
 */
const DOUBT_STREAK = 50;
/** Confirmed results in a row that halve a proven worker's spot-check rate. */
const SPOT_HALF_LIFE = 1000;

/** The verdict of one failed check. */
export type Strike = { quarantined: boolean; record: TrustRecord };

export class TrustBook {
  private readonly cache = new Map<string, TrustRecord>();

  constructor(
    private readonly store: TrustBookStore,
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

  /**
   * Takes a record as another hub left it in the shared store (read when the worker registers
   * here): a quarantine decided anywhere holds everywhere. Not written back.
   */
  adopt(r: TrustRecord): void {
    const mine = this.cache.get(r.workerId);
    if (!mine || r.at >= mine.at || (r.quarantined && !mine.quarantined)) this.cache.set(r.workerId, r);
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

  /** Whether the operator vouches for this worker: a native node joined with `trustNative` on. */
  isTrusted(workerId: string, kind: 'browser' | 'native'): boolean {
    const r = this.record(workerId);
    return kind === 'native' && this.opts.trustNative && r.strikes === 0 && !r.quarantined;
  }

  /**
   * The spot-check probability of a proven worker, after BOINC's adaptive replication: `spotCheck`,
   * halving with every SPOT_HALF_LIFE confirmed results in a row, never below `minSpotCheck`; and
   * after any doubt (a strike) at least DOUBT_STREAK / streak: every result until DOUBT_STREAK
   * confirmed in a row, then a share that falls as its clean record grows (a half after 100, a
   * tenth after 500). A doubt that ended after DOUBT_STREAK results let a liar that lies on a few %
   * of items slip back to the base rate (and a restarted one, honest again for a while, did so
   * every time); a doubt that fades slowly finds its next lie within a few dozen results, while an
   * honest worker's one fluke costs it checks on a shrinking share of its results.
   */
  spotRate(workerId: string): number {
    const r = this.record(workerId);
    const decayed = this.opts.spotCheck * 0.5 ** (r.streak / SPOT_HALF_LIFE);
    const base = Math.max(this.opts.minSpotCheck, decayed);
    if (r.strikes === 0) return base;
    return Math.max(base, Math.min(1, DOUBT_STREAK / Math.max(1, r.streak)));
  }

  /**
   * Whether this result needs another worker's result before it is accepted: always for an unproven
   * worker; for a proven one at its spot-check rate (`spotRate`), native nodes included (a
   * confirmer is found within about a second, or the hub's reference backend confirms). Only
   * workers the operator trusts are never spot-checked.
   */
  needsReplica(workerId: string, kind: 'browser' | 'native', redundancy: number): boolean {
    if (redundancy > 1) return true;
    if (this.isTrusted(workerId, kind)) return false;
    if (!this.isProven(workerId, kind)) return true;
    return this.random() < this.spotRate(workerId);
  }

  /** Results confirmed by a check. */
  confirmed(workerId: string, n = 1): void {
    const r = this.record(workerId);
    this.put({ ...r, validated: r.validated + n, streak: r.streak + n, at: Date.now() });
  }

  /**
   * A failed check: a strike, and quarantine at the threshold (at once for a wrong canary). A
   * quarantined worker's record stays as its quarantine left it: checks it fails later (replicas
   * judged after it was caught) say nothing new about it.
   */
  refuted(workerId: string, reason: string, severe: boolean): Strike {
    const r = this.record(workerId);
    if (r.quarantined) return { quarantined: false, record: r };
    const strikes = r.strikes + 1;
    const quarantined = severe || strikes >= this.opts.strikesToQuarantine;
    const record = this.put({
      ...r,
      strikes,
      streak: 0,
      quarantined,
      reason: quarantined ? reason : r.reason,
      at: Date.now(),
    });
    return { quarantined, record };
  }

  /** Lifts a quarantine (operator action). */
  release(workerId: string): void {
    const r = this.record(workerId);
    this.put({ ...r, quarantined: false, strikes: 0, streak: 0, reason: null, at: Date.now() });
  }
}

/** Failures of one item not yet decided: which workers reported them, and whether one was proven. */
interface ItemEvidence {
  jobId: string;
  workers: Set<string>;
  proven: boolean;
}

/** A worker's runs and failures (failed runs and invalid outputs) on one model. */
interface RunCounts {
  runs: number;
  failed: number;
}

/** Failures a worker must have on a model before its rate is compared with its peers'. */
const OUTLIER_MIN_FAILURES = 20;
/** Runs a peer must have on a model for its rate to count as a baseline. */
const OUTLIER_MIN_PEER_RUNS = 20;
/** Workers whose run counts are kept (oldest forgotten first): bounded under a flood of identities. */
const MAX_COUNTED_WORKERS = 10_000;

/**
 * Evidence before an item ends failed, and failure rates against peers. A failure report is a
 * claim, cheap for a hostile worker to make: an item ends failed only when distinct workers failed
 * it, at least one of them proven (else the hub's reference backend decides). A worker that fails
 * far more of a model's items than the best of its peers is an outlier: quarantined like a liar.
 */
export class FailureBook {
  private readonly items = new Map<number, ItemEvidence>();
  /** model sha256 → worker → counts. */
  private readonly counts = new Map<string, Map<string, RunCounts>>();
  private readonly order: string[] = [];
  private readonly known = new Set<string>();

  /**
   * Records a failure of `itemId` by `workerId`. Returns the item's failers so far and whether
   * they are evidence enough to fail it for good.
   */
  failed(
    jobId: string,
    itemId: number,
    workerId: string,
    proven: boolean,
  ): { enough: boolean; workers: string[] } {
    let e = this.items.get(itemId);
    if (!e) this.items.set(itemId, (e = { jobId, workers: new Set(), proven: false }));
    e.workers.add(workerId);
    e.proven ||= proven;
    return { enough: e.workers.size >= 2 && e.proven, workers: [...e.workers] };
  }

  /** The item was decided (done, or failed for good): its evidence is no longer needed. */
  forget(itemId: number): void {
    this.items.delete(itemId);
  }

  /** Items with failures on record (to skip the per-item `forget` on the hot path when none). */
  get size(): number {
    return this.items.size;
  }

  /** Forgets the evidence of a job's items (the job ended). */
  forgetJob(jobId: string): void {
    for (const [id, e] of this.items) if (e.jobId === jobId) this.items.delete(id);
  }

  /** Counts a worker's runs on a model, `failed` of them failures or invalid outputs. */
  ran(sha: string, workerId: string, runs: number, failed: number): void {
    let byWorker = this.counts.get(sha);
    if (!byWorker) this.counts.set(sha, (byWorker = new Map()));
    const c = byWorker.get(workerId) ?? { runs: 0, failed: 0 };
    c.runs += runs;
    c.failed += failed;
    byWorker.set(workerId, c);
    if (!this.known.has(workerId)) {
      this.known.add(workerId);
      this.order.push(workerId);
      if (this.order.length > MAX_COUNTED_WORKERS) {
        const oldest = this.order.shift() as string;
        this.known.delete(oldest);
        for (const m of this.counts.values()) m.delete(oldest);
      }
    }
  }

  /**
   * Whether a worker's failure rate on a model stands far above its peers': at least
   * OUTLIER_MIN_FAILURES failures, a rate of at least one half, and three times the best peer's
   * rate plus a quarter. The best peer, not the average: colluding failure-reporters raise the
   * average, but cannot lower an honest worker's rate. Without a peer to compare with, no verdict.
   */
  outlier(sha: string, workerId: string): boolean {
    const byWorker = this.counts.get(sha);
    const mine = byWorker?.get(workerId);
    if (!byWorker || !mine || mine.failed < OUTLIER_MIN_FAILURES) return false;
    const rate = mine.failed / Math.max(1, mine.runs);
    let best = Infinity;
    for (const [id, c] of byWorker) {
      if (id !== workerId && c.runs >= OUTLIER_MIN_PEER_RUNS) best = Math.min(best, c.failed / c.runs);
    }
    return best !== Infinity && rate >= 0.5 && rate >= 3 * best + 0.25;
  }
}
