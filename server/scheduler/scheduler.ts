/**
 * The scheduler: decides which worker runs which items. Pure bookkeeping and decisions with an
 * injected clock — no sockets, no store — so its choices can be unit-tested deterministically.
 * The hub (server/hub.ts) carries out what it decides.
 *
 * Model: each job keeps a queue of unassigned items; each worker holds the items assigned to it and
 * not yet finished. A worker is topped up whenever its holding falls below a low-water mark (so it
 * never waits on the hub), with a chunk sized by weighted factoring: a share of the remaining items
 * proportional to its weight, halving as the job drains so the tail is fine-grained.
 */
import { matchesFilter, type FilterableWorker } from './filter.ts';
import type { WorkerFilter } from '../store/store.ts';

/** Switches and knobs. */
export interface SchedulerOptions {
  clock: () => number;
  /** false: every worker weighs the same (equal split). */
  weighting: boolean;
  /** Seconds of work a worker holds beyond what it is running. */
  prefetchSeconds: number;
  /** Attempts per item before it ends as failed. */
  maxAttempts: number;
  /** Smoothing of the observed rate (weight of the newest sample). */
  rateAlpha: number;
}

export const DEFAULT_SCHEDULER_OPTIONS: SchedulerOptions = {
  clock: () => Date.now(),
  weighting: true,
  prefetchSeconds: 0.5,
  maxAttempts: 3,
  rateAlpha: 0.3,
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
}

/** Items to send to a worker. */
export interface Assignment {
  workerId: string;
  jobId: string;
  itemIds: number[];
}

interface JobRun extends SchedJob {
  fresh: number[];
  freshHead: number;
  /** Items handed back (worker lost, released, failed): they go out before fresh ones. */
  requeued: number[];
  /** Workers an item already failed on. */
  failedOn: Map<number, Set<string>>;
  attempts: Map<number, number>;
  held: number;
}

interface WorkerRun {
  info: SchedWorker;
  ready: boolean;
  /** Benchmarked items/s per model. */
  bench: Map<string, number>;
  /** Observed items/s per model (EWMA). */
  observed: Map<string, number>;
  benchmarking: Set<string>;
  unusable: Set<string>;
  /** itemId → jobId of items assigned and not finished. */
  held: Map<number, string>;
  /** For the observed rate: when the current window started and items done in it. */
  windowStart: number;
  windowDone: number;
}

/** What happened to a failed item. */
export type FailureOutcome = 'retry' | 'final';

export class Scheduler {
  private readonly opts: SchedulerOptions;
  private readonly jobs = new Map<string, JobRun>();
  private readonly workers = new Map<string, WorkerRun>();
  /** itemId → workerId holding it. */
  private readonly holder = new Map<number, string>();

  constructor(opts: Partial<SchedulerOptions> = {}) {
    this.opts = { ...DEFAULT_SCHEDULER_OPTIONS, ...opts };
    if (this.opts.prefetchSeconds < 0) throw new Error('prefetchSeconds must be >= 0');
    if (this.opts.maxAttempts < 1) throw new Error('maxAttempts must be >= 1');
  }

  // ---- jobs ----

  /** Adds a job with its unfinished items (in order). */
  addJob(job: SchedJob, pending: number[]): void {
    if (this.jobs.has(job.id)) throw new Error(`job ${job.id} already scheduled`);
    this.jobs.set(job.id, {
      ...job,
      fresh: pending.slice(),
      freshHead: 0,
      requeued: [],
      failedOn: new Map(),
      attempts: new Map(),
      held: 0,
    });
  }

  /** Changes a job's priority. */
  setPriority(jobId: string, priority: number): void {
    const j = this.jobs.get(jobId);
    if (j) j.priority = priority;
  }

  /** Removes a job; returns, per worker, the items it still held (to cancel there). */
  removeJob(jobId: string): Map<string, number[]> {
    const out = new Map<string, number[]>();
    if (!this.jobs.delete(jobId)) return out;
    for (const w of this.workers.values()) {
      for (const [itemId, j] of w.held) {
        if (j !== jobId) continue;
        w.held.delete(itemId);
        this.holder.delete(itemId);
        const list = out.get(w.info.id) ?? [];
        list.push(itemId);
        out.set(w.info.id, list);
      }
    }
    return out;
  }

  /** Unassigned items of a job. */
  queued(jobId: string): number {
    const j = this.jobs.get(jobId);
    return j ? j.fresh.length - j.freshHead + j.requeued.length : 0;
  }

  /** Items of a job currently held by workers. */
  inFlight(jobId: string): number {
    return this.jobs.get(jobId)?.held ?? 0;
  }

  hasJob(jobId: string): boolean {
    return this.jobs.has(jobId);
  }

  // ---- workers ----

  /** Adds (or re-adds after a reconnect) a worker; it holds nothing until planned. */
  addWorker(info: SchedWorker): void {
    const old = this.workers.get(info.id);
    if (old) {
      old.info = info;
      return;
    }
    this.workers.set(info.id, {
      info,
      ready: true,
      bench: new Map(),
      observed: new Map(),
      benchmarking: new Set(),
      unusable: new Set(),
      held: new Map(),
      windowStart: this.opts.clock(),
      windowDone: 0,
    });
  }

