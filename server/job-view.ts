/** The JSON shapes of jobs in REST replies and operator events (protocol/operator.ts). */
import type { JobView } from '../protocol/operator.ts';
import type { Hub } from './hub.ts';
import type { JobRecord } from './store/store.ts';

/** A job's summary: record, progress, rate since its start and the ETA at that rate. */
export function jobJson(hub: Pick<Hub, 'scheduler'>, job: JobRecord, now = Date.now()): JobView {
  const finished = job.doneCount + job.failedCount;
  const end = job.finishedAt ?? now;
  const elapsedS = job.startedAt ? Math.max(0, (end - job.startedAt) / 1000) : 0;
  const itemsPerSec = elapsedS > 0 ? job.doneCount / elapsedS : 0;
  const left = job.itemCount - finished;
  return {
    id: job.id,
    model: job.modelName,
    modelSha256: job.modelSha256,
    state: job.state,
    priority: job.priority,
    redundancy: job.redundancy,
    deadline: job.deadline,
    requirements: job.requirements,
    createdAt: job.createdAt,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
    items: job.itemCount,
    done: job.doneCount,
    failed: job.failedCount,
    progress: job.itemCount ? finished / job.itemCount : 0,
    queued: hub.scheduler.queued(job.id),
    inFlight: hub.scheduler.inFlight(job.id),
    elapsedS,
    itemsPerSec,
    etaS: job.state === 'running' && itemsPerSec > 0 ? left / itemsPerSec : null,
  };
}

/** How a job's stored results were verified (GET /api/jobs/:id, `job.json`, the dashboard). */
export interface VerificationSummary {
  /** Results that K workers agreed on (probation, job redundancy), by K. */
  confirmed: Record<string, number>;
  /** Proven workers' results replicated as spot checks and confirmed, by how many agreed. */
  spotChecked: Record<string, number>;
  /** Canary items, checked against the hub's own answer. */
  canary: number;
  /** Computed, or confirmed, by the hub's reference backend. */
  reference: number;
  /** Accepted on the record of a worker proven by canaries and quorums, not independently confirmed. */
  provenWorker: number;
  /** Accepted from workers the operator trusts (native nodes of a hub run with `--trust-native`). */
  trustedWorker: number;
}

/** How a job's results were verified, from the trust store's tally. */
export function verificationOf(hub: Pick<Hub, 'trustStore' | 'opts'>, jobId: string): VerificationSummary {
  const out: VerificationSummary = {
    confirmed: {},
    spotChecked: {},
    canary: 0,
    reference: 0,
    provenWorker: 0,
    trustedWorker: 0,
  };
  for (const { how, n } of hub.trustStore.verificationOf(jobId)) {
    const [kind, k = '2'] = how.split('-');
    if (kind === 'quorum') out.confirmed[k] = (out.confirmed[k] ?? 0) + n;
    else if (kind === 'spot') out.spotChecked[k] = (out.spotChecked[k] ?? 0) + n;
    else if (how === 'canary') out.canary += n;
    else if (how === 'reference') out.reference += n;
    else if (how === 'record:native' && hub.opts.trust.trustNative) out.trustedWorker += n;
    else out.provenWorker += n;
  }
  return out;
}

/** A job's full status: summary, throughput, ETA and the items that failed with their reasons. */
export function jobStatus(hub: Hub, job: JobRecord): Record<string, unknown> {
  const base = jobJson(hub, job);
  const failures = hub.store.failuresOf(job.id);
  const byItem = new Map<
    number,
    { itemId: number; reasons: { workerId: string; category: string; message: string }[] }
  >();
  for (const f of failures) {
    const e = byItem.get(f.itemId) ?? { itemId: f.itemId, reasons: [] };
    e.reasons.push({ workerId: f.workerId, category: f.category, message: f.message });
    byItem.set(f.itemId, e);
  }
  const failedItems = hub.store.listItems(job.id, { offset: 0, limit: 1000, state: 'failed' }).map((it) => ({
    itemId: it.id,
    name: it.name,
    attempts: it.attempts,
    reasons: byItem.get(it.id)?.reasons ?? [],
  }));
  return {
    ...base,
    failedItems,
    retriedAttempts: failures.length,
    verification: verificationOf(hub, job.id),
  };
}
