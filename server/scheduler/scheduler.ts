/**
 * The scheduler: decides which worker runs which items. Pure bookkeeping and decisions with an
 * injected clock — no sockets, no store — so its choices can be unit-tested deterministically.
 * The hub (server/hub.ts) carries out what it decides.
 *
 * - Each job keeps a queue of unassigned items; each worker holds the items assigned to it and not
 *   finished, in assignment order (the newest are the least likely to have started).
 * - Dynamic shards (`factoring`): a worker is topped up whenever its holding falls below a
 *   low-water mark, with a weighted-factoring chunk, so it never waits on the hub and the tail of a
 *   job is fine-grained. Without factoring, a job is split once, statically, by weight (or equally).
 * - Stealing: a worker with room and no queued work asks the worker predicted to finish last for its
 *   newest items, when the imbalance is significant. The hub revokes them; only the items the victim
 *   confirms unstarted move (`stealDone`), so no item is ever held by two workers through stealing.
 * - Speculation: near the end, an idle worker runs a copy of an item whose holder is predicted to
 *   finish much later; the first valid result wins and the other copy is cancelled.
 */
import type { WorkerFilter } from '../store/store.ts';
import { matchesFilter, type FilterableWorker } from './filter.ts';
import { IdRuns, type IdRun } from './id-runs.ts';
import {
  DEFAULT_POLICY,
  factoringChunk,
  isImbalanced,
  predictedFinish,
  shouldSpeculate,
  speculationCap,
  stealSize,
  type PolicyOptions,
} from './policy.ts';
import { DEFAULT_RATE_OPTIONS, RateEstimate, priorWeight, type RateOptions } from './weights.ts';

/** Switches and knobs. */
export interface SchedulerOptions extends PolicyOptions {
  clock: () => number;
  /** false: every worker weighs the same. */
  weighting: boolean;
  /** false: a job is split once, statically, when it starts. */
  factoring: boolean;
  stealing: boolean;
  speculation: boolean;
  /** Seconds of work a worker holds beyond what it is running. */
  prefetchSeconds: number;
  /**
   * Most seconds of work (at the worker's weight) one top-up brings a worker to, whatever weighted
   * factoring would give: half a million-item job at once is memory held by the hub's sockets and
   * the worker, and items a thief must later take back through steals.
   */
  maxShardSeconds: number;
  /**
   * Most items a worker holds, whatever its weight says. A weight can overstate what a worker gets
   * done through the grid (a no-op model benchmarks at ~30,000 items/s; through one hub it gets a
   * share of the hub's ceiling): the holding it buys is then stolen back and forth, every steal
   * sending the items again.
   */
  maxHeldItems: number;
  /** Attempts per item before it ends as failed. */
  maxAttempts: number;
  /** How long a worker whose benchmark of a model failed waits before it is benchmarked again (ms). */
  benchmarkRetryMs: number;
  rate: RateOptions;
  /**
   * How many fresh (never assigned) items a worker may take now; requeued items are not limited.
   * The hub keeps workers on probation (unproven by result checks) to a few at a time.
   */
  freshLimit?: (workerId: string) => number;
  /** Told whenever a worker's holding of a job's items changes (fairness bookkeeping). */
  onHeld?: (jobId: string, workerId: string, count: number) => void;
}

export const DEFAULT_SCHEDULER_OPTIONS: SchedulerOptions = {
  ...DEFAULT_POLICY,
  clock: () => Date.now(),
  weighting: true,
  factoring: true,
  stealing: true,
  speculation: true,
  prefetchSeconds: 0.3,
  maxShardSeconds: 2,
  maxHeldItems: 4096,
  maxAttempts: 3,
  benchmarkRetryMs: 30_000,
  rate: DEFAULT_RATE_OPTIONS,
};

/** A job as the scheduler sees it. */
export interface SchedJob {
  id: string;
  priority: number;
  deadline: number | null;
  modelSha256: string;
  batchSize: number;
  requirements: WorkerFilter | null;
}

/** A worker as the scheduler sees it. */
export interface SchedWorker extends FilterableWorker {
  id: string;
  name: string;
  concurrency: number;
  /** GPU or adapter name, for the prior weight and for logs. */
  device?: string;
}

/** Items to send to a worker. */
export interface Assignment {
  workerId: string;
  jobId: string;
  itemIds: number[];
  /** Copies of items another worker is running. */
  speculative?: { fromWorkerId: string; reason: string };
}

/** A steal to carry out: revoke `itemIds` from the victim, then `stealDone` with what it gave up. */
export interface StealPlan {
  thief: string;
  victim: string;
  jobId: string;
  itemIds: number[];
  reason: string;
}

/** Everything a plan asks the hub to do. */
export interface Plan {
  assign: Assignment[];
  benchmark: { workerId: string; modelSha256: string }[];
  steal: StealPlan[];
}

interface JobRun extends SchedJob {
  fresh: IdRuns;
  /** Items handed back (worker lost, released, failed): they go out before fresh ones. */
  requeued: number[];
  failedOn: Map<number, Set<string>>;
  attempts: Map<number, number>;
  heldBy: Map<string, number>;
  held: number;
  /** Static mode: the one-time split has happened. */
  split: boolean;
}

