/**
 * The hub's core: live workers, active jobs and dispatch. It owns the scheduler and the store and
 * carries out the scheduler's decisions over the workers' sockets. Transport (Socket.IO handlers,
 * REST routes) lives in gateway.ts and api.ts and calls in here; nothing in here parses input.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type {
  WorkerFigures,
  ItemFailure,
  ItemResult,
  ItemsDoneReply,
  RegisterRequest,
  Response,
} from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import {
  BenchmarkReplySchema,
  RevokeReplySchema,
  describeZodError,
  responseSchema,
} from '../protocol/schemas.ts';
import type { z } from 'zod';
import { packTensors, unpackTensors } from '../protocol/pack.ts';
import type { ModelRegistry } from '../models/registry.ts';
import { clean, type Logger } from './logger.ts';
import { outputProblem } from './check.ts';
import { FairnessTracker } from './scheduler/fairness.ts';
import { Scheduler, type Assignment, type SchedulerOptions, type StealPlan } from './scheduler/scheduler.ts';
import type { FairnessReport } from '../protocol/fairness.ts';
import type { ProbationView } from '../protocol/operator.ts';
import type { JobRecord, NewFailure, NewJob, NewResult, Store } from './store/store.ts';
import { workerFacts, type LiveWorker } from './workers.ts';
import { IdRuns } from './scheduler/id-runs.ts';
import { PreflightError, ReferenceRunner, canaryCount, pickCanaries } from './preflight.ts';
import type { Replica, TrustStore } from './store/trust-store.ts';
import { DEFAULT_TRUST_OPTIONS, FailureBook, TrustBook, type TrustOptions } from './trust.ts';
import { Verifier, outputsDiffer } from './verify.ts';
import { ShardSender, type AssignmentRow, type WorkerSocket } from './shard-sender.ts';
import { WriteBatch } from './write-batch.ts';
import { parseStep, stageModel } from '../pipeline/stages.ts';
import { DataChannels } from './data-channel.ts';
import { RateLimiter } from './rate-limit.ts';

/** Least time between two plans of waiting workers asked for by events (see `pumpAllSoon`). */
const PUMP_ALL_MS = 20;

/** Most waiting workers planned at once by `pumpAllSoon`. */
const PUMP_ALL_MAX = 64;

/** Workers planned per turn of the event loop when all are planned (see `pumpInChunks`). */
const PUMP_CHUNK = 256;

/**
 * Most results messages, and results, stored in one commit (`commitResults`). A message's reply
 * and refill wait for the others judged before its commit: 64 messages are about 10 ms of the hub's
 * time with 2,000 workers, and already make a commit's own cost small per message.
 */
const COMMIT_MAX_MESSAGES = 64;
const COMMIT_MAX_ROWS = 4096;
/**
 * A message with this many results to store is committed at once, with those waiting: its own
 * commit is already a small cost per result, and waiting a turn would only delay its reply.
 */
const COMMIT_AT_ONCE_ROWS = 64;

/**
 * Items a worker may name in results, failures or releases without holding them, per second and in
 * a burst: an honest worker sends some after a requeue, a steal or a job's end (at most what it held,
 * 4,096 items). Past that it is forging, and each further stray costs it a strike, at most one per
 * STRAY_STRIKE_S seconds (two strikes quarantine).
 */
const STRAY_PER_SEC = 100;
const STRAY_BURST = 8192;
const STRAY_STRIKE_S = 5;

/** The worker id results computed by the hub's own reference backend are stored under. */
export const REFERENCE_WORKER = 'hub-reference';

/**
 * Longest a probation result waits for a confirmer before the hub's reference backend confirms it
 * (ms): verification must not hold a job up while no other worker can take the item.
 */
const CONFIRM_WAIT_MS = 1000;

/** Most runners a worker on probation is credited with, whatever it claims (see `freshLimit`). */
const PROBATION_RUNNERS = 8;

/** How often the hub looks for a job `running` with nothing queued and nothing in flight (ms). */
const STALL_CHECK_MS = 5000;

export type { WorkerSocket } from './shard-sender.ts';

/** A results message checked and judged, waiting for its commit (see `Hub.acceptResults`). */
interface JudgedResults {
  workerId: string;
  results: ItemResult[];
  /** Accepted results to store. */
  rows: NewResult[];
  /** How each stored result was verified, if it was. */
  how: Map<number, string>;
  refused: ItemsDoneReply['refused'];
  /** Results that break the model's contract: recorded as failed attempts. */
  invalid: ItemFailure[];
  /** After the commit: the items whose results were stored. */
  accepted: number[];
  /** After the commit: the items another result was stored for first (dropped as done). */
  alreadyDone: number[];
  /** Items this worker does not hold. */
  notMine: number[];
  /** Items whose result waits for replicas elsewhere. */
  replicated: number[];
  /** Results checked, per job (the fairness report's work done). */
  worked: Map<string, number>;
  resolve: (reply: ItemsDoneReply) => void;
  reject: (err: unknown) => void;
}

/** Hub timing and policy knobs. */
export interface HubOptions {
  /** Check the model and compute canaries on the hub before a job starts. */
  preflight: boolean;
  trust: TrustOptions;
  heartbeatMs: number;
  offlineAfterMs: number;
  benchmarkTimeoutMs: number;
  maxAttempts: number;
  scheduler: Partial<SchedulerOptions>;
  /**
   * Offline workers kept in memory (for `GET /api/workers` and a quick reconnect); the oldest are
   * forgotten past this. Anonymous identities cost nothing to make: what they leave must be bounded.
   */
  maxOfflineWorkers: number;
}

export const DEFAULT_HUB_OPTIONS: HubOptions = {
  preflight: true,
  trust: DEFAULT_TRUST_OPTIONS,
  heartbeatMs: 2000,
  offlineAfterMs: 6000,
  benchmarkTimeoutMs: 120_000,
  maxAttempts: 3,
  scheduler: {},
  maxOfflineWorkers: 1000,
};

/** Events the hub emits for observers (operator namespace, CLI progress, tests). */
export interface HubEvents {
  'job:updated': [jobId: string];
  'job:completed': [jobId: string];
  'worker:updated': [workerId: string];
  'items:requeued': [info: { workerId: string; jobId: string; items: number; reason: string; at: number }];
  /** Results of these items were stored (pipelines build the next stage's items from them). */
  'items:committed': [jobId: string, itemIds: number[]];
}

/** Error with a stable code for API replies. */
export class HubError extends Error {
  override name = 'HubError';
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/**
 * A results message whose results were stored, but whose handling after the commit (freeing its
 * items, refilling, cancelling copies) failed. Its worker is told to send them again: the resend is
 * dropped as done, and its handling frees what the failed one did not.
 */
export class StoredResultsError extends Error {
  override name = 'StoredResultsError';
  constructor(override readonly cause: unknown) {
    super('results stored, but handling them after the commit failed', { cause });
  }
}

interface ActiveJob {
  record: JobRecord;
  model: ModelInfo;
  fairness: FairnessTracker;
}

export class Hub extends EventEmitter<HubEvents> {
  readonly workers = new Map<string, LiveWorker>();
  readonly scheduler: Scheduler;
  private readonly sockets = new Map<string, WorkerSocket>();
  /** Coalesces what a commit sends to a worker (its refill and its ack) into one write. */
  readonly writes = new WriteBatch();
  /** Plans and sends `shard:assign` messages. */
  private readonly shards: ShardSender;
  /** Native nodes' data channels (large items' inputs; `server/data-channel.ts`). */
  readonly data: DataChannels;
  private readonly active = new Map<string, ActiveJob>();
  private readonly timer: NodeJS.Timeout;
  private readonly confirmTimer: NodeJS.Timeout;
  private closed = false;
  readonly trust: TrustBook;
  private readonly verifier: Verifier;
  private readonly reference = new ReferenceRunner();
  private readonly sealing = new Set<string>();
  private lastFigures = 0;
  /**
   * Accepted results per job and worker, counted as they are stored, for the contributor page's
   * share (`sendFigures`): the fairness tracker counts runs, replicas and wasted copies included.
   */
  private readonly acceptedBy = new Map<string, Map<string, number>>();
  /** What `sendFigures` last sent each browser worker: it sends only what changed. */
  private readonly figuresSent = new Map<string, string>();
  private lastStallCheck = 0;
  /** Offline workers, oldest first (see `maxOfflineWorkers`). */
  private readonly offline = new Set<string>();
  /** Per item: who failed it; per worker and model: failure rates (finding outliers). */
  private readonly failures = new FailureBook();
  /** Reference runs in progress per job: a job waiting for one is not stalled. */
  private readonly referencing = new Map<string, number>();
  /**
   * What verification cost, in runs beyond one per item: results kept as replicas (each asks one
   * more run), items the reference backend ran, and results recomputed after a quarantine.
   */
  readonly verificationCost = { replicas: 0, reference: 0, recomputed: 0 };
  private readonly strays = new RateLimiter(STRAY_PER_SEC, STRAY_BURST, 10_000);
  private readonly strayStrikes = new RateLimiter(1 / STRAY_STRIKE_S, 1, 10_000);
  private pumpQueued = false;
  private lastPumpAll = 0;
  private hungryCursor = 0;
  /** Results messages judged and waiting for their commit (`commitResults`). */
  private uncommitted: JudgedResults[] = [];
  private uncommittedRows = 0;
  private commitQueued = false;
  /** A plan of every worker in progress, chunk by chunk (`pumpInChunks`). */
  private chunkedPass: { ids: string[]; at: number; again: boolean } | undefined;

