/**
 * What the hub tells operators, typed once for the hub, the dashboard and the CLI: the JSON of a
 * worker and of a job (REST replies and `/operator` pushes carry the same shapes) and the events of
 * the `/operator` Socket.IO namespace.
 *
 * Namespace `/operator`: the handshake carries `auth: {token: OPERATOR_TOKEN}`; a connection
 * without it is refused. The hub pushes what changed, coalesced, a few times a second; a client
 * takes its first picture over REST (`GET /api/workers`, `GET /api/jobs`) and keeps it current
 * with these events. Fairness reports are sent only for the job a client watches (`job:watch`).
 *
 * What operators send (`job:watch`, a job's requirements) has a schema in `schemas.ts`, and its
 * type here is derived from it; the rest is what the hub builds, typed here once. Type-only
 * imports: the dashboard bundles no zod.
 */
import type { z } from 'zod';
import type { Capabilities, Heartbeat, Response, WorkerKind } from './events.ts';
import type { FairnessReport } from './fairness.ts';
import type { JobRequirementsSchema, WatchRequestSchema } from './schemas.ts';

/** The states a worker can be in, as operators see them. */
export const WORKER_STATES = ['online', 'offline', 'paused', 'draining', 'quarantined'] as const;
/** A worker's state. */
export type WorkerState = (typeof WORKER_STATES)[number];

/** A worker's figures on one running job it can take part in. */
export interface WorkerJobFigures {
  jobId: string;
  model: string;
  /** Benchmarked items/s on the job's model. */
  benchmark: number | null;
  /** The scheduler's weight now (observed items/s once it has done some, else the benchmark). */
  weight: number | null;
  /** Observed items/s on the job's model: the weight, once the worker has results in the job. */
  observed: number | null;
  /** Share of the job the weights entitle it to (0..1), among the workers taking part. */
  fairShare: number | null;
  /** Share of the job's accepted results it produced (0..1). */
  share: number | null;
  /** Items of the job it completed. */
  items: number;
}

/** A worker as `GET /api/workers` and `workers:updated` show it. Times are epoch milliseconds. */
export interface WorkerView {
  id: string;
  name: string;
  kind: WorkerKind;
  backend: string;
  pool: string | null;
  concurrency: number;
  cores: number;
  gpuMemoryBytes: number | null;
  capabilities: Capabilities;
  state: WorkerState;
  online: boolean;
  connectedAt: number;
  /** When the hub last heard from it (heartbeat or any message). */
  lastSeen: number;
  load: Heartbeat['load'] | null;
  queued: number;
  running: number;
  itemsDone: number;
  itemsFailed: number;
  reconnects: number;
  /** The adapter or GPU name; the host name (or backend) for CPU workers. */
  device: string;
  /** Accepted results per second over the last few seconds. */
  rate: number;
  /** The hub it is connected to, when several hubs share a store (absent on a hub alone). */
  hub?: string;
  /** Figures on each running job it can take part in, highest priority first. */
  jobs: WorkerJobFigures[];
  /** The first of `jobs`, flattened for sorting: benchmark, weight, observed, fair share and share. */
  benchmark: number | null;
  weight: number | null;
  observed: number | null;
  fairShare: number | null;
  share: number | null;
  /**
   * Probation (a worker no check has proven yet holds only a few fresh items, and its results wait
   * for a second opinion); null once proven. Absent from hubs that do not report it.
   */
  probation?: ProbationView | null;
}

/** Why a worker on probation holds few items, for operators and the contributor page. */
export interface ProbationView {
  /** Results confirmed by checks in a row, and how many make it proven. */
  confirmed: number;
  needed: number;
  /** Its results waiting for a second opinion. */
  awaitingCheck: number;
  /** Fresh items it may hold at once (pending checks count against this). */
  maxItems: number;
}

/** A job's state. */
export type JobState = 'open' | 'queued' | 'running' | 'completed' | 'cancelled';

/** Which workers a job may run on (every field set must match); checked by `POST /api/jobs`. */
export type JobRequirements = z.infer<typeof JobRequirementsSchema>;

/** A job as `GET /api/jobs` and `jobs:updated` show it. Times are epoch milliseconds. */
export interface JobView {
  id: string;
  model: string;
  modelSha256: string;
  state: JobState;
  priority: number;
  redundancy: number;
  deadline: number | null;
  requirements: JobRequirements | null;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  items: number;
  done: number;
  failed: number;
  /** (done + failed) / items, 0..1. */
  progress: number;
  queued: number;
  inFlight: number;
  /** Seconds since it started (to its end once finished). */
  elapsedS: number;
  /** Accepted results per second since it started. */
  itemsPerSec: number;
  /** Seconds left at the recent rate (`protocol/recent-rate.ts`), while running. */
  etaS: number | null;
  /** How its results were verified; on completed jobs (`server/job-view.ts`). */
  verification?: VerificationSummary;
}

/** How a job's stored results were verified (issue 18; docs/trust.md). */
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
  /** Answered from the result cache: a result stored before for the same model and inputs. */
  cached: number;
}

/** `job:watch` request: the job whose fairness report a client wants pushed (null: none). */
export type WatchRequest = z.infer<typeof WatchRequestSchema>;

/** Events the hub sends on `/operator`. */
export interface OperatorServerEvents {
  /** Jobs that changed since the last push; `at` is the hub's clock (epoch ms). */
  'jobs:updated': (jobs: JobView[], at: number) => void;
  /** Workers that changed since the last push; `at` is the hub's clock (epoch ms). */
  'workers:updated': (workers: WorkerView[], at: number) => void;
  /** Workers the hub no longer lists (an operator removed them while offline). */
  'workers:removed': (workerIds: string[]) => void;
  /** The watched job's fairness report (live while it runs, final after). */
  'job:fairness': (report: FairnessReport) => void;
}

/** Events operators send on `/operator`. */
export interface OperatorClientEvents {
  /** Watch one job's fairness (replaces the previous watch); replies with its report now. */
  'job:watch': (req: WatchRequest, ack: (res: Response<FairnessReport | null>) => void) => void;
}
