/**
 * Worker registry: who is connected on which socket, in what state. The one writer of the live
 * workers, their sockets and the stored worker rows; it adds workers to and removes them from the
 * scheduler, and says when one may take work (`setReady`).
 */
import type { RegisterRequest } from '../../protocol/events.ts';
import { clean, type Logger } from '../logger.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { WorkerSocket } from '../shard-sender.ts';
import type { AsyncStore, WorkerRecord } from '../store/async-store.ts';
import type { Later } from './trust-cache.ts';
import { workerFacts, type LiveWorker } from '../workers.ts';
import type { JobLifecycle } from './jobs.ts';
import { HubError, type HubEmitter, type HubOptions } from './types.ts';

export interface WorkerRegistryDeps {
  store: AsyncStore;
  later: Later;
  scheduler: Scheduler;
  jobs: JobLifecycle;
  log: Logger;
  opts: HubOptions;
  events: HubEmitter;
  isQuarantined: (workerId: string) => boolean;
  /** A worker joined on this socket (the shard sender learns what it takes). */
  joined: (workerId: string, req: RegisterRequest) => void;
  /** A worker's connection is gone (its shard queue and data channel go with it). */
  left: (workerId: string) => void;
  /** Plans these workers now. */
  pump: (workers: string) => void;
  /** Plans the waiting workers soon. */
  pumpAllSoon: () => void;
}

export class WorkerRegistry {
  private readonly workers = new Map<string, LiveWorker>();
  private readonly sockets = new Map<string, WorkerSocket>();
  /** Offline workers, oldest first (see `maxOfflineWorkers`). */
  private readonly offline = new Set<string>();
  /** Items-done counts waiting for their write, by worker. */
  private readonly counted = new Map<string, { n: number; at: number }>();

  constructor(private readonly d: WorkerRegistryDeps) {}

  // ------------------------------------------------------------------ queries

  /** The workers known in this process's life (live and recently offline), for readers. */
  get view(): ReadonlyMap<string, Readonly<LiveWorker>> {
    return this.workers;
  }

  get(workerId: string): LiveWorker | undefined {
    return this.workers.get(workerId);
  }

  get size(): number {
    return this.workers.size;
  }

  ids(): string[] {
    return [...this.workers.keys()];
  }

  values(): IterableIterator<LiveWorker> {
    return this.workers.values();
  }

  /** A connected worker's socket. */
  socketOf(workerId: string): WorkerSocket | undefined {
    return this.sockets.get(workerId);
  }

  /** Whether the worker has a socket now. */
  connected(workerId: string): boolean {
    return this.sockets.has(workerId);
  }

  /** A worker as stored (identity, secret hash, lifetime counters), connected or not. */
  stored(workerId: string): Promise<WorkerRecord | undefined> {
    return this.d.store.getWorker(workerId);
  }

  // ------------------------------------------------------------------ writes

  /** Stores a worker's identity and capabilities (at registration, before it is live). */
  remember(rec: WorkerRecord): Promise<void> {
    return this.d.store.upsertWorker(rec);
  }

  /**
   * Adds to a worker's lifetime items-done counter (written behind). Counts made while a write is
   * waiting its turn join it: one write per worker per turn, not one per results message.
   */
  countDone(workerId: string, n: number, at: number): void {
    const waiting = this.counted.get(workerId);
    if (waiting) {
      waiting.n += n;
      waiting.at = Math.max(waiting.at, at);
      return;
    }
    const c = { n, at };
    this.counted.set(workerId, c);
    this.d.later('worker counter', () => {
      this.counted.delete(workerId);
      return this.d.store.addWorkerItems(workerId, c.n, c.at);
    });
  }

  /** Forgets an offline worker (operator action); false if it is online. */
  forget(workerId: string): boolean {
    const w = this.workers.get(workerId);
    if (!w || w.state !== 'offline') return false;
    this.workers.delete(workerId);
    this.offline.delete(workerId);
    return true;
  }