interface WorkerRun {
  info: SchedWorker;
  ready: boolean;
  rates: Map<string, RateEstimate>;
  benchmarking: Set<string>;
  /**
   * Models whose benchmark failed on it, with when it may try again and how many times it failed:
   * a failure can be passing (a download cut off, a busy tab), so it is retried later, each time
   * waiting twice as long (`benchmarkRetryMs`, at most 32 times that).
   */
  unusable: Map<string, { until: number; failures: number }>;
  held: Map<number, string>;
  /** A steal by this worker is in flight. */
  stealing: boolean;
  /** A steal from this worker is in flight. */
  revoking: boolean;
  /** Its last revoke gave nothing back (all running): not a steal victim until then. */
  noStealUntil: number;
}

/**
 * How long a job's total weight and its ranking of likely steal (and speculation) victims may be
 * reused (ms). Both take a pass over every worker; computing them afresh for every worker planned
 * made a plan of all workers O(workers²): with 2,000 workers, one such plan (every benchmark reply,
 * every tick) took seconds. Within this window a worker's weight moves little (rates are averaged
 * over ~1 s), and a ranked victim is checked against its current figures before it is used.
 */
const PLAN_CACHE_MS = 50;

/** Ranked victims looked at per steal or speculation decision (busy ones included). */
const VICTIMS_CHECKED = 32;

/** What happened to a failed item. */
export type FailureOutcome = 'retry' | 'final';

export class Scheduler {
  readonly opts: SchedulerOptions;
  private readonly jobs = new Map<string, JobRun>();
  private readonly workers = new Map<string, WorkerRun>();
  /** itemId → workers holding it (the first is the original; more are speculative copies). */
  private readonly holders = new Map<number, string[]>();
  private copies = 0;
  /** Bumped when workers join, leave, pause or get a figure: cached totals and rankings are stale. */
  private version = 0;
  private readonly totals = new Map<string, { at: number; version: number; value: number }>();
  private readonly rankings = new Map<string, { at: number; version: number; victims: WorkerRun[] }>();
  private readonly scales = new Map<string, { at: number; version: number; value: number }>();
  /** Ready workers whose last plan left them below their low-water mark: they wait for work. */
  private readonly hungry = new Set<string>();

  constructor(opts: Partial<SchedulerOptions> = {}) {
    this.opts = { ...DEFAULT_SCHEDULER_OPTIONS, ...opts };
    if (this.opts.prefetchSeconds < 0) throw new Error('prefetchSeconds must be >= 0');
    if (!(this.opts.maxShardSeconds > 0)) throw new Error('maxShardSeconds must be greater than 0');
    if (!(this.opts.maxHeldItems >= 1)) throw new Error('maxHeldItems must be 1 or more');
    if (this.opts.maxAttempts < 1) throw new Error('maxAttempts must be >= 1');
  }

  // ---------------------------------------------------------------- jobs

  /** Adds a job with its unfinished items, in order: runs of ids from the store (taken over), or a list. */
  addJob(job: SchedJob, pending: IdRuns | readonly number[]): void {
    if (this.jobs.has(job.id)) throw new Error(`job ${job.id} already scheduled`);
    this.jobs.set(job.id, {
      ...job,
      fresh: pending instanceof IdRuns ? pending : IdRuns.fromIds(pending),
      requeued: [],
      failedOn: new Map(),
      attempts: new Map(),
      heldBy: new Map(),
      held: 0,
      split: false,
    });
  }

  setPriority(jobId: string, priority: number): void {
    const j = this.jobs.get(jobId);
    if (j) j.priority = priority;
  }

  /** Removes a job; returns, per worker, the items it still held (to cancel there). */
  removeJob(jobId: string): Map<string, number[]> {
    const out = new Map<string, number[]>();
    if (!this.jobs.has(jobId)) return out;
    for (const w of this.workers.values()) {
      for (const [itemId, j] of w.held) {
        if (j !== jobId) continue;
        this.unhold(w, itemId);
        push(out, w.info.id, itemId);
      }
    }
    this.jobs.delete(jobId);
    this.totals.delete(jobId);
    this.rankings.delete(jobId);
    return out;
  }

  /** Unassigned items of a job. */
  queued(jobId: string): number {
    const j = this.jobs.get(jobId);
    return j ? j.fresh.size + j.requeued.length : 0;
  }

  /** Items of a job currently held by workers (copies counted once per holder). */
  inFlight(jobId: string): number {
    return this.jobs.get(jobId)?.held ?? 0;
  }

  /** Whether a worker could run a job (requirements, model usable). */
  eligible(workerId: string, jobId: string): boolean {
    const w = this.workers.get(workerId);
    const j = this.jobs.get(jobId);
    return !!w && !!j && this.fits(w, j);
  }

  private fits(w: WorkerRun, j: JobRun): boolean {
    return (
      matchesFilter(w.info, j.requirements) &&
      !((w.unusable.get(j.modelSha256)?.until ?? 0) > this.opts.clock())
    );
  }

  // ---------------------------------------------------------------- workers

