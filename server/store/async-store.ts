/**
 * The store several hubs share: one async interface, each atomic step a named method (no callback
 * transactions, which a pooled Postgres client cannot offer without holding a connection across
 * awaits). Two implementations: `PgStore` (PostgreSQL, several hubs) and `SqliteAsyncStore`
 * (better-sqlite3, one hub: the embedded default).
 *
 * It covers what the hub keeps in `store.ts` and `trust-store.ts` today, plus what must be shared
 * once there are several hubs (model bytes by sha256, tokens) and the several-hubs operations:
 *
 * - **Hubs and leases.** A hub registers under a name and gets a `Lease`: a fencing epoch, new at
 *   every registration, and an expiry on the store's clock (Postgres's `now()`, never a hub's). It
 *   renews the lease well inside its TTL. A lease that lapsed cannot be renewed: the hub is fenced and
 *   must register again (new epoch, no chunks).
 * - **Chunks.** A job's items are cut into chunks of consecutive item ids as they are appended. A hub
 *   claims unheld chunks of runnable jobs, highest priority first, with `FOR UPDATE SKIP LOCKED`, and
 *   runs their pending items with its own scheduler. Before it hands items of a chunk to workers it
 *   advances the chunk's cursor (`advanceChunk`), so the store knows which tail is still untouched.
 * - **Splitting.** When a job has no unheld chunk left, a hub with idle workers takes the untouched
 *   second half of another live hub's chunk (`splitTail`); the holder learns the new end the next time
 *   it advances its cursor, and only dispatches up to it.
 * - **Reaping.** Any live hub reaps hubs whose lease lapsed: they are marked dead and their chunks
 *   return to the pool, their pending items to be claimed again.
 * - **Fencing.** Every write of item state (`recordAssignments`, `recordResults`, `recordFailures`)
 *   and every chunk operation takes the caller's lease and checks it inside its own transaction,
 *   holding a share lock on the hub's row: a reaper (which locks that row to mark it dead) waits for
 *   commits already checked, and every commit after it is refused with `FencedError`.
 * - **Exactly once.** An item's `pending → done` flip and its result row commit in one transaction
 *   (`recordResults`); results for items no longer pending are dropped and reported. Callers ack a
 *   worker only after it returns. Chunks only decide who runs an item, never whether its result
 *   counts: a result resent to another hub is accepted if the item is still pending.
 * - **Result cache.** An index over stored results, not a copy of them: an entry maps (model key,
 *   input sha256) to the item computed for that key. A stored result is one the hub accepted (a
 *   check confirmed it, or its worker is proven or trusted: a probation worker's result is stored
 *   only once a quorum or the reference backend agreed), so an entry answers once its item has a
 *   result, and stops answering when a quarantine takes that result back. Items are answered at
 *   append (`appendItemsCached`), in the append's transaction, and never reach a worker.
 */
import type { IdRun } from '../scheduler/id-runs.ts';
import type {
  FailureRecord,
  ItemRecord,
  ItemState,
  JobEvent,
  JobRecord,
  JobState,
  NewFailure,
  NewJob,
  NewResult,
  ResultRecord,
  SizedInputs,
  WorkerFilter,
  WorkerRecord,
} from './store.ts';
import type { Replica, TrustRecord } from './trust-store.ts';

export type {
  FailureRecord,
  ItemRecord,
  ItemState,
  JobEvent,
  JobRecord,
  JobState,
  NewFailure,
  NewJob,
  NewResult,
  ResultRecord,
  SizedInputs,
  WorkerFilter,
  WorkerRecord,
  Replica,
  TrustRecord,
};

/** A hub's right to claim and commit, as the store granted it. Times are epoch ms on the store's clock. */
export interface Lease {
  hubId: string;
  /** Fencing token: new at every registration, checked in every write. */
  epoch: number;
  ttlMs: number;
  /** When the lease lapses unless renewed (`Infinity` on a store where leases never lapse). */
  expiresAt: number;
}

/** A hub as the store knows it (the hub health view). */
export interface HubRecord {
  id: string;
  epoch: number;
  url: string;
  state: 'live' | 'dead';
  startedAt: number;
  renewedAt: number;
  expiresAt: number;
  /** Whether the lease is still within its TTL by the store's clock. */
  leaseHeld: boolean;
  /** Chunks it holds. */
  chunks: number;
}