  /** Removes a worker; every item it held goes back to its job's queue. Returns them per job. */
  removeWorker(workerId: string): Map<string, number[]> {
    const w = this.workers.get(workerId);
    if (!w) return new Map();
    const back = this.takeBack(w, [...w.held.keys()]);
    this.workers.delete(workerId);
    return back;
  }

  /** Pauses or resumes a worker (paused workers get nothing new). */
  setReady(workerId: string, ready: boolean): void {
    const w = this.workers.get(workerId);
    if (w) w.ready = ready;
  }

  /** Items a worker holds. */
  heldBy(workerId: string): number[] {
    return [...(this.workers.get(workerId)?.held.keys() ?? [])];
  }

  /** The worker holding an item, if any. */
  holderOf(itemId: number): string | undefined {
    return this.holder.get(itemId);
  }

  /** Hands items back from a worker (it released them, or they were revoked). */
  release(workerId: string, itemIds: readonly number[]): Map<string, number[]> {
    const w = this.workers.get(workerId);
    return w ? this.takeBack(w, itemIds) : new Map();
  }

  private takeBack(w: WorkerRun, itemIds: readonly number[]): Map<string, number[]> {
    const out = new Map<string, number[]>();
    for (const itemId of itemIds) {
      const jobId = w.held.get(itemId);
      if (jobId === undefined) continue;
      w.held.delete(itemId);
      this.holder.delete(itemId);
      const j = this.jobs.get(jobId);
      if (!j) continue;
      j.held--;
      j.requeued.push(itemId);
      const list = out.get(jobId) ?? [];
      list.push(itemId);
      out.set(jobId, list);
    }
    return out;
  }

  // ---- weights ----