  constructor(
    readonly store: Store,
    readonly models: ModelRegistry,
    readonly log: Logger,
    readonly opts: HubOptions,
    readonly trustStore: TrustStore,
  ) {
    super();
    this.trust = new TrustBook(trustStore, opts.trust);
    this.verifier = new Verifier(trustStore, this.trust);
    this.data = new DataChannels({
      log,
      socketIdOf: (workerId) => this.sockets.get(workerId)?.id,
      lost: (workerId, socketId, reason) => {
        const socket = this.sockets.get(workerId);
        if (socket?.id !== socketId) return;
        this.workerGone(workerId, reason, socketId);
        socket.disconnect(true);
      },
    });
    this.shards = new ShardSender({
      store,
      socketOf: (workerId) => this.sockets.get(workerId),
      modelOf: (jobId) => this.active.get(jobId)?.model,
      data: this.data,
    });
    this.scheduler = new Scheduler({
      maxAttempts: opts.maxAttempts,
      ...opts.scheduler,
      onHeld: (jobId, workerId, count) => this.active.get(jobId)?.fairness.held(workerId, count, Date.now()),
      freshLimit: (workerId) => this.freshLimit(workerId),
    });
    this.timer = setInterval(() => this.tick(), Math.min(1000, Math.max(100, opts.heartbeatMs / 2)));
    this.timer.unref();
    this.confirmTimer = setInterval(() => this.confirmStale(), CONFIRM_WAIT_MS / 4);
    this.confirmTimer.unref();
    this.resume();
  }

  /** After a restart: every sealed, unfinished job goes back to the scheduler with its pending items. */
  private resume(): void {
    for (const job of this.store.listJobs({ states: ['queued', 'running'] })) {
      const model = this.modelOf(job);
      if (!model) {
        this.log.error(
          { jobId: job.id, model: job.modelName },
          'model of an unfinished job is gone; job cancelled',
        );
        this.store.updateJob(job.id, { state: 'cancelled', finishedAt: Date.now() });
        continue;
      }
      this.activate(job, model);
      this.log.info({ jobId: job.id, pending: this.scheduler.queued(job.id) }, 'job resumed');
      this.checkComplete(job.id);
    }
  }

  // ---------------------------------------------------------------- jobs

