/**
 * Fairness bookkeeping of one job: who did how much, who sat idle, who finished when, and the
 * steals and speculative copies along the way. Fed by the hub as things happen; `report()` turns
 * it into the figures of protocol/fairness.ts. Memory is bounded: the per-second series and the
 * timeline stop growing at their caps, while the counters stay exact.
 */
import type { FairnessEvent, FairnessReport, WorkerFairness } from '../../protocol/fairness.ts';

const MAX_SECONDS = 7200;
const MAX_EVENTS = 2000;

interface WorkerTrack {
  items: number;
  held: number;
  online: boolean;
  idleSince: number | undefined;
  idleMs: number;
  lastDone: number | undefined;
  steals: number;
  stolenFrom: number;
  speculativeRuns: number;
  perSecond: Map<number, number>;
}

/** What the report needs to know about a worker that the tracker doesn't keep. */
export interface WorkerLookup {
  name: string;
  backend: string;
  device: string;
  benchmark: number | null;
  weight: number | null;
}

export class FairnessTracker {
  private startedAt: number | undefined;
  private finishedAt: number | undefined;
  private readonly workers = new Map<string, WorkerTrack>();
  private readonly perSecond = new Map<number, number>();
  private readonly timeline: FairnessEvent[] = [];
  private steals = 0;
  private stolenItems = 0;
  private speculative = 0;
  private wasted = 0;

  constructor(readonly jobId: string) {}

  private track(workerId: string, now: number): WorkerTrack {
    let w = this.workers.get(workerId);
    if (!w) {
      w = {
        items: 0,
        held: 0,
        online: true,
        idleSince: this.startedAt !== undefined ? now : undefined,
        idleMs: 0,
        lastDone: undefined,
        steals: 0,
        stolenFrom: 0,
        speculativeRuns: 0,
        perSecond: new Map(),
      };
      this.workers.set(workerId, w);
    }
    return w;
  }

  /** The job's first assignment. Workers already present start their idle clocks now. */
  start(now: number): void {
    if (this.startedAt !== undefined) return;
    this.startedAt = now;
    for (const w of this.workers.values()) if (w.online && w.held === 0) w.idleSince = now;
  }

  get started(): boolean {
    return this.startedAt !== undefined;
  }

  /** The job finished: idle clocks stop. */
  finish(now: number): void {
    if (this.finishedAt !== undefined) return;
    this.finishedAt = now;
    for (const w of this.workers.values()) this.stopIdle(w, now);
  }

  private stopIdle(w: WorkerTrack, now: number): void {
    if (w.idleSince !== undefined) w.idleMs += now - w.idleSince;
    w.idleSince = undefined;
  }

  /** An eligible worker is online (joined, or back). */
  present(workerId: string, now: number): void {
    const w = this.track(workerId, now);
    w.online = true;
    if (w.held === 0 && this.startedAt !== undefined && this.finishedAt === undefined) w.idleSince ??= now;
  }

  /** A worker went offline: it is neither busy nor idle any more. */
  gone(workerId: string, now: number): void {
    const w = this.workers.get(workerId);
    if (!w) return;
    this.stopIdle(w, now);
    w.online = false;
    w.held = 0;
  }

  /** A worker now holds `count` of this job's items. */
  held(workerId: string, count: number, now: number): void {
    const w = this.track(workerId, now);
    w.held = count;
    if (count > 0) this.stopIdle(w, now);
    else if (w.online && this.startedAt !== undefined && this.finishedAt === undefined) w.idleSince ??= now;
  }

  /** Accepted results. */
  done(workerId: string, n: number, now: number): void {
    if (n <= 0) return;
    const w = this.track(workerId, now);
    w.items += n;
    w.lastDone = now;
    const sec = Math.floor((now - (this.startedAt ?? now)) / 1000);
    if (sec < MAX_SECONDS) {
      this.perSecond.set(sec, (this.perSecond.get(sec) ?? 0) + n);
      w.perSecond.set(sec, (w.perSecond.get(sec) ?? 0) + n);
    }
  }

  private event(e: Omit<FairnessEvent, 't'>, now: number): void {
    if (this.timeline.length < MAX_EVENTS)
      this.timeline.push({ ...e, t: (now - (this.startedAt ?? now)) / 1000 });
  }

