/** The JSON shapes of jobs in REST replies and operator events. */
import type { Hub } from './hub.ts';
import type { JobRecord } from './store/store.ts';

/** A job's summary: record plus progress. */
export function jobJson(hub: Hub, job: JobRecord): Record<string, unknown> {
  const finished = job.doneCount + job.failedCount;
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
  };
}

/** A job's full status: summary, throughput, ETA and the items that failed with their reasons. */
export function jobStatus(hub: Hub, job: JobRecord): Record<string, unknown> {
  const base = jobJson(hub, job);
  const end = job.finishedAt ?? Date.now();
  const elapsed = job.startedAt ? (end - job.startedAt) / 1000 : 0;
  const rate = elapsed > 0 ? job.doneCount / elapsed : 0;
  const left = job.itemCount - job.doneCount - job.failedCount;
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
    elapsedS: elapsed,
    itemsPerSec: rate,
    etaS: job.state === 'running' && rate > 0 ? left / rate : null,
    failedItems,
    retriedAttempts: failures.length,
  };
}
