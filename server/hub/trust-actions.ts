/**
 * Trust actions: what the hub does about a worker's record. Strikes and quarantine (with the
 * recomputation of what the worker gave unconfirmed), doubt, the probation quota (`freshLimit`),
 * strays (items named without being held), and the reference backend's confirmation of probation
 * results nobody confirms in time. The one writer of the trust records; readers ask through here.
 */
import type { ProbationView } from '../../protocol/operator.ts';
import { clean, type Logger } from '../logger.ts';
import { RateLimiter } from '../rate-limit.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { AsyncStore, Lease, TrustRecord } from '../store/async-store.ts';
import type { TrustBook } from '../trust.ts';
import type { Verifier } from '../verify.ts';
import type { Dispatch } from './dispatch.ts';
import type { JobLifecycle } from './jobs.ts';
import type { ReferenceRuns } from './reference.ts';
import type { WorkerRegistry } from './registry.ts';
import type { HubEmitter } from './types.ts';

/**
 * Longest a probation result waits for a confirmer before the hub's reference backend confirms it
 * (ms): verification must not hold a job up while no other worker can take the item.
 */
export const CONFIRM_WAIT_MS = 1000;

/** Most runners a worker on probation is credited with, whatever it claims (see `probationQuota`). */
const PROBATION_RUNNERS = 8;

/**
 * Items a worker may name in results, failures or releases without holding them, per second and in
 * a burst: an honest worker sends some after a requeue, a steal or a job's end (at most what it held,
 * 4,096 items). Past that it is forging, and each further stray costs it a strike, at most one per
 * STRAY_STRIKE_S seconds (two strikes quarantine).
 */
const STRAY_PER_SEC = 100;
const STRAY_BURST = 8192;
const STRAY_STRIKE_S = 5;

/**
 * Fresh items a worker on probation may hold at once, its results awaiting a check included. The
 * claimed concurrency is the worker's own word: a tab claiming 256 runners must not get hundreds of
 * items to fail or lie on before its first check.
 */
export function probationQuota(concurrency: number): number {
  return Math.max(2, 2 * Math.min(concurrency, PROBATION_RUNNERS));
}

/**
 * What verification cost, in runs beyond one per item: results kept as replicas (each asks one more
 * run), items the reference backend ran, and results recomputed after a quarantine.
 */
export interface VerificationCost {
  replicas: number;
  reference: number;
  recomputed: number;
}

/** What a worker's trust looks like to readers. */
export interface TrustQueries {
  isQuarantined(workerId: string): boolean;
  /** Whether a worker's results are taken without a second opinion (past probation). */
  isProven(workerId: string, kind: 'browser' | 'native'): boolean;
  /** The worker's record (strikes, streak, state). */
  record(workerId: string): TrustRecord;
  /**
   * Results, failure reports and releases of a quarantined worker turned down since its quarantine
   * (this hub's run): counted here, not as strikes.
   */
  rejectedSinceQuarantine(workerId: string): number;
  /** A worker's probation, or null once proven or unknown. */
  probationOf(workerId: string): ProbationView | null;
}

export interface TrustActionsDeps {
  trust: TrustBook;
  store: AsyncStore;
  lease: () => Lease;
  /** Resolves once the results commits in flight have finished. */
  committed: () => Promise<void>;
  verifier: Verifier;
  scheduler: Scheduler;
  jobs: JobLifecycle;
  workers: WorkerRegistry;
  dispatch: Dispatch;
  reference: ReferenceRuns;
  cost: VerificationCost;
  log: Logger;
  events: HubEmitter;
}

export class TrustActions implements TrustQueries {
  private readonly strays = new RateLimiter(STRAY_PER_SEC, STRAY_BURST, 10_000);
  private readonly strayStrikes = new RateLimiter(1 / STRAY_STRIKE_S, 1, 10_000);
  /** Per quarantined worker: what it sent that failed a check or named items it does not hold. */
  private readonly rejected = new Map<string, number>();

  constructor(private readonly d: TrustActionsDeps) {}

  // ------------------------------------------------------------------ queries

  isQuarantined(workerId: string): boolean {
    return this.d.trust.isQuarantined(workerId);
  }

  /** Whether a worker's results are taken without a second opinion (past probation). */
  isProven(workerId: string, kind: 'browser' | 'native'): boolean {
    return this.d.trust.isProven(workerId, kind);
  }

  record(workerId: string): TrustRecord {
    return this.d.trust.record(workerId);
  }

  rejectedSinceQuarantine(workerId: string): number {
    return this.rejected.get(workerId) ?? 0;
  }

  /**
   * Once quarantined, a worker's failed checks and strays are noise (its replicas still being
   * judged, late results): counted as rejected, not piled up as strikes and `check_failed` events
   * that would skew its record and the job's report. Returns whether `workerId` is quarantined.
   */
  private rejectedIfQuarantined(workerId: string, n: number): boolean {
    if (!this.d.trust.isQuarantined(workerId)) return false;
    this.rejected.set(workerId, (this.rejected.get(workerId) ?? 0) + n);
    return true;
  }

