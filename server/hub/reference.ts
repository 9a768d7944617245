/**
 * Reference runs: an item the workers cannot settle runs on the hub's own backend, whose answer
 * decides it. This part only runs them and counts them per job; the answer is stored through the
 * results commit and a failure through the failure book, like any worker's.
 */
import type { ModelInfo } from '../../protocol/model.ts';
import type { ModelRegistry } from '../../models/registry.ts';
import { clean, type Logger } from '../logger.ts';
import type { ReferenceRunner } from '../preflight.ts';
import type { Replica } from '../store/trust-store.ts';
import type { JobLifecycle } from './jobs.ts';

/** An answer of the reference backend, to be stored and to judge the replicas by. */
export interface ReferenceAnswer {
  jobId: string;
  itemId: number;
  model: ModelInfo;
  outputs: Uint8Array;
  ms: number;
  replicas: readonly Replica[];
}

export interface ReferenceRunsDeps {
  models: ModelRegistry;
  jobs: JobLifecycle;
  runner: ReferenceRunner;
  log: Logger;
  /** Stores the answer (resolves once it is committed). */
  answered: (a: ReferenceAnswer) => Promise<void>;
  /** The reference backend failed the item too: it ends failed. */
  failed: (jobId: string, itemId: number, err: unknown) => Promise<void>;
}

export class ReferenceRuns {
  /** Reference runs in progress per job: a job waiting for one is not stalled. */
  private readonly running = new Map<string, number>();

  constructor(private readonly d: ReferenceRunsDeps) {}

  /** Whether a reference run of one of the job's items is in progress. */
  busy(jobId: string): boolean {
    return this.running.has(jobId);
  }

  /**
   * Runs an item on the hub's reference backend, whose answer settles it: stored as the item's
   * result (verified `reference`), and each replica given judged against it; if the reference fails
   * too, the item ends failed on evidence that does not come from workers alone. For items failed
   * by unproven workers only, replicas that cannot agree, and probation results no worker can
   * confirm soon.
   */
  run(jobId: string, itemId: number, why: string, replicas: readonly Replica[] = []): void {
    const { jobs, log } = this.d;
    const job = jobs.activeJob(jobId);
    const path = job && this.d.models.filePath(job.model.sha256);
    if (!job || !path) return; // the job ended, or the stall check finds the item again
    this.running.set(jobId, (this.running.get(jobId) ?? 0) + 1);
    const started = Date.now();
    const model = job.model;
    log.info({ jobId, itemId, why: clean(why) }, 'item goes to the reference backend');
    jobs
      .inputs([itemId])
      .then((inputs) => {
        const input = inputs.get(itemId);
        if (!input) return; // gone from the store: the stall check finds the item again
        return this.d.runner.run(model, path, input).then(
          (outputs) => this.d.answered({ jobId, itemId, model, outputs, ms: Date.now() - started, replicas }),
          (err: unknown) => this.d.failed(jobId, itemId, err),
        );
      })
      .catch((err: unknown) => log.error({ err, jobId, itemId }, 'handling a reference run failed'))
      .finally(() => {
        const n = (this.running.get(jobId) ?? 1) - 1;
        if (n > 0) this.running.set(jobId, n);
        else this.running.delete(jobId);
        jobs.checkComplete(jobId);
      });
  }
}
