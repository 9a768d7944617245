/**
 * Job lifecycle: create, append, seal (with pre-flight), activate, cancel, priority, completion and
 * the stall backstop. The one writer of job and item rows and of the jobs' event log, and the owner
 * of the active jobs (their model and fairness tracker); every other part reads them through here.
 */
import * as crypto from 'node:crypto';
import type { ModelInfo } from '../../protocol/model.ts';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type { ModelRegistry } from '../../models/registry.ts';
import { parseStep, stageModel } from '../../pipeline/stages.ts';
import { clean, type Logger } from '../logger.ts';
import { PreflightError, canaryCount, pickCanaries, type ReferenceRunner } from '../preflight.ts';
import { FairnessTracker } from '../scheduler/fairness.ts';
import { IdRuns } from '../scheduler/id-runs.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type {
  FailureRecord,
  ItemRecord,
  ItemState,
  JobEvent,
  JobRecord,
  JobState,
  NewJob,
  ResultRecord,
} from '../store/store.ts';
import type { AsyncStore } from '../store/async-store.ts';
import type { Later, TrustCache } from './trust-cache.ts';
import type { Verifier } from '../verify.ts';
import type { LiveWorker } from '../workers.ts';
import { HubError, type ActiveJob, type HubEmitter, type HubOptions } from './types.ts';

/** How often the hub looks for a job `running` with nothing queued and nothing in flight (ms). */
const STALL_CHECK_MS = 5000;

/**
 * How often the hub trims the result cache to `resultCacheEntries` (ms), at most: a trim counts
 * the entries, so it runs after appends, not per append.
 */
const CACHE_TRIM_MS = 30_000;

/**
 * The sha256 of an item's inputs, in hex: one call (`crypto.hash`, Node 20.12+) where there is one,
 * a few times cheaper per small item than a `Hash` object.
 */
const sha256Hex: (bytes: Uint8Array) => string =
  typeof crypto.hash === 'function'
    ? (bytes) => crypto.hash('sha256', bytes, 'hex')
    : (bytes) => crypto.createHash('sha256').update(bytes).digest('hex');

/** Jobs whose cache key is remembered (the jobs being appended to; a miss reads the job's row). */
const CACHE_KEYS_KEPT = 1000;

/**
 * A new job as asked for: the model by name or sha256; `cache: false` runs every item (no item is
 * answered from the result cache, and its results are not offered to it).
 */
export type JobSpec = Omit<NewJob, 'id' | 'modelSha256' | 'modelName'> & { model: string; cache?: boolean };

/** Items as appended: a name and a tensor pack of inputs. */
export type NewItems = { name: string; inputs: Uint8Array }[];

/** What jobs, their items and their results look like to readers (the API, pages, metrics, tests). */
export interface JobQueries {
  get(jobId: string): Promise<JobRecord | undefined>;
  /** The job, or a `unknown_job` error (404). */
  require(jobId: string): Promise<JobRecord>;
  list(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]>;
  item(itemId: number): Promise<ItemRecord | undefined>;
  items(jobId: string, page: { offset: number; limit: number; state?: ItemState }): Promise<ItemRecord[]>;
  /** Input packs of these items (missing ids are absent). */
  inputs(itemIds: readonly number[]): Promise<Map<number, Uint8Array>>;
  result(itemId: number): Promise<ResultRecord | undefined>;
  /** A job's results in item order, a page at a time. */
  results(jobId: string): AsyncIterableIterator<ResultRecord>;
  failures(jobId: string): Promise<FailureRecord[]>;
  events(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]>;
  /** How a job's stored results were verified, counted per way. */
  verification(jobId: string): Promise<{ how: string; n: number }[]>;
  /** Items of a job queued in this hub's scheduler. */
  queued(jobId: string): number;
  /** Items of a job held by this hub's workers. */
  inFlight(jobId: string): number;
  /** The job's fairness figures: live while it runs, the stored final ones after. */
  fairnessOf(jobId: string, final?: boolean): Promise<FairnessReport | undefined>;
  /** The records of the jobs this hub runs now (as of their last change here). */
  activeRecords(): JobRecord[];
  /** Live fairness figures of a job this hub runs now. */
  liveFairness(jobId: string): FairnessReport | undefined;
  /** The model a job runs (for a pipeline stage, with its step), if this build has it. */
  modelOf(job: JobRecord): ModelInfo | undefined;
}