  /** Adds (or updates after a reconnect) a worker; it holds nothing until planned. */
  addWorker(info: SchedWorker): void {
    this.version++;
    const old = this.workers.get(info.id);
    if (old) {
      old.info = info;
      return;
    }
    this.workers.set(info.id, {
      info,
      ready: true,
      rates: new Map(),
      benchmarking: new Set(),
      unusable: new Map(),
      held: new Map(),
      stealing: false,
      revoking: false,
      noStealUntil: 0,
    });
  }

  /** Removes a worker; every item it held goes back to its job's queue. Returns them per job. */
  removeWorker(workerId: string): Map<string, number[]> {
    this.version++;
    this.hungry.delete(workerId);
    const w = this.workers.get(workerId);
    if (!w) return new Map();
    const back = this.takeBack(w, [...w.held.keys()]);
    this.workers.delete(workerId);
    this.unstrand();
    return back;
  }

  /**
   * After a worker left: a queued item whose avoid list now covers every remaining eligible worker
   * (it was waiting for a replica only the departed worker could give) may go to any of them again,
   * rather than wait forever. Attempts still bound retries of failing items.
   */
  private unstrand(): void {
    for (const j of this.jobs.values()) {
      if (j.failedOn.size === 0) continue;
      // Only items with an avoid list can be stranded: walking those, not every requeued item,
      // keeps a mass departure (each leaver requeues up to 4,096 items) from going quadratic.
      const eligible = [...this.workers.values()].filter((w) => w.ready && this.fits(w, j));
      for (const [id, avoid] of j.failedOn) {
        if (avoid.size === 0 || this.holders.has(id)) continue; // held: not waiting for anyone
        if (!eligible.some((w) => !avoid.has(w.info.id))) j.failedOn.delete(id);
      }
    }
  }

  /** Pauses or resumes a worker (paused and draining workers get nothing new). */
  setReady(workerId: string, ready: boolean): void {
    this.version++;
    const w = this.workers.get(workerId);
    if (w) w.ready = ready;
  }

  /** How many items a worker holds. */
  heldCount(workerId: string): number {
    return this.workers.get(workerId)?.held.size ?? 0;
  }

  /** Items a worker holds, in assignment order. */
  heldBy(workerId: string): number[] {
    return [...(this.workers.get(workerId)?.held.keys() ?? [])];
  }

  /** Whether `workerId` holds `itemId` as an item of `jobId` (original or speculative copy). */
  holds(workerId: string, itemId: number, jobId: string): boolean {
    return this.workers.get(workerId)?.held.get(itemId) === jobId;
  }

  /** Every worker holding an item (more than one while speculated). */
  holdersOf(itemId: number): readonly string[] {
    return this.holders.get(itemId) ?? [];
  }

  /** Hands items back from a worker (released unstarted). They go back to their queues. */
  release(workerId: string, itemIds: readonly number[]): Map<string, number[]> {
    const w = this.workers.get(workerId);
    return w ? this.takeBack(w, itemIds) : new Map();
  }

  /** A worker's holds on items of one job; the job's counts are updated once for all of them. */
  private hold(w: WorkerRun, j: JobRun, itemIds: readonly number[]): void {
    if (itemIds.length === 0) return;
    const me = w.info.id;
    for (const itemId of itemIds) {
      w.held.set(itemId, j.id);
      const h = this.holders.get(itemId);
      if (h) {
        h.push(me);
        this.copies++;
      } else this.holders.set(itemId, [me]);
    }
    j.held += itemIds.length;
    j.heldBy.set(me, (j.heldBy.get(me) ?? 0) + itemIds.length);
    this.rateOf(w, j.modelSha256).busy(this.opts.clock());
  }

  /** Drops one worker's hold on an item. Returns the job it belonged to. */
  private unhold(w: WorkerRun, itemId: number): JobRun | undefined {
    const jobId = w.held.get(itemId);
    if (jobId === undefined) return undefined;
    w.held.delete(itemId);
    const h = this.holders.get(itemId);
    if (h) {
      const i = h.indexOf(w.info.id);
      if (i >= 0) h.splice(i, 1);
      if (h.length === 0) this.holders.delete(itemId);
      else if (i >= 0) this.copies--;
    }
    const j = this.jobs.get(jobId);
    if (!j) return undefined;
    j.held--;
    const n = (j.heldBy.get(w.info.id) ?? 1) - 1;
    if (n > 0) j.heldBy.set(w.info.id, n);
    else j.heldBy.delete(w.info.id);
    if (w.held.size === 0) this.rateOf(w, j.modelSha256).idle(this.opts.clock());
    return j;
  }

  private notifyHeld(j: JobRun, workerId: string): void {
    this.opts.onHeld?.(j.id, workerId, j.heldBy.get(workerId) ?? 0);
  }

  private takeBack(w: WorkerRun, itemIds: readonly number[]): Map<string, number[]> {
    const out = new Map<string, number[]>();
    const touched = new Set<JobRun>();
    for (const itemId of itemIds) {
      const j = this.unhold(w, itemId);
      if (!j) continue;
      touched.add(j);
      // A speculated item still has another holder: no need to queue it again.
      if (!this.holders.has(itemId)) {
        j.requeued.push(itemId);
        push(out, j.id, itemId);
      }
    }
    for (const j of touched) this.notifyHeld(j, w.info.id);
    return out;
  }