  /** Records a benchmark result (items/s) of a worker on a model. */
  setBenchmark(workerId: string, modelSha256: string, itemsPerSec: number): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    w.benchmarking.delete(modelSha256);
    w.bench.set(modelSha256, Math.max(itemsPerSec, 1e-6));
  }

  /** Marks a model as not runnable on a worker (its benchmark failed). */
  setUnusable(workerId: string, modelSha256: string): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    w.benchmarking.delete(modelSha256);
    w.unusable.add(modelSha256);
  }

  /** A worker's weight on a model: observed rate once known, else its benchmark, else undefined. */
  weight(workerId: string, modelSha256: string): number | undefined {
    const w = this.workers.get(workerId);
    if (!w) return undefined;
    return w.observed.get(modelSha256) ?? w.bench.get(modelSha256);
  }

  /** Benchmark figure of a worker on a model. */
  benchmark(workerId: string, modelSha256: string): number | undefined {
    return this.workers.get(workerId)?.bench.get(modelSha256);
  }

  // ---- results ----

  /**
   * Marks items finished (accepted, or dropped as already complete). Returns the ids that the
   * worker actually held. Feeds the observed rate.
   */
  finished(workerId: string, itemIds: readonly number[]): number[] {
    const now = this.opts.clock();
    const held: number[] = [];
    for (const itemId of itemIds) {
      const h = this.holder.get(itemId);
      if (h === undefined) continue;
      const w = this.workers.get(h);
      const jobId = w?.held.get(itemId);
      w?.held.delete(itemId);
      this.holder.delete(itemId);
      if (jobId !== undefined) {
        const j = this.jobs.get(jobId);
        if (j) j.held--;
      }
      if (h === workerId) held.push(itemId);
    }
    const w = this.workers.get(workerId);
    if (w && held.length) this.observe(w, held.length, now);
    return held;
  }

  /** Items completed elsewhere: forget them wherever they are still held or queued. */
  private observe(w: WorkerRun, n: number, now: number): void {
    w.windowDone += n;
    const elapsed = (now - w.windowStart) / 1000;
    if (elapsed < 0.5) return;
    const sha = this.currentModel(w);
    if (sha) {
      const sample = w.windowDone / elapsed;
      const prev = w.observed.get(sha) ?? w.bench.get(sha);
      w.observed.set(sha, prev === undefined ? sample : prev + this.opts.rateAlpha * (sample - prev));
    }
    w.windowStart = now;
    w.windowDone = 0;
  }

  private currentModel(w: WorkerRun): string | undefined {
    for (const jobId of w.held.values()) return this.jobs.get(jobId)?.modelSha256;
    return undefined;
  }

  /** Starts a fresh rate window when a worker goes from idle to busy (idle time is not slowness). */
  private touchWindow(w: WorkerRun): void {
    if (w.held.size === 0) {
      w.windowStart = this.opts.clock();
      w.windowDone = 0;
    }
  }

  /**
   * Records a failed attempt. The item is retried on a worker it has not failed on, unless it has
   * used up its attempts or no eligible worker is left: then it is final.
   */
  failed(workerId: string, jobId: string, itemId: number): FailureOutcome {
    const j = this.jobs.get(jobId);
    const w = this.workers.get(workerId);
    if (w?.held.get(itemId) === jobId) {
      w.held.delete(itemId);
      this.holder.delete(itemId);
      if (j) j.held--;
    }
    if (!j) return 'final';
    const attempts = (j.attempts.get(itemId) ?? 0) + 1;
    j.attempts.set(itemId, attempts);
    const on = j.failedOn.get(itemId) ?? new Set<string>();
    on.add(workerId);
    j.failedOn.set(itemId, on);
    const someoneElse = [...this.workers.values()].some(
      (o) => !on.has(o.info.id) && matchesFilter(o.info, j.requirements) && !o.unusable.has(j.modelSha256),
    );
    if (attempts >= this.opts.maxAttempts || !someoneElse) {
      j.failedOn.delete(itemId);
      j.attempts.delete(itemId);
      return 'final';
    }
    j.requeued.push(itemId);
    return 'retry';
  }

  // ---- planning ----

  /** Effective priority: the job's priority, raised as its deadline nears. */
  private effectivePriority(j: JobRun, now: number): number {
    if (j.deadline === null) return j.priority;
    const left = (j.deadline - now) / 1000;
    return j.priority + (left <= 0 ? 10 : Math.min(10, 60 / Math.max(left, 1)));
  }

  /** Jobs this worker could run now, best first. */
  private jobsFor(w: WorkerRun, now: number): JobRun[] {
    const list = [...this.jobs.values()].filter(
      (j) => matchesFilter(w.info, j.requirements) && !w.unusable.has(j.modelSha256),
    );
    return list.sort(
      (a, b) => this.effectivePriority(b, now) - this.effectivePriority(a, now) || a.held - b.held,
    );
  }

  /** How many items a worker should hold on a job to never run dry. */
  private lowWater(w: WorkerRun, j: JobRun): number {
    const rate = this.weight(w.info.id, j.modelSha256) ?? 1;
    const base = w.info.concurrency * j.batchSize * 2;
    return Math.max(base, Math.ceil(rate * this.opts.prefetchSeconds));
  }

  /** Weighted factoring: this worker's share of half the remaining items. */
  private chunk(w: WorkerRun, j: JobRun, remaining: number): number {
    let total = 0;
    for (const o of this.workers.values()) {
      if (!o.ready || !matchesFilter(o.info, j.requirements) || o.unusable.has(j.modelSha256)) continue;
      total += this.opts.weighting ? (this.weight(o.info.id, j.modelSha256) ?? 0) : 1;
    }
    const mine = this.opts.weighting ? (this.weight(w.info.id, j.modelSha256) ?? 0) : 1;
    const share = total > 0 ? mine / total : 1;
    const size = Math.ceil((remaining * share) / 2);
    return Math.min(remaining, Math.max(size, w.info.concurrency * j.batchSize));
  }

  private take(j: JobRun, w: WorkerRun, n: number): number[] {
    const out: number[] = [];
    // Requeued items first, skipping those that already failed on this worker.
    for (let i = 0; i < j.requeued.length && out.length < n;) {
      const id = j.requeued[i] as number;
      if (j.failedOn.get(id)?.has(w.info.id)) {
        i++;
        continue;
      }
      j.requeued.splice(i, 1);
      out.push(id);
    }
    while (out.length < n && j.freshHead < j.fresh.length) out.push(j.fresh[j.freshHead++] as number);
    if (j.freshHead > 4096 && j.freshHead * 2 > j.fresh.length) {
      j.fresh = j.fresh.slice(j.freshHead);
      j.freshHead = 0;
    }
    return out;
  }

  /**
   * Decides what to send now. Returns assignments to make and benchmarks to ask for. A worker with
   * no figure for a job's model is benchmarked before it gets that job's items.
   */
  plan(onlyWorker?: string): {
    assign: Assignment[];
    benchmark: { workerId: string; modelSha256: string }[];
  } {
    const now = this.opts.clock();
    const assign: Assignment[] = [];
    const benchmark: { workerId: string; modelSha256: string }[] = [];
    const workers = onlyWorker
      ? [this.workers.get(onlyWorker)].filter((w): w is WorkerRun => !!w)
      : [...this.workers.values()];
    for (const w of workers) {
      if (!w.ready) continue;
      for (const j of this.jobsFor(w, now)) {
        const remaining = this.queued(j.id);
        if (remaining === 0) continue;
        if (!w.bench.has(j.modelSha256)) {
          if (!w.benchmarking.has(j.modelSha256)) {
            w.benchmarking.add(j.modelSha256);
            benchmark.push({ workerId: w.info.id, modelSha256: j.modelSha256 });
          }
          continue;
        }
        const low = this.lowWater(w, j);
        if (w.held.size >= low) break;
        const n = Math.max(this.chunk(w, j, remaining), low - w.held.size);
        const ids = this.take(j, w, n);
        if (ids.length === 0) continue;
        this.touchWindow(w);
        for (const id of ids) {
          w.held.set(id, j.id);
          this.holder.set(id, w.info.id);
        }
        j.held += ids.length;
        assign.push({ workerId: w.info.id, jobId: j.id, itemIds: ids });
        break; // one job per worker per plan: the next plan tops up again
      }
    }
    return { assign, benchmark };
  }
}
