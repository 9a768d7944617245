/**
 * The hub: a small front that wires its parts and keeps the API transport layers call (gateway.ts,
 * api.ts, operator.ts; nothing in here parses input). Each part is the one writer of its state:
 *
 * - `hub/jobs.ts` job lifecycle (job and item rows, the event log, active jobs);
 * - `hub/registry.ts` worker registry (live workers, sockets, worker rows);
 * - `hub/dispatch.ts` plans and sends work (assignment rows, steals, benchmarks);
 * - `hub/commit.ts` judges and stores results (result rows, group commit);
 * - `hub/failures.ts` failed runs (failure rows, the failure book);
 * - `hub/reference.ts` runs on the hub's reference backend;
 * - `hub/trust-actions.ts` strikes, quarantine, probation, strays;
 * - `hub/figures.ts` contributor figures sent to browser workers.
 *
 * Readers use the query views: `jobs`, `workers`, `schedule`, `trust`.
 */
import { EventEmitter } from 'node:events';
import type { ItemFailure, ItemResult, ItemsDoneReply, RegisterRequest } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { ProbationView } from '../protocol/operator.ts';
import type { FairnessReport } from '../protocol/fairness.ts';
import type { ModelRegistry } from '../models/registry.ts';
import type { Logger } from './logger.ts';
import { ReferenceRunner } from './preflight.ts';
import { Scheduler } from './scheduler/scheduler.ts';
import { ShardSender, type WorkerSocket } from './shard-sender.ts';
import type { JobRecord, Store, WorkerRecord } from './store/store.ts';
import type { TrustStore } from './store/trust-store.ts';
import { TrustBook } from './trust.ts';
import { Verifier } from './verify.ts';
import type { LiveWorker } from './workers.ts';
import { WriteBatch } from './write-batch.ts';
import { DataChannels } from './data-channel.ts';
import { ResultsCommit } from './hub/commit.ts';
import { Dispatch } from './hub/dispatch.ts';
import { ItemFailures } from './hub/failures.ts';
import { ContributorFigures } from './hub/figures.ts';
import { JobLifecycle, type JobQueries, type JobSpec, type NewItems } from './hub/jobs.ts';
import { ReferenceRuns } from './hub/reference.ts';
import { WorkerRegistry } from './hub/registry.ts';
import {
  CONFIRM_WAIT_MS,
  TrustActions,
  type TrustQueries,
  type VerificationCost,
} from './hub/trust-actions.ts';
import type { HubEvents, HubOptions } from './hub/types.ts';

export {
  DEFAULT_HUB_OPTIONS,
  HubError,
  REFERENCE_WORKER,
  StoredResultsError,
  type HubEvents,
  type HubOptions,
} from './hub/types.ts';
export type { WorkerSocket } from './shard-sender.ts';
export type { JobQueries } from './hub/jobs.ts';
export type { TrustQueries } from './hub/trust-actions.ts';

/** The scheduler's figures, read-only: what is queued and held, and the workers' rates. */
export type ScheduleView = Pick<
  Scheduler,
  'queued' | 'inFlight' | 'heldBy' | 'heldCount' | 'holdersOf' | 'benchmark' | 'weight' | 'eligible'
>;

export class Hub extends EventEmitter<HubEvents> {
  /** Jobs, items, results and events, read-only. */
  readonly jobs: JobQueries;
  /** The workers known in this process's life, read-only. */
  readonly workers: ReadonlyMap<string, Readonly<LiveWorker>>;
  /** What the scheduler has queued and held, and its rate figures, read-only. */
  readonly schedule: ScheduleView;
  /** Workers' trust records and probation, read-only. */
  readonly trust: TrustQueries;
  /** Coalesces what a commit sends to a worker (its refill and its ack) into one write. */
  readonly writes = new WriteBatch();
  /** Native nodes' data channels (large items' inputs; `server/data-channel.ts`). */
  readonly data: DataChannels;
  /**
   * What verification cost, in runs beyond one per item: results kept as replicas (each asks one
   * more run), items the reference backend ran, and results recomputed after a quarantine.
   */
  readonly verificationCost: Readonly<VerificationCost>;

  private readonly lifecycle: JobLifecycle;
  private readonly registry: WorkerRegistry;
  private readonly dispatch: Dispatch;
  private readonly trustActions: TrustActions;
  private readonly failures: ItemFailures;
  private readonly results: ResultsCommit;
  private readonly figures: ContributorFigures;
  private readonly shards: ShardSender;
  private readonly runner = new ReferenceRunner();
  private readonly timer: NodeJS.Timeout;
  private readonly confirmTimer: NodeJS.Timeout;
  private closed = false;
  private lastFigures = 0;