  // ---------------------------------------------------------------- weights

  private rateOf(w: WorkerRun, sha: string): RateEstimate {
    let r = w.rates.get(sha);
    if (!r) {
      r = new RateEstimate(this.opts.rate);
      w.rates.set(sha, r);
    }
    return r;
  }

  /** Records a benchmark result (items/s) of a worker on a model. */
  setBenchmark(workerId: string, modelSha256: string, itemsPerSec: number): void {
    this.version++;
    const w = this.workers.get(workerId);
    if (!w) return;
    w.benchmarking.delete(modelSha256);
    w.unusable.delete(modelSha256);
    this.rateOf(w, modelSha256).bench = Math.max(itemsPerSec, 1e-6);
  }

  /** Marks a model as not runnable on a worker for a while (its benchmark failed); see `unusable`. */
  setUnusable(workerId: string, modelSha256: string): void {
    this.version++;
    const w = this.workers.get(workerId);
    if (!w) return;
    w.benchmarking.delete(modelSha256);
    const failures = (w.unusable.get(modelSha256)?.failures ?? 0) + 1;
    const wait = this.opts.benchmarkRetryMs * 2 ** Math.min(5, failures - 1);
    w.unusable.set(modelSha256, { until: this.opts.clock() + wait, failures });
    this.unstrand(); // items waiting for a replica from this worker may go to anyone again
  }

  /**
   * A worker's weight on a model now: observed rate, else benchmark (scaled, see `benchScale`),
   * else undefined.
   */
  weight(workerId: string, modelSha256: string): number | undefined {
    const w = this.workers.get(workerId);
    const now = this.opts.clock();
    return w ? w.rates.get(modelSha256)?.at(now, this.benchScale(modelSha256, now)) : undefined;
  }

  /**
   * What a model's items cost against its benchmark's: the median ratio of observed to benchmarked
   * rate over the workers with both (1 before any). Items of 64 rows against a calibration item of
   * one: about 1/64. A worker with only a benchmark is weighed at benchmark × this, in the same
   * units as the workers that have run the job's items (cached, see PLAN_CACHE_MS).
   */
  private benchScale(sha: string, now: number): number {
    const cached = this.scales.get(sha);
    if (cached && cached.version === this.version && now - cached.at < PLAN_CACHE_MS) return cached.value;
    const ratios: number[] = [];
    for (const w of this.workers.values()) {
      const r = w.rates.get(sha);
      if (r?.observed !== undefined && r.bench) ratios.push(r.observed / r.bench);
    }
    const value = ratios.length ? median(ratios) : 1;
    this.scales.set(sha, { at: now, version: this.version, value });
    return value;
  }

  /** Benchmark figure of a worker on a model. */
  benchmark(workerId: string, modelSha256: string): number | undefined {
    return this.workers.get(workerId)?.rates.get(modelSha256)?.bench;
  }

  /** Weight used for sharing: measured, else a GPU-table prior scaled to the measured ones. */
  private shareWeight(w: WorkerRun, j: JobRun): number {
    if (!this.opts.weighting) return 1;
    const now = this.opts.clock();
    const own = w.rates.get(j.modelSha256)?.at(now, this.benchScale(j.modelSha256, now));
    if (own !== undefined) return own;
    return this.priorScale(j) * priorWeight(w.info.device);
  }

  /** Measured weight per unit of GPU-table prior, averaged over the workers with a figure (else 1). */
  private priorScale(j: JobRun): number {
    let sum = 0;
    let priors = 0;
    const scale = this.benchScale(j.modelSha256, this.opts.clock());
    for (const o of this.workers.values()) {
      const v = o.rates.get(j.modelSha256)?.figure(scale);
      if (v !== undefined) {
        sum += v / priorWeight(o.info.device);
        priors++;
      }
    }
    return priors ? sum / priors : 1;
  }

  // ---------------------------------------------------------------- results

  /**
   * Marks items finished (accepted, or dropped as already complete) by `workerId`. Every hold on
   * them is released; holders other than `workerId` are returned so the hub can cancel there.
   * Feeds the observed rate.
   */
  finished(workerId: string, itemIds: readonly number[]): { mine: number[]; cancel: Map<string, number[]> } {
    const now = this.opts.clock();
    const mine: number[] = [];
    const cancel = new Map<string, number[]>();
    const touched = new Map<JobRun, Set<string>>();
    const me = this.workers.get(workerId);
    let sha: string | undefined;
    for (const itemId of itemIds) {
      const holders = this.holders.get(itemId);
      if (!holders) continue;
      // `unhold` changes the list: walk a copy, unless it has one holder (nearly always).
      for (const h of holders.length === 1 ? holders : [...holders]) {
        const w = this.workers.get(h);
        if (!w) continue;
        const j = this.unhold(w, itemId);
        if (!j) continue;
        sha = j.modelSha256;
        let set = touched.get(j);
        if (!set) touched.set(j, (set = new Set<string>()));
        set.add(h);
        if (h === workerId) mine.push(itemId);
        else push(cancel, h, itemId);
        j.failedOn.delete(itemId);
        j.attempts.delete(itemId);
      }
    }
    if (me && sha && mine.length) this.rateOf(me, sha).done(mine.length, now, this.benchScale(sha, now));
    for (const [j, ws] of touched) for (const id of ws) this.notifyHeld(j, id);
    return { mine, cancel };
  }

