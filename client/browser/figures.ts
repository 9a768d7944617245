/**
 * The worker's share of each job, as the hub reports it in a `worker:figures` message (hub → worker):
 * `WorkerFigures` in `protocol/events.ts`. Its payload is still read defensively here (what comes
 * over a socket is data, not a promise): an older hub that never sends it leaves the page showing
 * "not reported by this hub", and a malformed one is ignored.
 */

/** One job's figures for this worker. */
export interface JobShare {
  jobId: string;
  model?: string;
  /** Items in the job. */
  items: number;
  /** Items of the job done by anyone. */
  done: number;
  /** Items of the job done by this worker. */
  doneHere: number;
  /** This worker's part of the job's items so far: doneHere / items (0..1). */
  share: number;
  /** This worker's weight over the job's workers' weights, when the hub sends it (0..1). */
  weightShare?: number;
}

const count = (v: unknown): number | undefined =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;

/** Reads a `worker:figures` payload; undefined when it is not one. */
export function parseFigures(payload: unknown): JobShare[] | undefined {
  const jobs = (payload as { jobs?: unknown } | null)?.jobs;
  if (!Array.isArray(jobs)) return undefined;
  const out: JobShare[] = [];
  for (const j of jobs.slice(0, 50) as Record<string, unknown>[]) {
    if (!j || typeof j.jobId !== 'string') continue;
    const items = count(j.items);
    const doneHere = count(j.doneHere);
    if (items === undefined || doneHere === undefined) continue;
    const weightShare = count(j.weightShare);
    out.push({
      jobId: j.jobId.slice(0, 128),
      model: typeof j.model === 'string' ? j.model.slice(0, 128) : undefined,
      items,
      done: count(j.done) ?? 0,
      doneHere,
      share: items > 0 ? Math.min(1, doneHere / items) : 0,
      ...(weightShare !== undefined ? { weightShare: Math.min(1, weightShare) } : {}),
    });
  }
  return out;
}