  /** Creates a job on a model known to the registry. */
  createJob(spec: Omit<NewJob, 'id' | 'modelSha256' | 'modelName'> & { model: string }): JobRecord {
    const model = /^[0-9a-f]{64}$/.test(spec.model)
      ? this.models.bySha(spec.model)
      : this.models.byName(spec.model);
    if (!model) {
      throw new HubError(
        'unknown_model',
        `unknown model "${clean(spec.model, 80)}"; see GET /api/models`,
        404,
      );
    }
    try {
      parseStep(spec.options.step);
    } catch (err) {
      throw new HubError('invalid_request', `options.step: ${(err as Error).message}`, 400);
    }
    const id = `j_${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
    const { model: _m, ...rest } = spec;
    void _m;
    const job = this.store.createJob({ ...rest, id, modelName: model.name, modelSha256: model.sha256 });
    this.log.info({ jobId: id, model: model.name }, 'job created');
    return job;
  }

  /** The model a job runs: for a pipeline stage, with the step its workers run after it. */
  modelOf(job: JobRecord): ModelInfo | undefined {
    const model = this.models.bySha(job.modelSha256);
    try {
      return model && stageModel(model, parseStep(job.options.step));
    } catch {
      return undefined; // a step this build does not have: the job cannot run here
    }
  }

  // ---------------------------------------------------------------- pipelines (server/pipeline.ts)

  /** Jobs a pipeline may still add items to: they do not complete until `endStream`. */
  private readonly streaming = new Set<string>();

  /** Keeps a job from completing while a pipeline may still add items to it. */
  holdOpen(jobId: string): void {
    this.streaming.add(jobId);
  }

  /** The pipeline adds no more items: the job completes once its items are done or failed. */
  endStream(jobId: string): void {
    if (this.streaming.delete(jobId)) this.checkComplete(jobId);
  }

  /** Tells pipelines which items' results a commit stored, per job. */
  private emitCommitted(group: JudgedResults[]): void {
    const committed = new Map<string, number[]>();
    for (const m of group) {
      if (m.accepted.length === 0) continue;
      const jobOf = new Map(m.results.map((r) => [r.itemId, r.jobId]));
      for (const id of m.accepted) {
        const jobId = jobOf.get(id);
        if (jobId === undefined) continue;
        const ids = committed.get(jobId);
        if (ids) ids.push(id);
        else committed.set(jobId, [id]);
      }
    }
    for (const [jobId, ids] of committed) this.emit('items:committed', jobId, ids);
  }

  /** Adds items to a sealed job that is still running (a pipeline stage fed as results arrive). */
  appendToJob(jobId: string, items: { name: string; inputs: Uint8Array }[]): number[] {
    if (!this.active.has(jobId))
      throw new HubError('job_not_active', `job ${clean(jobId, 80)} is not running`, 409);
    const ids = this.store.appendItems(jobId, items, { running: true });
    this.scheduler.requeueItems(jobId, ids);
    this.pump();
    return ids;
  }

  /**
   * Seals an open job: no more items. Pre-flight first (the model loads on the hub's reference
   * backend, sample items run, canary answers are kept); a failed check cancels the job and is
   * thrown as a clear error. Then the job is queued and scheduled.
   */
  async sealJob(jobId: string): Promise<JobRecord> {
    const job = this.requireJob(jobId);
    if (job.state !== 'open' || this.sealing.has(jobId)) {
      throw new HubError(
        'job_not_open',
        `job ${jobId} is ${this.sealing.has(jobId) ? 'being sealed' : job.state}, not open`,
        409,
      );
    }
    if (job.itemCount === 0) throw new HubError('job_empty', `job ${jobId} has no items`, 400);
    const model = this.modelOf(job);
    const path = model && this.models.filePath(model.sha256);
    if (!model || !path) throw new HubError('unknown_model', `model of job ${jobId} is gone`, 409);
    this.sealing.add(jobId);
    try {
      if (this.opts.preflight) await this.preflight(job, model, path);
      this.store.updateJob(jobId, { state: 'queued' });
    } finally {
      this.sealing.delete(jobId);
    }
    const sealed = this.requireJob(jobId);
    this.activate(sealed, model);
    this.log.info({ jobId, items: sealed.itemCount }, 'job queued');
    this.emit('job:updated', jobId);
    this.pump();
    return sealed;
  }

  private async preflight(job: JobRecord, model: ModelInfo, path: string): Promise<void> {
    const pending = IdRuns.of(this.store.pendingItemRuns(job.id));
    const n = canaryCount(pending.size, {
      fraction: this.opts.trust.canaryFraction,
      min: this.opts.trust.minCanaries,
      max: this.opts.trust.maxCanaries,
    });
    // Without canaries, one item still proves the model runs on these inputs.
    const sample = n > 0 ? pickCanaries(pending, n) : pending.size > 0 ? [pending.at(0)] : [];
    const started = Date.now();
    try {
      const answers = await this.reference.check(model, path, this.store.itemInputs(sample));
      if (n > 0) this.verifier.addCanaries(job.id, answers);
    } catch (err) {
      if (!(err instanceof PreflightError)) throw err;
      this.store.updateJob(job.id, { state: 'cancelled', finishedAt: Date.now() });
      this.store.addEvent(job.id, 'preflight_failed', { reason: err.message }, Date.now());
      this.log.warn({ jobId: job.id, reason: clean(err.message) }, 'pre-flight failed; job cancelled');
      this.emit('job:updated', job.id);
      throw new HubError('preflight_failed', err.message, 422);
    }
    this.log.info({ jobId: job.id, canaries: n, ms: Date.now() - started }, 'pre-flight passed');
  }

  private activate(job: JobRecord, model: ModelInfo): void {
    const fairness = new FairnessTracker(job.id);
    this.verifier.watchJob(job.id);
    this.active.set(job.id, { record: job, model, fairness });
    this.scheduler.addJob(
      {
        id: job.id,
        priority: job.priority,
        deadline: job.deadline,
        modelSha256: job.modelSha256,
        batchSize: model.batchable ? model.batchSize : 1,
        requirements: job.requirements,
      },
      IdRuns.of(this.store.pendingItemRuns(job.id)),
    );
  }

  /** Cancels a job: queued items are dropped, workers told to stop its items. */
  cancelJob(jobId: string): JobRecord {
    const job = this.requireJob(jobId);
    if (job.state === 'completed' || job.state === 'cancelled') {
      throw new HubError('job_finished', `job ${jobId} is already ${job.state}`, 409);
    }
    this.store.updateJob(jobId, { state: 'cancelled', finishedAt: Date.now() });
    this.deactivate(jobId, 'job cancelled');
    this.log.info({ jobId }, 'job cancelled');
    this.emit('job:updated', jobId);
    this.pump();
    return this.requireJob(jobId);
  }

  /** Changes a job's priority. */
  setPriority(jobId: string, priority: number): JobRecord {
    this.requireJob(jobId);
    this.store.updateJob(jobId, { priority });
    this.scheduler.setPriority(jobId, priority);
    this.emit('job:updated', jobId);
    return this.requireJob(jobId);
  }

  private deactivate(jobId: string, reason: string): void {
    const job = this.active.get(jobId);
    if (job) {
      job.fairness.finish(Date.now());
      const report = this.fairnessOf(jobId, true);
      if (report)
        this.store.addEvent(jobId, 'fairness', report as unknown as Record<string, unknown>, Date.now());
    }
    this.active.delete(jobId);
    this.failures.forgetJob(jobId);
    for (const [workerId, itemIds] of this.scheduler.removeJob(jobId)) {
      this.sockets.get(workerId)?.emit('items:cancel', { itemIds, reason });
    }
  }

  /** The job's fairness figures: live while it runs, the stored final ones after. */
  fairnessOf(jobId: string, final = false): FairnessReport | undefined {
    const job = this.active.get(jobId);
    if (!job) {
      const saved = this.store.listEvents(jobId, { type: 'fairness', limit: 1 })[0];
      return saved ? (saved.data as unknown as FairnessReport) : undefined;
    }
    const record = this.store.getJob(jobId);
    return job.fairness.report({
      items: record?.itemCount ?? 0,
      final,
      now: Date.now(),
      lookup: (workerId) => {
        const w = this.workers.get(workerId);
        return {
          name: w?.name ?? workerId,
          backend: w?.backend ?? '?',
          device: w?.capabilities.gpu?.name ?? w?.capabilities.hostname ?? w?.backend ?? '?',
          benchmark: this.scheduler.benchmark(workerId, job.model.sha256) ?? null,
          weight: this.scheduler.weight(workerId, job.model.sha256) ?? null,
        };
      },
    });
  }

  requireJob(jobId: string): JobRecord {
    const job = this.store.getJob(jobId);
    if (!job) throw new HubError('unknown_job', `no job "${clean(jobId, 80)}"`, 404);
    return job;
  }

  /**
   * Completes a job whose every item is done or failed. With `quick` (after each commit of results,
   * thousands of times a second), a job that still has items queued or held in the scheduler is
   * taken to be unfinished without reading its row; the tick checks every active job's row once a
   * second all the same, so a job the scheduler's view misled about still completes.
   */
  private checkComplete(jobId: string, quick = false): void {
    if (quick && this.scheduler.queued(jobId) + this.scheduler.inFlight(jobId) > 0) return;
    if (this.streaming.has(jobId)) return;
    const job = this.store.getJob(jobId);
    if (!job || (job.state !== 'running' && job.state !== 'queued')) return;
    if (job.doneCount + job.failedCount < job.itemCount) return;
    this.store.updateJob(jobId, { state: 'completed', finishedAt: Date.now() });
    this.sendFigures(); // the workers' last word on their part in it
    this.deactivate(jobId, 'job completed');
    this.log.info({ jobId, done: job.doneCount, failed: job.failedCount }, 'job completed');
    this.emit('job:updated', jobId);
    this.emit('job:completed', jobId);
  }

  // ---------------------------------------------------------------- workers

  /** A worker registered (new, or the same worker again after a reconnect). */
  registerWorker(socket: WorkerSocket, workerId: string, req: RegisterRequest, address: string): LiveWorker {
    const now = Date.now();
    const prev = this.workers.get(workerId);
    const oldSocket = this.sockets.get(workerId);
    if (oldSocket && oldSocket.id !== socket.id) {
      // The same worker on a new connection: the old one is dead to us.
      this.workerGone(workerId, 'replaced by a new connection');
      oldSocket.disconnect(true);
    }
    const w: LiveWorker = {
      ...workerFacts(req),
      id: workerId,
      name: req.name,
      kind: req.kind,
      backend: req.backend,
      concurrency: req.concurrency,
      capabilities: req.capabilities,
      state: 'online',
      socketId: socket.id,
      address,
      connectedAt: now,
      lastSeen: now,
      load: null,
      queued: 0,
      running: 0,
      itemsDone: prev?.itemsDone ?? 0,
      itemsFailed: prev?.itemsFailed ?? 0,
      reconnects: prev ? prev.reconnects + 1 : 0,
    };
    this.workers.set(workerId, w);
    this.offline.delete(workerId);
    this.sockets.set(workerId, socket);
    this.shards.registered(workerId, req);
    this.scheduler.addWorker({
      id: workerId,
      name: req.name,
      concurrency: req.concurrency,
      device: req.capabilities.gpu?.name,
      ...workerFacts(req),
    });
    if (this.trust.isQuarantined(workerId)) {
      w.state = 'quarantined';
      this.scheduler.setReady(workerId, false);
    }
    for (const job of this.active.values()) {
      if (this.scheduler.eligible(workerId, job.record.id)) job.fairness.present(workerId, now);
    }
    this.log.info(
      { workerId, kind: req.kind, backend: req.backend, name: clean(req.name), reconnect: !!prev },
      prev ? 'worker reconnected' : 'worker registered',
    );
    this.emit('worker:updated', workerId);
    this.pump(workerId);
    return w;
  }

  /** Marks a worker seen (any message counts) and records heartbeat figures. */
  touch(
    workerId: string,
    hb?: { load: LiveWorker['load']; queued: number; running: number; paused: boolean },
  ): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    w.lastSeen = Date.now();
    if (hb) {
      w.load = hb.load;
      w.queued = hb.queued;
      w.running = hb.running;
      const state =
        w.state === 'quarantined' || w.state === 'draining'
          ? w.state
          : hb.paused
            ? 'paused'
            : w.state === 'paused'
              ? 'online'
              : w.state;
      if (state !== w.state) {
        w.state = state;
        this.scheduler.setReady(workerId, state === 'online');
        this.emit('worker:updated', workerId);
      }
    }
  }

  /** A worker's connection ended or it stopped answering: its unfinished items go back at once. */
  workerGone(workerId: string, reason: string, socketId?: string): void {
    const w = this.workers.get(workerId);
    if (!w || (socketId && w.socketId !== socketId)) return; // a stale socket of a reconnected worker
    const at = Date.now();
    w.state = 'offline';
    w.socketId = null;
    this.sockets.delete(workerId);
    this.shards.gone(workerId);
    this.data.gone(workerId);
    const back = this.scheduler.removeWorker(workerId);
    for (const job of this.active.values()) job.fairness.gone(workerId, at);
    let n = 0;
    for (const [jobId, items] of back) {
      n += items.length;
      this.active.get(jobId)?.fairness.requeue(workerId, items.length, reason, at);
      this.store.addEvent(jobId, 'requeue', { workerId, items: items.length, reason }, at);
      this.emit('items:requeued', { workerId, jobId, items: items.length, reason, at });
    }
    this.store.addWorkerItems(workerId, 0, w.lastSeen);
    this.offline.delete(workerId);
    this.offline.add(workerId);
    for (const id of this.offline) {
      if (this.offline.size <= this.opts.maxOfflineWorkers) break;
      this.offline.delete(id);
      if (this.workers.get(id)?.state === 'offline') this.workers.delete(id);
    }
    // A worker that left on its own with nothing unfinished (a drained node) is no cause for alarm.
    const clean = n === 0 && reason.endsWith('client namespace disconnect');
    this.log[clean ? 'info' : 'warn']({ workerId, reason, requeued: n }, 'worker offline');
    this.emit('worker:updated', workerId);
    this.pumpAllSoon();
  }

  /**
   * Plans every waiting worker soon: at most once per PUMP_ALL_MS, however many events ask. Idle workers
   * have no messages of their own to be planned on: this is when they steal or copy a straggler's
   * item. Planning every worker on each event instead is O(workers) per results message, and
   * O(workers²) when N workers drop at once.
   */
  private pumpAllSoon(): void {
    if (this.pumpQueued || this.closed) return;
    this.pumpQueued = true;
    const wait = Math.max(0, this.lastPumpAll + PUMP_ALL_MS - Date.now());
    const run = () => {
      this.pumpQueued = false;
      this.lastPumpAll = Date.now();
      // The others are topped up: planning them would change nothing (the tick plans everyone).
      // At a job's end thousands may wait: a bounded, rotating share of them each time.
      const hungry = this.scheduler.hungryWorkers();
      if (hungry.length <= PUMP_ALL_MAX) return this.pump(hungry);
      const from = this.hungryCursor % hungry.length;
      this.hungryCursor = from + PUMP_ALL_MAX;
      const share = hungry.slice(from, from + PUMP_ALL_MAX);
      if (share.length < PUMP_ALL_MAX) share.push(...hungry.slice(0, PUMP_ALL_MAX - share.length));
      this.pump(share);
    };
    if (wait === 0) setImmediate(run);
    else setTimeout(run, wait).unref();
  }

  /** Pause, resume or drain a worker (operator action). */
  controlWorker(workerId: string, action: 'pause' | 'resume' | 'drain' | 'evict'): LiveWorker {
    const w = this.workers.get(workerId);
    const socket = this.sockets.get(workerId);
    if (!w || !socket) throw new HubError('unknown_worker', `no online worker "${clean(workerId, 80)}"`, 404);
    if (action === 'evict') {
      this.workerGone(workerId, 'evicted by operator');
      socket.disconnect(true);
      return w;
    }
    socket.emit('worker:control', { action });
    w.state = action === 'pause' ? 'paused' : action === 'drain' ? 'draining' : 'online';
    this.scheduler.setReady(workerId, w.state === 'online');
    this.emit('worker:updated', workerId);
    if (w.state === 'online') this.pump(workerId);
    return w;
  }

  /** Items a worker handed back unstarted. */
  releaseItems(workerId: string, itemIds: number[]): number {
    const strays = itemIds.filter((id) => !this.scheduler.holdersOf(id).includes(workerId)).length;
    if (strays) this.stray(workerId, strays, 'releases');
    const back = this.scheduler.release(workerId, itemIds);
    let n = 0;
    for (const [jobId, items] of back) {
      n += items.length;
      this.store.addEvent(jobId, 'release', { workerId, items: items.length }, Date.now());
    }
    this.pump();
    return n;
  }

  // ---------------------------------------------------------------- results

  /**
   * Takes a batch of results. Each is checked against the model (hash, names, dtypes, shapes,
   * finite values), then judged (canary, replicas and quorum, or accepted from a proven worker) at
   * once. The accepted ones are stored exactly once per item, in one transaction with those of every
   * other results message that arrives in the same turn of the event loop (group commit,
   * `commitResults`). The reply, and the worker's refill, come once that has committed.
   */
  acceptResults(workerId: string, results: ItemResult[]): Promise<ItemsDoneReply> {
    return new Promise((resolve, reject) => {
      const msg = this.judgeResults(workerId, results, resolve, reject);
      this.uncommitted.push(msg);
      this.uncommittedRows += msg.rows.length;
      if (
        msg.rows.length >= COMMIT_AT_ONCE_ROWS ||
        this.uncommitted.length >= COMMIT_MAX_MESSAGES ||
        this.uncommittedRows >= COMMIT_MAX_ROWS
      ) {
        this.commitResults();
      } else if (!this.commitQueued) {
        this.commitQueued = true;
        setImmediate(() => {
          this.commitQueued = false;
          this.commitResults();
        });
      }
    });
  }

  /** Checks and judges one results message; what it decided waits for `commitResults`. */
  private judgeResults(
    workerId: string,
    results: ItemResult[],
    resolve: (reply: ItemsDoneReply) => void,
    reject: (err: unknown) => void,
  ): JudgedResults {
    const now = Date.now();
    const w = this.workers.get(workerId);
    const m: JudgedResults = {
      workerId,
      results,
      rows: [],
      how: new Map(),
      refused: [],
      invalid: [],
      accepted: [],
      alreadyDone: [],
      notMine: [],
      replicated: [],
      worked: new Map(),
      resolve,
      reject,
    };
    // The verifier's callbacks, made once per message and pointed at each result's job in turn: made
    // per result, they cost the hub 3.6% of its CPU in the dispatch bench, most of it in the
    // `Object.defineProperty` with which tsx names every function it makes. `judge` keeps neither.
    let judgedJob = '';
    const canAsk = (avoid: string[], soon?: boolean) => this.scheduler.canAsk(judgedJob, avoid, soon);
    const otherBackends = (backend: string) =>
      [...this.workers.values()]
        .filter((x) => x.state !== 'offline' && x.backend !== backend)
        .map((x) => x.id);
    for (const r of results) {
      if (this.trust.isQuarantined(workerId)) {
        m.refused.push({ itemId: r.itemId, reason: 'this worker is quarantined' });
        continue;
      }
      const job = this.active.get(r.jobId);
      if (!job || !this.scheduler.holds(workerId, r.itemId, r.jobId)) {
        // Not (or no longer) this worker's item, or not of the job it names: a late result after a
        // requeue or the job's end, or a forgery. It changes nothing for anyone (`stray`).
        m.notMine.push(r.itemId);
        continue;
      }
      if (r.modelSha256 !== job.model.sha256) {
        const reason = `computed with model ${r.modelSha256.slice(0, 12)}…, job runs ${job.model.sha256.slice(0, 12)}…`;
        m.refused.push({ itemId: r.itemId, reason });
        m.invalid.push({
          itemId: r.itemId,
          jobId: r.jobId,
          category: 'invalid_output',
          message: 'wrong model hash',
        });
        continue;
      }
      const problem = outputProblem(job.model, r.outputs);
      if (problem) {
        m.refused.push({ itemId: r.itemId, reason: problem });
        m.invalid.push({ itemId: r.itemId, jobId: r.jobId, category: 'invalid_output', message: problem });
        continue;
      }
      m.worked.set(r.jobId, (m.worked.get(r.jobId) ?? 0) + 1);
      const packed = r.pack ?? packTensors(r.outputs);
      judgedJob = r.jobId;
      const v = this.verifier.judge({
        workerId,
        kind: w?.kind ?? 'browser',
        backend: w?.backend ?? 'cpu',
        jobId: r.jobId,
        itemId: r.itemId,
        redundancy: job.record.redundancy,
        model: job.model,
        outputs: r.outputs,
        packed,
        ms: r.ms,
        canAsk,
        otherBackends,
      });
      switch (v.kind) {
        case 'accept':
          m.rows.push({
            itemId: r.itemId,
            jobId: r.jobId,
            workerId: v.workerId,
            modelSha256: r.modelSha256,
            ms: r.ms,
            outputs: v.outputs,
            at: now,
          });
          if (v.verified) m.how.set(r.itemId, v.verified);
          for (const id of v.confirm) this.trust.confirmed(id);
          for (const id of v.refute) this.strike(id, r.jobId, r.itemId, 'outvoted by a quorum', false);
          break;
        case 'replicate':
          this.verificationCost.replicas++;
          m.replicated.push(r.itemId);
          this.scheduler.finished(workerId, [r.itemId]);
          this.scheduler.requeue(r.jobId, r.itemId, v.avoid);
          break;
        case 'refuse':
          m.refused.push({ itemId: r.itemId, reason: v.reason });
          this.scheduler.requeue(r.jobId, r.itemId, [workerId]);
          this.strike(workerId, r.jobId, r.itemId, v.reason, true);
          break;
        case 'reference':
        case 'fail':
          // The workers cannot agree, or none can confirm it: the hub's reference backend decides (`byReference`).
          m.replicated.push(r.itemId);
          this.scheduler.finished(workerId, [r.itemId]);
          this.store.addEvent(r.jobId, 'disagreement', { itemId: r.itemId, reason: v.reason }, now);
          this.byReference(r.jobId, r.itemId, v.reason, v.replicas);
          break;
      }
    }
    return m;
  }

  /**
   * Stores the results of every message judged since the last commit in one transaction, then
   * frees their items, refills their workers and replies. One commit per message cost the hub
   * about a third of its CPU with 2,000 workers (a transaction for the results and another for the
   * worker's counter, each writing the same job and index pages again): the first results of a
   * job, all arriving within half a second, queued behind each other for hundreds of milliseconds.
   * If the transaction fails, every message in it gets the error and its items stay held: the
   * workers send them again.
   */
  private commitResults(): void {
    const group = this.uncommitted;
    if (group.length === 0) return;
    this.uncommitted = [];
    this.uncommittedRows = 0;
    const now = Date.now();
    // A worker quarantined while this group was judged (a wrong canary later in the same message,
    // or in another message of the group) has had its unconfirmed results taken back already
    // (`revertUnverified`): its unconfirmed results here must not be stored after that. Its items
    // went back to the queue with the quarantine.
    for (const m of group) {
      if (m.rows.length === 0 || !this.trust.isQuarantined(m.workerId)) continue;
      const keep = m.rows.filter((r) => m.how.has(r.itemId) || !this.trust.isQuarantined(r.workerId));
      for (const r of m.rows) if (!keep.includes(r)) m.notMine.push(r.itemId);
      m.rows = keep;
    }
    try {
      this.store.transaction(() => {
        const rows = group.flatMap((m) => m.rows);
        const result = rows.length ? this.store.recordResults(rows) : { accepted: [], dropped: [] };
        // Each message's share: a row is accepted if its item flipped, and only the first row of an
        // item does (the store keeps the first result of an item and drops later ones, in row order).
        const flipped = new Set(result.accepted);
        for (const m of group) {
          for (const r of m.rows) (flipped.delete(r.itemId) ? m.accepted : m.alreadyDone).push(r.itemId);
          if (m.accepted.length) this.store.addWorkerItems(m.workerId, m.accepted.length, now);
        }
      });
    } catch (err) {
      for (const m of group) m.reject(err); // each caller reports it (the gateway logs it)
      return;
    }
    // Stored: from here on a failure must still answer every message (the error, so it is sent again
    // and dropped as done), never leave one waiting. Each worker's refill and ack leave in one write.
    this.writes.around(() => this.afterCommit(group, now));
  }

  /** Frees, refills and answers the messages of a stored commit. */
  private afterCommit(group: JudgedResults[], now: number): void {
    this.countAccepted(group);
    try {
      const verified: { itemId: number; how: string }[] = [];
      for (const m of group) {
        if (m.how.size === 0) continue;
        for (const id of m.accepted) {
          const how = m.how.get(id);
          if (how) verified.push({ itemId: id, how });
        }
      }
      if (verified.length) this.trustStore.markVerifiedEach(verified);
      const activeJobs = this.active.size;
      const jobs = new Set<string>();
      const refill = new Set<string>();
      let others = false;
      for (const m of group) {
        // An item now done may still be held elsewhere (a speculative copy, or requeued after a
        // disconnect): cancel it there; that run is wasted work.
        const { cancel } = this.scheduler.finished(m.workerId, [...m.accepted, ...m.alreadyDone]);
        if (m.notMine.length) this.stray(m.workerId, m.notMine.length, 'results');
        const jobOfItem = new Map(m.results.map((r) => [r.itemId, r.jobId]));
        for (const itemIds of cancel.values()) {
          for (const id of itemIds) this.active.get(jobOfItem.get(id) ?? '')?.fairness.waste(1);
        }
        for (const id of m.alreadyDone) this.active.get(jobOfItem.get(id) ?? '')?.fairness.waste(1);
        for (const [jobId, k] of m.worked) {
          const job = this.active.get(jobId);
          job?.fairness.done(m.workerId, k, now);
          if (job) this.failures.ran(job.model.sha256, m.workerId, k, 0);
        }
        if (this.failures.size > 0) for (const id of m.accepted) this.failures.forget(id);
        for (const [other, itemIds] of cancel) {
          this.sockets.get(other)?.emit('items:cancel', { itemIds, reason: 'completed by another worker' });
        }
        const w = this.workers.get(m.workerId);
        if (w) {
          w.itemsDone += m.accepted.length + m.replicated.length;
          w.lastSeen = now;
        }
        if (m.invalid.length) this.recordFailures(m.workerId, m.invalid);
        for (const r of m.results) jobs.add(r.jobId);
        // Only this worker's room changed, unless items went back to a queue (replicas, refusals).
        if (m.replicated.length > 0 || m.refused.length > 0) others = true;
        refill.add(m.workerId);
      }
      if (this.listenerCount('items:committed') > 0) this.emitCommitted(group);
      for (const jobId of jobs) {
        this.emit('job:updated', jobId);
        this.checkComplete(jobId, true);
      }
      // Planning every worker on every results message is O(workers) per message: only these
      // workers are, unless items went back to a queue or a job ended.
      if (others || this.active.size !== activeJobs) this.pump();
      else {
        this.pump([...refill]);
        this.pumpAllSoon();
      }
      for (const m of group) {
        m.resolve({
          accepted: [...m.accepted, ...m.replicated],
          dropped: [...m.alreadyDone, ...m.notMine],
          refused: m.refused,
        });
      }
    } catch (err) {
      this.log.error({ err, messages: group.length }, 'handling stored results failed');
      const stored = new StoredResultsError(err);
      for (const m of group) m.reject(stored); // a message answered already keeps its answer
    }
  }

  /**
   * Probation: a worker not yet proven by checks holds only a few fresh items at a time, counting
   * its results still waiting for a second opinion, so it cannot flood the grid with work that
   * others must repeat. Proven workers are not limited.
   */
  private freshLimit(workerId: string): number {
    const w = this.workers.get(workerId);
    if (!w || this.trust.isProven(workerId, w.kind)) return Infinity;
    // The claimed concurrency is the worker's own word: a tab claiming 256 runners must not get
    // hundreds of items to fail or lie on before its first check.
    const quota = Math.max(2, 2 * Math.min(w.concurrency, PROBATION_RUNNERS));
    return Math.max(0, quota - this.verifier.pendingChecks(workerId) - this.scheduler.heldCount(workerId));
  }

  /**
   * A worker named items it does not hold (results, failures or releases): nothing changed, but past
   * an honest worker's share (see STRAY_PER_SEC) it costs a strike.
   */
  private stray(workerId: string, n: number, what: string): void {
    this.log.debug({ workerId, items: n, what }, 'message for items not held');
    if (this.strays.take(workerId, n) || !this.strayStrikes.take(workerId)) return;
    const reason = `${what} for items it does not hold, past its allowance`;
    const { quarantined, record } = this.trust.refuted(workerId, reason, false);
    this.log.warn({ workerId, what, strikes: record.strikes }, 'stray messages: strike');
    if (quarantined) this.quarantine(workerId, reason);
  }

  /**
   * A job the scheduler has nothing queued or held of, whose row is not complete, would sit
   * `running` for ever: its pending items go back to the scheduler, and the repair is logged and
   * recorded with the job. This should never find anything; it is the backstop of every path that
   * frees items (see `stray`).
   */
  private repairStalls(now: number): void {
    if (now - this.lastStallCheck < STALL_CHECK_MS || this.uncommitted.length > 0) return;
    this.lastStallCheck = now;
    for (const jobId of this.active.keys()) {
      if (this.scheduler.queued(jobId) + this.scheduler.inFlight(jobId) > 0) continue;
      if (this.referencing.has(jobId)) continue;
      const row = this.store.getJob(jobId);
      if (!row || row.state !== 'running' || row.doneCount + row.failedCount >= row.itemCount) continue;
      const pending = IdRuns.of(this.store.pendingItemRuns(jobId));
      const requeued = this.scheduler.restore(jobId, pending);
      const reason = 'running with nothing queued and nothing in flight';
      const data = { reason, requeued, done: row.doneCount, failed: row.failedCount, items: row.itemCount };
      this.store.addEvent(jobId, 'repaired', data, now);
      if (requeued > 0) this.log.warn({ jobId, ...data }, 'stalled job repaired: pending items queued again');
      else this.log.error({ jobId, ...data }, 'stalled job: no pending items, yet its counts are short');
    }
  }

  /** A failed check against a worker; at the threshold it is quarantined. */
  private strike(workerId: string, jobId: string, itemId: number, reason: string, severe: boolean): void {
    const { quarantined, record } = this.trust.refuted(workerId, reason, severe);
    this.store.addEvent(
      jobId,
      'check_failed',
      { workerId, itemId, reason, strikes: record.strikes },
      Date.now(),
    );
    this.log.warn(
      { workerId, jobId, itemId, reason: clean(reason), strikes: record.strikes },
      'result check failed',
    );
    if (quarantined) this.quarantine(workerId, reason);
    else this.doubt(workerId);
  }

  /**
   * A worker just refuted is on probation again: the items it holds unstarted go back to the queue
   * (every result of its would need a confirmer now; a proven node can hold seconds of work).
   */
  private doubt(workerId: string): void {
    const held = this.scheduler.heldBy(workerId);
    if (held.length === 0) return;
    this.scheduler.release(workerId, held);
    this.sockets.get(workerId)?.emit('items:cancel', { itemIds: held, reason: 'worker on probation again' });
    this.pumpAllSoon();
  }

  /**
   * Quarantines a worker: it gets nothing more, what it holds goes elsewhere, and the results it
   * gave that no check confirmed are taken back and computed again.
   */
  quarantine(workerId: string, reason: string): void {
    const now = Date.now();
    const w = this.workers.get(workerId);
    if (w) w.state = 'quarantined';
    this.scheduler.setReady(workerId, false);
    const held = this.scheduler.heldBy(workerId);
    if (held.length) {
      this.scheduler.release(workerId, held);
      this.sockets.get(workerId)?.emit('items:cancel', { itemIds: held, reason: 'worker quarantined' });
    }
    const reverted = this.trustStore.revertUnverified(workerId);
    let n = 0;
    for (const [jobId, ids] of reverted) {
      n += ids.length;
      const active = this.active.get(jobId);
      if (active) this.scheduler.requeueItems(jobId, ids, [workerId]);
      else {
        const job = this.store.getJob(jobId);
        const model = job && this.modelOf(job);
        if (job && model && job.state === 'running') this.activate(job, model);
      }
      this.store.addEvent(jobId, 'quarantine', { workerId, reason, recomputed: ids.length }, now);
      this.emit('job:updated', jobId);
    }
    this.verificationCost.recomputed += n;
    this.log.warn({ workerId, reason: clean(reason), recomputed: n }, 'worker quarantined');
    this.emit('worker:updated', workerId);
    this.pump();
  }

  /**
   * Probation results that waited CONFIRM_WAIT_MS for a confirmer no worker has taken up: the hub's
   * reference backend confirms them (or not). One that a worker holds now is left to it.
   */
  private confirmStale(): void {
    if (this.closed) return;
    for (const { itemId, jobId } of this.verifier.stale(Date.now(), CONFIRM_WAIT_MS)) {
      if (!this.active.has(jobId)) {
        this.verifier.take(itemId); // the job ended: nothing to confirm
        continue;
      }
      if (!this.scheduler.withdraw(jobId, itemId)) continue;
      this.byReference(jobId, itemId, 'no worker confirmed it in time', this.verifier.take(itemId));
    }
  }

  /**
   * Runs an item on the hub's reference backend, whose answer settles it: stored as the item's
   * result (verified `reference`), and each replica given judged against it; if the reference fails
   * too, the item ends failed on evidence that does not come from workers alone. For items failed
   * by unproven workers only, replicas that cannot agree, and probation results no worker can
   * confirm soon.
   */
  private byReference(jobId: string, itemId: number, why: string, replicas: readonly Replica[] = []): void {
    const job = this.active.get(jobId);
    const path = job && this.models.filePath(job.model.sha256);
    const input = path ? this.store.itemInputs([itemId]).get(itemId) : undefined;
    if (!job || !path || !input) return; // the job ended, or the stall check finds the item again
    this.referencing.set(jobId, (this.referencing.get(jobId) ?? 0) + 1);
    const started = Date.now();
    this.log.info({ jobId, itemId, why: clean(why) }, 'item goes to the reference backend');
    this.reference
      .run(job.model, path, input)
      .then(
        (outputs) => this.referenceAnswer(jobId, itemId, job.model, outputs, Date.now() - started, replicas),
        (err: unknown) => this.referenceFailed(jobId, itemId, err),
      )
      .catch((err: unknown) => this.log.error({ err, jobId, itemId }, 'handling a reference run failed'))
      .finally(() => {
        const n = (this.referencing.get(jobId) ?? 1) - 1;
        if (n > 0) this.referencing.set(jobId, n);
        else this.referencing.delete(jobId);
        this.checkComplete(jobId);
      });
  }

  private referenceAnswer(
    jobId: string,
    itemId: number,
    model: ModelInfo,
    outputs: Uint8Array,
    ms: number,
    replicas: readonly Replica[],
  ): void {
    if (this.closed || !this.active.has(jobId)) return;
    const now = Date.now();
    const { accepted } = this.store.recordResults([
      { itemId, jobId, workerId: REFERENCE_WORKER, modelSha256: model.sha256, ms, outputs, at: now },
    ]);
    if (accepted.length) this.trustStore.markVerified(accepted, 'reference');
    // A pipeline feeds its next stage from committed results, whoever computed them.
    if (accepted.length && this.listenerCount('items:committed') > 0)
      this.emit('items:committed', jobId, accepted);
    this.failures.forget(itemId);
    this.verificationCost.reference++;
    const answer = unpackTensors(outputs);
    for (const r of replicas) {
      const diff = outputsDiffer(unpackTensors(r.outputs), answer, model.tolerance);
      if (diff) this.strike(r.workerId, jobId, itemId, `differs from the reference backend (${diff})`, false);
      else this.trust.confirmed(r.workerId);
    }
    this.emit('job:updated', jobId);
  }

  private referenceFailed(jobId: string, itemId: number, err: unknown): void {
    if (this.closed || !this.active.has(jobId)) return;
    const message = clean(`the hub's reference backend failed it too: ${(err as Error).message}`, 500);
    this.store.recordFailures([
      { itemId, jobId, workerId: REFERENCE_WORKER, category: 'other', message, at: Date.now(), final: true },
    ]);
    this.failures.forget(itemId);
    this.log.warn({ jobId, itemId, message }, 'item failed on the reference backend');
    this.emit('job:updated', jobId);
  }

