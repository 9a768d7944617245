/**
 * Failed runs: each failure a worker reports is retried elsewhere, referred to the hub's reference
 * backend, or ends its item failed, on evidence from distinct workers (one proven) or the reference
 * backend itself (`FailureBook`, which also finds failure-rate outliers). The one writer of
 * failure rows.
 */
import type { ItemFailure } from '../../protocol/events.ts';
import { clean, type Logger } from '../logger.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { AsyncStore, Lease, NewFailure } from '../store/async-store.ts';
import { FailureBook } from '../trust.ts';
import type { Verifier } from '../verify.ts';
import type { Dispatch } from './dispatch.ts';
import type { JobLifecycle } from './jobs.ts';
import type { ReferenceRuns } from './reference.ts';
import type { WorkerRegistry } from './registry.ts';
import type { TrustActions } from './trust-actions.ts';
import { REFERENCE_WORKER, type HubEmitter } from './types.ts';

export interface ItemFailuresDeps {
  store: AsyncStore;
  lease: () => Lease;
  scheduler: Scheduler;
  verifier: Verifier;
  jobs: JobLifecycle;
  workers: WorkerRegistry;
  dispatch: Dispatch;
  reference: ReferenceRuns;
  trust: TrustActions;
  log: Logger;
  events: HubEmitter;
}

export class ItemFailures {
  /** Per item: who failed it; per worker and model: failure rates (finding outliers). */
  private readonly book = new FailureBook();

  constructor(private readonly d: ItemFailuresDeps) {}

  /** Counts a worker's runs of a model that did not fail (the outlier test's denominator). */
  ran(sha: string, workerId: string, runs: number): void {
    this.book.ran(sha, workerId, runs, 0);
  }

  /** These items were decided: their failure evidence may go (skipped when there is none). */
  settled(itemIds: readonly number[]): void {
    if (this.book.size > 0) for (const id of itemIds) this.book.forget(id);
  }

  /** A job ended: the evidence about its items goes. */
  forgetJob(jobId: string): void {
    this.book.forgetJob(jobId);
  }

  /**
   * Records failed runs: each item is retried elsewhere or, out of options, ends failed. The
   * scheduler learns at once; the promise settles once the failure rows are stored.
   */
  async record(workerId: string, failures: ItemFailure[]): Promise<{ retried: number; failed: number }> {
    const { scheduler, verifier, jobs, reference, trust } = this.d;
    const now = Date.now();
    const rows: NewFailure[] = [];
    let retried = 0;
    let failed = 0;
    let strays = 0;
    const kind = this.d.workers.get(workerId)?.kind ?? 'browser';
    /** Failures counted per job (each job's model's failure rates). */
    const perModel = new Map<string, number>();
    for (const f of failures) {
      // Only a holder's failure counts, a speculative copy's included (its hold is released and the
      // item goes on with the other holder). Anything else changes nothing (`stray`).
      if (!jobs.activeJob(f.jobId) || !scheduler.holds(workerId, f.itemId, f.jobId)) {
        strays++;
        continue;
      }
      // A lost device is recreated by the worker: the same worker may try again (within maxAttempts).
      let outcome: 'retry' | 'final' | 'referred' = scheduler.failed(
        workerId,
        f.jobId,
        f.itemId,
        f.category === 'device_lost',
      );
      if (verifier.isWaiting(f.itemId) && scheduler.holdersOf(f.itemId).length === 0) {
        // A confirmer failed it: the reference backend confirms it, rather than another round trip.
        scheduler.withdraw(f.jobId, f.itemId);
        reference.run(f.jobId, f.itemId, 'its confirmer failed it', verifier.take(f.itemId));
        outcome = 'referred';
      }
      const proven = trust.isProven(workerId, kind);
      const evidence = this.book.failed(f.jobId, f.itemId, workerId, proven);
      if (outcome === 'final' && !evidence.enough) {
        // Out of attempts, but on the word of unproven workers alone: another worker that has not
        // failed it runs it, else the hub's reference backend decides.
        outcome = 'retry';
        if (scheduler.canAsk(f.jobId, evidence.workers, true))
          scheduler.requeue(f.jobId, f.itemId, evidence.workers);
        else reference.run(f.jobId, f.itemId, 'failed by unproven workers only');
      }
      if (outcome === 'final') {
        failed++;
        this.book.forget(f.itemId);
      } else retried++;
      rows.push({ ...f, workerId, message: clean(f.message, 500), at: now, final: outcome === 'final' });
      perModel.set(f.jobId, (perModel.get(f.jobId) ?? 0) + 1);
    }
    const stored = rows.length ? this.d.store.recordFailures(this.d.lease(), rows) : undefined;
    if (strays) trust.stray(workerId, strays, 'failures');
    for (const [jobId, n] of perModel) {
      const sha = jobs.activeJob(jobId)?.model.sha256;
      if (!sha) continue;
      this.book.ran(sha, workerId, n, n);
      if (!trust.isQuarantined(workerId) && this.book.outlier(sha, workerId)) {
        const reason = 'fails far more items of this model than its peers';
        trust.strike(workerId, jobId, rows[0]?.itemId ?? 0, reason, true);
      }
    }
    this.d.workers.debit(workerId, rows.length);
    if (rows.length)
      this.d.log.warn({ workerId, retried, failed, category: rows[0]?.category }, 'items failed');
    this.d.dispatch.pump();
    await stored;
    for (const jobId of new Set(rows.map((r) => r.jobId))) {
      this.d.events.emit('job:updated', jobId);
      jobs.checkComplete(jobId);
    }
    return { retried, failed };
  }

  /** The reference backend failed an item too: it ends failed, on evidence not from workers alone. */
  async referenceFailed(jobId: string, itemId: number, err: unknown): Promise<void> {
    if (!this.d.jobs.activeJob(jobId)) return;
    const message = clean(`the hub's reference backend failed it too: ${(err as Error).message}`, 500);
    this.book.forget(itemId);
    await this.d.store.recordFailures(this.d.lease(), [
      { itemId, jobId, workerId: REFERENCE_WORKER, category: 'other', message, at: Date.now(), final: true },
    ]);
    this.d.log.warn({ jobId, itemId, message }, 'item failed on the reference backend');
    this.d.events.emit('job:updated', jobId);
    this.d.jobs.checkComplete(jobId);
  }
}
