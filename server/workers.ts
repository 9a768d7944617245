/**
 * Live workers: who is connected, in what state, with what load. The durable part (identity,
 * capabilities, lifetime counters) lives in the store; this is the in-memory view the scheduler,
 * the REST API and the dashboard read.
 */
import type { Capabilities, Heartbeat, RegisterRequest } from '../protocol/events.ts';
import type { FairnessReport } from '../protocol/fairness.ts';
import type { WorkerJobFigures, WorkerState, WorkerView } from '../protocol/operator.ts';
import type { FilterableWorker } from './scheduler/filter.ts';
import type { JobRecord } from './store/store.ts';

export { WORKER_STATES, type WorkerState } from '../protocol/operator.ts';

/** A worker the hub knows in this process's life. */
export interface LiveWorker extends FilterableWorker {
  id: string;
  name: string;
  kind: 'browser' | 'native';
  backend: RegisterRequest['backend'];
  concurrency: number;
  capabilities: Capabilities;
  state: WorkerState;
  /** Socket.IO socket id while connected. */
  socketId: string | null;
  address: string;
  connectedAt: number;
  lastSeen: number;
  load: Heartbeat['load'] | null;
  queued: number;
  running: number;
  itemsDone: number;
  itemsFailed: number;
  reconnects: number;
}

/** Builds the filterable view of a register request. */
export function workerFacts(req: RegisterRequest): FilterableWorker {
  return {
    kind: req.kind,
    backend: req.backend,
    pool: req.pool ?? null,
    cores: req.capabilities.cores,
    gpuMemoryBytes: req.capabilities.gpu?.memoryBytes ?? null,
  };
}

/**
 * The public JSON of a worker (no socket ids, no secrets). With `figures` (built once per request
 * or push by {@link WorkerFigures.of}) it carries the live figures too: current rate, benchmark and
 * observed weight, fair share against actual share on each running job.
 */
export function workerJson(w: LiveWorker, figures?: WorkerFigures): WorkerView {
  const live = figures?.of(w);
  const first = live?.jobs[0];
  return {
    id: w.id,
    name: w.name,
    kind: w.kind,
    backend: w.backend,
    pool: w.pool,
    concurrency: w.concurrency,
    cores: w.cores,
    gpuMemoryBytes: w.gpuMemoryBytes,
    capabilities: w.capabilities,
    state: w.state,
    online: w.state !== 'offline',
    connectedAt: w.connectedAt,
    lastSeen: w.lastSeen,
    load: w.load,
    queued: w.queued,
    running: w.running,
    itemsDone: w.itemsDone,
    itemsFailed: w.itemsFailed,
    reconnects: w.reconnects,
    device: deviceOf(w),
    rate: live?.rate ?? 0,
    jobs: live?.jobs ?? [],
    benchmark: first?.benchmark ?? null,
    weight: first?.weight ?? null,
    observed: first?.observed ?? null,
    fairShare: first?.fairShare ?? null,
    share: first?.share ?? null,
  };
}

/** The adapter or GPU name of a worker; its host name (or backend) when it has none. */
export function deviceOf(w: Pick<LiveWorker, 'capabilities' | 'backend'>): string {
  return w.capabilities.gpu?.name ?? w.capabilities.hostname ?? w.backend;
}

/**
 * Accepted results per second of each worker, over a sliding window of samples of its lifetime
 * count. Fed by whoever reads the figures (the operator namespace samples every worker on each
 * tick, so the window stays full); one meter per hub, from {@link ratesOf}.
 */
export class RateMeter {
  private readonly samples = new Map<string, { t: number; n: number }[]>();

  constructor(
    private readonly windowMs = 5000,
    private readonly minGapMs = 200,
  ) {}