  /** Records failed runs: each item is retried elsewhere or, out of options, ends failed. */
  recordFailures(workerId: string, failures: ItemFailure[]): { retried: number; failed: number } {
    const now = Date.now();
    const rows: NewFailure[] = [];
    let retried = 0;
    let failed = 0;
    let strays = 0;
    const kind = this.workers.get(workerId)?.kind ?? 'browser';
    /** Failures counted per job (each job's model's failure rates). */
    const perModel = new Map<string, number>();
    for (const f of failures) {
      // Only a holder's failure counts, a speculative copy's included (its hold is released and the
      // item goes on with the other holder). Anything else changes nothing (`stray`).
      if (!this.active.has(f.jobId) || !this.scheduler.holds(workerId, f.itemId, f.jobId)) {
        strays++;
        continue;
      }
      // A lost device is recreated by the worker: the same worker may try again (within maxAttempts).
      let outcome: 'retry' | 'final' | 'referred' = this.scheduler.failed(
        workerId,
        f.jobId,
        f.itemId,
        f.category === 'device_lost',
      );
      if (this.verifier.isWaiting(f.itemId) && this.scheduler.holdersOf(f.itemId).length === 0) {
        // A confirmer failed it: the reference backend confirms it, rather than another round trip.
        this.scheduler.withdraw(f.jobId, f.itemId);
        this.byReference(f.jobId, f.itemId, 'its confirmer failed it', this.verifier.take(f.itemId));
        outcome = 'referred';
      }
      const proven = this.trust.isProven(workerId, kind);
      const evidence = this.failures.failed(f.jobId, f.itemId, workerId, proven);
      if (outcome === 'final' && !evidence.enough) {
        // Out of attempts, but on the word of unproven workers alone: another worker that has not
        // failed it runs it, else the hub's reference backend decides.
        outcome = 'retry';
        if (this.scheduler.canAsk(f.jobId, evidence.workers, true))
          this.scheduler.requeue(f.jobId, f.itemId, evidence.workers);
        else this.byReference(f.jobId, f.itemId, 'failed by unproven workers only');
      }
      if (outcome === 'final') {
        failed++;
        this.failures.forget(f.itemId);
      } else retried++;
      rows.push({ ...f, workerId, message: clean(f.message, 500), at: now, final: outcome === 'final' });
      perModel.set(f.jobId, (perModel.get(f.jobId) ?? 0) + 1);
    }
    if (rows.length) this.store.recordFailures(rows);
    if (strays) this.stray(workerId, strays, 'failures');
    for (const [jobId, n] of perModel) {
      const sha = this.active.get(jobId)?.model.sha256;
      if (!sha) continue;
      this.failures.ran(sha, workerId, n, n);
      if (!this.trust.isQuarantined(workerId) && this.failures.outlier(sha, workerId)) {
        const reason = 'fails far more items of this model than its peers';
        this.strike(workerId, jobId, rows[0]?.itemId ?? 0, reason, true);
      }
    }
    const w = this.workers.get(workerId);
    if (w) w.itemsFailed += rows.length;
    if (rows.length)
      this.log.warn({ workerId, retried, failed, category: rows[0]?.category }, 'items failed');
    for (const jobId of new Set(rows.map((r) => r.jobId))) {
      this.emit('job:updated', jobId);
      this.checkComplete(jobId);
    }
    this.pump();
    return { retried, failed };
  }

