/**
 * What the trust book and the verifier read, kept in memory, with their writes sent on to the
 * store behind them. They judge results synchronously, while a results message is handled, so
 * what they read (trust records, canary answers, replicas waiting for a quorum) must be at hand:
 * records and replicas are loaded when the hub starts (with several hubs, replicas come with the
 * chunks the hub takes), a job's canary answers when the hub activates the job. Writes go to the
 * store in order through the hub's write-behind queue.
 *
 * With several hubs, a quarantine another hub decides reaches this one when the worker registers
 * here (`refresh`), and every `trustRefreshMs` for all records (see `Hub`).
 */
import type { AsyncStore, Replica, TrustRecord } from '../store/async-store.ts';
import type { WriteBehind } from './write-behind.ts';

export type Later = (what: string, write: () => Promise<unknown>) => void;
/** The hub's write-behind queue, as this cache writes through it. */
export type Writes = Pick<WriteBehind, 'later' | 'laterRows'>;

export class TrustCache {
  private records: TrustRecord[] = [];
  private readonly replicas = new Map<number, Replica[]>();
  /** Canary answers of the jobs activated here, per job. */
  private readonly canaries = new Map<string, Map<number, Uint8Array>>();
  private readonly answers = new Map<number, Uint8Array>();
  /** Trust records waiting for their write, by worker (the latest of each). */
  private readonly trustWaiting = new Map<string, TrustRecord>();

  private constructor(
    private readonly store: AsyncStore,
    private readonly writes: Writes,
  ) {}

  /**
   * Loads every trust record and, on a store of its own, every replica waiting for a quorum. On a
   * store several hubs share, a waiting replica is the business of the hub holding its item's
   * chunk, and a hub takes them over with the chunk (`Verifier.adopt`): loaded at start, another
   * hub's would wait here for good, with no job (never sent to the reference backend) and counted
   * against its worker's probation quota, whatever that hub decided.
   */
  static async load(store: AsyncStore, writes: Writes): Promise<TrustCache> {
    const cache = new TrustCache(store, writes);
    cache.records = await store.allTrust();
    if (store.severalHubs) return cache;
    for (const r of await store.allReplicas()) {
      const list = cache.replicas.get(r.itemId);
      if (list) list.push(r);
      else cache.replicas.set(r.itemId, [r]);
    }
    return cache;
  }

  // ------------------------------------------------------------------ trust records

  /** The records loaded at start (the trust book keeps its own map after that). */
  allTrust(): TrustRecord[] {
    return this.records;
  }

  /**
   * Writes a worker's record behind. A record written again before the earlier write's turn came
   * replaces it in that write: the store gets the latest, once.
   */
  putTrust(r: TrustRecord): void {
    const waiting = this.trustWaiting.has(r.workerId);
    this.trustWaiting.set(r.workerId, r);
    if (waiting) return;
    this.writes.later('trust record', () => {
      const latest = this.trustWaiting.get(r.workerId) as TrustRecord;
      this.trustWaiting.delete(r.workerId);
      return this.store.putTrust(latest);
    });
  }

  // ------------------------------------------------------------------ canaries

  /** Reads a job's canary answers from the store (at activation). */
  async loadCanaries(jobId: string): Promise<void> {
    const answers = new Map<number, Uint8Array>();
    for (const id of await this.store.canaryIds(jobId)) {
      const a = await this.store.canaryAnswer(id);
      if (a) answers.set(id, a);
    }
    this.keep(jobId, answers);
  }

  canaryIds(jobId: string): number[] {
    return [...(this.canaries.get(jobId)?.keys() ?? [])];
  }

  /** Keeps answers the caller has stored already (`JobLifecycle.preflight` awaits that write). */
  addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): void {
    this.keep(jobId, new Map(rows.map((r) => [r.itemId, r.outputs])));
  }

  canaryAnswer(itemId: number): Uint8Array | undefined {
    return this.answers.get(itemId);
  }

  /** Lets a finished job's answers go. */
  forgetJob(jobId: string): void {
    for (const id of this.canaries.get(jobId)?.keys() ?? []) this.answers.delete(id);
    this.canaries.delete(jobId);
  }

  private keep(jobId: string, answers: Map<number, Uint8Array>): void {
    const all = this.canaries.get(jobId) ?? new Map<number, Uint8Array>();
    for (const [id, a] of answers) {
      all.set(id, a);
      this.answers.set(id, a);
    }
    this.canaries.set(jobId, all);
  }

  // ------------------------------------------------------------------ replicas

  replicaItemIds(): number[] {
    return [...this.replicas.keys()];
  }

  replicasOf(itemId: number): Replica[] {
    return this.replicas.get(itemId) ?? [];
  }

  /**
   * One replica per item and worker, as the store keeps them: a worker's second result for an item
   * (it was given the item again) replaces its first. Kept as two, one worker's two answers would
   * be counted as two workers agreeing: a liar that lies alike twice would outvote an honest worker.
   */
  addReplica(r: Replica): void {
    const list = this.replicas.get(r.itemId);
    if (!list) this.replicas.set(r.itemId, [r]);
    else {
      const i = list.findIndex((x) => x.workerId === r.workerId);
      if (i >= 0) list[i] = r;
      else list.push(r);
    }
    this.writes.laterRows('replicas', r, (rows) => this.store.addReplicas(rows));
  }

  dropReplicas(itemId: number): void {
    if (!this.replicas.delete(itemId)) return;
    this.writes.laterRows('replicas dropped', itemId, (ids) => this.store.dropReplicas(ids));
  }
}
