/**
 * Dispatch: carries out the scheduler's plans over the workers' sockets. Three ways to plan (these
 * workers now, the waiting workers soon, every worker a chunk per turn of the event loop), steals,
 * benchmarks, and the sending of assignments. The one writer of the assignment rows.
 */
import type { Response } from '../../protocol/events.ts';
import {
  BenchmarkReplySchema,
  RevokeReplySchema,
  describeZodError,
  responseSchema,
} from '../../protocol/schemas.ts';
import type { z } from 'zod';
import type { ModelRegistry } from '../../models/registry.ts';
import { clean, type Logger } from '../logger.ts';
import type { Assignment, Scheduler, StealPlan } from '../scheduler/scheduler.ts';
import type { AssignmentRow, ShardSender } from '../shard-sender.ts';
import type { AsyncStore, Lease } from '../store/async-store.ts';
import type { JobLifecycle } from './jobs.ts';
import type { WorkerRegistry } from './registry.ts';
import type { HubEmitter, HubOptions } from './types.ts';

/** Least time between two plans of waiting workers asked for by events (see `pumpAllSoon`). */
const PUMP_ALL_MS = 20;

/** Most waiting workers planned at once by `pumpAllSoon`. */
const PUMP_ALL_MAX = 64;

/** Workers planned per turn of the event loop when all are planned (see `pumpInChunks`). */
const PUMP_CHUNK = 256;

export interface DispatchDeps {
  store: AsyncStore;
  /** The hub's lease, which every write of item state carries. */
  lease: () => Lease;
  /** Items went out: with several hubs, claim more if few are left queued here. */
  sent?: () => void;
  models: ModelRegistry;
  scheduler: Scheduler;
  jobs: JobLifecycle;
  workers: WorkerRegistry;
  shards: ShardSender;
  log: Logger;
  opts: HubOptions;
  events: HubEmitter;
}

export class Dispatch {
  private closed = false;
  /** An assignments write is in the store; rows planned meanwhile wait in `unrecorded`. */
  private recording = false;
  private unrecorded: AssignmentRow[] = [];
  private pumpQueued = false;
  private lastPumpAll = 0;
  private hungryCursor = 0;
  /** A plan of every worker in progress, chunk by chunk (`pumpInChunks`). */
  private chunkedPass: { ids: string[]; at: number; again: boolean } | undefined;

  constructor(private readonly d: DispatchDeps) {}

  /** Asks the scheduler what to send now (to these workers, or all) and sends it. */
  pump(workers?: string | readonly string[]): void {
    if (this.closed) return;
    if (workers === undefined && this.d.workers.size > PUMP_CHUNK) return this.pumpInChunks();
    const { assign, benchmark, steal } = this.d.scheduler.plan(workers);
    for (const b of benchmark) void this.benchmark(b.workerId, b.modelSha256);
    this.send(assign);
    for (const st of steal) void this.steal(st);
  }