  // ---------------------------------------------------------------- dispatch

  /** Asks the scheduler what to send now (to these workers, or all) and sends it. */
  pump(workers?: string | readonly string[]): void {
    if (this.closed) return;
    if (workers === undefined && this.workers.size > PUMP_CHUNK) return this.pumpInChunks();
    const { assign, benchmark, steal } = this.scheduler.plan(workers);
    for (const b of benchmark) void this.benchmark(b.workerId, b.modelSha256);
    this.send(assign);
    for (const st of steal) void this.steal(st);
  }

  /**
   * Plans every worker, PUMP_CHUNK at a time with the event loop free in between: a job's start
   * on 2,000 workers is 2,000 shards, one stretch of ~240 ms when sent at once, during which no
   * result, heartbeat or refill is handled. Asked again while a pass runs, one more pass follows it.
   */
  private pumpInChunks(): void {
    if (this.chunkedPass) {
      this.chunkedPass.again = true;
      return;
    }
    const pass = { ids: [...this.workers.keys()], at: 0, again: false };
    this.chunkedPass = pass;
    const step = () => {
      if (this.closed) return;
      this.pump(pass.ids.slice(pass.at, pass.at + PUMP_CHUNK));
      pass.at += PUMP_CHUNK;
      if (pass.at < pass.ids.length) return void setImmediate(step);
      this.chunkedPass = undefined;
      if (pass.again) this.pumpInChunks();
    };
    step();
  }