  /** Records `count` for `key` at `now`; returns the rate over the window (per second). */
  observe(key: string, count: number, now: number): number {
    let s = this.samples.get(key);
    if (!s) {
      s = [];
      this.samples.set(key, s);
    }
    const last = s[s.length - 1];
    if (!last || now - last.t >= this.minGapMs || count < last.n) {
      if (last && count < last.n) s.length = 0; // the counter went back (a restart): start over
      s.push({ t: now, n: count });
    }
    // Keep one sample at or before the window's start as the baseline.
    while (s.length > 2 && (s[1] as { t: number }).t <= now - this.windowMs) s.shift();
    const base = s[0] as { t: number; n: number };
    if (now - base.t > 3 * this.windowMs) {
      s.splice(0, s.length - 1);
      return 0;
    }
    const span = now - base.t;
    return span >= 500 ? ((count - base.n) * 1000) / span : 0;
  }

  /** Forgets a key. */
  forget(key: string): void {
    this.samples.delete(key);
  }
}

const meters = new WeakMap<object, RateMeter>();

/** The rate meter of a hub (created on first use). */
export function ratesOf(hub: object): RateMeter {
  let m = meters.get(hub);
  if (!m) {
    m = new RateMeter();
    meters.set(hub, m);
  }
  return m;
}

/** A worker's part in one job, from the job's fairness report. */
interface Share {
  fairShare: number;
  share: number;
  items: number;
}

/** What worker figures are computed from; the Hub is one. */
export interface WorkerFigureSource {
  readonly schedule: {
    weight(workerId: string, modelSha256: string): number | undefined;
    benchmark(workerId: string, modelSha256: string): number | undefined;
  };
  readonly jobs: {
    /** The jobs this hub runs now. */
    activeRecords(): JobRecord[];
    liveFairness(jobId: string): FairnessReport | undefined;
  };
}

/**
 * The live figures of workers at one moment: running jobs and their fairness reports are read
 * once, then looked up per worker, so a push about 500 workers costs one report per job.
 */
export class WorkerFigures {
  private running: { record: JobRecord; shares: Map<string, Share> }[] | undefined;

  private constructor(
    private readonly src: WorkerFigureSource,
    private readonly rates: RateMeter,
    private readonly now: number,
  ) {}

  /** Figures at `now`; the running jobs and their reports are read on the first worker asked about. */
  static of(src: WorkerFigureSource, now = Date.now()): WorkerFigures {
    return new WorkerFigures(src, ratesOf(src), now);
  }

  /** The running jobs (highest priority first) with each worker's shares in them. */
  private get jobs(): { record: JobRecord; shares: Map<string, Share> }[] {
    this.running ??= this.src.jobs
      .activeRecords()
      .filter((j) => j.state === 'running')
      .sort((a, b) => b.priority - a.priority || a.createdAt - b.createdAt)
      .slice(0, 50)
      .map((record) => {
        const shares = new Map<string, Share>();
        for (const r of this.src.jobs.liveFairness(record.id)?.workers ?? []) {
          shares.set(r.workerId, { fairShare: r.expectedShare, share: r.actualShare, items: r.items });
        }
        return { record, shares };
      });
    return this.running;
  }

  /** One worker's figures (samples its rate). */
  of(w: LiveWorker): { rate: number; jobs: WorkerJobFigures[] } {
    const rate = this.rates.observe(w.id, w.itemsDone, this.now);
    const jobs: WorkerJobFigures[] = [];
    for (const { record, shares } of this.jobs) {
      const benchmark = this.src.schedule.benchmark(w.id, record.modelSha256) ?? null;
      const weight = this.src.schedule.weight(w.id, record.modelSha256) ?? null;
      const s = shares.get(w.id);
      if (benchmark === null && weight === null && !s) continue;
      const took = s !== undefined && (s.items > 0 || s.fairShare > 0);
      jobs.push({
        jobId: record.id,
        model: record.modelName,
        benchmark,
        weight,
        observed: s && s.items > 0 ? weight : null,
        fairShare: took ? s.fairShare : null,
        share: took ? s.share : null,
        items: s?.items ?? 0,
      });
    }
    return { rate, jobs };
  }
}