  /**
   * Plans every waiting worker soon: at most once per PUMP_ALL_MS, however many events ask. Idle workers
   * have no messages of their own to be planned on: this is when they steal or copy a straggler's
   * item. Planning every worker on each event instead is O(workers) per results message, and
   * O(workers²) when N workers drop at once.
   */
  pumpAllSoon(): void {
    if (this.pumpQueued || this.closed) return;
    this.pumpQueued = true;
    const wait = Math.max(0, this.lastPumpAll + PUMP_ALL_MS - Date.now());
    const run = () => {
      this.pumpQueued = false;
      this.lastPumpAll = Date.now();
      // The others are topped up: planning them would change nothing (the tick plans everyone).
      // At a job's end thousands may wait: a bounded, rotating share of them each time.
      const hungry = this.d.scheduler.hungryWorkers();
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

  /** Items a worker handed back unstarted go back to their queues; returns how many. */
  release(workerId: string, itemIds: readonly number[]): number {
    let n = 0;
    for (const [jobId, items] of this.d.scheduler.release(workerId, itemIds)) {
      n += items.length;
      this.d.jobs.addEvent(jobId, 'release', { workerId, items: items.length }, Date.now());
    }
    return n;
  }

  /** Plans nothing more (the hub is closing). */
  close(): void {
    this.closed = true;
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
    const pass = { ids: this.d.workers.ids(), at: 0, again: false };
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
    const victim = this.d.workers.socketOf(st.victim);
    let revoked: number[] = [];
    if (victim) {
      // No answer in time: the victim keeps them; if it is gone, its items are requeued anyway.
      const res = await ask(5000, RevokeReplySchema, (ack) =>
        victim.emit('shard:revoke', { itemIds: st.itemIds }, ack),
      );
      if ('data' in res) revoked = res.data.revoked;
    }
    const a = this.d.scheduler.stealDone(st, revoked);
    const now = Date.now();
    if (a) {
      const data = {
        thief: st.thief,
        victim: st.victim,
        items: a.itemIds.length,
        asked: st.itemIds.length,
        reason: st.reason,
      };
      this.d.jobs.addEvent(st.jobId, 'steal', data, now);
      this.d.jobs.activeJob(st.jobId)?.fairness.steal(st.thief, st.victim, a.itemIds.length, st.reason, now);
      this.d.log.debug({ jobId: st.jobId, ...data }, 'steal');
      this.send([a]);
    }
    // The thief's and the victim's holdings changed now; the others' turn comes soon.
    this.pump(st.thief);
    this.pump(st.victim);
    this.pumpAllSoon();
  }

  /**
   * Sends assignments: every shard is planned first (`ShardSender.plan`) and all their assignment
   * rows are recorded in one write (a job's start assigns every worker at once; one commit per
   * worker made that burst thousands of commits long), then they go out in order. The rows say who
   * holds what (for operators and a restart's log); the hub does not wait for them.
   */
  private send(assignments: Assignment[]): void {
    const rows: AssignmentRow[] = [];
    for (const a of assignments) this.prepare(a, rows);
    if (rows.length > 0) {
      this.record(rows);
      this.d.sent?.();
    }
    this.d.shards.flush();
  }

  /**
   * Records assignment rows, one write in the store at a time: rows planned while one is being
   * written go together in the next, so a slower store gets fewer, larger writes.
   */
  private record(rows: AssignmentRow[]): void {
    if (this.recording) {
      for (const r of rows) this.unrecorded.push(r);
      return;
    }
    this.recording = true;
    this.d.store
      .recordAssignments(this.d.lease(), rows)
      .catch((err: unknown) => this.d.log.warn({ err, rows: rows.length }, 'assignments not recorded'))
      .finally(() => {
        this.recording = false;
        const next = this.unrecorded;
        this.unrecorded = [];
        if (next.length > 0) this.record(next);
      });
  }

  /** Does an assignment's bookkeeping (job started, speculation) and plans its messages. */
  private prepare(a: Assignment, rows: AssignmentRow[]): void {
    const socket = this.d.workers.socketOf(a.workerId);
    const job = this.d.jobs.activeJob(a.jobId);
    if (!socket || !job) {
      this.d.scheduler.release(a.workerId, a.itemIds);
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
      this.d.jobs.addEvent(a.jobId, 'speculate', data, now);
      job.fairness.speculate(
        a.workerId,
        a.speculative.fromWorkerId,
        a.itemIds.length,
        a.speculative.reason,
        now,
      );
    }
    this.d.jobs.started(a.jobId, now);
    this.d.shards.plan(a.workerId, socket, a.jobId, a.itemIds, now, rows);
  }

  private async benchmark(workerId: string, sha: string): Promise<void> {
    const socket = this.d.workers.socketOf(workerId);
    const model = this.d.models.bySha(sha);
    if (!socket || !model) return;
    const started = Date.now();
    const res = await ask(this.d.opts.benchmarkTimeoutMs, BenchmarkReplySchema, (ack) =>
      socket.emit('benchmark:run', { model }, ack),
    );
    if (this.d.workers.socketOf(workerId) !== socket) return; // reconnected meanwhile: the new socket benchmarks
    if ('error' in res || !(res.data.itemsPerSec > 0)) {
      const why = 'error' in res ? clean(res.error.message) : 'non-positive rate';
      this.d.scheduler.setUnusable(workerId, sha);
      this.d.log.warn(
        { workerId, model: model.name, why },
        'benchmark failed; worker skips this model for a while, then is benchmarked again',
      );
    } else {
      this.d.scheduler.setBenchmark(workerId, sha, res.data.itemsPerSec);
      const w = this.d.workers.get(workerId);
      this.d.log.info(
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
    this.d.events.emit('worker:updated', workerId);
    // This worker's options changed now; a plan of every worker per reply was O(workers²) when
    // thousands of workers benchmark at once: the others' turn comes soon, once.
    this.pump(workerId);
    this.pumpAllSoon();
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
