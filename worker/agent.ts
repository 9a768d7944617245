/**
 * The worker's run loop, the same in browsers and on native nodes: it registers with the hub on
 * every (re)connect, keeps a local queue of assigned items that the hub keeps fed, runs them on
 * `concurrency` runners (each with its own loaded session), and sends results back through the
 * {@link Outbox}. A runner may hand its session the next batch before the current one is done
 * (`batchesInFlight`): a backend that runs elsewhere (the browser's inference Web Worker, a native
 * node's session thread) then starts it the moment the first one ends, instead of idling for a
 * round trip to the agent.
 *
 * Stealing depends on one invariant: an item is either in the local queue (revocable) or taken by a
 * runner (it will produce a result or a failure here). Every handler that touches the queue runs
 * synchronously, and a runner takes its batch synchronously right before running it, so a
 * `shard:revoke` reply is exact.
 *
 * Lifecycle: `idle` → `start()` → `running` → `drain()` → `draining` → `closed` (or `close()` from
 * any state). The agent owns the socket it is given: closing it disconnects.
 */
import type { Socket } from 'socket.io-client';
import type {
  Ack,
  AssignedItem,
  Backend as BackendName,
  BenchmarkReply,
  BenchmarkRequest,
  CancelNotice,
  ControlNotice,
  ErrorBody,
  Heartbeat,
  ItemFailure,
  RegisterReply,
  RegisterRequest,
  Response,
  RevokeReply,
  RevokeRequest,
  ShardAssign,
} from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import {
  BackendError,
  classifyError,
  errorMessage,
  silentLogger,
  type Backend,
  type BackendFactory,
  type LoadedModel,
  type WorkerLogger,
} from './backend.ts';
import { benchmarkBatchSize, runBenchmark, type BenchmarkOptions } from './benchmark.ts';
import { ItemQueue } from './item-queue.ts';
import type { ModelStore } from './model-cache.ts';
import { Outbox, type OutboxOptions, type WorkerSocket } from './outbox.ts';
import { sleep, systemClock, type Clock } from './clock.ts';
import { ModelSessions, type DownloadProgress, type SessionLease } from './sessions.ts';
import { type HeaderCache, unpackTensors } from '../protocol/pack.ts';
import { prepareInputs, runStep, type StageModel } from '../pipeline/stages.ts';
import { checkOutputs, toBytes, toWireTensor } from './wire.ts';

export type { WorkerSocket } from './outbox.ts';
export type { DownloadProgress } from './sessions.ts';

/** Lifecycle states of a {@link WorkerAgent}. */
export type AgentStatus = 'idle' | 'running' | 'draining' | 'closed';

/** An item of a shard as it arrives: its id, and its inputs (a throw says why it has none). */
export interface ShardItem {
  id: number;
  inputs: () => WireTensor[];
}

/** What a UI shows about a worker. */
export interface AgentStats {
  status: AgentStatus;
  connected: boolean;
  registered: boolean;
  workerId?: string;
  backend?: BackendName;
  backendReason?: string;
  paused: boolean;
  /** Fraction of time spent computing, 0..1 (1: no throttling). */
  throttle: number;
  queued: number;
  running: number;
  itemsDone: number;
  itemsFailed: number;
  /** Items finished per second over the last ~5 s. */
  rate: number;
  /** Results waiting for (or awaiting) the hub's ack. */
  unsent: number;
  download?: DownloadProgress;
  /** The model being benchmarked now, if any (the hub asks before it sends a model's items). */
  benchmarking?: string;
  /** The last error worth showing (register refused, model load failed...). */
  lastError?: string;
}

/** Events a {@link WorkerAgent} emits. */
export interface AgentEvents {
  /** Figures changed (coalesced: at most once per tick). */
  stats: (stats: AgentStats) => void;
  /** Registered on a (re)connection. */
  registered: (reply: RegisterReply) => void;
  /** The hub refused the registration (the agent registers again on the next connect). */
  error: (err: ErrorBody) => void;
  /** The agent closed (after `close()`, a finished drain or a hub `drain`). */
  closed: () => void;
}

