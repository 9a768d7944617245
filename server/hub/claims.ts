/**
 * Chunk claims: how a hub that shares its store with other hubs (PostgreSQL) decides which items
 * it runs. A job's items are cut into chunks of consecutive ids as they are appended
 * (`store/async-store.ts`); a hub runs only the items of chunks it holds.
 *
 * - When fewer items are queued here than its workers could take soon (`want`), the hub claims
 *   unheld chunks of runnable jobs, highest priority first (`claimChunks`, `FOR UPDATE SKIP
 *   LOCKED`: two hubs never get the same chunk), activates their jobs here if needed, moves each
 *   chunk's cursor to its end before any of its items goes out (`advanceChunk`: the store knows
 *   they are being handed out), and gives the chunk's pending items to its scheduler.
 * - When no unheld chunk is left and this hub's workers are idle, it takes the untouched half of
 *   another hub's chunk (`splitTail`): near a job's end no hub's workers sit idle while another
 *   hub holds the tail.
 * - A job with nothing queued or held here gives its chunks back (`finishChunk`); a chunk whose
 *   items are still pending in the store (a result that was never stored) has them queued again.
 * - A job whose queued items none of this hub's ready workers will take (none fits its
 *   requirements, or each failed them: `Scheduler.stranded`), with nothing of it running here,
 *   for `STRANDED_MS`, is let go and its chunks given back, and this hub claims none of it for
 *   `HANDED_OVER_MS`: another hub's workers run those items instead of them waiting here.
 * - Chunks of a hub that died go back to the pool when any hub reaps it (`LeaseKeeper`), and their
 *   pending items are claimed like any others. Results stay exactly once whoever runs an item: the
 *   store's gate decides (`recordResults`), chunks only decide who runs it.
 * - A hub with nothing held, queued or running whose pass found nothing to claim or split passes
 *   less and less often on its tick (`tick`, up to `QUIET_MAX_MS` apart): an idle grid costs the
 *   store little. Whatever can make work claimable wakes it at once (`wake`): a job sealed or
 *   items appended (here or on another hub), chunks given back or reaped, a worker here changing
 *   state; the slow passes are only the backstop for news that did not arrive.
 */
import type { Logger } from '../logger.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import type { AsyncStore, Chunk, Lease, Replica } from '../store/async-store.ts';
import type { JobLifecycle } from './jobs.ts';

/** Most chunks claimed in one go. */
const CLAIM_MAX = 4;

/** Least items in the half of another hub's chunk worth taking near a job's end. */
const SPLIT_MIN = 8;

/** How long a job's items wait for a worker here that will take them before they go to other hubs. */
const STRANDED_MS = 2000;

/** How long this hub claims nothing of a job it gave to the other hubs that way. */
const HANDED_OVER_MS = 30_000;

/**
 * Claim passes closer together than this mean the workers here empty what a pass queues faster
 * than the store answers: the next passes queue more (up to `AHEAD_MAX` times what the workers
 * want), so fast workers cost a few store round trips per thousand items, not per dozen. Passes
 * further apart than `CALM_MS` bring it back down: slow workers keep few items here, which
 * other hubs' workers could otherwise have run.
 */
const HURRIED_MS = 250;
const CALM_MS = 1000;
const AHEAD_MAX = 16;

/**
 * A hub with nothing to do waits this long after a pass that found nothing before its tick passes
 * again, doubling each time up to `QUIET_MAX_MS` (see the file comment).
 */
const QUIET_MIN_MS = 250;
const QUIET_MAX_MS = 2000;

export interface ChunkClaimsDeps {
  store: AsyncStore;
  lease: () => Lease;
  scheduler: Scheduler;
  jobs: JobLifecycle;
  log: Logger;
  /** Items this hub's workers could take soon: below this many queued, it claims more. */
  want: () => number;
  /** Whether this hub's workers have nothing to do (split another hub's chunk then). */
  idle: () => boolean;
  /** Whether results are waiting for their commit (chunks are given back only after). */
  settling: () => boolean;
  /** New items queued: plan the workers. */
  pump: () => void;
  /** Chunks were given back to the pool: other hubs may claim them now. */
  freed: () => void;
  /** Replicas found waiting for a confirmer on items just queued here (`Verifier.adopt`). */
  adopt: (jobId: string, replicas: readonly Replica[]) => void;
  /** The time (ms); `Date.now` unless a test drives it. */
  clock?: () => number;
}

export class ChunkClaims {
  /** Chunks held, by id. */
  private readonly held = new Map<number, Chunk>();
  private running: Promise<void> | undefined;
  private again = false;
  /** How many times what the workers want a pass queues (see `HURRIED_MS`). */
  private ahead = 1;
  private lastPass = 0;
  /** Since when each job's queued items have waited for a worker here that would take them. */
  private readonly strandedSince = new Map<string, number>();
  /** Jobs given to the other hubs, and until when this hub claims none of them. */
  private readonly handedOver = new Map<string, number>();
  /** How long the tick waits after a pass that found nothing (0: it passes every tick). */
  private quietMs = 0;
  /** When the tick passes again (see `quietMs`). */
  private quietUntil = 0;
  /** `wake` was called since the current pass began. */
  private woken = false;