  constructor(
    private readonly store: Store,
    readonly models: ModelRegistry,
    readonly log: Logger,
    readonly opts: HubOptions,
    private readonly trustStore: TrustStore,
  ) {
    super();
    const events = this as EventEmitter<HubEvents>;
    const cost: VerificationCost = { replicas: 0, reference: 0, recomputed: 0 };
    this.verificationCost = cost;
    const book = new TrustBook(trustStore, opts.trust);
    const verifier = new Verifier(trustStore, book);
    // Parts built later are reached through these closures, called only once all exist.
    const scheduler = new Scheduler({
      maxAttempts: opts.maxAttempts,
      ...opts.scheduler,
      onHeld: (jobId, workerId, count) =>
        this.lifecycle.activeJob(jobId)?.fairness.held(workerId, count, Date.now()),
      freshLimit: (workerId) => this.trustActions.freshLimit(workerId),
    });
    this.schedule = scheduler;
    const jobs = new JobLifecycle({
      store,
      trustStore,
      models,
      scheduler,
      verifier,
      reference: this.runner,
      log,
      opts,
      events,
      workerOf: (id) => this.registry.get(id),
      cancelOn: (id, itemIds, reason) => this.registry.cancel(id, itemIds, reason),
      pump: () => this.dispatch.pump(),
      completing: () => this.figures.send(),
      ended: (jobId) => this.failures.forgetJob(jobId),
      referencing: (jobId) => reference.busy(jobId),
      settling: () => this.results.pending,
    });
    this.lifecycle = this.jobs = jobs;
    this.data = new DataChannels({
      log,
      socketIdOf: (workerId) => this.registry.socketOf(workerId)?.id,
      lost: (workerId, socketId, reason) => {
        const socket = this.registry.socketOf(workerId);
        if (socket?.id !== socketId) return;
        this.registry.gone(workerId, reason, socketId);
        socket.disconnect(true);
      },
    });
    this.shards = new ShardSender({
      store,
      socketOf: (workerId) => this.registry.socketOf(workerId),
      modelOf: (jobId) => jobs.activeJob(jobId)?.model,
      data: this.data,
    });
    const workers = new WorkerRegistry({
      store,
      scheduler,
      jobs,
      log,
      opts,
      events,
      isQuarantined: (id) => book.isQuarantined(id),
      joined: (id, req) => this.shards.registered(id, req),
      left: (id) => {
        this.shards.gone(id);
        this.data.gone(id);
      },
      pump: (id) => this.dispatch.pump(id),
      pumpAllSoon: () => this.dispatch.pumpAllSoon(),
    });
    this.registry = workers;
    this.workers = workers.view;
    const dispatch = new Dispatch({
      store,
      models,
      scheduler,
      jobs,
      workers,
      shards: this.shards,
      log,
      opts,
      events,
    });
    this.dispatch = dispatch;
    const reference: ReferenceRuns = new ReferenceRuns({
      models,
      jobs,
      runner: this.runner,
      log,
      answered: (a) => (this.closed ? Promise.resolve() : this.results.acceptReference(a)),
      failed: (jobId, itemId, err) => {
        if (!this.closed) this.failures.referenceFailed(jobId, itemId, err);
      },
    });
    const trust = new TrustActions({
      trust: book,
      trustStore,
      verifier,
      scheduler,
      jobs,
      workers,
      dispatch,
      reference,
      cost,
      log,
      events,
    });
    this.trustActions = this.trust = trust;
    this.failures = new ItemFailures({
      store,
      scheduler,
      verifier,
      jobs,
      workers,
      dispatch,
      reference,
      trust,
      log,
      events,
    });
    this.figures = new ContributorFigures({ scheduler, jobs, workers, trust });
    this.results = new ResultsCommit({
      store,
      trustStore,
      verifier,
      scheduler,
      jobs,
      workers,
      dispatch,
      trust,
      failures: this.failures,
      figures: this.figures,
      reference,
      writes: this.writes,
      cost,
      log,
      events,
    });
    this.timer = setInterval(() => this.tick(), Math.min(1000, Math.max(100, opts.heartbeatMs / 2)));
    this.timer.unref();
    this.confirmTimer = setInterval(() => {
      if (!this.closed) trust.confirmStale();
    }, CONFIRM_WAIT_MS / 4);
    this.confirmTimer.unref();
    jobs.resume();
  }

  // ---------------------------------------------------------------- jobs

  /** Creates a job on a model known to the registry. */
  createJob(spec: JobSpec): JobRecord {
    return this.lifecycle.create(spec);
  }

  /** Adds items to an open job; returns their ids in order. */
  appendItems(jobId: string, items: NewItems): number[] {
    return this.lifecycle.append(jobId, items);
  }

  /** Adds items to a sealed job that is still running (a pipeline stage fed as results arrive). */
  appendToJob(jobId: string, items: NewItems): number[] {
    return this.lifecycle.appendRunning(jobId, items);
  }

  /** Seals an open job (pre-flight, then queued and scheduled); see `JobLifecycle.seal`. */
  sealJob(jobId: string): Promise<JobRecord> {
    return this.lifecycle.seal(jobId);
  }

  /** Cancels a job: queued items are dropped, workers told to stop its items. */
  cancelJob(jobId: string): JobRecord {
    return this.lifecycle.cancel(jobId);
  }