  /**
   * Records a failed attempt. The item is retried on a worker it has not failed on, unless it has
   * used up its attempts or no eligible worker is left: then it is final. A `transient` failure (the
   * device was lost and recreated) may be retried on the same worker.
   */
  failed(workerId: string, jobId: string, itemId: number, transient = false): FailureOutcome {
    const j = this.jobs.get(jobId);
    const w = this.workers.get(workerId);
    if (w?.held.get(itemId) === jobId) {
      this.unhold(w, itemId);
      if (j) this.notifyHeld(j, workerId);
    }
    if (!j) return 'final';
    if (this.holders.has(itemId)) return 'retry'; // a speculative copy is still running elsewhere
    const attempts = (j.attempts.get(itemId) ?? 0) + 1;
    j.attempts.set(itemId, attempts);
    const on = j.failedOn.get(itemId) ?? new Set<string>();
    if (!transient) on.add(workerId);
    j.failedOn.set(itemId, on);
    const someoneElse = [...this.workers.values()].some((o) => !on.has(o.info.id) && this.fits(o, j));
    if (attempts >= this.opts.maxAttempts || !someoneElse) {
      j.failedOn.delete(itemId);
      j.attempts.delete(itemId);
      return 'final';
    }
    j.requeued.push(itemId);
    return 'retry';
  }

  /**
   * Puts an item back in its job's queue to run on a worker not in `avoid` (a replica for a quorum,
   * or a rerun after a refuted result). Any hold on it is released first. Attempts are not counted:
   * this is not the item's failure.
   */
  requeue(jobId: string, itemId: number, avoid: readonly string[]): void {
    const j = this.jobs.get(jobId);
    if (!j) return;
    for (const h of [...(this.holders.get(itemId) ?? [])]) {
      const w = this.workers.get(h);
      if (w && this.unhold(w, itemId)) this.notifyHeld(j, h);
    }
    const set = j.failedOn.get(itemId) ?? new Set<string>();
    for (const a of avoid) set.add(a);
    j.failedOn.set(itemId, set);
    if (!j.requeued.includes(itemId)) j.requeued.push(itemId);
  }

  /**
   * Gives a job whose queues are empty and whose items nobody holds its pending items again (the
   * hub's stall check: a job the scheduler lost track of). Returns how many were queued; none when
   * the job still has anything queued or held.
   */
  restore(jobId: string, pending: IdRuns): number {
    const j = this.jobs.get(jobId);
    if (!j || this.queued(jobId) + j.held > 0) return 0;
    j.fresh = pending;
    return pending.size;
  }

  /**
   * Takes a queued item out of its job's queue (the hub's reference backend runs it instead).
   * False when it is not waiting in the queue (held, or unknown).
   */
  withdraw(jobId: string, itemId: number): boolean {
    const j = this.jobs.get(jobId);
    if (!j || this.holders.has(itemId)) return false;
    const i = j.requeued.indexOf(itemId);
    if (i < 0) return false;
    j.requeued.splice(i, 1);
    j.failedOn.delete(itemId);
    j.attempts.delete(itemId);
    return true;
  }

  /**
   * Adds items to a scheduled job, as runs of ids (a chunk its hub claimed from a shared store);
   * false if the job is not scheduled. Items in `avoid` wait for a worker other than the ones named
   * (the hub that held the chunk before left their answers waiting for a second opinion).
   */
  addFresh(jobId: string, runs: readonly IdRun[], avoid?: ReadonlyMap<number, readonly string[]>): boolean {
    const j = this.jobs.get(jobId);
    if (!j) return false;
    const skip = avoid?.size ? [...avoid.keys()].sort((a, b) => a - b) : [];
    for (const r of runs) {
      let from = r.first;
      for (const id of skip) {
        if (id < from || id > r.last) continue;
        if (id > from) j.fresh.pushRun(from, id - 1);
        this.requeue(jobId, id, avoid?.get(id) ?? []);
        from = id + 1;
      }
      if (from <= r.last) j.fresh.pushRun(from, r.last);
    }
    return true;
  }

  /** Queues items of a job again (results taken back from a quarantined worker). */
  requeueItems(jobId: string, itemIds: readonly number[], avoid: readonly string[] = []): void {
    for (const id of itemIds) this.requeue(jobId, id, avoid);
  }

