/**
 * What the hub keeps to trust results: canary answers, replica results awaiting a quorum, which
 * accepted results were verified, and each worker's trust record. Its own tables (in
 * `sqlite-migrations.ts`), so the main store's narrow interface stays as it is; the hub gives it its
 * own connection to the file (`open`, WAL lets both work on it), the several-hubs store shares its
 * store's (`on`), so trust writes join that store's transactions. `revertUnverified` is the one operation that reaches into the main
 * tables: it takes back a quarantined worker's unconfirmed results so they are computed again.
 */
import Database from 'better-sqlite3';
import { CACHED_ON_RECORD, UNPROVEN_QUORUM } from './async-store.ts';
import { migrateSqlite } from './sqlite-migrations.ts';
import { BACKSTOP_PAGES } from './wal-checkpointer.ts';

/** A worker's trust record. */
export interface TrustRecord {
  workerId: string;
  /** Results of this worker confirmed by a canary or a quorum. */
  validated: number;
  /** Confirmed results in a row since its last failed check. */
  streak: number;
  /** Failed checks (wrong canary, outvoted by a quorum). */
  strikes: number;
  quarantined: boolean;
  reason: string | null;
  at: number;
}

/** One candidate result of a replicated item. */
export interface Replica {
  itemId: number;
  workerId: string;
  backend: string;
  outputs: Uint8Array;
  ms: number;
  at: number;
}

export class TrustStore {
  private readonly q;
  private closed = false;

  private constructor(
    private readonly db: Database.Database,
    /** Whether `close` closes the connection (it opened it). */
    private readonly owned: boolean,
  ) {
    this.q = {
      addCanary: this.db.prepare(
        'INSERT OR REPLACE INTO canaries (item_id, job_id, outputs) VALUES (?, ?, ?)',
      ),
      canaryIds: this.db.prepare('SELECT item_id FROM canaries WHERE job_id = ? ORDER BY item_id').pluck(),
      canary: this.db.prepare('SELECT outputs FROM canaries WHERE item_id = ?').pluck(),
      addReplica: this.db.prepare(
        'INSERT OR REPLACE INTO replicas (item_id, worker_id, backend, outputs, ms, at) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      replicas: this.db.prepare(
        'SELECT item_id, worker_id, backend, outputs, ms, at FROM replicas WHERE item_id = ? ORDER BY at, worker_id',
      ),
      dropReplicas: this.db.prepare('DELETE FROM replicas WHERE item_id = ?'),
      replicaItems: this.db.prepare('SELECT DISTINCT item_id FROM replicas ORDER BY 1').pluck(),
      verify: this.db.prepare('INSERT OR REPLACE INTO verified (item_id, how) VALUES (?, ?)'),
      isVerified: this.db.prepare('SELECT how FROM verified WHERE item_id = ?').pluck(),
      verification: this.db.prepare(
        `SELECT COALESCE(v.how, 'record:' || COALESCE(w.kind, 'browser')) AS how, COUNT(*) AS n
         FROM results r LEFT JOIN verified v ON v.item_id = r.item_id
         LEFT JOIN workers w ON w.id = r.worker_id
         WHERE r.job_id = ? GROUP BY 1`,
      ),
      trust: this.db.prepare('SELECT * FROM worker_trust WHERE worker_id = ?'),
      allTrust: this.db.prepare('SELECT * FROM worker_trust ORDER BY worker_id'),
      putTrust: this.db.prepare(
        `INSERT INTO worker_trust (worker_id, validated, streak, strikes, quarantined, reason, at)
         VALUES (@workerId, @validated, @streak, @strikes, @quarantined, @reason, @at)
         ON CONFLICT (worker_id) DO UPDATE SET validated = @validated, streak = @streak, strikes = @strikes,
           quarantined = @quarantined, reason = @reason, at = @at`,
      ),
      unverifiedOf: this.db.prepare(
        `SELECT r.item_id AS itemId, r.job_id AS jobId FROM results r
         JOIN jobs j ON j.id = r.job_id
         LEFT JOIN verified v ON v.item_id = r.item_id
         WHERE r.worker_id = ? AND (v.item_id IS NULL OR v.how = '${CACHED_ON_RECORD}'
           OR v.how LIKE '%${UNPROVEN_QUORUM}')
           AND j.state != 'cancelled' ORDER BY r.item_id`,
      ),
      deleteResult: this.db.prepare('DELETE FROM results WHERE item_id = ?'),
      unverify: this.db.prepare('DELETE FROM verified WHERE item_id = ?'),
      reopenItem: this.db.prepare(`UPDATE items SET state = 'pending' WHERE id = ? AND state = 'done'`),
      uncount: this.db.prepare(
        `UPDATE jobs SET done_count = done_count - ?,
           state = CASE WHEN state = 'completed' THEN 'running' ELSE state END,
           finished_at = CASE WHEN state = 'completed' THEN NULL ELSE finished_at END
         WHERE id = ?`,
      ),
    };
  }

