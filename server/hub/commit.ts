/**
 * The results commit: each results message is checked against the model and judged (canary,
 * replicas and quorum, or accepted from a proven worker) as it arrives; the accepted results of
 * every message judged in the same turn of the event loop are stored in one transaction (group
 * commit), and only then are their items freed, their workers refilled and their messages answered.
 * Answers of the hub's reference backend take the same path. The one writer of result rows.
 */
import type { ItemResult, ItemsDoneReply } from '../../protocol/events.ts';
import { packTensors, unpackTensors } from '../../protocol/pack.ts';
import { outputProblem } from '../check.ts';
import type { Logger } from '../logger.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import { revertible, type AsyncStore, type Lease } from '../store/async-store.ts';
import { outputsDiffer, type Verifier } from '../verify.ts';
import type { WriteBatch } from '../write-batch.ts';
import type { Dispatch } from './dispatch.ts';
import type { ItemFailures } from './failures.ts';
import type { ContributorFigures } from './figures.ts';
import type { JobLifecycle } from './jobs.ts';
import type { ReferenceAnswer, ReferenceRuns } from './reference.ts';
import type { WorkerRegistry } from './registry.ts';
import type { TrustActions, VerificationCost } from './trust-actions.ts';
import { REFERENCE_WORKER, StoredResultsError, type HubEmitter, type JudgedResults } from './types.ts';

/**
 * Most results messages, and results, stored in one commit (`commit`). A message's reply and refill
 * wait for the others judged before its commit: 64 messages are about 10 ms of the hub's time with
 * 2,000 workers, and already make a commit's own cost small per message.
 */
const COMMIT_MAX_MESSAGES = 64;
const COMMIT_MAX_ROWS = 4096;
/**
 * A message with this many results to store is committed at once, with those waiting: its own
 * commit is already a small cost per result, and waiting a turn would only delay its reply.
 */
const COMMIT_AT_ONCE_ROWS = 64;

export interface ResultsCommitDeps {
  store: AsyncStore;
  lease: () => Lease;
  verifier: Verifier;
  scheduler: Scheduler;
  jobs: JobLifecycle;
  workers: WorkerRegistry;
  dispatch: Dispatch;
  trust: TrustActions;
  failures: ItemFailures;
  figures: ContributorFigures;
  reference: ReferenceRuns;
  writes: WriteBatch;
  cost: VerificationCost;
  log: Logger;
  events: HubEmitter;
}

export class ResultsCommit {
  /** Results messages judged and waiting for their commit. */
  private uncommitted: JudgedResults[] = [];
  private uncommittedRows = 0;
  private commitQueued = false;
  /** A commit was due while another was in the store: it runs when that one has finished. */
  private commitWanted = false;
  /** Commits sent to the store and not finished. */
  private readonly inflight = new Set<Promise<void>>();

  constructor(private readonly d: ResultsCommitDeps) {}

  /** Whether results judged are waiting for their commit, or being committed. */
  get pending(): boolean {
    return this.uncommitted.length > 0 || this.inflight.size > 0;
  }

  /** Resolves once every commit started so far has finished (stored or failed). */
  async settled(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all(this.inflight);
  }

  /**
   * Takes a batch of results. Each is checked against the model (hash, names, dtypes, shapes,
   * finite values), then judged (canary, replicas and quorum, or accepted from a proven worker) at
   * once. The accepted ones are stored exactly once per item, in one transaction with those of every
   * other results message that arrives in the same turn of the event loop (group commit). The
   * reply, and the worker's refill, come once that has committed.
   */
  accept(workerId: string, results: ItemResult[]): Promise<ItemsDoneReply> {
    return new Promise((resolve, reject) => this.enqueue(this.judge(workerId, results, resolve, reject)));
  }

