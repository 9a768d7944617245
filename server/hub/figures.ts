/**
 * Contributor figures: tells each connected browser worker its part in the jobs it works on (the
 * contributor page shows it), from the results stored for it. The one owner of those counts.
 */
import type { WorkerFigures } from '../../protocol/events.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { JobLifecycle } from './jobs.ts';
import type { WorkerRegistry } from './registry.ts';
import type { TrustActions } from './trust-actions.ts';
import type { JudgedResults } from './types.ts';
import type { JobRecord } from '../store/async-store.ts';

export interface ContributorFiguresDeps {
  scheduler: Scheduler;
  jobs: JobLifecycle;
  workers: WorkerRegistry;
  trust: TrustActions;
}

export class ContributorFigures {
  /**
   * Accepted results per job and worker, counted as they are stored, for the contributor page's
   * share: the fairness tracker counts runs, replicas and wasted copies included.
   */
  private readonly acceptedBy = new Map<string, Map<string, number>>();
  /** What `send` last sent each browser worker: it sends only what changed. */
  private readonly sent = new Map<string, string>();

  constructor(private readonly d: ContributorFiguresDeps) {}

  /**
   * Credits each stored result of a browser worker to it (native nodes have no page to show it).
   * `m.accepted` lists the accepted rows' items in row order, so one pass over the rows finds them,
   * with no set per message.
   */
  countAccepted(group: readonly JudgedResults[]): void {
    const { workers } = this.d;
    for (const m of group) {
      if (m.accepted.length === 0) continue;
      const senderIsBrowser = workers.get(m.workerId)?.kind === 'browser';
      let k = 0;
      for (const r of m.rows) {
        if (r.itemId !== m.accepted[k]) continue;
        k++;
        // A quorum's accepted result may be another worker's than the sender's.
        const browser =
          r.workerId === m.workerId ? senderIsBrowser : workers.get(r.workerId)?.kind === 'browser';
        if (!browser) continue;
        let byWorker = this.acceptedBy.get(r.jobId);
        if (!byWorker) this.acceptedBy.set(r.jobId, (byWorker = new Map()));
        byWorker.set(r.workerId, (byWorker.get(r.workerId) ?? 0) + 1);
      }
    }
  }

  /**
   * Sends each connected browser worker its figures, if they changed. A native node has no use for
   * them: with thousands of nodes, the figures would cost thousands of socket writes every 1.5 s,
   * and working them out for every worker grows with the workers.
   */
  async send(): Promise<void> {
    const { scheduler, jobs, workers, trust } = this.d;
    // Done counts from the store (every hub's results); the rest of the figures are this hub's.
    const records = new Map<string, JobRecord>();
    for (const job of [...jobs.activeJobs()]) {
      const r = await jobs.get(job.record.id);
      if (r) records.set(r.id, r);
    }
    const perWorker = new Map<string, WorkerFigures['jobs']>();
    for (const id of this.acceptedBy.keys()) if (!jobs.activeJob(id)) this.acceptedBy.delete(id);
    const browsers = [...workers.values()].filter((w) => w.kind === 'browser' && w.state !== 'offline');
    for (const job of jobs.activeJobs()) {
      const byWorker = job.fairness.itemsByWorker();
      // Every browser that worked on the job, or could (it is benchmarking or on probation, and the
      // page says so instead of "waiting for work").
      const taking = browsers.filter((w) => byWorker.has(w.id) || scheduler.eligible(w.id, job.record.id));
      if (taking.length === 0) continue;
      const record = records.get(job.record.id);
      if (!record) continue;
      const accepted = this.acceptedBy.get(record.id);
      const weight = (id: string) => scheduler.weight(id, job.model.sha256) ?? 0;
      let total = 0;
      for (const id of byWorker.keys()) total += weight(id);
      const queued = scheduler.queued(record.id);
      for (const w of taking) {
        const list = perWorker.get(w.id) ?? [];
        list.push({
          jobId: record.id,
          model: record.modelName,
          items: record.itemCount,
          done: record.doneCount,
          doneHere: Math.min(record.itemCount, accepted?.get(w.id) ?? 0),
          queued,
          ...(total > 0 && byWorker.has(w.id) ? { weightShare: weight(w.id) / total } : {}),
        });
        perWorker.set(w.id, list);
      }
    }
    for (const id of this.sent.keys()) if (!workers.connected(id)) this.sent.delete(id);
    for (const w of browsers) {
      const probation = trust.probationOf(w.id);
      const figures: WorkerFigures = { jobs: perWorker.get(w.id) ?? [], ...(probation ? { probation } : {}) };
      const print = JSON.stringify(figures);
      const socket = workers.socketOf(w.id);
      if (!socket || this.sent.get(w.id) === print) continue;
      this.sent.set(w.id, print);
      socket.emit('worker:figures', figures);
    }
  }
}