  /**
   * Whether none of the ready workers here will take any of a job's queued items: none of them fits
   * the job (its requirements; its model unusable on them), or every queued item waits for a worker
   * other than each of them (they failed it, or gave the answer it needs a second opinion on). False
   * with nothing queued, or no worker ready. With several hubs, another hub's workers run such
   * items (`hub/claims.ts`).
   */
  stranded(jobId: string): boolean {
    const j = this.jobs.get(jobId);
    if (!j || j.fresh.size + j.requeued.length === 0) return false;
    const ready = [...this.workers.values()].filter((w) => w.ready);
    if (ready.length === 0) return false;
    const fit = ready.filter((w) => this.fits(w, j));
    if (fit.length === 0) return true;
    if (j.fresh.size > 0) return false;
    return j.requeued.every((id) => {
      const avoid = j.failedOn.get(id);
      return avoid !== undefined && fit.every((w) => avoid.has(w.info.id));
    });
  }

  /** Whether a ready worker outside `avoid` could run this job's items (with `soon`: shortly). */
  canAsk(jobId: string, avoid: readonly string[], soon = false): boolean {
    const j = this.jobs.get(jobId);
    if (!j) return false;
    const sha = j.modelSha256;
    for (const w of this.workers.values()) {
      // A worker that has benchmarked the model can take its items now; with `soon`, one that is
      // benchmarking it counts too. Without that, a replicated item failed outright at a job's
      // start while the other workers were still benchmarking. One whose benchmark fails stops
      // counting (`fits`), and the items waiting for it are unstranded then.
      const able = w.rates.get(sha)?.bench !== undefined || (soon && w.benchmarking.has(sha));
      if (w.ready && able && !avoid.includes(w.info.id) && this.fits(w, j)) return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- planning

  private effectivePriority(j: JobRun, now: number): number {
    if (j.deadline === null) return j.priority;
    const left = (j.deadline - now) / 1000;
    return j.priority + (left <= 0 ? 10 : Math.min(10, 60 / Math.max(left, 1)));
  }

  /** Jobs this worker could run, best first: priority (deadline-raised), then fewest items in flight. */
  private jobsFor(w: WorkerRun, now: number): JobRun[] {
    return [...this.jobs.values()]
      .filter((j) => this.fits(w, j))
      .sort((a, b) => this.effectivePriority(b, now) - this.effectivePriority(a, now) || a.held - b.held);
  }

  /** A worker's items/s on a job's model now (1 before any figure). */
  private rateFor(w: WorkerRun, j: JobRun): number {
    return this.weight(w.info.id, j.modelSha256) ?? 1;
  }

  private lowWater(w: WorkerRun, j: JobRun): number {
    const rate = this.rateFor(w, j);
    const low = Math.max(w.info.concurrency * j.batchSize * 2, Math.ceil(rate * this.opts.prefetchSeconds));
    return Math.min(low, this.opts.maxHeldItems);
  }

  private take(j: JobRun, w: WorkerRun, n: number, freshLimit = Infinity): number[] {
    const out: number[] = [];
    // Taken from the front in one splice (V8 trims an array's front in place): one splice per
    // item taken was O(n²) for a long queue, and stalled a hub that had 500,000 items requeued
    // for minutes. Items this worker failed on go back to the front, in order.
    let scanned = 0;
    const skipped: number[] = [];
    for (; scanned < j.requeued.length && out.length < n; scanned++) {
      const id = j.requeued[scanned] as number;
      if (j.failedOn.get(id)?.has(w.info.id)) skipped.push(id);
      else out.push(id);
    }
    if (scanned > 0) {
      j.requeued.splice(0, scanned);
      // concat, not unshift(...skipped): spreading a long list overflows the call stack.
      if (skipped.length > 0) j.requeued = skipped.concat(j.requeued);
    }
    if (this.opts.factoring || !j.split) {
      const stop = Math.min(n, out.length + freshLimit);
      j.fresh.takeInto(stop - out.length, out);
    }
    return out;
  }

  private assign(
    w: WorkerRun,
    j: JobRun,
    ids: number[],
    out: Assignment[],
    spec?: Assignment['speculative'],
  ): void {
    this.hold(w, j, ids);
    this.notifyHeld(j, w.info.id);
    out.push({ workerId: w.info.id, jobId: j.id, itemIds: ids, ...(spec ? { speculative: spec } : {}) });
  }

  /**
   * Decides what to do now: assignments, benchmarks to ask for, steals to carry out. A worker with
   * no figure for a job's model is benchmarked before it gets that job's items.
   */
  plan(only?: string | readonly string[]): Plan {
    const now = this.opts.clock();
    const plan: Plan = { assign: [], benchmark: [], steal: [] };
    if (!this.opts.factoring) this.staticSplits(plan);
    const workers =
      only === undefined
        ? [...this.workers.values()]
        : (typeof only === 'string' ? [only] : only)
            .map((id) => this.workers.get(id))
            .filter((w): w is WorkerRun => !!w);
    for (const w of workers) {
      if (!w.ready) {
        this.hungry.delete(w.info.id);
        continue;
      }
      const fresh = this.opts.freshLimit?.(w.info.id) ?? Infinity;
      let topped = false;
      for (const j of this.jobsFor(w, now)) {
        if (!w.rates.get(j.modelSha256)?.bench) {
          if (!w.benchmarking.has(j.modelSha256) && this.queued(j.id) + j.held > 0) {
            w.benchmarking.add(j.modelSha256);
            plan.benchmark.push({ workerId: w.info.id, modelSha256: j.modelSha256 });
          }
          continue;
        }
        const low = this.lowWater(w, j);
        if (w.held.size >= low) {
          topped = true;
          break;
        }
        const remaining = this.queued(j.id);
        if (remaining === 0) continue;
        if (!this.opts.factoring && !j.split) continue; // waiting for the static split
        const cap =
          Math.min(
            Math.max(low, Math.ceil(this.rateFor(w, j) * this.opts.maxShardSeconds)),
            this.opts.maxHeldItems,
          ) - w.held.size;
        const n = this.opts.factoring
          ? Math.max(
              Math.min(factoringChunk(remaining, this.shareWeight(w, j), this.totalWeight(j), 1), cap),
              low - w.held.size,
            )
          : low - w.held.size;
        const ids = this.take(j, w, n, fresh);
        if (ids.length === 0) continue;
        this.assign(w, j, ids, plan.assign);
        topped = true;
        break;
      }
      if (topped) this.hungry.delete(w.info.id);
      else this.hungry.add(w.info.id);
      if (fresh <= 0) continue; // on probation and at its limit: no steals or copies either
      if (!topped && this.opts.stealing) this.planSteal(w, now, plan);
      if (!topped && this.opts.speculation && w.held.size === 0 && !w.stealing)
        this.planSpeculation(w, now, plan);
    }
    return plan;
  }

  /** Sum of the share weights of the workers that could run `j` (cached, see PLAN_CACHE_MS). */
  /** Workers whose last plan left them waiting for work (the ones worth planning again soon). */
  hungryWorkers(): string[] {
    return [...this.hungry];
  }

  private totalWeight(j: JobRun): number {
    const now = this.opts.clock();
    const cached = this.totals.get(j.id);
    if (cached && cached.version === this.version && now - cached.at < PLAN_CACHE_MS) return cached.value;
    // shareWeight's prior for workers without a figure, computed once instead of once per worker.
    const scale = this.priorScale(j);
    const benchScale = this.benchScale(j.modelSha256, now);
    let total = 0;
    for (const o of this.workers.values()) {
      if (!o.ready || !this.fits(o, j)) continue;
      total += this.opts.weighting
        ? (o.rates.get(j.modelSha256)?.at(now, benchScale) ?? scale * priorWeight(o.info.device))
        : 1;
    }
    this.totals.set(j.id, { at: now, version: this.version, value: total });
    return total;
  }

  /**
   * The workers holding `j`'s items, latest predicted finish first (cached, see PLAN_CACHE_MS): the
   * candidates a thief or an idle worker looks at first, each checked against its current figures.
   */
  private victimsOf(j: JobRun, now: number): WorkerRun[] {
    const cached = this.rankings.get(j.id);
    if (cached && cached.version === this.version && now - cached.at < PLAN_CACHE_MS) return cached.victims;
    const ranked: { w: WorkerRun; finish: number }[] = [];
    for (const vid of j.heldBy.keys()) {
      const w = this.workers.get(vid);
      if (w) ranked.push({ w, finish: predictedFinish(w.held.size, this.weight(vid, j.modelSha256) ?? 0) });
    }
    ranked.sort((a, b) => b.finish - a.finish);
    const victims = ranked.map((r) => r.w);
    this.rankings.set(j.id, { at: now, version: this.version, victims });
    return victims;
  }

  /** Static mode: once every eligible worker has a benchmark, split the job's items by weight. */
  private staticSplits(plan: Plan): void {
    for (const j of this.jobs.values()) {
      if (j.split || this.queued(j.id) === 0) continue;
      const ws = [...this.workers.values()].filter((w) => w.ready && this.fits(w, j));
      if (ws.length === 0) continue;
      if (ws.some((w) => !w.rates.get(j.modelSha256)?.bench)) {
        for (const w of ws) {
          if (!w.rates.get(j.modelSha256)?.bench && !w.benchmarking.has(j.modelSha256)) {
            w.benchmarking.add(j.modelSha256);
            plan.benchmark.push({ workerId: w.info.id, modelSha256: j.modelSha256 });
          }
        }
        continue;
      }
      const weights = ws.map((w) => this.shareWeight(w, j));
      const total = weights.reduce((a, b) => a + b, 0);
      let left = this.queued(j.id);
      const all = this.take(j, ws[0] as WorkerRun, left);
      let off = 0;
      ws.forEach((w, i) => {
        const n = i === ws.length - 1 ? left : Math.round((all.length * (weights[i] as number)) / total);
        const ids = all.slice(off, off + Math.min(n, left));
        off += ids.length;
        left -= ids.length;
        if (ids.length) this.assign(w, j, ids, plan.assign);
      });
      j.split = true;
    }
  }

  /** An underloaded worker with nothing queued steals from the worker predicted to finish last. */
  private planSteal(thief: WorkerRun, now: number, plan: Plan): void {
    if (thief.stealing) return;
    let best: { victim: WorkerRun; job: JobRun; finish: number; thiefFinish: number; k: number } | undefined;
    for (const j of this.jobsFor(thief, now)) {
      if (this.queued(j.id) > 0 || j.held === 0) continue;
      const rt = this.weight(thief.info.id, j.modelSha256);
      if (!rt) continue;
      const ht = thief.held.size;
      let checked = 0;
      for (const v of this.victimsOf(j, now)) {
        if (checked++ >= VICTIMS_CHECKED) break;
        const hv = j.heldBy.get(v.info.id) ?? 0;
        if (hv === 0 || v === thief || v.revoking || v.noStealUntil > now) continue;
        const rv = this.weight(v.info.id, j.modelSha256) ?? 0;
        const finish = predictedFinish(v.held.size, rv);
        const thiefFinish = predictedFinish(ht, rt) + 1 / rt;
        if (!isImbalanced(finish, thiefFinish, this.opts)) continue;
        const k = Math.min(hv, stealSize(v.held.size, rv, ht, rt), this.opts.maxHeldItems - ht);
        if (k < 1) continue;
        if (!best || finish > best.finish) best = { victim: v, job: j, finish, thiefFinish, k };
      }
      if (best) break; // steal for the best job first
    }
    if (!best) return;
    const { victim, job, k } = best;
    // The newest items of that job at the victim (the least likely to have started) that the thief
    // may run: not one it failed, nor one waiting for a second opinion on its own answer (stealing
    // that back gave a worker two votes on one item).
    const avoids = (id: number) => job.failedOn.get(id)?.has(thief.info.id) === true;
    const mine = [...victim.held].filter(([id, jid]) => jid === job.id && !avoids(id)).map(([id]) => id);
    const itemIds = mine.slice(-k).filter((id) => (this.holders.get(id)?.length ?? 0) === 1);
    if (itemIds.length === 0) return;
    thief.stealing = true;
    victim.revoking = true;
    plan.steal.push({
      thief: thief.info.id,
      victim: victim.info.id,
      jobId: job.id,
      itemIds,
      reason: `victim predicted to finish in ${best.finish.toFixed(2)}s, thief in ${best.thiefFinish.toFixed(2)}s`,
    });
  }

  /**
   * The victim gave up `revoked` (unstarted) items of a steal: they move to the thief. Returns the
   * assignment to send the thief (none if it is gone, in which case the items are queued again).
   */
  stealDone(s: StealPlan, revoked: readonly number[]): Assignment | undefined {
    const thief = this.workers.get(s.thief);
    const victim = this.workers.get(s.victim);
    const j = this.jobs.get(s.jobId);
    if (thief) thief.stealing = false;
    if (victim) {
      victim.revoking = false;
      if (revoked.length === 0) victim.noStealUntil = this.opts.clock() + 250;
    }
    if (!victim || !j) return undefined;
    const asked = new Set(s.itemIds);
    const moved = revoked.filter((id) => asked.has(id) && victim.held.get(id) === j.id);
    for (const id of moved) this.unhold(victim, id);
    this.notifyHeld(j, victim.info.id);
    if (moved.length === 0) return undefined;
    if (!thief || !thief.ready) {
      j.requeued.push(...moved);
      return undefined;
    }
    const out: Assignment[] = [];
    this.assign(thief, j, moved, out);
    return out[0];
  }

  /** An idle worker runs a copy of a straggling item, within the cap on copies. */
  private planSpeculation(w: WorkerRun, now: number, plan: Plan): void {
    if (this.copies >= speculationCap(this.workers.size, this.opts)) return;
    let best: { victim: WorkerRun; job: JobRun; finish: number; itemId: number } | undefined;
    for (const j of this.jobsFor(w, now)) {
      if (this.queued(j.id) > 0 || j.held === 0) continue;
      const rw = this.weight(w.info.id, j.modelSha256);
      if (!rw) continue;
      let checked = 0;
      for (const v of this.victimsOf(j, now)) {
        if (checked++ >= VICTIMS_CHECKED) break;
        if (v === w || v.revoking || !j.heldBy.has(v.info.id)) continue;
        const finish = predictedFinish(v.held.size, this.weight(v.info.id, j.modelSha256) ?? 0);
        if (!shouldSpeculate(finish, rw, this.opts) || (best && finish <= best.finish)) continue;
        let itemId: number | undefined;
        for (const [id, jid] of v.held) {
          if (jid !== j.id || (this.holders.get(id)?.length ?? 0) !== 1 || j.failedOn.get(id)?.has(w.info.id))
            continue;
          itemId = id;
          break;
        }
        if (itemId !== undefined) best = { victim: v, job: j, finish, itemId };
      }
    }
    if (!best) return;
    this.assign(w, best.job, [best.itemId], plan.assign, {
      fromWorkerId: best.victim.info.id,
      reason: `holder predicted to finish in ${best.finish.toFixed(2)}s`,
    });
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/** The median of a non-empty list (sorts it). */
function median(xs: number[]): number {
  xs.sort((a, b) => a - b);
  const mid = xs.length >> 1;
  return xs.length % 2 ? (xs[mid] as number) : ((xs[mid - 1] as number) + (xs[mid] as number)) / 2;
}