/** Options of a {@link WorkerAgent}. */
export interface WorkerAgentOptions extends OutboxOptions {
  /** A typed socket to `${hub}/worker`, connected or connecting (connected by `start()` otherwise). */
  socket: WorkerSocket;
  /** Creates the backend once, when the agent starts. */
  backend: BackendFactory;
  store: ModelStore;
  /**
   * The hub's base URL; model bytes come from `hubUrl + model.url`. A function for a worker that
   * moves between hubs: the one it is connected to.
   */
  hubUrl: string | (() => string);
  /** What to register as; `backend`, `concurrency` and `capabilities.backendReason` come from the agent. */
  register: Omit<RegisterRequest, 'backend' | 'concurrency'>;
  logger?: WorkerLogger;
  /** Runners, each with its own loaded session (default 1). */
  concurrency?: number;
  /**
   * Batches each runner hands its session at once (default 1: the next batch is taken when the
   * last one is done). More suits a backend that queues runs and carries them out in order, in a
   * thread of its own (the browser's inference worker, a native node's session threads): with 2,
   * the next batch is already there when one ends. Items handed over count as running: they can
   * no longer be revoked. A throttled worker keeps one batch in flight, so its sleeps follow its
   * busy time.
   */
  batchesInFlight?: number;
  /** Load figures for heartbeats (default zeros: browsers). */
  load?: () => Heartbeat['load'];
  /** Headers for model downloads (e.g. authorization). */
  fetchHeaders?: Record<string, string>;
  /** Benchmark limits (tests shorten them). */
  benchmark?: Omit<BenchmarkOptions, 'signal'>;
  /** Loaded models kept per runner before the least recently used is disposed (default 2). */
  modelsPerRunner?: number;
  /** How long a drain waits for results to be acked before closing anyway (default 60 s). */
  drainTimeoutMs?: number;
}

interface QueueEntry {
  itemId: number;
  jobId: string;
  shardId: string;
  model: ModelInfo;
  inputs: WireTensor[];
}

const RATE_WINDOW_MS = 5000;
const EMPTY_LOAD: Heartbeat['load'] = { cpu: 0, memUsedBytes: 0, memTotalBytes: 0 };

/** The environment-neutral run loop of a worker; see the file comment. */
export class WorkerAgent {
  private readonly opts: WorkerAgentOptions;
  private readonly socket: WorkerSocket;
  private readonly log: WorkerLogger;
  private readonly concurrency: number;
  private readonly batchesInFlight: number;
  private readonly outbox: Outbox;
  private readonly sessions: ModelSessions;
  /** Each runner's loop, once started. */
  private loops: Promise<void>[] = [];
  private backend: Backend | undefined;
  private state: AgentStatus = 'idle';
  private paused = false;
  private throttleFraction = 1;
  private readonly queue = new ItemQueue<QueueEntry>();
  private readonly running = new Map<number, QueueEntry>();
  /** Running items whose results are no longer wanted (cancelled while running). */
  private readonly discard = new Set<number>();
  private activeBatches = 0;
  private benchmarking = 0;
  private benchmarkModel: string | undefined;
  private connected = false;
  private registered = false;
  /** Bumped on every connect and disconnect, so late replies from an old connection are ignored. */
  private connGen = 0;
  private workerId: string | undefined;
  private stopHeartbeats: (() => void) | undefined;
  private registerRetry: (() => void) | undefined;
  /** Time for heartbeats, pauses and figures (`opts.clock`, shared with the outbox). */
  private readonly clock: Clock;
  private itemsDone = 0;
  private itemsFailed = 0;
  private completions: { t: number; n: number }[] = [];
  private firstRunAt = 0;
  private download: DownloadProgress | undefined;
  private lastError: string | undefined;
  private readonly fetchAbort = new AbortController();
  private waiters: (() => void)[] = [];
  private readonly listeners: { [E in keyof AgentEvents]: Set<AgentEvents[E]> } = {
    stats: new Set(),
    registered: new Set(),
    error: new Set(),
    closed: new Set(),
  };
  private statsScheduled = false;
  private benchmarkChain: Promise<void> = Promise.resolve();
  private drainPromise: Promise<void> | undefined;
  /** The last `items:release` waiting for its ack. */
  private releases: Promise<unknown> = Promise.resolve();
  private closePromise: Promise<void> | undefined;
  /** Takes the agent's handlers off the socket (`listen()` sets it). */
  private unlisten: () => void = () => undefined;