/**
 * A pipeline run's owner record (`server/pipeline.ts`): which hub carries the run on. One owner at
 * a time: a hub records the runs submitted to it, and when their owner's lease is gone (reaped, or
 * replaced by a new epoch) a live hub takes them over with a compare-and-set (`takeOverRuns`).
 */
export interface PipelineRun {
  id: string;
  /** The job whose options and events are the run's record (an OCR run's first detection job). */
  anchor: string;
  ownerHub: string;
  /** The owner's lease epoch when it took the run. */
  ownerEpoch: number;
  state: 'running' | 'completed';
  /** Times a hub took the run over from an owner whose lease was gone. */
  takeovers: number;
  createdAt: number;
}

/** A run of consecutive item ids of one job, held by at most one hub. */
export interface Chunk {
  id: number;
  jobId: string;
  first: number;
  last: number;
  /** Highest item id the holder has handed out (`first - 1`: none yet). */
  cursor: number;
  hubId: string | null;
  epoch: number | null;
}

/** Raised by any fenced operation whose lease lapsed, was reaped, or was replaced. */
export class FencedError extends Error {
  override readonly name = 'FencedError';
  readonly code = 'fenced';
  constructor(lease: Pick<Lease, 'hubId' | 'epoch'>, what: string) {
    super(
      `hub ${lease.hubId} (lease epoch ${lease.epoch}) is fenced: its lease lapsed or was replaced; ${what} refused`,
    );
  }
}

/** A model's bytes as stored, addressed by their sha256. */
export interface ModelBlob {
  sha256: string;
  name: string;
  size: number;
  /** The upload's manifest as JSON (without its file), if it was stored with one. */
  manifest: string | null;
}

/** The hub's two secrets. */
export interface StoredTokens {
  operatorToken: string;
  joinToken: string;
}

/**
 * The result cache's key of a job's items: the model they run (with the step of a pipeline stage,
 * whose version changes what comes back) and, per item, the sha256 of its input pack (hex).
 */
export interface CacheKeys {
  /** The model's sha256, and `+<step>@<version>` for a stage job. */
  modelKey: string;
  /** One per item, in the items' order: lower-case hex sha256 of its input pack. */
  inputs: readonly string[];
}

/** Items appended with cache keys: their ids, and those answered from the cache (done already). */
export interface AppendedItems {
  ids: number[];
  cached: number[];
}

/** How an item answered from the cache is marked verified: its source result was checked. */
export const CACHED = 'cached';
/**
 * ... or its source was accepted on its worker's record: taken back with that worker's unconfirmed
 * results if it is quarantined (`revertUnverified`).
 */
export const CACHED_ON_RECORD = 'cached:record';
/**
 * Suffix of a quorum's `how` when none of the agreeing workers was proven (`verify.ts`): two new
 * workers that lie alike agree. Such a result is taken back like an unconfirmed one when its
 * worker is quarantined (`revertUnverified`).
 */
export const UNPROVEN_QUORUM = '-unproven';

/** Whether a result verified this way is taken back with its worker's unconfirmed results. */
export function revertible(how: string | null): boolean {
  return how === null || how === CACHED_ON_RECORD || how.endsWith(UNPROVEN_QUORUM);
}

/** Job states a hub claims chunks of unless told otherwise: sealed jobs. */
export const RUNNABLE_STATES: readonly JobState[] = ['queued', 'running'];

/** The shared store. Every method is one atomic step (one transaction where it writes). */
export interface AsyncStore {
  readonly kind: 'sqlite' | 'postgres';
  /** Whether several hubs may share it (leases can lapse and be reaped). */
  readonly severalHubs: boolean;

  getSetting(key: string): Promise<string | undefined>;
  setSetting(key: string, value: string): Promise<void>;