export interface JobLifecycleDeps {
  store: AsyncStore;
  /**
   * Whether other hubs share the store: jobs are then activated with no items, and the chunks this
   * hub claims give it items (`claims.ts`); nothing is read for the whole job.
   */
  shared: boolean;
  /** Claim chunks now, here and on the other hubs (a job sealed, items appended to a running job). */
  claimSoon: () => void;
  /** Store writes the hub does not wait for, in order. */
  later: Later;
  /** Canary answers, loaded per job as it is activated. */
  trustCache: TrustCache;
  models: ModelRegistry;
  scheduler: Scheduler;
  verifier: Verifier;
  reference: ReferenceRunner;
  log: Logger;
  opts: HubOptions;
  events: HubEmitter;
  /** A live worker, for the fairness report's names and devices. */
  workerOf: (workerId: string) => LiveWorker | undefined;
  /** Tells a worker to stop these items (the job ended). */
  cancelOn: (workerId: string, itemIds: number[], reason: string) => void;
  /** Plans every worker (a job started or ended). */
  pump: () => void;
  /** Called as a job completes, before it is let go (the workers' figures' last word on it). */
  completing: () => Promise<void>;
  /** The job ended: evidence about its items' failures may go. */
  ended: (jobId: string) => void;
  /** Reference runs in progress for a job: a job waiting for one is not stalled. */
  referencing: (jobId: string) => boolean;
  /** Results judged and waiting for their commit: the stall check waits for them. */
  settling: () => boolean;
}

export class JobLifecycle implements JobQueries {
  private readonly active = new Map<string, ActiveJob>();
  private readonly sealing = new Set<string>();
  /** Jobs a pipeline may still add items to: they do not complete until `endStream`. */
  private readonly streaming = new Set<string>();
  /** Jobs whose completion is being checked: once at a time. */
  private readonly checking = new Set<string>();
  private lastStallCheck = 0;
  private stallCheck: Promise<void> | undefined;
  /** The hub is closing: nothing more is read or written (a late reference run must not). */
  private closed = false;
  /** Jobs' result cache keys (null: the job does not use the cache), most recently used last. */
  private readonly cacheKeys = new Map<string, string | null>();
  private lastCacheTrim = 0;

  constructor(private readonly d: JobLifecycleDeps) {}

  // ------------------------------------------------------------------ queries

  get(jobId: string): Promise<JobRecord | undefined> {
    return this.d.store.getJob(jobId);
  }

  async require(jobId: string): Promise<JobRecord> {
    const job = await this.d.store.getJob(jobId);
    if (!job) throw new HubError('unknown_job', `no job "${clean(jobId, 80)}"`, 404);
    return job;
  }

  list(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]> {
    return this.d.store.listJobs(filter);
  }

  item(itemId: number): Promise<ItemRecord | undefined> {
    return this.d.store.getItem(itemId);
  }

  items(jobId: string, page: { offset: number; limit: number; state?: ItemState }): Promise<ItemRecord[]> {
    return this.d.store.listItems(jobId, page);
  }

  inputs(itemIds: readonly number[]): Promise<Map<number, Uint8Array>> {
    return this.d.store.itemInputs(itemIds);
  }

  result(itemId: number): Promise<ResultRecord | undefined> {
    return this.d.store.getResult(itemId);
  }

  results(jobId: string): AsyncIterableIterator<ResultRecord> {
    return this.d.store.iterateResults(jobId);
  }

  failures(jobId: string): Promise<FailureRecord[]> {
    return this.d.store.failuresOf(jobId);
  }

  events(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]> {
    return this.d.store.listEvents(jobId, opts);
  }

  verification(jobId: string): Promise<{ how: string; n: number }[]> {
    return this.d.store.verificationOf(jobId);
  }

  queued(jobId: string): number {
    return this.d.scheduler.queued(jobId);
  }

  inFlight(jobId: string): number {
    return this.d.scheduler.inFlight(jobId);
  }