  constructor(private readonly d: ChunkClaimsDeps) {}

  /** Chunks this hub holds. */
  get count(): number {
    return this.held.size;
  }

  /**
   * The hub's tick: a pass, unless passes found nothing to do lately and the wait after them (see
   * `QUIET_MIN_MS`) is not over.
   */
  tick(): void {
    if (this.now() >= this.quietUntil) this.poke();
  }

  /**
   * Something happened that may make work claimable here: a pass now if the tick was holding
   * them back, and every tick again (a pass in progress may have looked too early: it does not
   * hold them back). While the hub passes every tick this costs nothing.
   */
  wake(): void {
    this.woken = true;
    if (this.quietMs === 0) return;
    this.quietMs = 0;
    this.quietUntil = 0;
    this.poke();
  }

  /** Whether the tick is holding passes back because they found nothing to do. */
  get quiet(): boolean {
    return this.quietMs > 0;
  }

  /** Claims or gives back chunks as needed; one pass at a time (a call meanwhile runs another after). */
  poke(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.pass()
      .catch((err: unknown) => this.d.log.warn({ err }, 'claiming chunks failed; trying again'))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.poke();
        }
      });
  }

  /** Claims more as soon as fewer than half of what its workers want are queued here. */
  low(): void {
    if (!this.running && this.queued() < this.want() / 2) this.poke();
  }

  /** Items to keep queued here: what the workers could take soon, times `ahead`. */
  private want(): number {
    return this.d.want() * this.ahead;
  }

  /** Adjusts `ahead` to how soon this pass came after the last. */
  private pace(): void {
    const now = this.now();
    const gap = now - this.lastPass;
    this.lastPass = now;
    if (gap < HURRIED_MS) this.ahead = Math.min(AHEAD_MAX, this.ahead * 2);
    else if (gap > CALM_MS) this.ahead = Math.max(1, this.ahead / 2);
  }

  /** Forgets every chunk (the hub lost its lease: the store has taken them back). */
  clear(): void {
    this.held.clear();
  }

  /** Waits for the pass in progress, if any. */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private now(): number {
    return this.d.clock ? this.d.clock() : Date.now();
  }

  private queued(): number {
    let n = 0;
    for (const job of this.d.jobs.activeJobs()) n += this.d.scheduler.queued(job.record.id);
    return n;
  }

  private async pass(): Promise<void> {
    this.woken = false;
    await this.giveBack();
    await this.handOver(this.now());
    this.pace();
    const want = this.want();
    if (want === 0) {
      await this.letGo(); // no workers here: what this hub holds is others' to run
      return this.settle(false);
    }
    let added = 0;
    // The untouched rest of chunks held here first, then new chunks.
    for (const c of [...this.held.values()]) {
      if (this.queued() >= want) break;
      if (c.cursor < c.last) added += await this.extend(c, want - this.queued());
    }
    while (this.queued() < want) {
      const chunks = await this.d.store.claimChunks(this.d.lease(), {
        maxChunks: CLAIM_MAX,
        exceptJobs: this.leftToOthers(),
      });
      for (const c of chunks) added += await this.take(c, want - this.queued());
      if (chunks.length < CLAIM_MAX) break;
    }
    let split = false;
    if (added === 0 && this.queued() === 0 && this.d.idle()) {
      const tail = await this.d.store.splitTail(this.d.lease(), {
        minItems: SPLIT_MIN,
        exceptJobs: this.leftToOthers(),
      });
      if (tail) added += await this.take(tail, want);
      split = !tail;
    }
    if (added > 0) this.d.pump();
    this.settle(split && added === 0);
  }

  /**
   * After a pass: with nothing held here and, if the hub has workers, nothing found to claim or
   * split (`nothing`), the tick waits longer before the next (see `QUIET_MIN_MS`); otherwise it
   * passes every tick.
   */
  private settle(nothing: boolean): void {
    const want = this.d.want();
    if (this.held.size > 0 || (want > 0 && !nothing) || this.woken) {
      this.quietMs = 0;
      this.quietUntil = 0;
      return;
    }
    this.quietMs = Math.min(QUIET_MAX_MS, Math.max(QUIET_MIN_MS, this.quietMs * 2));
    this.quietUntil = this.now() + this.quietMs;
  }

  /** Takes a claimed chunk (its job active here), and the first `n` of its items. */
  private async take(c: Chunk, n: number): Promise<number> {
    if (!(await this.d.jobs.ensureActive(c.jobId))) {
      await this.d.store.releaseChunks(this.d.lease(), [c.id]);
      return 0;
    }
    this.held.set(c.id, c);
    return this.extend(c, n);
  }

  /**
   * Moves a held chunk's cursor up to `n` items on (the store first: from then on those items are
   * this hub's to hand out, and no split can take them) and queues the pending ones among them.
   */
  private async extend(c: Chunk, n: number): Promise<number> {
    const { store, scheduler } = this.d;
    const upto = Math.min(c.last, c.cursor + Math.max(1, n));
    const moved = await store.advanceChunk(this.d.lease(), c.id, upto);
    if (!moved) {
      this.held.delete(c.id); // reaped with this hub's old lease, or finished
      return 0;
    }
    this.held.set(c.id, moved); // its end may have moved down: another hub split it
    if (moved.cursor <= c.cursor) return 0;
    const range = { first: c.cursor + 1, last: moved.cursor };
    const runs = await store.pendingItemRuns(c.jobId, range);
    // Answers the chunk's previous holder left waiting for a second opinion: the items wait here
    // for a worker other than the ones that gave them, and the next answer is judged against them.
    // Without this, a hub's death (or a chunk given back) lost the check, and the same worker could
    // be given the item again and be taken at its word.
    const pending = (id: number) => runs.some((r) => r.first <= id && id <= r.last);
    const waiting = runs.length ? (await store.replicasIn(range)).filter((r) => pending(r.itemId)) : [];
    const avoid = new Map<number, string[]>();
    for (const r of waiting) avoid.set(r.itemId, [...(avoid.get(r.itemId) ?? []), r.workerId]);
    if (!scheduler.addFresh(c.jobId, runs, avoid)) return 0;
    if (waiting.length) this.d.adopt(c.jobId, waiting);
    return runs.reduce((k, r) => k + r.last - r.first + 1, 0);
  }

  /** The jobs this hub gave to the others and claims nothing of for now. */
  private leftToOthers(): string[] {
    const now = this.now();
    for (const [jobId, until] of this.handedOver) if (until <= now) this.handedOver.delete(jobId);
    return [...this.handedOver.keys()];
  }

  /**
   * Gives the other hubs the jobs whose queued items have waited `STRANDED_MS` for a worker here
   * that would take them (see the file comment).
   */
  private async handOver(now: number): Promise<void> {
    const { scheduler, jobs } = this.d;
    if (this.d.settling()) return;
    for (const jobId of this.strandedSince.keys())
      if (!jobs.activeJob(jobId)) this.strandedSince.delete(jobId);
    for (const job of [...jobs.activeJobs()]) {
      const jobId = job.record.id;
      if (!scheduler.stranded(jobId) || scheduler.inFlight(jobId) > 0) {
        this.strandedSince.delete(jobId);
        continue;
      }
      const since = this.strandedSince.get(jobId) ?? now;
      this.strandedSince.set(jobId, since);
      if (now - since < STRANDED_MS) continue;
      this.strandedSince.delete(jobId);
      const queued = scheduler.queued(jobId);
      this.handedOver.set(jobId, now + HANDED_OVER_MS);
      const chunks = await this.release(jobId, "none of this hub's workers may run its items");
      this.d.log.warn(
        { jobId, chunks, queued },
        "none of this hub's workers may run a job's queued items: its chunks go to the other hubs",
      );
    }
  }

  /** Gives back the chunks of every job with nothing in flight here, and lets those jobs go. */
  private async letGo(): Promise<void> {
    for (const jobId of new Set([...this.held.values()].map((c) => c.jobId))) {
      if (this.d.scheduler.inFlight(jobId) > 0) continue;
      const chunks = await this.release(jobId);
      this.d.log.info({ jobId, chunks }, 'no workers here: chunks given back');
    }
  }

  /** Stops running a job here and gives back the chunks of it held here; returns how many. */
  private async release(jobId: string, reason?: string): Promise<number> {
    const ids = [...this.held.values()].filter((c) => c.jobId === jobId).map((c) => c.id);
    this.d.jobs.letGo(jobId, reason);
    await this.giveUp(ids);
    return ids.length;
  }

  /** Stops holding chunks and gives them back to the pool; the other hubs may claim them now. */
  private async giveUp(ids: number[]): Promise<void> {
    for (const id of ids) this.held.delete(id);
    await this.d.store.releaseChunks(this.d.lease(), ids);
    if (ids.length > 0) this.d.freed();
  }

  /**
   * Gives back the chunks of jobs with nothing queued or held here. A chunk the store still has
   * pending items in is kept, and those items are queued again.
   */
  private async giveBack(): Promise<void> {
    const { store, scheduler } = this.d;
    if (this.d.settling()) return;
    for (const c of [...this.held.values()]) {
      const active = this.d.jobs.activeJob(c.jobId);
      if (active && (c.cursor < c.last || scheduler.queued(c.jobId) + scheduler.inFlight(c.jobId) > 0))
        continue;
      if (!active) {
        await this.giveUp([c.id]);
        continue;
      }
      if (await store.finishChunk(this.d.lease(), c.id)) {
        this.held.delete(c.id);
        continue;
      }
      const runs = await store.pendingItemRuns(c.jobId, { first: c.first, last: c.cursor });
      if (scheduler.queued(c.jobId) + scheduler.inFlight(c.jobId) === 0 && runs.length > 0) {
        scheduler.addFresh(c.jobId, runs);
        this.d.log.warn({ jobId: c.jobId, chunk: c.id }, 'items of a held chunk still pending: queued again');
      }
    }
  }
}