  /** Opens the trust tables in the hub's SQLite file, on a connection of its own. */
  static open(file: string): TrustStore {
    const db = new Database(file);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('busy_timeout = 5000');
      // Checkpoints are the store's checkpointing thread's to run (see `BACKSTOP_PAGES`): with
      // SQLite's default, a trust write (a canary confirmed, a replica stored) past 1,000 WAL pages
      // would run one on the event loop.
      db.pragma(`wal_autocheckpoint = ${BACKSTOP_PAGES}`);
      migrateSqlite(db, file);
    } catch (err) {
      db.close();
      throw err;
    }
    return new TrustStore(db, true);
  }

  /** The trust tables on a connection that is already open and migrated, and stays its owner's to close. */
  static on(db: Database.Database): TrustStore {
    return new TrustStore(db, false);
  }

  /** Stores the known answers of a job's canary items. */
  addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): void {
    this.db.transaction(() => {
      for (const r of rows) this.q.addCanary.run(r.itemId, jobId, r.outputs);
    })();
  }

  /** Ids of a job's canary items. */
  canaryIds(jobId: string): number[] {
    return this.q.canaryIds.all(jobId) as number[];
  }

  /** The known answer of a canary item. */
  canaryAnswer(itemId: number): Uint8Array | undefined {
    return (this.q.canary.get(itemId) as Uint8Array | undefined) ?? undefined;
  }

  addReplica(r: Replica): void {
    this.q.addReplica.run(r.itemId, r.workerId, r.backend, r.outputs, r.ms, r.at);
  }

  replicasOf(itemId: number): Replica[] {
    return (
      this.q.replicas.all(itemId) as {
        item_id: number;
        worker_id: string;
        backend: string;
        outputs: Uint8Array;
        ms: number;
        at: number;
      }[]
    ).map((r) => ({
      itemId: r.item_id,
      workerId: r.worker_id,
      backend: r.backend,
      outputs: r.outputs,
      ms: r.ms,
      at: r.at,
    }));
  }

  /** Items with replicas waiting for a quorum (to rebuild the in-memory index after a restart). */
  replicaItemIds(): number[] {
    return this.q.replicaItems.all() as number[];
  }

  dropReplicas(itemId: number): void {
    this.q.dropReplicas.run(itemId);
  }

  /** Marks accepted results as verified (`how`: canary, quorum). */
  markVerified(itemIds: readonly number[], how: string): void {
    this.db.transaction(() => {
      for (const id of itemIds) this.q.verify.run(id, how);
    })();
  }

  /** Marks accepted results as verified, each its own way (see `Verdict`'s `verified`). */
  markVerifiedEach(rows: readonly { itemId: number; how: string }[]): void {
    this.db.transaction(() => {
      for (const r of rows) this.q.verify.run(r.itemId, r.how);
    })();
  }

  /**
   * How a job's stored results were verified: per `how` (canary, quorum-K, spot-K, reference), and
   * for those accepted on their worker's record alone, per kind of worker (`native`, `browser`).
   */
  verificationOf(jobId: string): { how: string; n: number }[] {
    return this.q.verification.all(jobId) as { how: string; n: number }[];
  }

  isVerified(itemId: number): boolean {
    return this.q.isVerified.get(itemId) !== undefined;
  }

  trustOf(workerId: string): TrustRecord | undefined {
    const r = this.q.trust.get(workerId) as Record<string, unknown> | undefined;
    return r ? rowToTrust(r) : undefined;
  }

  allTrust(): TrustRecord[] {
    return (this.q.allTrust.all() as Record<string, unknown>[]).map(rowToTrust);
  }

  putTrust(t: TrustRecord): void {
    this.q.putTrust.run({ ...t, quarantined: t.quarantined ? 1 : 0 });
  }

  /**
   * Takes back every accepted result of a worker that nothing confirmed (copies of them the result
   * cache answered with included): the result is deleted, its
   * item pending again, its job's count lowered (a completed job runs again). Returns them per job.
   */
  revertUnverified(workerId: string): Map<string, number[]> {
    return this.db.transaction(() => {
      const rows = this.q.unverifiedOf.all(workerId) as { itemId: number; jobId: string }[];
      const out = new Map<string, number[]>();
      for (const r of rows) {
        this.q.deleteResult.run(r.itemId);
        this.q.unverify.run(r.itemId); // a copy's `cached:record`: what runs it again says anew
        if (this.q.reopenItem.run(r.itemId).changes === 0) continue;
        const list = out.get(r.jobId) ?? [];
        list.push(r.itemId);
        out.set(r.jobId, list);
      }
      for (const [jobId, ids] of out) this.q.uncount.run(ids.length, jobId);
      return out;
    })();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.owned) this.db.close();
  }
}

function rowToTrust(r: Record<string, unknown>): TrustRecord {
  return {
    workerId: r.worker_id as string,
    validated: r.validated as number,
    streak: r.streak as number,
    strikes: r.strikes as number,
    quarantined: r.quarantined === 1,
    reason: (r.reason as string | null) ?? null,
    at: r.at as number,
  };
}