  /** A worker registered (new, or the same worker again after a reconnect). */
  register(socket: WorkerSocket, workerId: string, req: RegisterRequest, address: string): LiveWorker {
    const now = Date.now();
    const prev = this.workers.get(workerId);
    const oldSocket = this.sockets.get(workerId);
    if (oldSocket && oldSocket.id !== socket.id) {
      // The same worker on a new connection: the old one is dead to us.
      this.gone(workerId, 'replaced by a new connection');
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
    const { scheduler } = this.d;
    this.workers.set(workerId, w);
    this.offline.delete(workerId);
    this.sockets.set(workerId, socket);
    this.d.joined(workerId, req);
    scheduler.addWorker({
      id: workerId,
      name: req.name,
      concurrency: req.concurrency,
      device: req.capabilities.gpu?.name,
      ...workerFacts(req),
    });
    if (this.d.isQuarantined(workerId)) {
      w.state = 'quarantined';
      scheduler.setReady(workerId, false);
    }
    for (const job of this.d.jobs.activeJobs()) {
      if (scheduler.eligible(workerId, job.record.id)) job.fairness.present(workerId, now);
    }
    this.d.log.info(
      { workerId, kind: req.kind, backend: req.backend, name: clean(req.name), reconnect: !!prev },
      prev ? 'worker reconnected' : 'worker registered',
    );
    this.d.events.emit('worker:updated', workerId);
    this.d.pump(workerId);
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
        this.d.scheduler.setReady(workerId, state === 'online');
        this.d.events.emit('worker:updated', workerId);
      }
    }
  }

  /** Counts a results message's items to its sender (accepted, or kept as replicas). */
  credit(workerId: string, done: number, at: number): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    w.itemsDone += done;
    w.lastSeen = at;
  }

  /** Counts failed runs to a worker. */
  debit(workerId: string, failed: number): void {
    const w = this.workers.get(workerId);
    if (w) w.itemsFailed += failed;
  }

  /** A worker's connection ended or it stopped answering: its unfinished items go back at once. */
  gone(workerId: string, reason: string, socketId?: string): void {
    const w = this.workers.get(workerId);
    if (!w || (socketId && w.socketId !== socketId)) return; // a stale socket of a reconnected worker
    const { jobs, events } = this.d;
    const at = Date.now();
    w.state = 'offline';
    w.socketId = null;
    this.sockets.delete(workerId);
    this.d.left(workerId);
    const back = this.d.scheduler.removeWorker(workerId);
    for (const job of jobs.activeJobs()) job.fairness.gone(workerId, at);
    let n = 0;
    for (const [jobId, items] of back) {
      n += items.length;
      jobs.activeJob(jobId)?.fairness.requeue(workerId, items.length, reason, at);
      jobs.addEvent(jobId, 'requeue', { workerId, items: items.length, reason }, at);
      events.emit('items:requeued', { workerId, jobId, items: items.length, reason, at });
    }
    this.countDone(workerId, 0, w.lastSeen);
    this.offline.delete(workerId);
    this.offline.add(workerId);
    for (const id of this.offline) {
      if (this.offline.size <= this.d.opts.maxOfflineWorkers) break;
      this.offline.delete(id);
      if (this.workers.get(id)?.state === 'offline') this.workers.delete(id);
    }
    // A worker that left on its own with nothing unfinished (a drained node) is no cause for alarm.
    const calm = n === 0 && reason.endsWith('client namespace disconnect');
    this.d.log[calm ? 'info' : 'warn']({ workerId, reason, requeued: n }, 'worker offline');
    events.emit('worker:updated', workerId);
    this.d.pumpAllSoon();
  }

  /** Ends a worker's connection: it is gone, and its socket is closed. */
  drop(workerId: string, reason: string): void {
    const socket = this.sockets.get(workerId);
    this.gone(workerId, reason);
    socket?.disconnect(true);
  }

  /** Pause, resume, drain or evict a worker (operator action). */
  control(workerId: string, action: 'pause' | 'resume' | 'drain' | 'evict'): LiveWorker {
    const w = this.workers.get(workerId);
    const socket = this.sockets.get(workerId);
    if (!w || !socket) throw new HubError('unknown_worker', `no online worker "${clean(workerId, 80)}"`, 404);
    if (action === 'evict') {
      this.gone(workerId, 'evicted by operator');
      socket.disconnect(true);
      return w;
    }
    socket.emit('worker:control', { action });
    w.state = action === 'pause' ? 'paused' : action === 'drain' ? 'draining' : 'online';
    this.d.scheduler.setReady(workerId, w.state === 'online');
    this.d.events.emit('worker:updated', workerId);
    if (w.state === 'online') this.d.pump(workerId);
    return w;
  }

  /** Takes a worker out of the scheduler's reckoning for good (quarantine). */
  quarantined(workerId: string): void {
    const w = this.workers.get(workerId);
    if (w) w.state = 'quarantined';
    this.d.scheduler.setReady(workerId, false);
  }

  /** Tells a connected worker to stop these items. */
  cancel(workerId: string, itemIds: number[], reason: string): void {
    this.sockets.get(workerId)?.emit('items:cancel', { itemIds, reason });
  }

  /** Workers silent for longer than `offlineAfterMs` are offline; their connections are closed. */
  sweep(now: number): void {
    for (const w of this.workers.values()) {
      if (w.state === 'offline' || now - w.lastSeen <= this.d.opts.offlineAfterMs) continue;
      this.drop(w.id, `no heartbeat for ${now - w.lastSeen} ms`);
    }
  }
}