  modelOf(job: JobRecord): ModelInfo | undefined {
    const model = this.d.models.bySha(job.modelSha256);
    try {
      return model && stageModel(model, parseStep(job.options.step));
    } catch {
      return undefined; // a step this build does not have: the job cannot run here
    }
  }

  /** A running job's live state, if it is active. */
  activeJob(jobId: string): ActiveJob | undefined {
    return this.active.get(jobId);
  }

  /** The active jobs. */
  activeJobs(): IterableIterator<ActiveJob> {
    return this.active.values();
  }

  get activeCount(): number {
    return this.active.size;
  }

  activeRecords(): JobRecord[] {
    return [...this.active.values()].map((j) => j.record);
  }

  async fairnessOf(jobId: string, final = false): Promise<FairnessReport | undefined> {
    if (!this.active.has(jobId)) {
      const saved = (await this.d.store.listEvents(jobId, { type: 'fairness', limit: 1 }))[0];
      return saved ? (saved.data as unknown as FairnessReport) : undefined;
    }
    const record = await this.d.store.getJob(jobId);
    const job = this.active.get(jobId);
    return job && this.report(job, record?.itemCount ?? job.record.itemCount, final);
  }

  liveFairness(jobId: string): FairnessReport | undefined {
    const job = this.active.get(jobId);
    return job && this.report(job, job.record.itemCount, false);
  }

  private report(job: ActiveJob, items: number, final: boolean): FairnessReport {
    const { scheduler } = this.d;
    return job.fairness.report({
      items,
      final,
      now: Date.now(),
      lookup: (workerId) => {
        const w = this.d.workerOf(workerId);
        return {
          name: w?.name ?? workerId,
          backend: w?.backend ?? '?',
          device: w?.capabilities.gpu?.name ?? w?.capabilities.hostname ?? w?.backend ?? '?',
          benchmark: scheduler.benchmark(workerId, job.model.sha256) ?? null,
          weight: scheduler.weight(workerId, job.model.sha256) ?? null,
        };
      },
    });
  }

  // ------------------------------------------------------------------ writes