  /** Carries out a steal: revoke from the victim, hand what it gave up to the thief. */
  private async steal(st: StealPlan): Promise<void> {
    const victim = this.sockets.get(st.victim);
    let revoked: number[] = [];
    if (victim) {
      // No answer in time: the victim keeps them; if it is gone, its items are requeued anyway.
      const res = await ask(5000, RevokeReplySchema, (ack) =>
        victim.emit('shard:revoke', { itemIds: st.itemIds }, ack),
      );
      if ('data' in res) revoked = res.data.revoked;
    }
    const a = this.scheduler.stealDone(st, revoked);
    const now = Date.now();
    if (a) {
      const data = {
        thief: st.thief,
        victim: st.victim,
        items: a.itemIds.length,
        asked: st.itemIds.length,
        reason: st.reason,
      };
      this.store.addEvent(st.jobId, 'steal', data, now);
      this.active.get(st.jobId)?.fairness.steal(st.thief, st.victim, a.itemIds.length, st.reason, now);
      this.log.debug({ jobId: st.jobId, ...data }, 'steal');
      this.send([a]);
    }
    // The thief's and the victim's holdings changed now; the others' turn comes soon.
    this.pump(st.thief);
    this.pump(st.victim);
    this.pumpAllSoon();
  }

  /**
   * Sends assignments: every message is planned first (`ShardSender.plan`) and all their assignment
   * rows are recorded in one transaction (a job's start assigns every worker at once; one commit
   * per worker made that burst thousands of commits long), then they go out in order.
   */
  private send(assignments: Assignment[]): void {
    const rows: AssignmentRow[] = [];
    for (const a of assignments) this.prepare(a, rows);
    if (rows.length > 0) this.store.recordAssignments(rows);
    this.shards.flush();
  }