  /**
   * A worker's probation, read-only, for the dashboard and the contributor page: how far it is from
   * proven and why it holds few items (the quota of `freshLimit`). Null once proven or unknown.
   */
  probationOf(workerId: string): ProbationView | null {
    const w = this.d.workers.get(workerId);
    if (!w || this.d.trust.isProven(workerId, w.kind)) return null;
    return {
      confirmed: this.d.trust.record(workerId).streak,
      needed: this.d.trust.opts.trustAfter,
      awaitingCheck: this.d.verifier.pendingChecks(workerId),
      maxItems: probationQuota(w.concurrency),
    };
  }

  /**
   * Probation: a worker not yet proven by checks holds only a few fresh items at a time, counting
   * its results still waiting for a second opinion, so it cannot flood the grid with work that
   * others must repeat. Proven workers are not limited.
   */
  freshLimit(workerId: string): number {
    const w = this.d.workers.get(workerId);
    if (!w || this.d.trust.isProven(workerId, w.kind)) return Infinity;
    const quota = probationQuota(w.concurrency);
    return Math.max(
      0,
      quota - this.d.verifier.pendingChecks(workerId) - this.d.scheduler.heldCount(workerId),
    );
  }

  // ------------------------------------------------------------------ actions

  /** A check confirmed a worker's result. */
  confirmed(workerId: string): void {
    this.d.trust.confirmed(workerId);
  }

  /**
   * A worker named items it does not hold (results, failures or releases): nothing changed, but past
   * an honest worker's share (see STRAY_PER_SEC) it costs a strike.
   */
  stray(workerId: string, n: number, what: string): void {
    this.d.log.debug({ workerId, items: n, what }, 'message for items not held');
    if (this.rejectedIfQuarantined(workerId, n)) return;
    if (this.strays.take(workerId, n) || !this.strayStrikes.take(workerId)) return;
    const reason = `${what} for items it does not hold, past its allowance`;
    const { quarantined, record } = this.d.trust.refuted(workerId, reason, false);
    this.d.log.warn({ workerId, what, strikes: record.strikes }, 'stray messages: strike');
    if (quarantined) this.quarantine(workerId, reason);
  }

  /** A failed check against a worker; at the threshold it is quarantined. */
  strike(workerId: string, jobId: string, itemId: number, reason: string, severe: boolean): void {
    if (this.rejectedIfQuarantined(workerId, 1)) return;
    const { quarantined, record } = this.d.trust.refuted(workerId, reason, severe);
    this.d.jobs.addEvent(
      jobId,
      'check_failed',
      { workerId, itemId, reason, strikes: record.strikes },
      Date.now(),
    );
    this.d.log.warn(
      { workerId, jobId, itemId, reason: clean(reason), strikes: record.strikes },
      'result check failed',
    );
    if (quarantined) this.quarantine(workerId, reason);
    else this.doubt(workerId);
  }

  /**
   * A worker just refuted is on probation again: the items it holds unstarted go back to the queue
   * (every result of its would need a confirmer now; a proven node can hold seconds of work).
   */
  private doubt(workerId: string): void {
    const held = this.d.scheduler.heldBy(workerId);
    if (held.length === 0) return;
    this.d.scheduler.release(workerId, held);
    this.d.workers.cancel(workerId, held, 'worker on probation again');
    this.d.dispatch.pumpAllSoon();
  }

  /**
   * Quarantines a worker: it gets nothing more, what it holds goes elsewhere, and the results it
   * gave that no check confirmed are taken back and computed again.
   */
  quarantine(workerId: string, reason: string): void {
    const { scheduler, jobs, log, events } = this.d;
    const now = Date.now();
    this.d.workers.quarantined(workerId);
    const held = scheduler.heldBy(workerId);
    if (held.length) {
      scheduler.release(workerId, held);
      this.d.workers.cancel(workerId, held, 'worker quarantined');
    }
    log.warn({ workerId, reason: clean(reason) }, 'worker quarantined');
    events.emit('worker:updated', workerId);
    this.d.dispatch.pump();
    // After the commits in flight: a result of its accepted earlier must not be stored after this.
    this.d
      .committed()
      .then(() => this.d.store.revertUnverified(this.d.lease(), workerId))
      .then(async (reverted) => {
        let n = 0;
        for (const [jobId, ids] of reverted) {
          n += ids.length;
          await jobs.recompute(jobId, ids, workerId);
          jobs.addEvent(jobId, 'quarantine', { workerId, reason, recomputed: ids.length }, now);
          events.emit('job:updated', jobId);
        }
        this.d.cost.recomputed += n;
        if (n) events.emit('chunks:claimable'); // several hubs: the taken-back items are in unheld chunks
        if (n) log.warn({ workerId, recomputed: n }, "quarantined worker's unconfirmed results taken back");
        this.d.dispatch.pump();
      })
      .catch((err: unknown) =>
        log.error({ err, workerId }, "taking back a quarantined worker's results failed"),
      );
  }

  /**
   * Probation results that waited CONFIRM_WAIT_MS for a confirmer no worker has taken up: the hub's
   * reference backend confirms them (or not). One that a worker holds now is left to it.
   */
  confirmStale(): void {
    const { verifier, jobs, scheduler } = this.d;
    for (const { itemId, jobId } of verifier.stale(Date.now(), CONFIRM_WAIT_MS)) {
      if (!jobs.activeJob(jobId)) {
        verifier.take(itemId); // the job ended: nothing to confirm
        continue;
      }
      if (!scheduler.withdraw(jobId, itemId)) continue;
      this.d.reference.run(jobId, itemId, 'no worker confirmed it in time', verifier.take(itemId));
    }
  }
}