  /**
   * Stores an answer of the hub's reference backend as its item's result (verified `reference`),
   * through the same commit as workers' results, then judges each replica against it.
   */
  acceptReference(a: ReferenceAnswer): Promise<void> {
    if (!this.d.jobs.activeJob(a.jobId)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const { jobId, itemId, model, outputs, ms } = a;
      const m = this.message(REFERENCE_WORKER, [
        { itemId, jobId, modelSha256: model.sha256, ms, outputs: [] },
      ]);
      m.rows.push({
        itemId,
        jobId,
        workerId: REFERENCE_WORKER,
        modelSha256: model.sha256,
        ms,
        outputs,
        at: Date.now(),
      });
      m.how.set(itemId, 'reference');
      m.resolve = () => {
        try {
          this.judgeReplicas(a);
          resolve();
        } catch (err) {
          reject(err);
        }
      };
      m.reject = reject;
      this.enqueue(m);
    });
  }

  /** Stores what is waiting now (the hub is closing: while the store is still open). */
  flush(): Promise<void> {
    this.commit();
    return this.settled();
  }

  private enqueue(msg: JudgedResults): void {
    this.uncommitted.push(msg);
    this.uncommittedRows += msg.rows.length;
    if (
      msg.rows.length >= COMMIT_AT_ONCE_ROWS ||
      this.uncommitted.length >= COMMIT_MAX_MESSAGES ||
      this.uncommittedRows >= COMMIT_MAX_ROWS
    ) {
      this.commit();
    } else if (!this.commitQueued) {
      this.commitQueued = true;
      setImmediate(() => {
        this.commitQueued = false;
        this.commit();
      });
    }
  }

  private message(
    workerId: string,
    results: ItemResult[],
    resolve: (reply: ItemsDoneReply) => void = () => {},
    reject: (err: unknown) => void = () => {},
  ): JudgedResults {
    return {
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
  }

  /** Checks and judges one results message; what it decided waits for `commit`. */
  private judge(
    workerId: string,
    results: ItemResult[],
    resolve: (reply: ItemsDoneReply) => void,
    reject: (err: unknown) => void,
  ): JudgedResults {
    const { scheduler, jobs, workers, trust, verifier } = this.d;
    const now = Date.now();
    const w = workers.get(workerId);
    const m = this.message(workerId, results, resolve, reject);
    // The verifier's callbacks, made once per message and pointed at each result's job in turn: made
    // per result, they cost the hub a visible share of its CPU in the dispatch bench, most of it in
    // the `Object.defineProperty` with which tsx names every function it makes. `judge` keeps neither.
    let judgedJob = '';
    const canAsk = (avoid: string[], soon?: boolean) => scheduler.canAsk(judgedJob, avoid, soon);
    const otherBackends = (backend: string) =>
      [...workers.values()].filter((x) => x.state !== 'offline' && x.backend !== backend).map((x) => x.id);
    for (const r of results) {
      if (trust.isQuarantined(workerId)) {
        m.refused.push({ itemId: r.itemId, reason: 'this worker is quarantined' });
        continue;
      }
      const job = jobs.activeJob(r.jobId);
      if (!job || !scheduler.holds(workerId, r.itemId, r.jobId)) {
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
      const v = verifier.judge({
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
          for (const id of v.confirm) trust.confirmed(id);
          for (const id of v.refute) trust.strike(id, r.jobId, r.itemId, 'outvoted by a quorum', false);
          break;
        case 'replicate':
          this.d.cost.replicas++;
          m.replicated.push(r.itemId);
          scheduler.finished(workerId, [r.itemId]);
          scheduler.requeue(r.jobId, r.itemId, v.avoid);
          break;
        case 'refuse':
          m.refused.push({ itemId: r.itemId, reason: v.reason });
          scheduler.requeue(r.jobId, r.itemId, [workerId]);
          trust.strike(workerId, r.jobId, r.itemId, v.reason, true);
          break;
        case 'reference':
        case 'fail':
          // The workers cannot agree, or none can confirm it: the hub's reference backend decides.
          m.replicated.push(r.itemId);
          scheduler.finished(workerId, [r.itemId]);
          jobs.addEvent(r.jobId, 'disagreement', { itemId: r.itemId, reason: v.reason }, now);
          this.d.reference.run(r.jobId, r.itemId, v.reason, v.replicas);
          break;
      }
    }
    return m;
  }

  /**
   * Stores the results of every message judged since the last commit in one write, then frees their
   * items, refills their workers and replies. A commit per message would write the same job and
   * index pages once per message: with thousands of workers, whose first results of a job all
   * arrive within a moment, they would queue behind each other. Messages judged while a commit is
   * in the store wait for the next. If the write fails, every message in it gets
   * the error and its items stay held: the workers send them again.
   */
  private commit(): void {
    const group = this.uncommitted;
    if (group.length === 0) return;
    // One commit in the store at a time: what is judged meanwhile waits for it and goes in the next,
    // so a store that answers slower (a server over the network) gets fewer, larger commits, not
    // more of them. (A synchronous store has finished each commit before the next turn anyway.)
    if (this.inflight.size > 0) {
      this.commitWanted = true;
      return;
    }
    this.uncommitted = [];
    this.uncommittedRows = 0;
    const { trust } = this.d;
    // A worker quarantined while this group was judged (a wrong canary later in the same message,
    // or in another message of the group) has its unconfirmed results taken back once the commits
    // in flight have finished (`TrustActions.quarantine`): its unconfirmed results here must not be
    // stored at all. Its items went back to the queue with the quarantine.
    for (const m of group) {
      // (A quorum's row may be another worker's than the sender's.)
      if (!m.rows.some((r) => trust.isQuarantined(r.workerId))) continue;
      const keep = m.rows.filter(
        (r) => !revertible(m.how.get(r.itemId) ?? null) || !trust.isQuarantined(r.workerId),
      );
      // The sender's own: not its to send any more (stray); another's it confirmed: just dropped.
      for (const r of m.rows)
        if (!keep.includes(r)) (r.workerId === m.workerId ? m.notMine : m.alreadyDone).push(r.itemId);
      m.rows = keep;
    }
    const done = this.store(group, Date.now()).finally(() => {
      this.inflight.delete(done);
      if (this.commitWanted) {
        this.commitWanted = false;
        this.commit();
      }
    });
    this.inflight.add(done);
  }

  /** Writes a group's results (the store's exactly-once gate), then hands it to `afterCommit`. */
  private async store(group: JudgedResults[], now: number): Promise<void> {
    const { store, workers } = this.d;
    const rows = group.flatMap((m) => m.rows);
    let accepted: number[];
    try {
      accepted = rows.length ? (await store.recordResults(this.d.lease(), rows)).accepted : [];
    } catch (err) {
      for (const m of group) m.reject(err); // each caller reports it (the gateway logs it)
      return;
    }
    // Each message's share: a row is accepted if its item flipped, and only the first row of an
    // item does (the store keeps the first result of an item and drops later ones, in row order).
    const flipped = new Set(accepted);
    const verified = new Map<string, number[]>();
    for (const m of group) {
      for (const r of m.rows) {
        if (!flipped.delete(r.itemId)) {
          m.alreadyDone.push(r.itemId);
          continue;
        }
        m.accepted.push(r.itemId);
        const how = m.how.get(r.itemId);
        const list = how ? verified.get(how) : undefined;
        if (list) list.push(r.itemId);
        else if (how) verified.set(how, [r.itemId]);
      }
      if (m.accepted.length && m.workerId !== REFERENCE_WORKER)
        workers.countDone(m.workerId, m.accepted.length, now);
    }
    // Before anything else reads them: a quarantine takes back only results no check confirmed.
    try {
      for (const [how, ids] of verified) await store.markVerified(ids, how);
    } catch (err) {
      this.d.log.error({ err, items: accepted.length }, 'stored results not marked verified');
    }
    // Stored: from here on a failure must still answer every message (the error, so it is sent again
    // and dropped as done), never leave one waiting. Each worker's refill and ack leave in one write.
    this.d.writes.around(() => this.afterCommit(group, now));
  }

  /** Frees, refills and answers the messages of a stored commit. */
  private afterCommit(group: JudgedResults[], now: number): void {
    const { scheduler, jobs, workers, failures, events, dispatch } = this.d;
    this.d.figures.countAccepted(group);
    try {
      const activeJobs = jobs.activeCount;
      const touched = new Set<string>();
      const refill = new Set<string>();
      let others = false;
      for (const m of group) {
        // An item now done may still be held elsewhere (a speculative copy, or requeued after a
        // disconnect): cancel it there; that run is wasted work.
        const { cancel } = scheduler.finished(m.workerId, [...m.accepted, ...m.alreadyDone]);
        if (m.notMine.length) this.d.trust.stray(m.workerId, m.notMine.length, 'results');
        const jobOfItem = new Map(m.results.map((r) => [r.itemId, r.jobId]));
        for (const itemIds of cancel.values()) {
          for (const id of itemIds) jobs.activeJob(jobOfItem.get(id) ?? '')?.fairness.waste(1);
        }
        for (const id of m.alreadyDone) jobs.activeJob(jobOfItem.get(id) ?? '')?.fairness.waste(1);
        for (const [jobId, k] of m.worked) {
          const job = jobs.activeJob(jobId);
          job?.fairness.done(m.workerId, k, now);
          if (job) failures.ran(job.model.sha256, m.workerId, k);
        }
        failures.settled(m.accepted);
        for (const [other, itemIds] of cancel) workers.cancel(other, itemIds, 'completed by another worker');
        workers.credit(m.workerId, m.accepted.length + m.replicated.length, now);
        if (m.invalid.length) {
          failures
            .record(m.workerId, m.invalid)
            .catch((err: unknown) =>
              this.d.log.error({ err, workerId: m.workerId }, 'invalid results not recorded'),
            );
        }
        for (const r of m.results) touched.add(r.jobId);
        // Only this worker's room changed, unless items went back to a queue (replicas, refusals).
        if (m.replicated.length > 0 || m.refused.length > 0) others = true;
        if (m.workerId !== REFERENCE_WORKER) refill.add(m.workerId);
      }
      if (events.listenerCount('items:committed') > 0) this.emitCommitted(group);
      for (const jobId of touched) {
        events.emit('job:updated', jobId);
        jobs.checkComplete(jobId, true);
      }
      // Planning every worker on every results message is O(workers) per message: only these
      // workers are, unless items went back to a queue or a job ended.
      if (others || jobs.activeCount !== activeJobs) dispatch.pump();
      else {
        if (refill.size > 0) dispatch.pump([...refill]);
        dispatch.pumpAllSoon();
      }
      for (const m of group) {
        m.resolve({
          accepted: [...m.accepted, ...m.replicated],
          dropped: [...m.alreadyDone, ...m.notMine],
          refused: m.refused,
        });
      }
    } catch (err) {
      this.d.log.error({ err, messages: group.length }, 'handling stored results failed');
      const stored = new StoredResultsError(err);
      for (const m of group) m.reject(stored); // a message answered already keeps its answer
    }
  }

  /** Tells pipelines which items' results a commit stored, per job (the one place it is emitted). */
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
    for (const [jobId, ids] of committed) this.d.events.emit('items:committed', jobId, ids);
  }

  /** After a reference answer is stored: each replica is judged against it. */
  private judgeReplicas(a: ReferenceAnswer): void {
    this.d.failures.settled([a.itemId]);
    this.d.cost.reference++;
    const answer = unpackTensors(a.outputs);
    for (const r of a.replicas) {
      const diff = outputsDiffer(unpackTensors(r.outputs), answer, a.model.tolerance);
      if (diff)
        this.d.trust.strike(
          r.workerId,
          a.jobId,
          a.itemId,
          `differs from the reference backend (${diff})`,
          false,
        );
      else this.d.trust.confirmed(r.workerId);
    }
    this.d.events.emit('job:updated', a.jobId);
  }
}