  /** Records an event with a job (steal, requeue, check failed...); the hub does not wait for it. */
  addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): void {
    this.d.later('job event', () => this.d.store.addEvent(jobId, type, data, at));
  }

  /** After a restart: every sealed, unfinished job goes back to the scheduler with its pending items. */
  async resume(): Promise<void> {
    if (this.d.shared) return; // jobs become active here as this hub claims their chunks
    for (const job of await this.d.store.listJobs({ states: ['queued', 'running'] })) {
      const model = this.modelOf(job);
      if (!model) {
        this.d.log.error(
          { jobId: job.id, model: job.modelName },
          'model of an unfinished job is gone; job cancelled',
        );
        await this.d.store.updateJob(job.id, { state: 'cancelled', finishedAt: Date.now() });
        continue;
      }
      await this.activate(job, model);
      this.d.log.info({ jobId: job.id, pending: this.d.scheduler.queued(job.id) }, 'job resumed');
      await this.checkComplete(job.id);
    }
  }

  /** Creates a job on a model known to the registry. */
  async create(spec: JobSpec): Promise<JobRecord> {
    const model = await this.d.models.find(spec.model);
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
    const id = `j_${Date.now().toString(36)}${crypto.randomBytes(4).toString('hex')}`;
    const { model: _m, cache, ...rest } = spec;
    void _m;
    const job = await this.d.store.createJob({
      ...rest,
      // Kept with the job: it decides each append, and a restarted hub reads it from there.
      options: cache === false ? { ...rest.options, cache: false } : rest.options,
      id,
      modelName: model.name,
      modelSha256: model.sha256,
    });
    this.d.log.info({ jobId: id, model: model.name }, 'job created');
    return job;
  }

  /**
   * Adds items to an open job; returns their ids in order. Items the result cache answers are done
   * at once (see `appendCached`).
   */
  async append(jobId: string, items: NewItems): Promise<number[]> {
    return (await this.appendCached(jobId, items, false)).ids;
  }

  /** Adds items to a sealed job that is still running (a pipeline stage fed as results arrive). */
  async appendRunning(jobId: string, items: NewItems): Promise<number[]> {
    if (!this.active.has(jobId))
      throw new HubError('job_not_active', `job ${clean(jobId, 80)} is not running`, 409);
    const { ids, cached } = await this.appendCached(jobId, items, true);
    const job = this.active.get(jobId);
    if (job) {
      job.record = { ...job.record, itemCount: job.record.itemCount + ids.length };
      if (this.d.shared) this.d.claimSoon();
      else {
        const answered = new Set(cached);
        this.d.scheduler.requeueItems(jobId, cached.length ? ids.filter((id) => !answered.has(id)) : ids);
        this.d.pump();
      }
      if (cached.length) this.checkComplete(jobId, true);
    }
    return ids;
  }

  /**
   * Appends items, through the result cache when the job uses it: each item's inputs are hashed
   * here, and the store answers, in the append's own transaction, the items whose model key and
   * input hash name a stored result. Those are done before any worker sees them; they are told to
   * the job's watchers as `items:cached` and then as committed, like results that arrive.
   */
  private async appendCached(
    jobId: string,
    items: NewItems,
    running: boolean,
  ): Promise<{ ids: number[]; cached: number[] }> {
    const { store } = this.d;
    const modelKey = items.length ? await this.cacheKey(jobId) : null;
    if (modelKey === null) return { ids: await store.appendItems(jobId, items, { running }), cached: [] };
    const inputs = items.map((it) => sha256Hex(it.inputs));
    const out = await store.appendItemsCached(jobId, items, { running, cache: { modelKey, inputs } });
    if (out.cached.length < out.ids.length) this.trimCacheSoon();
    if (out.cached.length > 0) {
      this.d.log.debug({ jobId, items: out.cached.length }, 'items answered from the result cache');
      this.d.events.emit('items:cached', jobId, out.cached);
      this.d.events.emit('items:committed', jobId, out.cached);
      this.d.events.emit('job:updated', jobId);
    }
    return out;
  }

  /**
   * A job's result cache key: its model's sha256, and its step for a stage job (the step's version
   * changes what is stored); null when the job or the hub does not use the cache.
   */
  private async cacheKey(jobId: string): Promise<string | null> {
    let key = this.cacheKeys.get(jobId);
    if (key !== undefined) {
      this.cacheKeys.delete(jobId);
      this.cacheKeys.set(jobId, key);
      return key;
    }
    const job = await this.d.store.getJob(jobId);
    if (!job) return null; // the store's append says the job does not exist
    key = null;
    if (this.d.opts.resultCacheEntries > 0 && job.options.cache !== false) {
      const step = parseStep(job.options.step);
      key = step ? `${job.modelSha256}+${step.name}@${step.version}` : job.modelSha256;
    }
    this.cacheKeys.set(jobId, key);
    if (this.cacheKeys.size > CACHE_KEYS_KEPT) this.cacheKeys.delete(this.cacheKeys.keys().next().value!);
    return key;
  }

  /** Trims the result cache to its bound, at most every CACHE_TRIM_MS, behind the hub's back. */
  private trimCacheSoon(): void {
    const now = Date.now();
    if (now - this.lastCacheTrim < CACHE_TRIM_MS) return;
    this.lastCacheTrim = now;
    const max = this.d.opts.resultCacheEntries;
    this.d.later('result cache trim', async () => {
      const evicted = await this.d.store.trimCache(max);
      if (evicted > 0) this.d.log.info({ evicted, max }, 'result cache trimmed');
    });
  }

  /** Keeps a job from completing while a pipeline may still add items to it. */
  holdOpen(jobId: string): void {
    this.streaming.add(jobId);
  }

  /** The pipeline adds no more items: the job completes once its items are done or failed. */
  endStream(jobId: string): void {
    if (this.streaming.delete(jobId)) this.checkSoon(jobId);
  }

  /**
   * Seals an open job: no more items. Pre-flight first (the model loads on the hub's reference
   * backend, sample items run, canary answers are kept); a failed check cancels the job and is
   * thrown as a clear error. Then the job is queued and scheduled.
   */
  async seal(jobId: string): Promise<JobRecord> {
    const job = await this.require(jobId);
    if (job.state !== 'open' || this.sealing.has(jobId)) {
      throw new HubError(
        'job_not_open',
        `job ${jobId} is ${this.sealing.has(jobId) ? 'being sealed' : job.state}, not open`,
        409,
      );
    }
    if (job.itemCount === 0) throw new HubError('job_empty', `job ${jobId} has no items`, 400);
    const model = this.modelOf(job);
    const path = model && this.d.models.filePath(model.sha256);
    if (!model || !path) throw new HubError('unknown_model', `model of job ${jobId} is gone`, 409);
    this.sealing.add(jobId);
    try {
      if (this.d.opts.preflight) await this.preflight(job, model, path);
      await this.d.store.updateJob(jobId, { state: 'queued' });
    } finally {
      this.sealing.delete(jobId);
    }
    const sealed = await this.require(jobId);
    await this.activate(sealed, model);
    this.d.log.info({ jobId, items: sealed.itemCount, done: sealed.doneCount }, 'job queued');
    this.d.events.emit('job:updated', jobId);
    if (this.d.shared) this.d.claimSoon(); // its chunks are claimable now, here or on another hub
    this.d.pump();
    // Items the result cache answered are done already: a job of nothing else completes now.
    if (sealed.doneCount > 0) this.checkComplete(jobId, true);
    return sealed;
  }

  private async preflight(job: JobRecord, model: ModelInfo, path: string): Promise<void> {
    const { store, opts } = this.d;
    const pending = IdRuns.of(await store.pendingItemRuns(job.id));
    // Every item answered from the result cache: nothing runs, so nothing to check.
    if (pending.size === 0) return;
    const n = canaryCount(pending.size, {
      fraction: opts.trust.canaryFraction,
      min: opts.trust.minCanaries,
      max: opts.trust.maxCanaries,
    });
    // Without canaries, one item still proves the model runs on these inputs.
    const sample = n > 0 ? pickCanaries(pending, n) : pending.size > 0 ? [pending.at(0)] : [];
    const started = Date.now();
    try {
      const answers = await this.d.reference.check(model, path, await store.itemInputs(sample));
      if (n > 0) {
        await store.addCanaries(job.id, answers); // before the job is queued: any hub may run it
        this.d.verifier.addCanaries(job.id, answers);
      }
    } catch (err) {
      if (!(err instanceof PreflightError)) throw err;
      await store.updateJob(job.id, { state: 'cancelled', finishedAt: Date.now() });
      await store.addEvent(job.id, 'preflight_failed', { reason: err.message }, Date.now());
      this.d.log.warn({ jobId: job.id, reason: clean(err.message) }, 'pre-flight failed; job cancelled');
      this.d.events.emit('job:updated', job.id);
      throw new HubError('preflight_failed', err.message, 422);
    }
    this.d.log.info({ jobId: job.id, canaries: n, ms: Date.now() - started }, 'pre-flight passed');
  }

  /** Hands a sealed job to the scheduler with its pending items. */
  private async activate(job: JobRecord, model: ModelInfo): Promise<void> {
    if (this.active.has(job.id)) return;
    const [pending] = await Promise.all([
      this.d.shared ? [] : this.d.store.pendingItemRuns(job.id),
      this.d.trustCache.loadCanaries(job.id),
    ]);
    if (this.active.has(job.id)) return; // activated meanwhile
    this.d.verifier.watchJob(job.id);
    const fairness = new FairnessTracker(job.id);
    this.active.set(job.id, { record: job, model, fairness });
    this.d.scheduler.addJob(
      {
        id: job.id,
        priority: job.priority,
        deadline: job.deadline,
        modelSha256: job.modelSha256,
        batchSize: model.batchable ? model.batchSize : 1,
        requirements: job.requirements,
      },
      IdRuns.of(pending),
    );
  }

  /**
   * Makes a sealed, unfinished job active here if it is not (a chunk of it was claimed); false if
   * it cannot run here (finished, or its model is not in this hub's registry).
   */
  async ensureActive(jobId: string): Promise<boolean> {
    if (this.active.has(jobId)) return true;
    const job = await this.d.store.getJob(jobId);
    if (!job || (job.state !== 'queued' && job.state !== 'running')) return false;
    await this.d.models.find(job.modelSha256); // uploaded through another hub: registered here first
    const model = this.modelOf(job);
    if (!model) {
      this.d.log.warn(
        { jobId, model: job.modelName },
        "a claimed job's model is not on this hub; chunk given back",
      );
      return false;
    }
    await this.activate(job, model);
    return true;
  }

  /** Lets every job go (the hub lost its lease: what it held is another hub's to run now). */
  dropAll(reason: string): void {
    for (const jobId of [...this.active.keys()]) this.letGo(jobId, reason);
  }

  /**
   * Stops running a job here without ending it (its chunks go back to other hubs): nothing is
   * written; workers holding its items are told to stop them.
   */
  letGo(jobId: string, reason = 'the job moved to another hub'): void {
    this.active.delete(jobId);
    this.d.ended(jobId);
    for (const [workerId, itemIds] of this.d.scheduler.removeJob(jobId)) {
      this.d.cancelOn(workerId, itemIds, reason);
    }
  }

  /** A job's first items went out: it is running. */
  started(jobId: string, now: number): void {
    const job = this.active.get(jobId);
    if (!job || job.record.state !== 'queued') return;
    job.record = { ...job.record, state: 'running', startedAt: now };
    this.d.later('job started', () => this.d.store.updateJob(jobId, { state: 'running', startedAt: now }));
    this.d.events.emit('job:updated', jobId);
  }

  /** Cancels a job: queued items are dropped, workers told to stop its items. */
  async cancel(jobId: string): Promise<JobRecord> {
    const job = await this.require(jobId);
    if (job.state === 'completed' || job.state === 'cancelled') {
      throw new HubError('job_finished', `job ${jobId} is already ${job.state}`, 409);
    }
    await this.d.store.updateJob(jobId, { state: 'cancelled', finishedAt: Date.now() });
    this.deactivate(jobId, job.itemCount, 'job cancelled');
    this.d.log.info({ jobId }, 'job cancelled');
    this.d.events.emit('job:updated', jobId);
    this.d.pump();
    return this.require(jobId);
  }

  /** Changes a job's priority. */
  async setPriority(jobId: string, priority: number): Promise<JobRecord> {
    await this.require(jobId);
    await this.d.store.updateJob(jobId, { priority });
    const job = this.active.get(jobId);
    if (job) job.record = { ...job.record, priority };
    this.d.scheduler.setPriority(jobId, priority);
    this.d.events.emit('job:updated', jobId);
    return this.require(jobId);
  }

  private deactivate(jobId: string, items: number, reason: string): void {
    const job = this.active.get(jobId);
    if (job) {
      job.fairness.finish(Date.now());
      this.addEvent(
        jobId,
        'fairness',
        this.report(job, items, true) as unknown as Record<string, unknown>,
        Date.now(),
      );
    }
    this.active.delete(jobId);
    this.d.ended(jobId);
    for (const [workerId, itemIds] of this.d.scheduler.removeJob(jobId)) {
      this.d.cancelOn(workerId, itemIds, reason);
    }
  }

  /**
   * Completes a job whose every item is done or failed. With `quick` (after each commit of results,
   * thousands of times a second), a job that still has items queued or held in the scheduler is
   * taken to be unfinished without reading its row; the tick checks every active job's row once a
   * second all the same, so a job the scheduler's view misled about still completes.
   */
  checkComplete(jobId: string, quick = false): void {
    const { scheduler } = this.d;
    if (quick && scheduler.queued(jobId) + scheduler.inFlight(jobId) > 0) return;
    this.checkSoon(jobId);
  }

  /** Reads the job's row and completes it if its counts are full (one check at a time per job). */
  private checkSoon(jobId: string): void {
    if (this.closed || this.streaming.has(jobId) || this.checking.has(jobId)) return;
    this.checking.add(jobId);
    this.complete(jobId)
      .catch((err: unknown) => this.d.log.error({ err, jobId }, 'completing a job failed'))
      .finally(() => this.checking.delete(jobId));
  }

  private async complete(jobId: string): Promise<void> {
    const { store } = this.d;
    const job = await store.getJob(jobId);
    const active = this.active.get(jobId);
    if (job && active && this.d.shared) this.follow(job, active);
    if (!job || (job.state !== 'running' && job.state !== 'queued')) return;
    if (job.doneCount + job.failedCount < job.itemCount || this.streaming.has(jobId)) return;
    // The store completes it only if its counts are still full: a revert (a quarantine, here or on
    // another hub) may have reopened items since they were read.
    if (!(await store.completeJob(jobId, Date.now()))) return;
    await this.d.completing().catch((err: unknown) => this.d.log.warn({ err }, 'figures not sent'));
    this.deactivate(jobId, job.itemCount, 'job completed');
    this.d.log.info({ jobId, done: job.doneCount, failed: job.failedCount }, 'job completed');
    this.d.events.emit('job:updated', jobId);
    this.d.events.emit('job:completed', jobId);
  }

  /** Follows what another hub did to a job this one runs: cancelled, completed, reprioritised. */
  private follow(job: JobRecord, active: ActiveJob): void {
    if (job.state === 'cancelled' || job.state === 'completed') {
      this.deactivate(job.id, job.itemCount, `job ${job.state}`);
      this.d.events.emit('job:updated', job.id);
      this.d.pump();
      return;
    }
    if (job.priority !== active.record.priority) this.d.scheduler.setPriority(job.id, job.priority);
    active.record = { ...job, state: active.record.state === 'running' ? 'running' : job.state };
  }

  /** Stops checking jobs; resolves once the checks in progress are done (the hub is closing). */
  async close(): Promise<void> {
    this.closed = true;
    while (this.checking.size > 0 || this.stallCheck) await new Promise((ok) => setTimeout(ok, 5));
  }

  /** Checks every active job's row (the tick's backstop for `checkComplete`'s quick path). */
  checkAll(): void {
    for (const jobId of [...this.active.keys()]) this.checkSoon(jobId);
  }

  /**
   * A job the scheduler has nothing queued or held of, whose row is not complete, would sit
   * `running` for ever: its pending items go back to the scheduler, and the repair is logged and
   * recorded with the job. This should never find anything; it is the backstop of every path that
   * frees items.
   */
  repairStalls(now: number): void {
    // With other hubs, chunk claims re-queue what is pending in the chunks held here (`claims.ts`).
    if (this.d.shared) return;
    if (now - this.lastStallCheck < STALL_CHECK_MS || this.d.settling() || this.stallCheck) return;
    this.lastStallCheck = now;
    this.stallCheck = this.repair(now)
      .catch((err: unknown) => this.d.log.error({ err }, 'stall check failed'))
      .finally(() => (this.stallCheck = undefined));
  }

  private async repair(now: number): Promise<void> {
    const { scheduler, store, log } = this.d;
    const idle = (jobId: string) =>
      this.active.has(jobId) &&
      scheduler.queued(jobId) + scheduler.inFlight(jobId) === 0 &&
      !this.d.referencing(jobId) &&
      !this.d.settling();
    for (const jobId of [...this.active.keys()]) {
      if (!idle(jobId)) continue;
      const row = await store.getJob(jobId);
      if (!row || row.state !== 'running' || row.doneCount + row.failedCount >= row.itemCount) continue;
      const pending = IdRuns.of(await store.pendingItemRuns(jobId));
      if (!idle(jobId)) continue; // results or items moved while the store was read
      const requeued = scheduler.restore(jobId, pending);
      const reason = 'running with nothing queued and nothing in flight';
      const data = { reason, requeued, done: row.doneCount, failed: row.failedCount, items: row.itemCount };
      this.addEvent(jobId, 'repaired', data, now);
      if (requeued > 0) log.warn({ jobId, ...data }, 'stalled job repaired: pending items queued again');
      else log.error({ jobId, ...data }, 'stalled job: no pending items, yet its counts are short');
    }
  }

  /**
   * Results a quarantined worker gave were taken back: their items run again (the job is
   * activated again if it had completed on them while still marked running).
   */
  async recompute(jobId: string, itemIds: number[], avoid: string): Promise<void> {
    if (this.active.has(jobId)) {
      this.d.scheduler.requeueItems(jobId, itemIds, [avoid]);
      return;
    }
    const job = await this.d.store.getJob(jobId);
    const model = job && this.modelOf(job);
    if (job && model && job.state === 'running') await this.activate(job, model);
  }
}
