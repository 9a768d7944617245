/**
 * The hub's durable state behind one narrow interface: jobs, items, assignments, results, workers,
 * events and settings. The SQLite implementation (`sqlite.ts`) is the only one today; keeping the
 * surface this small is what lets a shared store for several hubs come later.
 *
 * Exactly-once: `recordResults` accepts a result only for an item that is still pending, inside one
 * transaction, and says which were accepted and which were dropped. Callers ack a worker only after
 * it returns.
 */
import type { IdRun } from '../scheduler/id-runs.ts';
import type { FailureCategory } from '../../protocol/events.ts';

export const JOB_STATES = ['open', 'queued', 'running', 'completed', 'cancelled'] as const;
/** open: still taking items; queued: sealed, not started; running; completed; cancelled. */
export type JobState = (typeof JOB_STATES)[number];

/** Which workers may run a job's items. Every set field must match. */
export interface WorkerFilter {
  kind?: 'browser' | 'native';
  backend?: string;
  pool?: string;
  minGpuMemoryBytes?: number;
  minCores?: number;
}

/** A job as stored. Times are epoch milliseconds. */
export interface JobRecord {
  id: string;
  modelName: string;
  modelSha256: string;
  state: JobState;
  priority: number;
  redundancy: number;
  deadline: number | null;
  requirements: WorkerFilter | null;
  /** Free-form options kept with the job (e.g. scheduler switches). */
  options: Record<string, unknown>;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  itemCount: number;
  doneCount: number;
  failedCount: number;
}

/** A new job. */
export interface NewJob {
  id: string;
  modelName: string;
  modelSha256: string;
  priority: number;
  redundancy: number;
  deadline: number | null;
  requirements: WorkerFilter | null;
  options: Record<string, unknown>;
  /** 'open' to append items later, 'queued' when all items come with it. */
  state: 'open' | 'queued';
}

export type ItemState = 'pending' | 'done' | 'failed';

/** An item's bookkeeping (no tensors). */
export interface ItemRecord {
  id: number;
  jobId: string;
  seq: number;
  name: string;
  state: ItemState;
  attempts: number;
}

/** A result to store. `outputs` is a tensor pack (protocol/pack.ts). */
export interface NewResult {
  itemId: number;
  jobId: string;
  workerId: string;
  modelSha256: string;
  ms: number;
  outputs: Uint8Array;
  at: number;
}

/** A failed attempt. `final` ends the item as failed; otherwise it goes back to pending. */
export interface NewFailure {
  itemId: number;
  jobId: string;
  workerId: string;
  category: FailureCategory;
  message: string;
  at: number;
  final: boolean;
}

export interface FailureRecord {
  itemId: number;
  workerId: string;
  category: FailureCategory;
  message: string;
  at: number;
}

/** A worker as remembered across restarts. */
export interface WorkerRecord {
  id: string;
  secretHash: string;
  kind: 'browser' | 'native';
  backend: string;
  name: string;
  pool: string | null;
  concurrency: number;
  capabilities: Record<string, unknown>;
  firstSeen: number;
  lastSeen: number;
  itemsDone: number;
}

/** A scheduler or lifecycle event kept with a job (steal, speculate, worker lost...). */
export interface JobEvent {
  id: number;
  jobId: string;
  at: number;
  type: string;
  data: Record<string, unknown>;
}

/** A stored result, with its item's name. */
export interface ResultRecord {
  itemId: number;
  name: string;
  workerId: string;
  ms: number;
  outputs: Uint8Array;
}

/** An item's input pack size, and the pack when it was small enough to read with it. */
export interface SizedInputs {
  bytes: number;
  pack: Uint8Array | null;
}

/** The hub's store. Every method is synchronous and atomic. */
export interface Store {
  createJob(job: NewJob): JobRecord;
  /** Appends items to an open job; returns their ids in order. Throws if the job is not open. */
  /** Items go to an open job; with `running`, also to a sealed one still queued or running (a pipeline stage). */
  appendItems(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts?: { running?: boolean },
  ): number[];
  updateJob(
    id: string,
    patch: Partial<Pick<JobRecord, 'state' | 'priority' | 'startedAt' | 'finishedAt' | 'deadline'>>,
  ): void;
  getJob(id: string): JobRecord | undefined;
  listJobs(filter?: { states?: JobState[]; limit?: number }): JobRecord[];

  /**
   * Ids of a job's pending items as runs of consecutive ids, in seq order, optionally within
   * `[first, last]`: what a job's queue is built from, in memory that does not grow with the job.
   */
  pendingItemRuns(jobId: string, range?: { first: number; last: number }): IdRun[];
  getItem(id: number): ItemRecord | undefined;
  listItems(jobId: string, opts: { offset: number; limit: number; state?: ItemState }): ItemRecord[];
  /** Input packs of these items (missing ids are absent from the map). */
  itemInputs(ids: readonly number[]): Map<number, Uint8Array>;
  /**
   * The size of each item's input pack, and the pack itself when it is at most `maxBytes` (larger
   * ones are not read). Missing ids are absent.
   */
  itemInputsUpTo(ids: readonly number[], maxBytes: number): Map<number, SizedInputs>;

  /**
   * Runs `fn` in one transaction: the writes it makes commit together, or none does if it throws
   * (and the error is thrown on). Calls of the store's own transactional methods inside nest.
   */
  transaction<T>(fn: () => T): T;

  recordAssignments(rows: { itemId: number; workerId: string; shardId: string; at: number }[]): void;
  /** Stores results for pending items, drops the rest. Updates item state and job counters. */
  recordResults(rows: NewResult[]): { accepted: number[]; dropped: number[] };
  /** Records failed attempts; counts attempts; a final one marks the item failed. */
  recordFailures(rows: NewFailure[]): void;
  failuresOf(jobId: string): FailureRecord[];

  getResult(itemId: number): ResultRecord | undefined;
  /** Results of a job in item order, streamed a page at a time. */
  iterateResults(jobId: string): IterableIterator<ResultRecord>;

  upsertWorker(rec: WorkerRecord): void;
  getWorker(id: string): WorkerRecord | undefined;
  listWorkers(): WorkerRecord[];
  /** Adds to a worker's lifetime items-done counter. */
  addWorkerItems(id: string, n: number, lastSeen: number): void;

  addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): void;
  listEvents(jobId: string, opts?: { type?: string; limit?: number }): JobEvent[];

  close(): void;
}