  steal(thief: string, victim: string, n: number, reason: string, now: number): void {
    this.steals++;
    this.stolenItems += n;
    this.track(thief, now).steals++;
    this.track(victim, now).stolenFrom += n;
    this.event({ type: 'steal', workerId: thief, fromWorkerId: victim, items: n, reason }, now);
  }

  speculate(worker: string, from: string, n: number, reason: string, now: number): void {
    this.speculative += n;
    this.track(worker, now).speculativeRuns += n;
    this.event({ type: 'speculate', workerId: worker, fromWorkerId: from, items: n, reason }, now);
  }

  requeue(worker: string, n: number, reason: string, now: number): void {
    this.event({ type: 'requeue', workerId: worker, items: n, reason }, now);
  }

  /** Runs whose results were not used. */
  waste(n: number): void {
    this.wasted += n;
  }

  /** Runs done per worker so far (cheap: no report). */
  itemsByWorker(): Map<string, number> {
    return new Map([...this.workers].map(([id, w]) => [id, w.items]));
  }

  /** The figures now. */
  report(opts: {
    items: number;
    final: boolean;
    now: number;
    lookup: (workerId: string) => WorkerLookup;
  }): FairnessReport {
    const start = this.startedAt ?? opts.now;
    const end = this.finishedAt ?? opts.now;
    const makespanS = Math.max(0, (end - start) / 1000);
    const done = [...this.workers.values()].reduce((n, w) => n + w.items, 0);
    const rows: WorkerFairness[] = [];
    for (const [id, w] of this.workers) {
      const info = opts.lookup(id);
      const idle = w.idleMs + (w.idleSince !== undefined ? end - w.idleSince : 0);
      rows.push({
        workerId: id,
        name: info.name,
        backend: info.backend,
        device: info.device,
        benchmark: info.benchmark,
        weight: info.weight,
        expectedShare: 0,
        actualShare: done ? w.items / done : 0,
        items: w.items,
        idleS: idle / 1000,
        finishS: w.lastDone !== undefined ? (w.lastDone - start) / 1000 : null,
        steals: w.steals,
        stolenFrom: w.stolenFrom,
        speculativeRuns: w.speculativeRuns,
      });
    }
    // Expected shares by weight, over the workers that took part.
    const part = rows.filter((r) => r.items > 0 || r.steals > 0);
    const totalWeight = part.reduce((s, r) => s + (r.weight ?? 0), 0);
    for (const r of part) r.expectedShare = totalWeight > 0 ? (r.weight ?? 0) / totalWeight : 1 / part.length;
    const ratios = part.filter((r) => r.expectedShare > 0).map((r) => r.actualShare / r.expectedShare);
    const sum = ratios.reduce((a, b) => a + b, 0);
    const sumSq = ratios.reduce((a, b) => a + b * b, 0);
    const jain = ratios.length && sumSq > 0 ? (sum * sum) / (ratios.length * sumSq) : 1;
    // Finish times of the workers still there at the end: one that left mid-job did not "finish".
    const finishes = part
      .filter((r) => this.workers.get(r.workerId)?.online)
      .map((r) => r.finishS)
      .filter((x): x is number => x !== null);
    const mean = finishes.length ? finishes.reduce((a, b) => a + b, 0) / finishes.length : 0;
    const sd = finishes.length
      ? Math.sqrt(finishes.reduce((a, b) => a + (b - mean) ** 2, 0) / finishes.length)
      : 0;
    const idealS = totalWeight > 0 ? opts.items / totalWeight : 0;
    const seconds = Math.min(MAX_SECONDS, Math.ceil(makespanS));
    const series = (m: Map<number, number>) =>
      Array.from({ length: seconds }, (_, t) => ({ t, items: m.get(t) ?? 0 }));
    return {
      jobId: this.jobId,
      final: opts.final,
      items: opts.items,
      done,
      makespanS,
      idealS,
      efficiency: makespanS > 0 && idealS > 0 ? Math.min(1, idealS / makespanS) : 0,
      jain,
      cvFinish: mean > 0 ? sd / mean : 0,
      steals: this.steals,
      stolenItems: this.stolenItems,
      speculative: this.speculative,
      wastedItems: this.wasted,
      workers: rows,
      timeline: this.timeline.slice(),
      throughput: series(this.perSecond),
      contributions: Object.fromEntries([...this.workers].map(([id, w]) => [id, series(w.perSecond)])),
    };
  }
}