  createJob(job: NewJob): Promise<JobRecord>;
  /**
   * Appends items to an open job; returns their ids, consecutive and in order. Cuts them into
   * chunks (the job's last unheld chunk is extended first when they follow on). Throws if the job
   * is not open (with `running`: not open, queued or running — a pipeline stage fed as results arrive).
   */
  appendItems(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts?: { running?: boolean },
  ): Promise<number[]>;
  /**
   * `appendItems` with the result cache: in the same transaction, an item whose key has a stored
   * result (the item the cache entry names is done) is answered from it: done at once, with a copy
   * of that result (ms 0, the computing worker's id) marked verified `cached`, or `cached:record`
   * when the source was accepted on its worker's record. Each other item becomes its key's entry
   * unless the entry names an item with a result. Answered entries are marked used (LRU).
   */
  appendItemsCached(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts: { running?: boolean; cache: CacheKeys },
  ): Promise<AppendedItems>;
  /**
   * Evicts the least recently used cache entries beyond `maxEntries` (0 empties the cache); returns
   * how many went. Entries only point at results: evicting one deletes no result.
   */
  trimCache(maxEntries: number): Promise<number>;
  /** Entries in the result cache. */
  cacheEntries(): Promise<number>;
  /**
   * Changes a job's fields. `state: 'running'` (the mark of its first items going out, written
   * behind) applies only to a queued job: arriving late, it never undoes the job's end.
   */
  updateJob(
    id: string,
    patch: Partial<Pick<JobRecord, 'state' | 'priority' | 'startedAt' | 'finishedAt' | 'deadline'>>,
  ): Promise<void>;
  /**
   * Completes a queued or running job whose every item is done or failed, and deletes its chunks,
   * in one atomic step; false (and nothing changed) if the job is in another state or its counts
   * are short. The counts are read under the job's lock: a completion decided from counts read
   * earlier could land after a revert had reopened items (`revertUnverified`) or items were added,
   * and leave a completed job with pending items and no chunk for them.
   */
  completeJob(id: string, finishedAt: number): Promise<boolean>;
  getJob(id: string): Promise<JobRecord | undefined>;
  /** Newest first; `limit` keeps the newest. */
  listJobs(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]>;

  /** A job's pending item ids as runs of consecutive ids in seq order, optionally within `[first, last]`. */
  pendingItemRuns(jobId: string, range?: { first: number; last: number }): Promise<IdRun[]>;
  getItem(id: number): Promise<ItemRecord | undefined>;
  listItems(jobId: string, opts: { offset: number; limit: number; state?: ItemState }): Promise<ItemRecord[]>;
  itemInputs(ids: readonly number[]): Promise<Map<number, Uint8Array>>;
  itemInputsUpTo(ids: readonly number[], maxBytes: number): Promise<Map<number, SizedInputs>>;

  recordAssignments(
    lease: Lease,
    rows: { itemId: number; workerId: string; shardId: string; at: number }[],
  ): Promise<void>;
  /**
   * The exactly-once gate: stores results for items still pending (first row per item wins) and
   * flips them to done, in one transaction (on PostgreSQL, one per 4,096 rows); drops the rest.
   * Fenced.
   */
  recordResults(lease: Lease, rows: NewResult[]): Promise<{ accepted: number[]; dropped: number[] }>;
  /** Counts attempts; a final one marks a pending item failed. Rows naming no item of that job are ignored. Fenced. */
  recordFailures(lease: Lease, rows: NewFailure[]): Promise<void>;
  failuresOf(jobId: string): Promise<FailureRecord[]>;
  getResult(itemId: number): Promise<ResultRecord | undefined>;
  /** Results of a job in item order, a page per query. */
  iterateResults(jobId: string): AsyncIterableIterator<ResultRecord>;

  /** Keeps an existing worker's `firstSeen` and `itemsDone`. */
  upsertWorker(rec: WorkerRecord): Promise<void>;
  getWorker(id: string): Promise<WorkerRecord | undefined>;
  listWorkers(): Promise<WorkerRecord[]>;
  addWorkerItems(id: string, n: number, lastSeen: number): Promise<void>;

  addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): Promise<void>;
  /** Newest first. */
  listEvents(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]>;

  /** Stores a model's bytes (and its manifest, JSON) under their sha256 (checked); the first put of a sha wins. */
  putModel(name: string, sha256: string, bytes: Uint8Array, manifest?: string): Promise<void>;
  getModel(sha256: string): Promise<Uint8Array | undefined>;
  listModels(): Promise<ModelBlob[]>;
  /** The stored model with this sha256, else the first (by sha256) of this name. */
  findModel(nameOrSha: string): Promise<ModelBlob | undefined>;

  /** The stored tokens, or `candidate` stored as them when there are none (the first hub's win). */
  initTokens(candidate: StoredTokens): Promise<StoredTokens>;

  addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): Promise<void>;
  canaryIds(jobId: string): Promise<number[]>;
  canaryAnswer(itemId: number): Promise<Uint8Array | undefined>;
  /** Stores replicas in one write; a later row for the same item and worker replaces an earlier. */
  addReplicas(rows: readonly Replica[]): Promise<void>;
  replicasOf(itemId: number): Promise<Replica[]>;
  replicaItemIds(): Promise<number[]>;
  /**
   * The replicas of the items whose ids are in `range`: checks left waiting on a chunk's items by
   * the hub that held it before (it died, or gave the chunk back).
   */
  replicasIn(range: { first: number; last: number }): Promise<Replica[]>;
  /** Every stored replica, by item (a hub's start: one read, not one per item). */
  allReplicas(): Promise<Replica[]>;
  /** Drops every replica of these items, in one write. */
  dropReplicas(itemIds: readonly number[]): Promise<void>;
  markVerified(itemIds: readonly number[], how: string): Promise<void>;
  isVerified(itemId: number): Promise<boolean>;
  /** How a job's stored results were verified, counted per way. */
  verificationOf(jobId: string): Promise<{ how: string; n: number }[]>;
  trustOf(workerId: string): Promise<TrustRecord | undefined>;
  allTrust(): Promise<TrustRecord[]>;
  /** A quarantine is a trust record with `quarantined` set: every hub reads the same one. */
  putTrust(t: TrustRecord): Promise<void>;
  /**
   * Takes back a worker's unconfirmed results (item pending again, count lowered), copies of them
   * the cache answered (`cached:record`) included; per job. Its unconfirmed results leave the
   * result cache, in cancelled jobs too. Fenced: it reopens items, so a hub that lost its lease
   * must not.
   */
  revertUnverified(lease: Lease, workerId: string): Promise<Map<string, number[]>>;

  /**
   * Registers (or re-registers) a hub: a new epoch, a fresh lease of `ttlMs`. Chunks its earlier
   * incarnation held go back to the pool, and that incarnation is fenced.
   */
  registerHub(hubId: string, opts: { url: string; ttlMs: number }): Promise<Lease>;
  /** Extends the lease by its TTL from now; `FencedError` once it lapsed. */
  renewLease(lease: Lease): Promise<Lease>;
  listHubs(): Promise<HubRecord[]>;
  /** Sets the address a hub is listed with (known once it listens), for the lease's incarnation. */
  setHubUrl(lease: Lease, url: string): Promise<void>;
  /** Marks dead the hubs whose lease lapsed and releases their chunks. Fenced (the caller's). */
  reapExpired(lease: Lease): Promise<{ hubId: string; epoch: number; chunks: number }[]>;
  /**
   * Claims up to `maxChunks` unheld chunks of jobs in `states` (but not of `exceptJobs`), by
   * priority then age. Fenced.
   */
  claimChunks(
    lease: Lease,
    opts: { maxChunks: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk[]>;
  /**
   * Moves a held chunk's cursor up to `upto` (never past its current end) and returns the chunk, or
   * undefined when the hub no longer holds it. The holder dispatches only ids up to the returned
   * cursor. Fenced.
   */
  advanceChunk(lease: Lease, chunkId: number, upto: number): Promise<Chunk | undefined>;
  /**
   * Takes the untouched second half of another live hub's chunk when no unheld chunk of that job
   * is left (near a job's end), if that half has at least `minItems` ids; not of `exceptJobs`. Fenced.
   */
  splitTail(
    lease: Lease,
    opts: { minItems: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk | undefined>;
  /** Gives held chunks back (their pending items will be claimed again). Fenced. */
  releaseChunks(lease: Lease, chunkIds: readonly number[]): Promise<void>;
  /** Deletes a held chunk whose items are none pending; false (kept) if some still are. Fenced. */
  finishChunk(lease: Lease, chunkId: number): Promise<boolean>;
  /** A job's chunks in id order, held or not. */
  listChunks(jobId: string): Promise<Chunk[]>;

  /**
   * Records a new pipeline run owned by the caller's lease. Not fenced: a run recorded under a
   * lease that just lapsed has a dead owner, and is taken over like any other.
   */
  createRun(lease: Lease, run: { id: string; anchor: string; createdAt: number }): Promise<void>;
  getRun(id: string): Promise<PipelineRun | undefined>;
  /** Marks a run completed: nobody takes it over any more. */
  completeRun(id: string): Promise<void>;
  /**
   * Takes over the running runs whose owner's lease is gone (its hub reaped, or registered again
   * under another epoch): each with a compare-and-set on its owner and epoch, so when hubs try at
   * the same time each run goes to exactly one. Returns the runs taken. Fenced.
   */
  takeOverRuns(lease: Lease): Promise<PipelineRun[]>;

  close(): Promise<void>;
}