  /** Does an assignment's bookkeeping (job started, speculation) and plans its messages. */
  private prepare(a: Assignment, rows: AssignmentRow[]): void {
    const socket = this.sockets.get(a.workerId);
    const job = this.active.get(a.jobId);
    if (!socket || !job) {
      this.scheduler.release(a.workerId, a.itemIds);
      return;
    }
    const now = Date.now();
    job.fairness.start(now);
    if (a.speculative) {
      const data = {
        worker: a.workerId,
        from: a.speculative.fromWorkerId,
        items: a.itemIds,
        reason: a.speculative.reason,
      };
      this.store.addEvent(a.jobId, 'speculate', data, now);
      job.fairness.speculate(
        a.workerId,
        a.speculative.fromWorkerId,
        a.itemIds.length,
        a.speculative.reason,
        now,
      );
    }
    if (job.record.state === 'queued') {
      this.store.updateJob(a.jobId, { state: 'running', startedAt: now });
      job.record = this.requireJob(a.jobId);
      this.emit('job:updated', a.jobId);
    }
    this.shards.plan(a.workerId, socket, a.jobId, a.itemIds, now, rows);
  }

  private async benchmark(workerId: string, sha: string): Promise<void> {
    const socket = this.sockets.get(workerId);
    const model = this.models.bySha(sha);
    if (!socket || !model) return;
    const started = Date.now();
    const res = await ask(this.opts.benchmarkTimeoutMs, BenchmarkReplySchema, (ack) =>
      socket.emit('benchmark:run', { model }, ack),
    );
    if (this.sockets.get(workerId) !== socket) return; // reconnected meanwhile: the new socket benchmarks
    if ('error' in res || !(res.data.itemsPerSec > 0)) {
      const why = 'error' in res ? clean(res.error.message) : 'non-positive rate';
      this.scheduler.setUnusable(workerId, sha);
      this.log.warn(
        { workerId, model: model.name, why },
        'benchmark failed; worker skips this model for a while, then is benchmarked again',
      );
    } else {
      this.scheduler.setBenchmark(workerId, sha, res.data.itemsPerSec);
      const w = this.workers.get(workerId);
      this.log.info(
        {
          workerId,
          device: w?.capabilities.gpu?.name ?? w?.backend,
          model: model.name,
          itemsPerSec: Number(res.data.itemsPerSec.toFixed(2)),
          ms: Date.now() - started,
        },
        'benchmarked',
      );
    }
    this.emit('worker:updated', workerId);
    // This worker's options changed now; a plan of every worker per reply was O(workers²) when
    // thousands of workers benchmark at once: the others' turn comes soon, once.
    this.pump(workerId);
    this.pumpAllSoon();
  }