  constructor(opts: WorkerAgentOptions) {
    const concurrency = opts.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1)
      throw new RangeError('concurrency must be an integer >= 1');
    const inFlight = opts.batchesInFlight ?? 1;
    if (!Number.isInteger(inFlight) || inFlight < 1)
      throw new RangeError('batchesInFlight must be an integer >= 1');
    this.batchesInFlight = inFlight;
    this.opts = opts;
    this.socket = opts.socket;
    this.log = opts.logger ?? silentLogger;
    this.concurrency = concurrency;
    this.clock = opts.clock ?? systemClock;
    this.outbox = new Outbox(opts.socket, {
      ...opts,
      logger: this.log,
      busy: () => this.queue.length > 0 || this.activeBatches > 0,
    });
    this.sessions = new ModelSessions({
      runners: concurrency,
      hubUrl: opts.hubUrl,
      store: opts.store,
      headers: opts.fetchHeaders,
      modelsPerRunner: opts.modelsPerRunner,
      signal: this.fetchAbort.signal,
      load: (model, bytes) => {
        if (!this.backend) return Promise.reject(new Error('backend not ready'));
        return this.backend.load(model, bytes);
      },
      onProgress: (p) => {
        this.download = p;
        this.changed();
      },
    });
  }

  /** The lifecycle state. */
  get status(): AgentStatus {
    return this.state;
  }

  /** A snapshot of the figures a UI shows. */
  get stats(): AgentStats {
    return {
      status: this.state,
      connected: this.connected,
      registered: this.registered,
      workerId: this.workerId,
      backend: this.backend?.name,
      backendReason: this.backend?.reason,
      paused: this.paused,
      throttle: this.throttleFraction,
      queued: this.queue.length,
      running: this.running.size,
      itemsDone: this.itemsDone,
      itemsFailed: this.itemsFailed,
      rate: this.rate(),
      unsent: this.outbox.counts.pending + this.outbox.counts.inFlight,
      download: this.download ? { ...this.download } : undefined,
      benchmarking: this.benchmarkModel,
      lastError: this.lastError,
    };
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on<E extends keyof AgentEvents>(event: E, listener: AgentEvents[E]): () => void {
    const set = this.listeners[event] as Set<AgentEvents[E]>;
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Creates the backend, attaches to the socket and starts the runners. Registration happens on
   * every connect. Throws if called twice; if the backend cannot be created the agent closes.
   */
  async start(): Promise<void> {
    if (this.state !== 'idle') throw new Error(`WorkerAgent already started (status ${this.state})`);
    this.state = 'running';
    this.listen();
    try {
      this.backend = await this.opts.backend();
    } catch (err) {
      this.lastError = `backend could not be created: ${errorMessage(err)}`;
      this.log.error({ error: errorMessage(err) }, 'backend could not be created');
      await this.close();
      throw err;
    }
    if (this.state !== 'running') return; // closed while the backend was being created
    this.log.info(
      { backend: this.backend.name, reason: this.backend.reason, concurrency: this.concurrency },
      'worker starting',
    );
    this.loops = Array.from({ length: this.concurrency }, (_, i) => this.runLoop(i));
    if (this.socket.connected) this.onConnect();
    else if (!this.socket.active) this.socket.connect();
    this.changed();
  }

  /** Stops starting new items and hands unstarted ones back to the hub (`true`), or resumes. */
  setPaused(paused: boolean): void {
    if (this.paused === paused) return;
    this.paused = paused;
    this.log.info({ paused }, paused ? 'paused' : 'resumed');
    if (paused) this.releaseQueue('paused');
    this.wake();
    this.sendHeartbeat();
    this.changed();
  }

  /**
   * Limits the share of time spent computing to `fraction` (0..1; 1 = flat out): after each batch
   * a runner sleeps so busy time ≈ fraction. Values under 0.05 are treated as 0.05; use
   * `setPaused(true)` to stop.
   */
  setThrottle(fraction: number): void {
    if (!Number.isFinite(fraction) || fraction < 0 || fraction > 1) {
      throw new RangeError('throttle must be a number between 0 and 1');
    }
    this.throttleFraction = Math.max(0.05, fraction);
    this.changed();
  }

  /**
   * Finishes gracefully: hands unstarted items back, lets running ones finish, waits (up to
   * `drainTimeoutMs`) for results to be acked, then closes. Returns the same promise every time.
   */
  drain(): Promise<void> {
    if (this.drainPromise) return this.drainPromise;
    if (this.state === 'closed' || this.state === 'idle') return this.close();
    this.state = 'draining';
    this.log.info({ queued: this.queue.length, running: this.running.size }, 'draining');
    // Tell the hub first (a heartbeat that says paused): it stops planning items for this worker.
    this.sendHeartbeat();
    this.releaseQueue('draining');
    this.wake();
    this.changed();
    this.drainPromise = (async () => {
      await Promise.all(this.loops);
      const flushed = await withTimeout(
        Promise.all([this.outbox.whenIdle(), this.releases]).then(() => undefined),
        this.opts.drainTimeoutMs ?? 60_000,
      );
      if (!flushed)
        this.log.warn(
          { unsent: this.outbox.counts.pending },
          'drain timed out before every result was acked',
        );
      await this.close();
    })();
    return this.drainPromise;
  }

  /**
   * Stops at once: drops the queue, waits for running batches (they cannot be interrupted), frees
   * sessions and disconnects. Idempotent: returns the same promise every time.
   */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    const wasStarted = this.state !== 'idle';
    this.state = 'closed';
    this.closePromise = (async () => {
      this.queue.clear();
      this.fetchAbort.abort(new Error('worker closed'));
      this.wake();
      await Promise.all(this.loops);
      this.stopHeartbeat();
      this.registerRetry?.();
      this.outbox.close();
      this.unlisten();
      this.unlisten = () => undefined;
      if (wasStarted) this.socket.disconnect();
      this.connected = false;
      this.registered = false;
      await this.sessions.disposeAll();
      await this.backend?.dispose?.().catch(() => undefined);
      this.log.info({ itemsDone: this.itemsDone, itemsFailed: this.itemsFailed }, 'worker closed');
      this.emitStats();
      for (const l of this.listeners.closed) l();
    })();
    return this.closePromise;
  }

  /** Runs the benchmark for a model on all runners (what `benchmark:run` does). */
  benchmark(model: ModelInfo): Promise<BenchmarkReply> {
    // One benchmark at a time: two at once would measure each other.
    const run = this.benchmarkChain.then(() => this.benchmarkNow(model));
    this.benchmarkChain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async benchmarkNow(model: ModelInfo): Promise<BenchmarkReply> {
    if (this.state !== 'running' && this.state !== 'draining') throw new Error(`worker is ${this.state}`);
    this.benchmarking++;
    this.benchmarkModel = model.name;
    this.changed();
    const leases: SessionLease[] = [];
    try {
      // Runners finish their current batch and start nothing new until the benchmark is over.
      while (this.activeBatches > 0) await this.nextWake();
      for (let i = 0; i < this.concurrency; i++) leases.push(this.sessions.acquire(i, model));
      const sessions = await Promise.all(leases.map((l) => l.session)).catch((err: unknown) => {
        throw new BackendError(classifyError(err, 'load'), errorMessage(err), { cause: err });
      });
      const measured = await runBenchmark(model, sessions, {
        ...this.opts.benchmark,
        signal: this.fetchAbort.signal,
      });
      // A throttled worker computes only part of the time: its weight is what it will deliver.
      const reply = { ...measured, itemsPerSec: measured.itemsPerSec * this.throttleFraction };
      this.log.info(
        { model: model.name, itemsPerSec: reply.itemsPerSec, runs: reply.runs },
        'benchmark done',
      );
      return reply;
    } finally {
      for (const l of leases) l.release();
      this.benchmarking--;
      this.benchmarkModel = undefined;
      this.changed();
      this.wake();
    }
  }

  // ---- socket events -------------------------------------------------------------------------

  /**
   * Attaches the agent's handlers to the socket and keeps how to take them off. Each `on` and `off`
   * pairs an event with a handler of its type in the protocol's event map, which socket.io checks.
   */
  private listen(): void {
    const s = this.socket;
    const connect = this.guarded('connect', () => this.onConnect());
    const disconnect = this.guarded('disconnect', (reason: Socket.DisconnectReason) =>
      this.onDisconnect(reason),
    );
    const assign = this.guarded('shard:assign', (shard: ShardAssign) => this.onAssign(shard));
    const revoke = this.guarded('shard:revoke', (req: RevokeRequest, ack: Ack<RevokeReply>) =>
      this.onRevoke(req, ack),
    );
    const cancel = this.guarded('items:cancel', (notice: CancelNotice) => this.onCancel(notice));
    const control = this.guarded('worker:control', (notice: ControlNotice) => this.onControl(notice));
    const benchmark = this.guarded('benchmark:run', (req: BenchmarkRequest, ack: Ack<BenchmarkReply>) =>
      this.onBenchmark(req, ack),
    );
    s.on('connect', connect)
      .on('disconnect', disconnect)
      .on('shard:assign', assign)
      .on('shard:revoke', revoke)
      .on('items:cancel', cancel)
      .on('worker:control', control)
      .on('benchmark:run', benchmark);
    this.unlisten = () => {
      s.off('connect', connect)
        .off('disconnect', disconnect)
        .off('shard:assign', assign)
        .off('shard:revoke', revoke)
        .off('items:cancel', cancel)
        .off('worker:control', control)
        .off('benchmark:run', benchmark);
    };
  }

  /** `handler`, with a throw logged instead of thrown into socket.io. */
  private guarded<A extends unknown[]>(event: string, handler: (...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      try {
        handler(...args);
      } catch (err) {
        this.log.error({ event, error: errorMessage(err) }, 'handler failed');
      }
    };
  }

  private onConnect(): void {
    this.connGen++;
    this.connected = true;
    // The hub requeued every unstarted item when the old connection dropped.
    this.queue.clear();
    this.changed();
    if (this.backend && this.state !== 'closed') void this.register();
  }

  private onDisconnect(reason: string): void {
    this.connGen++;
    this.connected = false;
    this.registered = false;
    this.stopHeartbeat();
    this.outbox.setOnline(false);
    const dropped = this.queue.clear().length;
    this.log.warn({ reason, droppedQueued: dropped, running: this.running.size }, 'disconnected from hub');
    this.changed();
  }

  private async register(): Promise<void> {
    const gen = this.connGen;
    const backend = this.backend as Backend;
    const base = this.opts.register;
    const req: RegisterRequest = {
      ...base,
      backend: backend.name,
      concurrency: this.concurrency,
      packed: true,
      packedParts: true,
      capabilities: {
        ...base.capabilities,
        backendReason: backend.reason ?? base.capabilities.backendReason,
      },
    };
    let res;
    try {
      res = await this.socket.timeout(this.opts.ackTimeoutMs ?? 30_000).emitWithAck('worker:register', req);
    } catch (err) {
      if (gen !== this.connGen || this.state === 'closed') return;
      this.log.warn({ error: errorMessage(err) }, 'register not acknowledged; retrying');
      this.registerRetry = this.clock.after(1000, () => {
        if (gen === this.connGen && this.state !== 'closed') void this.register();
      });
      return;
    }
    if (this.state === 'closed') return;
    // A refusal counts even if the hub has already dropped the connection (it disconnects after
    // refusing a bad join token, and that disconnect may be processed before this reply).
    if ('error' in res) {
      this.lastError = `hub refused registration: ${res.error.message}`;
      this.log.error({ code: res.error.code, error: res.error.message }, 'hub refused registration');
      for (const l of this.listeners.error) l(res.error);
      this.changed();
      return;
    }
    if (gen !== this.connGen) return;
    this.registered = true;
    this.workerId = res.data.workerId;
    this.log.info({ workerId: res.data.workerId, heartbeatMs: res.data.heartbeatMs }, 'registered');
    this.startHeartbeat(res.data.heartbeatMs);
    this.outbox.setPacked(res.data.packed === true);
    this.outbox.setOnline(true);
    for (const l of this.listeners.registered) l(res.data);
    this.changed();
  }

  /**
   * A shard whose items' inputs came another way than `shard:assign`, already staged: a native
   * node's data channel reads them straight into the batch buffers they run from.
   */
  assign(shard: Pick<ShardAssign, 'shardId' | 'jobId' | 'model'>, items: ShardItem[]): void {
    this.take(shard, items, true);
  }

  private onAssign(shard: ShardAssign): void {
    this.take(shard, shardItems(shard), false);
  }

  private take(
    shard: Pick<ShardAssign, 'shardId' | 'jobId' | 'model'>,
    items: ShardItem[],
    staged: boolean,
  ): void {
    if (this.state === 'closed' || this.state === 'idle') return;
    const ids = items.map((i) => i.id);
    if (this.state === 'draining' || this.paused) {
      this.release(ids, this.paused ? 'paused' : 'draining');
      return;
    }
    let added = 0;
    for (const item of items) {
      if (this.running.has(item.id) || this.queue.has(item.id)) continue; // already here: a resend
      const entry = { itemId: item.id, jobId: shard.jobId, shardId: shard.shardId, model: shard.model };
      let inputs: WireTensor[];
      try {
        inputs = item.inputs();
      } catch (err) {
        this.fail(entry, 'other', `malformed input: ${errorMessage(err)}`);
        continue;
      }
      // Out of the message's buffer now, not when the item runs (native/staging.ts).
      try {
        if (!staged && this.backend?.stage) inputs = this.backend.stage(shard.model, inputs);
      } catch (err) {
        this.log.warn(
          { itemId: item.id, error: errorMessage(err) },
          'staging inputs failed; queued as they came',
        );
      }
      this.queue.push({ ...entry, inputs });
      added++;
    }
    this.log.debug({ shardId: shard.shardId, jobId: shard.jobId, items: added }, 'shard assigned');
    // Start the download now, so the model is ready when a runner reaches these items.
    this.sessions.prefetch(shard.model);
    this.wake();
    this.changed();
  }

  private onRevoke(req: RevokeRequest, ack: Ack<RevokeReply> | undefined): void {
    const want = new Set(Array.isArray(req?.itemIds) ? req.itemIds : []);
    const revoked = this.queue.remove((e) => want.has(e.itemId)).map((e) => e.itemId);
    this.log.debug({ asked: want.size, revoked: revoked.length }, 'revoke');
    reply(ack, { data: { revoked } });
    this.changed();
  }

  private onCancel(notice: CancelNotice): void {
    const ids = new Set(Array.isArray(notice?.itemIds) ? notice.itemIds : []);
    this.queue.remove((e) => ids.has(e.itemId));
    for (const id of ids) if (this.running.has(id)) this.discard.add(id);
    this.log.debug({ items: ids.size, reason: notice?.reason }, 'items cancelled');
    this.changed();
  }

  private onControl(notice: ControlNotice): void {
    const action = notice?.action;
    switch (action) {
      case 'pause':
        this.setPaused(true);
        return;
      case 'resume':
        this.setPaused(false);
        return;
      case 'drain':
        void this.drain();
        return;
      default:
        this.log.warn({ action: String(action) }, 'unknown control action');
    }
  }

  private onBenchmark(req: BenchmarkRequest, ack: Ack<BenchmarkReply> | undefined): void {
    this.benchmark(req.model).then(
      (data) => reply(ack, { data }),
      (err: unknown) => {
        const message = errorMessage(err);
        this.lastError = `benchmark of ${req?.model?.name ?? 'a model'} failed: ${message}`;
        this.changed();
        this.log.warn({ model: req?.model?.name, error: message }, 'benchmark failed');
        reply(ack, { error: { code: classifyError(err, 'run'), message } });
      },
    );
  }

  // ---- run loop --------------------------------------------------------------------------------

  private canStart(): boolean {
    return (this.state === 'running' || this.state === 'draining') && !this.paused && this.benchmarking === 0;
  }

  private async runLoop(runner: number): Promise<void> {
    // Batches handed to the session and not finished, oldest first; `lastEnd` is when the latest
    // finished, so a batch that waited behind another is timed from then, not from its handover.
    const inFlight = new Set<Promise<number>>();
    const clock = { lastEnd: 0 };
    while (this.state === 'running' || (this.state === 'draining' && this.queue.length > 0)) {
      const room = this.throttleFraction < 1 ? 1 : this.batchesInFlight;
      if (inFlight.size >= room) {
        await Promise.race(inFlight);
        continue;
      }
      const head = this.canStart() ? this.queue.peek() : undefined;
      if (!head) {
        await this.nextWake();
        continue;
      }
      const model = head.model;
      const lease = this.sessions.acquire(runner, model);
      let session: LoadedModel;
      try {
        session = await lease.session;
      } catch (err) {
        lease.release();
        this.failModel(model, err);
        continue;
      }
      // Things may have changed while the model loaded: take the batch only now, synchronously.
      const batch = this.canStart() ? this.takeBatch(model.sha256, benchmarkBatchSize(model)) : [];
      if (batch.length === 0) {
        lease.release();
        continue;
      }
      const run = this.runBatch(session, model, batch, clock).finally(() => lease.release());
      inFlight.add(run);
      run.then(
        () => inFlight.delete(run),
        (err: unknown) => {
          inFlight.delete(run);
          this.log.error({ model: model.name, error: errorMessage(err) }, 'routing a batch failed');
        },
      );
      if (this.throttleFraction < 1) {
        const busy = await run;
        await this.sleep((busy * (1 - this.throttleFraction)) / this.throttleFraction);
      }
    }
    await Promise.all(inFlight);
  }

  private takeBatch(sha256: string, max: number): QueueEntry[] {
    const batch = this.queue.take(sha256, max);
    for (const e of batch) this.running.set(e.itemId, e);
    return batch;
  }

  /**
   * Runs one batch and routes its results; returns the busy time in ms: from its handover, or from
   * the end of the runner's previous batch (`clock.lastEnd`) if it waited behind that one.
   */
  private async runBatch(
    session: LoadedModel,
    model: ModelInfo,
    batch: QueueEntry[],
    clock: { lastEnd: number },
  ): Promise<number> {
    this.activeBatches++;
    this.changed();
    if (this.firstRunAt === 0) this.firstRunAt = this.clock.now();
    const handedOver = this.clock.now();
    let outputs: WireTensor[][] | undefined;
    let error: unknown;
    try {
      // A pipeline stage's step makes the model's inputs from the item's (pipeline/stages.ts).
      outputs = await session.run(batch.map((e) => prepareInputs(model as StageModel, e.inputs)));
      if (!Array.isArray(outputs) || outputs.length !== batch.length) {
        throw new Error(
          `backend returned ${Array.isArray(outputs) ? outputs.length : 'no'} results for ${batch.length} items`,
        );
      }
    } catch (err) {
      error = err;
    }
    const end = this.clock.now();
    const ms = end - Math.max(handedOver, clock.lastEnd);
    clock.lastEnd = end;
    this.activeBatches--;
    let finished = 0;
    batch.forEach((e, i) => {
      this.running.delete(e.itemId);
      if (this.discard.delete(e.itemId)) return;
      finished++;
      if (error !== undefined) {
        this.fail(e, classifyError(error, 'run'), errorMessage(error));
        return;
      }
      let out = (outputs as WireTensor[][])[i] as WireTensor[];
      // A pipeline stage's step runs here, beside its model (pipeline/stages.ts).
      try {
        out = runStep(model as StageModel, out, e.inputs);
      } catch (err) {
        this.fail(e, 'invalid_output', `step ${(model as StageModel).step?.name}: ${errorMessage(err)}`);
        return;
      }
      const problem = checkOutputs(model, out);
      if (problem) {
        this.fail(e, 'invalid_output', problem);
        return;
      }
      this.itemsDone++;
      this.outbox.addResult({
        itemId: e.itemId,
        jobId: e.jobId,
        modelSha256: model.sha256,
        ms: ms / batch.length,
        outputs: out,
      });
    });
    if (error !== undefined) {
      this.log.warn({ model: model.name, items: batch.length, error: errorMessage(error) }, 'batch failed');
    }
    this.completions.push({ t: this.clock.now(), n: finished });
    this.wake();
    this.changed();
    return ms;
  }

  private fail(
    e: Pick<QueueEntry, 'itemId' | 'jobId'>,
    category: ItemFailure['category'],
    message: string,
  ): void {
    this.itemsFailed++;
    this.outbox.addFailure({ itemId: e.itemId, jobId: e.jobId, category, message: message.slice(0, 1000) });
  }

  /** A model that cannot be fetched or loaded fails every queued item that needs it. */
  private failModel(model: ModelInfo, err: unknown): void {
    const category = classifyError(err, 'load');
    const message = errorMessage(err);
    this.lastError = `model ${model.name} could not be loaded: ${message}`;
    this.log.error(
      { model: model.name, sha256: model.sha256, category, error: message },
      'model could not be loaded',
    );
    const failed = this.takeBatch(model.sha256, Number.POSITIVE_INFINITY);
    for (const e of failed) {
      this.running.delete(e.itemId);
      if (!this.discard.delete(e.itemId)) this.fail(e, category, message);
    }
    this.changed();
  }

  // ---- releasing, heartbeats, figures --------------------------------------------------------

  private releaseQueue(why: string): void {
    this.release(this.queue.clear(), why);
  }

  private release(ids: number[], why: string): void {
    if (ids.length === 0) return;
    this.log.info({ items: ids.length, why }, 'releasing unstarted items');
    if (!this.connected) return; // the hub requeues everything of a dropped connection itself
    // A drain waits for these acks before it disconnects (else the hub requeues them as lost).
    this.releases = this.socket
      .timeout(this.opts.ackTimeoutMs ?? 30_000)
      .emitWithAck('items:release', { itemIds: ids })
      .then(
        (res) => {
          if ('error' in res)
            this.log.warn({ code: res.error.code, error: res.error.message }, 'release refused');
        },
        (err: unknown) => this.log.warn({ error: errorMessage(err) }, 'release not acknowledged'),
      );
  }

  private startHeartbeat(ms: number): void {
    this.stopHeartbeat();
    const every = Number.isFinite(ms) && ms >= 50 ? ms : 50;
    this.sendHeartbeat();
    const next = () => {
      this.stopHeartbeats = this.clock.after(every, () => {
        this.sendHeartbeat();
        next();
      });
    };
    next();
  }

  private stopHeartbeat(): void {
    this.stopHeartbeats?.();
    this.stopHeartbeats = undefined;
  }

  private sendHeartbeat(): void {
    if (!this.registered) return;
    let load = EMPTY_LOAD;
    try {
      load = this.opts.load?.() ?? EMPTY_LOAD;
    } catch (err) {
      this.log.debug({ error: errorMessage(err) }, 'load figures unavailable');
    }
    this.socket.emit('worker:heartbeat', {
      load,
      queued: this.queue.length,
      running: this.running.size,
      // A draining worker takes no new items: to the hub that is a pause.
      paused: this.paused || this.state === 'draining',
    });
  }

  private rate(): number {
    const now = this.clock.now();
    while (this.completions.length > 0 && now - (this.completions[0] as { t: number }).t > RATE_WINDOW_MS) {
      this.completions.shift();
    }
    if (this.firstRunAt === 0) return 0;
    const window = Math.min(RATE_WINDOW_MS, Math.max(1000, now - this.firstRunAt));
    let n = 0;
    for (const c of this.completions) n += c.n;
    return (n * 1000) / window;
  }

  private changed(): void {
    if (this.statsScheduled || this.listeners.stats.size === 0) return;
    this.statsScheduled = true;
    queueMicrotask(() => {
      this.statsScheduled = false;
      this.emitStats();
    });
  }

  private emitStats(): void {
    if (this.listeners.stats.size === 0) return;
    const s = this.stats;
    for (const l of this.listeners.stats) l(s);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private nextWake(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Sleeps, but wakes early when the agent closes. */
  private sleep(ms: number): Promise<void> {
    return sleep(this.clock, ms, this.fetchAbort.signal);
  }
}

/**
 * A shard's items, each with a function that yields its inputs (checked; a malformed item throws):
 * from `items`, or from `packed` (views into its attachment or its item's part, nothing copied).
 */
function shardItems(shard: ShardAssign): ShardItem[] {
  const p = shard?.packed;
  if (
    p &&
    'parts' in p &&
    Array.isArray(p.ids) &&
    Array.isArray(p.parts) &&
    p.parts.length === p.ids.length
  ) {
    const parts = p.parts;
    const headers: HeaderCache = {}; // a shard's items are of one job: nearly always one header
    return p.ids.map((id, i) => ({ id, inputs: () => unpackTensors(toBytes(parts[i]), headers) }));
  }
  if (p && 'ends' in p && Array.isArray(p.ids) && Array.isArray(p.ends) && p.ends.length === p.ids.length) {
    const data = toBytes(p.data);
    const headers: HeaderCache = {};
    return p.ids.map((id, i) => ({
      id,
      inputs: () => {
        const start = i === 0 ? 0 : (p.ends[i - 1] as number);
        const end = p.ends[i] as number;
        if (!(start >= 0 && end >= start && end <= data.byteLength)) throw new TypeError('bad pack bounds');
        return unpackTensors(data.subarray(start, end), headers);
      },
    }));
  }
  const items: AssignedItem[] = Array.isArray(shard?.items) ? shard.items : [];
  return items.map((item) => ({ id: item.id, inputs: () => item.inputs.map(toWireTensor) }));
}

/** Calls an ack if the hub sent one (a malformed emit may not have, whatever its type says). */
function reply<T>(ack: Ack<T> | undefined, res: Response<T>): void {
  if (typeof ack === 'function') ack(res);
}

async function withTimeout(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
