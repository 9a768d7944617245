/**
 * The worker's part in each job, and its probation, as the hub reports them in a `worker:figures`
 * message (hub → worker): `WorkerFigures` in `protocol/events.ts`. Its payload is still read
 * defensively here (what comes over a socket is data, not a promise): an older hub that never sends
 * it leaves the page showing "not reported by this hub", and a malformed one is ignored.
 */

/** One job's figures for this worker. */
export interface JobShare {
  jobId: string;
  model?: string;
  /** Items in the job. */
  items: number;
  /** Items of the job done by anyone. */
  done: number;
  /** The job's items whose accepted result is this worker's. */
  doneHere: number;
  /** This worker's part of the job's items so far: doneHere / items (0..1). */
  share: number;
  /** This worker's weight over the job's workers' weights, when the hub sends it (0..1). */
  weightShare?: number;
  /** Items of the job not yet handed to any worker, when the hub sends it. */
  queued?: number;
}

/** Probation: a new worker's results wait for a second opinion, and it holds few items meanwhile. */
export interface Probation {
  /** Results confirmed in a row, and how many make the worker proven. */
  confirmed: number;
  needed: number;
  /** Results waiting for another worker to confirm them. */
  awaitingCheck: number;
  /** Items it may hold at once until proven. */
  maxItems: number;
}

/** A `worker:figures` message, read. */
export interface WorkerReport {
  jobs: JobShare[];
  /** Absent once the worker is proven. */
  probation?: Probation;
}

const count = (v: unknown): number | undefined =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;

/** Reads a `worker:figures` payload; undefined when it is not one. */
export function parseFigures(payload: unknown): WorkerReport | undefined {
  const jobs = (payload as { jobs?: unknown } | null)?.jobs;
  if (!Array.isArray(jobs)) return undefined;
  const out: JobShare[] = [];
  for (const j of jobs.slice(0, 50) as Record<string, unknown>[]) {
    if (!j || typeof j.jobId !== 'string') continue;
    const items = count(j.items);
    const reported = count(j.doneHere);
    if (items === undefined || reported === undefined) continue;
    // A share above the whole job is a hub counting runs, not results: never shown as such.
    const doneHere = Math.min(items, reported);
    const weightShare = count(j.weightShare);
    const queued = count(j.queued);
    out.push({
      jobId: j.jobId.slice(0, 128),
      model: typeof j.model === 'string' ? j.model.slice(0, 128) : undefined,
      items,
      done: count(j.done) ?? 0,
      doneHere,
      share: items > 0 ? doneHere / items : 0,
      ...(weightShare !== undefined ? { weightShare: Math.min(1, weightShare) } : {}),
      ...(queued !== undefined ? { queued } : {}),
    });
  }
  const p = (payload as { probation?: Record<string, unknown> }).probation;
  const probation =
    p && typeof p === 'object'
      ? {
          confirmed: count(p.confirmed) ?? 0,
          needed: count(p.needed) ?? 0,
          awaitingCheck: count(p.awaitingCheck) ?? 0,
          maxItems: count(p.maxItems) ?? 0,
        }
      : undefined;
  return probation ? { jobs: out, probation } : { jobs: out };
}
