/**
 * Fairness figures of a job, as the hub serves them (`GET /api/jobs/:id/fairness`) and pushes them
 * to the dashboard (`job:fairness` on `/operator`). Times are seconds from the job's start.
 */

/** One worker's part in a job. */
export interface WorkerFairness {
  workerId: string;
  name: string;
  backend: string;
  device: string;
  /** Benchmarked items/s on the job's model. */
  benchmark: number | null;
  /** Current weight (observed items/s, else the benchmark). */
  weight: number | null;
  /** Share of the job's items the weights entitle it to, 0..1. */
  expectedShare: number;
  /** Share of the job's accepted results it produced, 0..1. */
  actualShare: number;
  items: number;
  /** Seconds it held none of this job's items while the job was running and it was online. */
  idleS: number;
  /** Seconds from the job's start to its last accepted result, null before any. */
  finishS: number | null;
  steals: number;
  stolenFrom: number;
  speculativeRuns: number;
}

/** A steal, speculative copy or requeue, for the timeline. */
export interface FairnessEvent {
  t: number;
  type: 'steal' | 'speculate' | 'requeue';
  workerId: string;
  /** Victim of a steal, original holder of a speculated item. */
  fromWorkerId?: string;
  items: number;
  reason: string;
}

/** Per-job figures. */
export interface FairnessReport {
  jobId: string;
  final: boolean;
  items: number;
  done: number;
  /** Seconds from the first assignment to the last result (so far, while running). */
  makespanS: number;
  /** Total work / total capacity: items / sum of the participating workers' weights. */
  idealS: number;
  /** idealS / makespanS (0..1). */
  efficiency: number;
  /** Jain's index of actual/expected share over participating workers (1 = perfectly fair). */
  jain: number;
  /** Coefficient of variation of worker finish times. */
  cvFinish: number;
  steals: number;
  stolenItems: number;
  speculative: number;
  /** Item runs whose result was not used (lost speculative copies, results after cancel). */
  wastedItems: number;
  workers: WorkerFairness[];
  timeline: FairnessEvent[];
  /** Items done per second, one entry a second. */
  throughput: { t: number; items: number }[];
  /** Each worker's items per second, one entry a second. */
  contributions: Record<string, { t: number; items: number }[]>;
}
