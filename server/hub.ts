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
 *
 * The store is an `AsyncStore` (SQLite embedded, or PostgreSQL): what must be stored before anyone
 * is answered (results, failures, jobs an operator changes) is awaited where it is written; the
 * rest goes through the write-behind queue (`hub/write-behind.ts`). Every write of item state
 * carries the hub's lease (`store/lease-keeper.ts`).
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
import type { AsyncStore, HubRecord, JobRecord, PipelineRun, WorkerRecord } from './store/async-store.ts';
import { LeaseKeeper } from './store/lease-keeper.ts';
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
import { HubError, type HubEvents, type HubOptions } from './hub/types.ts';
import { TrustCache } from './hub/trust-cache.ts';
import { WriteBehind } from './hub/write-behind.ts';
import { ChunkClaims } from './hub/claims.ts';

/** Least items a hub sharing its store keeps queued (claimed) for its workers. */
const CLAIM_LEAST = 64;

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

  /** Whether `close` was called. */
  get isClosed(): boolean {
    return this.closed;
  }
  private lastFigures = 0;
  private readonly book: TrustBook;
  /** Chunk claims, when other hubs share the store (`hub/claims.ts`). */
  private readonly claims: ChunkClaims | undefined;
  /** This hub's name in the store (the hubs view, workers' `hub` field). */
  readonly hubId: string;

  /** Whether other hubs share the store (PostgreSQL). */
  get shared(): boolean {
    return this.store.severalHubs;
  }

  /** Which store the hub runs on. */
  get storeKind(): 'sqlite' | 'postgres' {
    return this.store.kind;
  }

  /**
   * Opens a hub on `store`: loads the trust records and waiting replicas, registers the hub and
   * starts keeping its lease, and resumes every sealed, unfinished job.
   */
  static async open(
    store: AsyncStore,
    models: ModelRegistry,
    log: Logger,
    opts: HubOptions,
    where: { hubId?: string; url?: string } = {},
  ): Promise<Hub> {
    const writes = new WriteBehind(log);
    const trustCache = await TrustCache.load(store, writes);
    const hubId = where.hubId ?? `hub-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    const keeping = {
      url: where.url ?? '',
      ttlMs: opts.leaseMs,
      reapEveryMs: store.severalHubs ? opts.leaseMs : 0,
    };
    const keeper = await LeaseKeeper.start(store, hubId, keeping);
    const hub = new Hub(store, models, log, opts, writes, trustCache, keeper, keeping, () =>
      LeaseKeeper.start(store, hubId, keeping),
    );
    await hub.lifecycle.resume();
    return hub;
  }

  private constructor(
    private readonly store: AsyncStore,
    readonly models: ModelRegistry,
    readonly log: Logger,
    readonly opts: HubOptions,
    private readonly behind: WriteBehind,
    trustCache: TrustCache,
    private keeper: LeaseKeeper,
    /** What the hub registers with (again, after a lost lease): its address among them. */
    private readonly keeping: { url: string },
    private readonly newLease: () => Promise<LeaseKeeper>,
  ) {
    super();
    this.hubId = keeper.lease.hubId;
    const events = this as EventEmitter<HubEvents>;
    const cost: VerificationCost = { replicas: 0, reference: 0, recomputed: 0 };
    this.verificationCost = cost;
    const later = behind.later;
    const lease = () => this.keeper.lease;
    this.watchLease();
    const book = new TrustBook(trustCache, opts.trust);
    this.book = book;
    const verifier = new Verifier(trustCache, book);
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
      shared: store.severalHubs,
      // Items to claim: a pass here now, and the other hubs told (their passes may be waiting).
      claimSoon: () => {
        this.claims?.poke();
        this.emit('chunks:claimable');
      },
      later,
      trustCache,
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
      ended: (jobId) => {
        this.failures.forgetJob(jobId);
        trustCache.forgetJob(jobId);
      },
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
      failed: (err, workerId, jobId) => log.error({ err, workerId, jobId }, 'reading items to send failed'),
      socketOf: (workerId) => this.registry.socketOf(workerId),
      modelOf: (jobId) => jobs.activeJob(jobId)?.model,
      data: this.data,
    });
    const workers = new WorkerRegistry({
      store,
      later,
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
      lease,
      sent: () => this.claims?.low(),
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
      failed: (jobId, itemId, err) =>
        this.closed ? Promise.resolve() : this.failures.referenceFailed(jobId, itemId, err),
    });
    const trust = new TrustActions({
      trust: book,
      store,
      lease,
      committed: () => this.results.settled(),
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
      lease,
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
      lease,
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
    if (store.severalHubs) {
      this.claims = new ChunkClaims({
        store,
        lease,
        scheduler,
        jobs,
        log,
        // Only workers that may be given items count: a hub whose workers are all quarantined,
        // paused or draining holds nothing (its chunks go back to the hubs whose workers can run them).
        want: () => {
          let n = 0;
          for (const w of workers.values()) if (w.state === 'online') n += w.concurrency;
          return n === 0 ? 0 : Math.max(CLAIM_LEAST, 2 * n);
        },
        idle: () => [...jobs.activeJobs()].every((j) => scheduler.inFlight(j.record.id) === 0),
        settling: () => this.results.pending,
        pump: () => dispatch.pump(),
        freed: () => this.emit('chunks:claimable'),
        adopt: (jobId, replicas) => verifier.adopt(jobId, replicas),
      });
      // What may make work claimable here wakes the claim passes if they were waiting: news of
      // this hub's (also passed on to the other hubs by `app.ts`; theirs comes through
      // `peerClaimable` and `peerGone`), and its workers changing state (registered, back online,
      // benchmarked).
      this.on('chunks:claimable', () => this.claims?.wake());
      this.on('worker:updated', () => this.claims?.wake());
    }
    this.timer = setInterval(() => this.tick(), Math.min(1000, Math.max(100, opts.heartbeatMs / 2)));
    this.timer.unref();
    this.confirmTimer = setInterval(() => {
      if (!this.closed) trust.confirmStale();
    }, CONFIRM_WAIT_MS / 4);
    this.confirmTimer.unref();
  }

  // ---------------------------------------------------------------- jobs

  /** Creates a job on a model known to the registry. */
  createJob(spec: JobSpec): Promise<JobRecord> {
    return this.lifecycle.create(spec);
  }

  /** Adds items to an open job; returns their ids in order. */
  appendItems(jobId: string, items: NewItems): Promise<number[]> {
    return this.lifecycle.append(jobId, items);
  }

  /** Adds items to a sealed job that is still running (a pipeline stage fed as results arrive). */
  appendToJob(jobId: string, items: NewItems): Promise<number[]> {
    return this.lifecycle.appendRunning(jobId, items);
  }

  /** Seals an open job (pre-flight, then queued and scheduled); see `JobLifecycle.seal`. */
  sealJob(jobId: string): Promise<JobRecord> {
    return this.lifecycle.seal(jobId);
  }

  /** Cancels a job: queued items are dropped, workers told to stop its items. */
  cancelJob(jobId: string): Promise<JobRecord> {
    return this.lifecycle.cancel(jobId);
  }

  /** Changes a job's priority. */
  setPriority(jobId: string, priority: number): Promise<JobRecord> {
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

  // ---------------------------------------------------------------- pipeline runs' owners

  /** Records a pipeline run as this hub's (see `PipelineRun`). */
  createRun(run: { id: string; anchor: string; createdAt: number }): Promise<void> {
    return this.store.createRun(this.keeper.lease, run);
  }

  /** A pipeline run's owner record, if the store has one. */
  pipelineRun(id: string): Promise<PipelineRun | undefined> {
    return this.store.getRun(id);
  }

  /**
   * Marks a run completed, written behind after the job events asked for before it (its pages'
   * outcomes): a run marked completed has its whole record stored.
   */
  completeRun(id: string): void {
    this.behind.later('run completed', () => this.store.completeRun(id));
  }

  /** Takes over the runs whose owner's lease is gone (each goes to one hub only). */
  takeOverRuns(): Promise<PipelineRun[]> {
    return this.store.takeOverRuns(this.keeper.lease);
  }

  /** Whether this hub, under its current lease, owns the run. */
  ownsRun(run: PipelineRun): boolean {
    const lease = this.keeper.lease;
    return run.ownerHub === lease.hubId && run.ownerEpoch === lease.epoch;
  }

  /** The job, or a `unknown_job` error (404). */
  requireJob(jobId: string): Promise<JobRecord> {
    return this.lifecycle.require(jobId);
  }

  /** An open job and the model it runs, or the error that says why items cannot be added to it. */
  async requireOpenJob(jobId: string): Promise<{ job: JobRecord; model: ModelInfo }> {
    const job = await this.lifecycle.require(jobId);
    if (job.state !== 'open') {
      const why = `job ${job.id} is ${job.state}; items can only be added while open`;
      throw new HubError('job_not_open', why, 409);
    }
    await this.models.find(job.modelSha256); // uploaded through another hub: registered here first
    const model = this.modelOf(job);
    if (!model) throw new HubError('unknown_model', 'the job’s model is gone', 409);
    return { job, model };
  }

  /** The model a job runs: for a pipeline stage, with the step its workers run after it. */
  modelOf(job: JobRecord): ModelInfo | undefined {
    return this.lifecycle.modelOf(job);
  }

  /** The job's fairness figures: live while it runs, the stored final ones after. */
  fairnessOf(jobId: string, final = false): Promise<FairnessReport | undefined> {
    return this.lifecycle.fairnessOf(jobId, final);
  }

  // ---------------------------------------------------------------- workers

  /** A worker as stored (identity, secret hash), connected or not. */
  storedWorker(workerId: string): Promise<WorkerRecord | undefined> {
    return this.registry.stored(workerId);
  }

  /** Stores a worker's identity and capabilities (at registration, before `registerWorker`). */
  async rememberWorker(rec: WorkerRecord): Promise<void> {
    const [, trust] = await Promise.all([this.registry.remember(rec), this.store.trustOf(rec.id)]);
    if (trust) this.book.adopt(trust); // another hub's verdict on this worker, if any
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
  recordFailures(workerId: string, failures: ItemFailure[]): Promise<{ retried: number; failed: number }> {
    return this.failures.record(workerId, failures);
  }

  // ---------------------------------------------------------------- hubs

  /**
   * The hubs the store knows, with their leases (the hub health view); with one hub on SQLite,
   * just this one. `self` marks this hub, `chunks` what each holds.
   */
  async hubs(): Promise<(HubRecord & { self: boolean })[]> {
    const lease = this.keeper.lease;
    return (await this.store.listHubs()).map((h) => ({
      ...h,
      self: h.id === lease.hubId && h.epoch === lease.epoch,
    }));
  }

  /**
   * The address other hubs and operators see this hub at, once it is known (a hub on port 0 learns
   * its port when it listens); a registration after a lost lease uses it too.
   */
  async advertise(url: string): Promise<void> {
    if (url === this.keeping.url) return;
    this.keeping.url = url;
    await this.store.setHubUrl(this.keeper.lease, url);
  }

  /**
   * Another hub made work claimable (the hub-to-hub channel, `app.ts`): this hub's claim passes,
   * if they were waiting, pass now.
   */
  peerClaimable(): void {
    this.claims?.wake();
  }

  /** Another hub reaped a hub whose lease lapsed (the hub-to-hub channel): see `hubs:gone`. */
  peerGone(): void {
    this.claims?.wake();
    this.emit('hubs:gone', false);
  }

  // ---------------------------------------------------------------- time

  /** Liveness, figures, completion and stall backstops, and a plan of every worker. */
  private tick(): void {
    const now = Date.now();
    if (now - this.lastFigures >= 1500) {
      this.lastFigures = now;
      this.figures.send().catch((err: unknown) => this.log.warn({ err }, 'figures not sent'));
      this.data.sweep(now);
    }
    this.lifecycle.checkAll();
    this.lifecycle.repairStalls(now);
    this.claims?.tick();
    this.registry.sweep(now);
    this.dispatch.pump();
  }

  /** Acts on the lease keeper's news: a lost lease fences this hub until it registers again. */
  private watchLease(): void {
    const k = this.keeper;
    k.on('failure', (err) => this.log.warn({ err }, 'renewing the hub lease failed; trying again'));
    k.on('reaped', (hubs) => {
      this.log.warn({ hubs }, 'hubs whose lease lapsed were reaped; their chunks are free again');
      this.claims?.wake();
      this.emit('hubs:gone', true);
    });
    k.on('fenced', (err) => this.rejoin(err.message));
    k.on('lost', () => this.rejoin('no renewal of the lease got through within its time'));
  }

  /**
   * The lease is lost: another hub may already run what this one held, and the store refuses this
   * hub's writes. Everything held goes (workers are told to stop those items; their results, if
   * sent, are refused and sent again elsewhere or later), and the hub registers again.
   */
  private rejoin(why: string): void {
    if (this.closed) return;
    this.log.error({ why }, 'this hub lost its lease: fenced; dropping its chunks and registering again');
    this.keeper.stop();
    this.emit('lease:lost');
    this.claims?.clear();
    this.lifecycle.dropAll('this hub lost its lease');
    const again = async (): Promise<void> => {
      for (let wait = 500; !this.closed; wait = Math.min(wait * 2, 10_000)) {
        try {
          this.keeper = await this.newLease();
          this.watchLease();
          this.log.warn({ epoch: this.keeper.lease.epoch }, 'hub registered again with a new lease');
          this.claims?.wake();
          this.emit('hubs:gone', true); // the old lease's runs are orphaned now
          return;
        } catch (err) {
          this.log.warn({ err }, 'registering the hub again failed; retrying');
          await new Promise((ok) => setTimeout(ok, wait));
        }
      }
    };
    void again();
  }

  /** Stops timers and the reference sessions. Sockets are closed by their owners. */
  async close(): Promise<void> {
    await this.results.flush(); // results judged but not yet stored: store them while the store is open
    this.closed = true;
    await this.claims?.settled();
    await this.lifecycle.close();
    this.dispatch.close();
    this.shards.close();
    this.data.close();
    clearInterval(this.timer);
    clearInterval(this.confirmTimer);
    await this.runner.close();
  }

  /**
   * Closes the store, once the hub and everything that reads through it has stopped: the writes
   * still queued go first. The lease is not given back: with several hubs, another reaps it.
   */
  async closeStores(): Promise<void> {
    this.keeper.stop();
    await this.behind.drained();
    await this.store.close();
  }
}