  /** Changes a job's priority. */
  setPriority(jobId: string, priority: number): JobRecord {
    return this.lifecycle.setPriority(jobId, priority);
  }

  /** Keeps a job from completing while a pipeline may still add items to it. */
  holdOpen(jobId: string): void {
    this.lifecycle.holdOpen(jobId);
  }

  /** The pipeline adds no more items: the job completes once its items are done or failed. */
  endStream(jobId: string): void {
    this.lifecycle.endStream(jobId);
  }

  /** Records an event in a job's log (a pipeline keeps its pages' outcomes there, for restarts). */
  addJobEvent(jobId: string, type: string, data: Record<string, unknown>): void {
    this.lifecycle.addEvent(jobId, type, data, Date.now());
  }

  /** The job, or a `unknown_job` error (404). */
  requireJob(jobId: string): JobRecord {
    return this.lifecycle.require(jobId);
  }

  /** The model a job runs: for a pipeline stage, with the step its workers run after it. */
  modelOf(job: JobRecord): ModelInfo | undefined {
    return this.lifecycle.modelOf(job);
  }

  /** The job's fairness figures: live while it runs, the stored final ones after. */
  fairnessOf(jobId: string, final = false): FairnessReport | undefined {
    return this.lifecycle.fairnessOf(jobId, final);
  }

  // ---------------------------------------------------------------- workers

  /** A worker as stored (identity, secret hash), connected or not. */
  storedWorker(workerId: string): WorkerRecord | undefined {
    return this.registry.stored(workerId);
  }

  /** Stores a worker's identity and capabilities (at registration, before `registerWorker`). */
  rememberWorker(rec: WorkerRecord): void {
    this.registry.remember(rec);
  }

  /** A worker registered (new, or the same worker again after a reconnect). */
  registerWorker(socket: WorkerSocket, workerId: string, req: RegisterRequest, address: string): LiveWorker {
    return this.registry.register(socket, workerId, req, address);
  }

  /** Marks a worker seen (any message counts) and records heartbeat figures. */
  touch(
    workerId: string,
    hb?: { load: LiveWorker['load']; queued: number; running: number; paused: boolean },
  ): void {
    this.registry.touch(workerId, hb);
  }

  /** A worker's connection ended or it stopped answering: its unfinished items go back at once. */
  workerGone(workerId: string, reason: string, socketId?: string): void {
    this.registry.gone(workerId, reason, socketId);
  }

  /** Pause, resume, drain or evict a worker (operator action). */
  controlWorker(workerId: string, action: 'pause' | 'resume' | 'drain' | 'evict'): LiveWorker {
    return this.registry.control(workerId, action);
  }

  /** Forgets an offline worker (operator action); false if it is online or unknown. */
  forgetWorker(workerId: string): boolean {
    return this.registry.forget(workerId);
  }

  /** Items a worker handed back unstarted. */
  releaseItems(workerId: string, itemIds: number[]): number {
    const strays = itemIds.filter((id) => !this.schedule.holdersOf(id).includes(workerId)).length;
    if (strays) this.trustActions.stray(workerId, strays, 'releases');
    const back = this.dispatch.release(workerId, itemIds);
    this.dispatch.pump();
    return back;
  }

  /** A worker's probation (see `TrustActions.probationOf`). */
  probationOf(workerId: string): ProbationView | null {
    return this.trustActions.probationOf(workerId);
  }

  // ---------------------------------------------------------------- results

  /** Takes a batch of results; the reply comes once they are stored (see `ResultsCommit`). */
  acceptResults(workerId: string, results: ItemResult[]): Promise<ItemsDoneReply> {
    return this.results.accept(workerId, results);
  }

  /** Records failed runs: each item is retried elsewhere or, out of options, ends failed. */
  recordFailures(workerId: string, failures: ItemFailure[]): { retried: number; failed: number } {
    return this.failures.record(workerId, failures);
  }

  // ---------------------------------------------------------------- time

  /** Liveness, figures, completion and stall backstops, and a plan of every worker. */
  private tick(): void {
    const now = Date.now();
    if (now - this.lastFigures >= 1500) {
      this.lastFigures = now;
      this.figures.send();
      this.data.sweep(now);
    }
    this.lifecycle.checkAll();
    this.lifecycle.repairStalls(now);
    this.registry.sweep(now);
    this.dispatch.pump();
  }

  /** Stops timers and the reference sessions. Sockets are closed by their owners. */
  async close(): Promise<void> {
    this.results.flush(); // results judged but not yet stored: store them while the store is open
    this.closed = true;
    this.dispatch.close();
    this.shards.close();
    this.data.close();
    clearInterval(this.timer);
    clearInterval(this.confirmTimer);
    await this.runner.close();
  }

  /** Closes the stores, once the hub and everything that reads through it has stopped. */
  closeStores(): void {
    this.store.close();
    this.trustStore.close();
  }
}
