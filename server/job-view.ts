/** The JSON shapes of jobs in REST replies and operator events (protocol/operator.ts). */
import type { JobView, VerificationSummary } from '../protocol/operator.ts';
import { RecentRate } from '../protocol/recent-rate.ts';
import type { Hub } from './hub.ts';
import { CACHED, CACHED_ON_RECORD } from './store/async-store.ts';
import type { JobRecord } from './store/store.ts';

const recentRates = new WeakMap<object, RecentRate>();

/**
 * The recent rates of a hub's running jobs (created on first use). Every job view samples its job;
 * the operator namespace's tick samples every running job each second ({@link sampleJobRate}), so the
 * window stays full whether or not anyone is watching.
 */
export function jobRatesOf(hub: object): RecentRate {
  let r = recentRates.get(hub);
  if (!r) recentRates.set(hub, (r = new RecentRate()));
  return r;
}

/** Samples a job's finished count for its recent rate (and forgets a job that is not running). */
export function sampleJobRate(hub: object, job: JobRecord, now = Date.now()): void {
  const rates = jobRatesOf(hub);
  if (job.state === 'running') rates.observe(job.id, now, job.doneCount + job.failedCount);
  else rates.forget(job.id);
}

/**
 * A job's summary: record, progress, rate since its start, and the ETA at the recent rate
 * (`protocol/recent-rate.ts`, the one the dashboard and the CLI use), or at the rate since the
 * start until 2 s of samples are in.
 */
export async function jobJson(
  hub: Pick<Hub, 'jobs' | 'opts'>,
  job: JobRecord,
  now = Date.now(),
): Promise<JobView> {
  const finished = job.doneCount + job.failedCount;
  const end = job.finishedAt ?? now;
  const elapsedS = job.startedAt ? Math.max(0, (end - job.startedAt) / 1000) : 0;
  const itemsPerSec = elapsedS > 0 ? job.doneCount / elapsedS : 0;
  const left = job.itemCount - finished;
  sampleJobRate(hub, job, now);
  const pace = jobRatesOf(hub).rate(job.id) ?? itemsPerSec;
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
    queued: hub.jobs.queued(job.id),
    inFlight: hub.jobs.inFlight(job.id),
    elapsedS,
    itemsPerSec,
    etaS: job.state === 'running' && pace > 0 ? left / pace : null,
    ...(job.state === 'completed' && job.finishedAt
      ? { verification: await finishedVerification(hub, job) }
      : {}),
  };
}

/** Completed jobs' verification summaries, by job and completion time (a reopened job differs). */
const finishedCache = new Map<string, { at: number; summary: VerificationSummary }>();
const FINISHED_CACHE_MAX = 1000;

/** A completed job's summary, counted once: every job update and list carries it. */
async function finishedVerification(
  hub: Pick<Hub, 'jobs' | 'opts'>,
  job: JobRecord,
): Promise<VerificationSummary> {
  const hit = finishedCache.get(job.id);
  if (hit && hit.at === job.finishedAt) return hit.summary;
  const summary = await verificationOf(hub, job.id);
  finishedCache.delete(job.id);
  finishedCache.set(job.id, { at: job.finishedAt ?? 0, summary });
  if (finishedCache.size > FINISHED_CACHE_MAX) {
    const oldest = finishedCache.keys().next().value;
    if (oldest !== undefined) finishedCache.delete(oldest);
  }
  return summary;
}

/** How a job's results were verified, from the trust store's tally. */
export async function verificationOf(
  hub: Pick<Hub, 'jobs' | 'opts'>,
  jobId: string,
): Promise<VerificationSummary> {
  const out: VerificationSummary = {
    confirmed: {},
    spotChecked: {},
    canary: 0,
    reference: 0,
    provenWorker: 0,
    trustedWorker: 0,
    cached: 0,
  };
  for (const { how, n } of await hub.jobs.verification(jobId)) {
    const [kind, k = '2'] = how.split('-');
    if (kind === 'quorum') out.confirmed[k] = (out.confirmed[k] ?? 0) + n;
    else if (kind === 'spot') out.spotChecked[k] = (out.spotChecked[k] ?? 0) + n;
    else if (how === 'canary') out.canary += n;
    else if (how === 'reference') out.reference += n;
    else if (how === CACHED || how === CACHED_ON_RECORD) out.cached += n;
    else if (how === 'record:native' && hub.opts.trust.trustNative) out.trustedWorker += n;
    else out.provenWorker += n;
  }
  return out;
}

/** A job's full status: summary, throughput, ETA and the items that failed with their reasons. */
export async function jobStatus(hub: Hub, job: JobRecord): Promise<Record<string, unknown>> {
  const base = await jobJson(hub, job);
  const failures = await hub.jobs.failures(job.id);
  const byItem = new Map<
    number,
    { itemId: number; reasons: { workerId: string; category: string; message: string }[] }
  >();
  for (const f of failures) {
    const e = byItem.get(f.itemId) ?? { itemId: f.itemId, reasons: [] };
    e.reasons.push({ workerId: f.workerId, category: f.category, message: f.message });
    byItem.set(f.itemId, e);
  }
  // Finding them is a pass over the job's items: not made for a job with none.
  const failed =
    job.failedCount > 0 ? await hub.jobs.items(job.id, { offset: 0, limit: 1000, state: 'failed' }) : [];
  const failedItems = failed.map((it) => ({
    itemId: it.id,
    name: it.name,
    attempts: it.attempts,
    reasons: byItem.get(it.id)?.reasons ?? [],
  }));
  return {
    ...base,
    failedItems,
    retriedAttempts: failures.length,
    verification: base.verification ?? (await runningVerification(hub, job.id)),
  };
}

/**
 * A running job's summary, counted at most once a second per job, and kept at least twenty times
 * as long as the count took: it is a pass over the job's results, and a client polling the job's
 * status (a script waiting for it, a bench, a dashboard) must not make each poll cost that, nor a
 * big job's count take more than a twentieth of the store's time.
 */
const runningCache = new Map<string, { until: number; summary: Promise<VerificationSummary> }>();
const RUNNING_CACHE_MS = 1000;
const RUNNING_COST_SHARE = 20;

function runningVerification(hub: Pick<Hub, 'jobs' | 'opts'>, jobId: string): Promise<VerificationSummary> {
  const now = Date.now();
  const hit = runningCache.get(jobId);
  if (hit && hit.until > now) return hit.summary;
  for (const [id, e] of runningCache) if (e.until <= now) runningCache.delete(id);
  const entry = { until: now + RUNNING_CACHE_MS, summary: verificationOf(hub, jobId) };
  runningCache.set(jobId, entry);
  entry.summary.then(
    () => {
      const end = Date.now();
      entry.until = end + Math.max(RUNNING_CACHE_MS, (end - now) * RUNNING_COST_SHARE);
    },
    () => runningCache.delete(jobId),
  );
  return entry.summary;
}