  // ---------------------------------------------------------------- views for the pages (issue 19)

  /**
   * Credits each stored result of a browser worker to it (see `acceptedBy`; native nodes have no
   * page to show it). `m.accepted` lists the accepted rows' items in row order, so one pass over the
   * rows finds them, with no set per message.
   */
  private countAccepted(group: JudgedResults[]): void {
    for (const m of group) {
      if (m.accepted.length === 0) continue;
      const senderIsBrowser = this.workers.get(m.workerId)?.kind === 'browser';
      let k = 0;
      for (const r of m.rows) {
        if (r.itemId !== m.accepted[k]) continue;
        k++;
        // A quorum's accepted result may be another worker's than the sender's.
        const browser =
          r.workerId === m.workerId ? senderIsBrowser : this.workers.get(r.workerId)?.kind === 'browser';
        if (!browser) continue;
        let byWorker = this.acceptedBy.get(r.jobId);
        if (!byWorker) this.acceptedBy.set(r.jobId, (byWorker = new Map()));
        byWorker.set(r.workerId, (byWorker.get(r.workerId) ?? 0) + 1);
      }
    }
  }

  /**
   * A worker's probation, read-only, for the dashboard and the contributor page: how far it is from
   * proven and why it holds few items (the quota of `freshLimit`). Null once proven or unknown.
   */
  probationOf(workerId: string): ProbationView | null {
    const w = this.workers.get(workerId);
    if (!w || this.trust.isProven(workerId, w.kind)) return null;
    return {
      confirmed: this.trust.record(workerId).streak,
      needed: this.trust.opts.trustAfter,
      awaitingCheck: this.verifier.pendingChecks(workerId),
      maxItems: Math.max(2, 2 * w.concurrency),
    };
  }

  /**
   * Tells each connected browser worker its part in the jobs it works on (the contributor page shows
   * it). A native node has no use for them: with thousands of nodes, the figures cost thousands of
   * socket writes every 1.5 s, and working them out for every worker cost 5 ms per call at 2,000
   * (13 ms in a job's first second).
   */
  private sendFigures(): void {
    const perWorker = new Map<string, WorkerFigures['jobs']>();
    for (const id of this.acceptedBy.keys()) if (!this.active.has(id)) this.acceptedBy.delete(id);
    const browsers = [...this.workers.values()].filter((w) => w.kind === 'browser' && w.state !== 'offline');
    for (const job of this.active.values()) {
      const byWorker = job.fairness.itemsByWorker();
      // Every browser that worked on the job, or could (it is benchmarking or on probation, and the
      // page says so instead of "waiting for work").
      const taking = browsers.filter(
        (w) => byWorker.has(w.id) || this.scheduler.eligible(w.id, job.record.id),
      );
      if (taking.length === 0) continue;
      const record = this.store.getJob(job.record.id);
      if (!record) continue;
      const accepted = this.acceptedBy.get(record.id);
      const weight = (id: string) => this.scheduler.weight(id, job.model.sha256) ?? 0;
      let total = 0;
      for (const id of byWorker.keys()) total += weight(id);
      const queued = this.scheduler.queued(record.id);
      for (const w of taking) {
        const list = perWorker.get(w.id) ?? [];
        list.push({
          jobId: record.id,
          model: record.modelName,
          items: record.itemCount,
          done: record.doneCount,
          doneHere: Math.min(record.itemCount, accepted?.get(w.id) ?? 0),
          queued,
          ...(total > 0 && byWorker.has(w.id) ? { weightShare: weight(w.id) / total } : {}),
        });
        perWorker.set(w.id, list);
      }
    }
    for (const id of this.figuresSent.keys()) if (!this.sockets.has(id)) this.figuresSent.delete(id);
    for (const w of browsers) {
      const probation = this.probationOf(w.id);
      const figures: WorkerFigures = { jobs: perWorker.get(w.id) ?? [], ...(probation ? { probation } : {}) };
      const print = JSON.stringify(figures);
      const socket = this.sockets.get(w.id);
      if (!socket || this.figuresSent.get(w.id) === print) continue;
      this.figuresSent.set(w.id, print);
      socket.emit('worker:figures', figures);
    }
  }

  /** Liveness: a worker silent for offlineAfterMs is offline; its connection is closed. */
  private tick(): void {
    const now = Date.now();
    if (now - this.lastFigures >= 1500) {
      this.lastFigures = now;
      this.sendFigures();
      this.data.sweep(now);
    }
    for (const jobId of [...this.active.keys()]) this.checkComplete(jobId);
    this.repairStalls(now);
    for (const w of this.workers.values()) {
      if (w.state === 'offline' || now - w.lastSeen <= this.opts.offlineAfterMs) continue;
      const socket = this.sockets.get(w.id);
      this.workerGone(w.id, `no heartbeat for ${now - w.lastSeen} ms`);
      socket?.disconnect(true);
    }
    this.pump();
  }

  /** Stops timers and the reference sessions. Sockets and stores are closed by their owners. */
  async close(): Promise<void> {
    this.commitResults(); // results judged but not yet stored: store them while the store is open
    this.closed = true;
    this.shards.close();
    this.data.close();
    clearInterval(this.timer);
    clearInterval(this.confirmTimer);
    await this.reference.close();
  }
}

/**
 * Sends a request with an ack and waits at most `ms` for the reply, which is checked against its
 * schema like every other payload (a malformed reply counts as an error). Unlike Socket.IO's own
 * `timeout()`, the timer does not keep the process alive after the hub closes.
 */
function ask<T>(
  ms: number,
  schema: z.ZodType<T>,
  send: (ack: (res: unknown) => void) => void,
): Promise<Response<T>> {
  const reply = responseSchema(schema);
  return new Promise((resolve) => {
    const timer = setTimeout(
      () => resolve({ error: { code: 'timeout', message: `no reply in ${ms} ms` } }),
      ms,
    );
    timer.unref();
    send((res) => {
      clearTimeout(timer);
      const r = reply.safeParse(res);
      resolve(
        r.success
          ? (r.data as Response<T>)
          : { error: { code: 'invalid_reply', message: describeZodError(r.error) } },
      );
    });
  });
}
