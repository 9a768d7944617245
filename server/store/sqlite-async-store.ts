/**
 * The `AsyncStore` on SQLite (better-sqlite3): the embedded default, for one hub.
 *
 * A thin async adapter: the hub's tables are read and written by the hub's own `SqliteStore`
 * (`sqlite.ts`) and `TrustStore` (`trust-store.ts`), on one connection, so the SQL is written once.
 * This file adds what several hubs need, in the tables of the schema's second migration
 * (`sqlite-migrations.ts`): `models`, `hubs`, `chunks`. Pending items that no chunk covers (a file
 * the hub's store wrote, or items a reverted result made pending again) get chunks when the file is
 * opened here.
 *
 * The several-hubs operations degenerate to one hub: a lease never lapses (`expiresAt` is
 * `Infinity`) and nothing is ever reaped; a re-registration still starts a new epoch and fences the
 * previous one, and chunks are claimed, split and released with the same rules as on PostgreSQL,
 * so the hub runs the same code on both. Every write is one `BEGIN IMMEDIATE` transaction (other
 * connections to the file wait for it, up to `busy_timeout`), in which the lease check and the
 * stores' own transactions (savepoints there) run; the promises resolve after it committed.
 */
import type Database from 'better-sqlite3';
import * as crypto from 'node:crypto';
import type { IdRun } from '../scheduler/id-runs.ts';
import { CACHED, CACHED_ON_RECORD, FencedError, RUNNABLE_STATES, revertible } from './async-store.ts';
import type {
  AppendedItems,
  AsyncStore,
  CacheKeys,
  Chunk,
  HubRecord,
  Lease,
  ModelBlob,
  PipelineRun,
  StoredTokens,
  FailureRecord,
  ItemRecord,
  ItemState,
  JobEvent,
  JobRecord,
  JobState,
  NewFailure,
  NewJob,
  NewResult,
  Replica,
  ResultRecord,
  SizedInputs,
  TrustRecord,
  WorkerRecord,
} from './async-store.ts';
import { SqliteStore } from './sqlite.ts';
import { TrustStore } from './trust-store.ts';

/** Options of `SqliteAsyncStore.open`. */
export interface SqliteAsyncStoreOptions {
  /** Items per chunk cut at append. */
  chunkItems?: number;
}

const DEFAULT_CHUNK_ITEMS = 512;

/**
 * A result cache entry's row id and whole key: the sha256 of the model key and the input hash, its
 * first 52 bits as the id (a safe integer, so it travels in JSON), all of it as hex.
 */
function cacheId(modelKey: string, input: string): [number, string] {
  const text = `${modelKey}\0${input}`;
  // One call (`crypto.hash`, Node 20.12+) where there is one: a `Hash` object per item costs more.
  const k =
    typeof crypto.hash === 'function'
      ? crypto.hash('sha256', text, 'buffer')
      : crypto.createHash('sha256').update(text).digest();
  return [k.readUIntBE(0, 6) * 16 + (k[6] >> 4), k.toString('hex')];
}

const RUN_COLUMNS =
  'id, anchor, owner_hub AS ownerHub, owner_epoch AS ownerEpoch, state, takeovers, created_at AS createdAt';
const CHUNK_COLUMNS =
  'id, job_id AS jobId, first_id AS first, last_id AS last, cursor, hub_id AS hubId, epoch';

export class SqliteAsyncStore implements AsyncStore {
  readonly kind = 'sqlite';
  readonly severalHubs = false;
  private closed = false;
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();

  private constructor(
    private readonly store: SqliteStore,
    private readonly trust: TrustStore,
    private readonly chunkItems: number,
  ) {
    this.db = store.connection;
  }

  /** Opens (creating if needed) the store at `file`. */
  static async open(file: string, opts: SqliteAsyncStoreOptions = {}): Promise<SqliteAsyncStore> {
    const chunkItems = opts.chunkItems ?? DEFAULT_CHUNK_ITEMS;
    if (!Number.isInteger(chunkItems) || chunkItems < 1) {
      throw new Error(`chunkItems must be a positive integer, not ${String(opts.chunkItems)}`);
    }
    const store = SqliteStore.open(file);
    try {
      const s = new SqliteAsyncStore(store, TrustStore.on(store.connection), chunkItems);
      s.write(() => s.chunkUncoveredItems());
      return s;
    } catch (err) {
      store.close();
      throw err;
    }
  }

  /**
   * The prepared statement for `sql`, prepared once (better-sqlite3 does not cache). A statement's
   * `pluck`/`raw` mode sticks to it, so each SQL text here is always read the same way.
   */
  private st(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) this.statements.set(sql, (s = this.db.prepare(sql)));
    return s;
  }

  /** One `BEGIN IMMEDIATE` transaction: this connection takes the write lock before reading. */
  private write<T>(fn: () => T): T {
    return this.store.transaction(fn);
  }

  /** Cuts chunks for the pending items of unfinished jobs (all, or these) that no chunk covers. */
  private chunkUncoveredItems(only?: Iterable<string>): void {
    const jobs = only
      ? [...only]
      : (this.st("SELECT id FROM jobs WHERE state NOT IN ('completed', 'cancelled')")
          .pluck()
          .all() as string[]);
    const chunksOf = this.st('SELECT first_id, last_id FROM chunks WHERE job_id = ? ORDER BY first_id').raw();
    for (const jobId of jobs) {
      const chunks = chunksOf.all(jobId) as [number, number][];
      const uncovered: IdRun[] = [];
      let c = 0;
      // Both in id order: one pass over the job's pending runs and its chunks.
      for (const run of this.store.pendingItemRuns(jobId)) {
        let from = run.first;
        while (from <= run.last) {
          while (c < chunks.length && chunks[c][1] < from) c++;
          if (c === chunks.length || chunks[c][0] > run.last) {
            uncovered.push({ first: from, last: run.last });
            break;
          }
          if (chunks[c][0] > from) uncovered.push({ first: from, last: chunks[c][0] - 1 });
          from = chunks[c][1] + 1;
        }
      }
      for (const run of uncovered) this.cutChunks(jobId, run.first, run.last);
    }
  }

  /** Fails unless `lease` is the hub's current epoch (leases never lapse on one hub). */
  private fence(lease: Lease, what: string): void {
    const ok = this.st("SELECT 1 FROM hubs WHERE id = ? AND epoch = ? AND state = 'live'").get(
      lease.hubId,
      lease.epoch,
    );
    if (!ok) throw new FencedError(lease, what);
  }

  async getSetting(key: string): Promise<string | undefined> {
    return this.st('SELECT value FROM settings WHERE key = ?').pluck().get(key) as string | undefined;
  }

  async setSetting(key: string, value: string): Promise<void> {
    this.st(
      'INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    ).run(key, value);
  }

  async createJob(job: NewJob): Promise<JobRecord> {
    return this.store.createJob(job);
  }

  async appendItems(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts?: { running?: boolean },
  ): Promise<number[]> {
    return this.write(() => {
      // Consecutive ids (the write lock keeps any other connection's rows out of the middle).
      const ids = this.store.appendItems(jobId, items, opts);
      if (ids.length > 0) this.cutChunks(jobId, ids[0], ids[ids.length - 1]);
      return ids;
    });
  }

  async appendItemsCached(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts: { running?: boolean; cache: CacheKeys },
  ): Promise<AppendedItems> {
    if (opts.cache.inputs.length !== items.length) {
      throw new Error(`${opts.cache.inputs.length} cache keys for ${items.length} items`);
    }
    return this.write(() => {
      const ids = this.store.appendItems(jobId, items, opts);
      if (ids.length === 0) return { ids, cached: [] };
      const cached = this.answerFromCache(jobId, ids, opts.cache, Date.now());
      this.cutChunks(jobId, ids[0], ids[ids.length - 1]);
      return { ids, cached };
    });
  }

  /**
   * Inside an append's transaction: answers the new items `ids` whose key has a stored result, and
   * makes each other item its key's entry where the entry has no result (a pending, failed or
   * taken-back item). A few set-based statements whatever the number of items (each call into
   * SQLite costs about a microsecond of its own): one lookup, one insert of entries, and for the
   * answered items their copies, marks and counts. `CROSS JOIN` keeps the list as the outer loop
   * (SQLite's planner, knowing nothing of its size, would rather scan the table).
   *
   * Entries are keyed by a 52-bit integer from the hash of (model key, input hash) (`cacheId`):
   * the keys come in random order, so each new entry lands on a random page of the table, and a
   * row of a few dozen bytes puts many more entries on a page than the two hex keys would (about a
   * third of the cost per entry, measured). The whole hash is kept in the row and compared: two
   * keys that share an id answer neither's items.
   */
  private answerFromCache(jobId: string, ids: readonly number[], keys: CacheKeys, now: number): number[] {
    const entries = keys.inputs.map((input) => cacheId(keys.modelKey, input));
    const hits = this.st(
      `SELECT k.key AS i, c.item_id AS src, v.how AS how FROM json_each(?) k
         CROSS JOIN result_cache c ON c.id = k.value ->> 0 AND c.key = unhex(k.value ->> 1)
         CROSS JOIN results r ON r.item_id = c.item_id LEFT JOIN verified v ON v.item_id = c.item_id`,
    ).all(JSON.stringify(entries)) as { i: number; src: number; how: string | null }[];
    const hit = new Set(hits.map((h) => h.i));
    const missed: [number, string, number][] = [];
    for (let i = 0; i < ids.length; i++) if (!hit.has(i)) missed.push([...entries[i], ids[i]]);
    if (missed.length > 0) {
      this.st(
        `INSERT INTO result_cache (id, key, item_id, used_at)
           SELECT value ->> 0, unhex(value ->> 1), value ->> 2, ? FROM json_each(?) WHERE true
           ON CONFLICT (id) DO UPDATE SET item_id = excluded.item_id, used_at = excluded.used_at
           WHERE result_cache.key = excluded.key
             AND NOT EXISTS (SELECT 1 FROM results r WHERE r.item_id = result_cache.item_id)`,
      ).run(now, JSON.stringify(missed));
    }
    if (hits.length === 0) return [];
    const cached = hits.map((h) => ids[h.i]);
    const rows = JSON.stringify(
      hits.map((h) => [ids[h.i], h.src, revertible(h.how) ? CACHED_ON_RECORD : CACHED, entries[h.i][0]]),
    );
    this.st(
      `INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at)
         SELECT k.value ->> 0, ?, r.worker_id, r.model_sha256, 0, r.outputs, ?
         FROM json_each(?) k CROSS JOIN results r ON r.item_id = k.value ->> 1`,
    ).run(jobId, now, rows);
    this.st(
      'INSERT OR REPLACE INTO verified (item_id, how) SELECT value ->> 0, value ->> 2 FROM json_each(?)',
    ).run(rows);
    this.st(
      'UPDATE result_cache SET used_at = ? WHERE id IN (SELECT value ->> 3 FROM json_each(?)) AND used_at < ?',
    ).run(now, rows, now);
    this.st(`UPDATE items SET state = 'done' WHERE id IN (SELECT value ->> 0 FROM json_each(?))`).run(rows);
    this.st('UPDATE jobs SET done_count = done_count + ? WHERE id = ?').run(cached.length, jobId);
    return cached;
  }

  async trimCache(maxEntries: number): Promise<number> {
    return this.write(() => {
      const n = this.st('SELECT count(*) FROM result_cache').pluck().get() as number;
      if (n <= maxEntries) return 0;
      return this.st(
        'DELETE FROM result_cache WHERE id IN (SELECT id FROM result_cache ORDER BY used_at LIMIT ?)',
      ).run(n - Math.max(0, maxEntries)).changes;
    });
  }

  async cacheEntries(): Promise<number> {
    return this.st('SELECT count(*) FROM result_cache').pluck().get() as number;
  }

  /** Puts ids `first..last` into chunks: the job's last chunk grows when unheld, short, and adjacent. */
  private cutChunks(jobId: string, first: number, last: number): void {
    const t = this.st(
      'SELECT id, first_id, last_id, hub_id FROM chunks WHERE job_id = ? ORDER BY last_id DESC LIMIT 1',
    ).get(jobId) as { id: number; first_id: number; last_id: number; hub_id: string | null } | undefined;
    let from = first;
    if (t && t.hub_id === null && t.last_id + 1 === first) {
      const room = this.chunkItems - (t.last_id - t.first_id + 1);
      if (room > 0) {
        const upto = Math.min(last, t.last_id + room);
        this.st('UPDATE chunks SET last_id = ? WHERE id = ?').run(upto, t.id);
        from = upto + 1;
      }
    }
    const insert = this.st('INSERT INTO chunks (job_id, first_id, last_id, cursor) VALUES (?, ?, ?, ?)');
    for (let s = from; s <= last; s += this.chunkItems) {
      insert.run(jobId, s, Math.min(s + this.chunkItems - 1, last), s - 1);
    }
  }

  async updateJob(
    id: string,
    patch: Partial<Pick<JobRecord, 'state' | 'priority' | 'startedAt' | 'finishedAt' | 'deadline'>>,
  ): Promise<void> {
    this.store.updateJob(id, patch);
    // A finished job's chunks have nothing left to claim (a revert cuts new ones). A cleanup after
    // the state: one left behind by a crash in between is as harmless as before.
    if (patch.state === 'completed' || patch.state === 'cancelled')
      this.st('DELETE FROM chunks WHERE job_id = ?').run(id);
  }

  async completeJob(id: string, finishedAt: number): Promise<boolean> {
    return this.write(() => {
      const job = this.store.getJob(id);
      if (!job || (job.state !== 'running' && job.state !== 'queued')) return false;
      if (job.doneCount + job.failedCount < job.itemCount) return false;
      this.store.updateJob(id, { state: 'completed', finishedAt });
      this.st('DELETE FROM chunks WHERE job_id = ?').run(id);
      return true;
    });
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    return this.store.getJob(id);
  }

  async listJobs(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]> {
    return this.store.listJobs(filter);
  }

  async pendingItemRuns(jobId: string, range?: { first: number; last: number }): Promise<IdRun[]> {
    return this.store.pendingItemRuns(jobId, range);
  }

  async getItem(id: number): Promise<ItemRecord | undefined> {
    return this.store.getItem(id);
  }

  async listItems(
    jobId: string,
    opts: { offset: number; limit: number; state?: ItemState },
  ): Promise<ItemRecord[]> {
    return this.store.listItems(jobId, opts);
  }

  async itemInputs(ids: readonly number[]): Promise<Map<number, Uint8Array>> {
    return this.store.itemInputs(ids);
  }

  async itemInputsUpTo(ids: readonly number[], maxBytes: number): Promise<Map<number, SizedInputs>> {
    return this.store.itemInputsUpTo(ids, maxBytes);
  }

  async recordAssignments(
    lease: Lease,
    rows: { itemId: number; workerId: string; shardId: string; at: number }[],
  ): Promise<void> {
    if (rows.length === 0) return;
    this.write(() => {
      this.fence(lease, 'assignments');
      this.store.recordAssignments(rows);
    });
  }

  async recordResults(lease: Lease, rows: NewResult[]): Promise<{ accepted: number[]; dropped: number[] }> {
    if (rows.length === 0) return { accepted: [], dropped: [] };
    return this.write(() => {
      this.fence(lease, 'results');
      return this.store.recordResults(rows);
    });
  }

  async recordFailures(lease: Lease, rows: NewFailure[]): Promise<void> {
    if (rows.length === 0) return;
    this.write(() => {
      this.fence(lease, 'failures');
      this.store.recordFailures(rows);
    });
  }

  async failuresOf(jobId: string): Promise<FailureRecord[]> {
    return this.store.failuresOf(jobId);
  }

  async getResult(itemId: number): Promise<ResultRecord | undefined> {
    return this.store.getResult(itemId);
  }

  async *iterateResults(jobId: string): AsyncIterableIterator<ResultRecord> {
    yield* this.store.iterateResults(jobId);
  }

  async upsertWorker(rec: WorkerRecord): Promise<void> {
    this.store.upsertWorker(rec);
  }

  async getWorker(id: string): Promise<WorkerRecord | undefined> {
    return this.store.getWorker(id);
  }

  async listWorkers(): Promise<WorkerRecord[]> {
    return this.store.listWorkers();
  }

  async addWorkerItems(id: string, n: number, lastSeen: number): Promise<void> {
    this.store.addWorkerItems(id, n, lastSeen);
  }

  async addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): Promise<void> {
    this.store.addEvent(jobId, type, data, at);
  }

  async listEvents(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]> {
    return this.store.listEvents(jobId, opts);
  }

  async putModel(name: string, sha256: string, bytes: Uint8Array, manifest?: string): Promise<void> {
    const actual = crypto.createHash('sha256').update(bytes).digest('hex');
    if (actual !== sha256) throw new Error(`model ${name}: bytes hash to ${actual}, not ${sha256}`);
    this.st(
      `INSERT INTO models (sha256, name, size, bytes, manifest) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (sha256) DO NOTHING`,
    ).run(sha256, name, bytes.byteLength, bytes, manifest ?? null);
  }

  async getModel(sha256: string): Promise<Uint8Array | undefined> {
    return this.st('SELECT bytes FROM models WHERE sha256 = ?').pluck().get(sha256) as Buffer | undefined;
  }

  async listModels(): Promise<ModelBlob[]> {
    return this.st(
      'SELECT sha256, name, size, manifest FROM models ORDER BY name, sha256',
    ).all() as ModelBlob[];
  }

  async findModel(nameOrSha: string): Promise<ModelBlob | undefined> {
    return this.st(
      `SELECT sha256, name, size, manifest FROM models WHERE sha256 = @k OR name = @k
       ORDER BY sha256 = @k DESC, sha256 LIMIT 1`,
    ).get({ k: nameOrSha }) as ModelBlob | undefined;
  }

  async initTokens(candidate: StoredTokens): Promise<StoredTokens> {
    return this.write(() => {
      const put = this.st('INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING');
      put.run('operator_token', candidate.operatorToken);
      put.run('join_token', candidate.joinToken);
      const get = this.st('SELECT value FROM settings WHERE key = ?').pluck();
      return {
        operatorToken: get.get('operator_token') as string,
        joinToken: get.get('join_token') as string,
      };
    });
  }

  async addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): Promise<void> {
    this.trust.addCanaries(jobId, rows);
  }

  async canaryIds(jobId: string): Promise<number[]> {
    return this.trust.canaryIds(jobId);
  }

  async canaryAnswer(itemId: number): Promise<Uint8Array | undefined> {
    return this.trust.canaryAnswer(itemId);
  }

  async addReplicas(rows: readonly Replica[]): Promise<void> {
    this.db.transaction(() => {
      for (const r of rows) this.trust.addReplica(r);
    })();
  }

  async replicasOf(itemId: number): Promise<Replica[]> {
    return this.trust.replicasOf(itemId);
  }

  async allReplicas(): Promise<Replica[]> {
    return this.st(
      `SELECT item_id AS itemId, worker_id AS workerId, backend, outputs, ms, at FROM replicas
       ORDER BY item_id, at, worker_id`,
    ).all() as Replica[];
  }

  async replicasIn(range: { first: number; last: number }): Promise<Replica[]> {
    return this.st(
      `SELECT item_id AS itemId, worker_id AS workerId, backend, outputs, ms, at FROM replicas
       WHERE item_id BETWEEN ? AND ? ORDER BY item_id, at, worker_id`,
    ).all(range.first, range.last) as Replica[];
  }

  async replicaItemIds(): Promise<number[]> {
    return this.trust.replicaItemIds();
  }

  async dropReplicas(itemIds: readonly number[]): Promise<void> {
    this.db.transaction(() => {
      for (const id of itemIds) this.trust.dropReplicas(id);
    })();
  }

  async markVerified(itemIds: readonly number[], how: string): Promise<void> {
    this.trust.markVerified(itemIds, how);
  }

  async isVerified(itemId: number): Promise<boolean> {
    return this.trust.isVerified(itemId);
  }

  async verificationOf(jobId: string): Promise<{ how: string; n: number }[]> {
    return this.trust.verificationOf(jobId);
  }

  async trustOf(workerId: string): Promise<TrustRecord | undefined> {
    return this.trust.trustOf(workerId);
  }

  async allTrust(): Promise<TrustRecord[]> {
    return this.trust.allTrust();
  }

  async putTrust(t: TrustRecord): Promise<void> {
    this.trust.putTrust(t);
  }

  async revertUnverified(lease: Lease, workerId: string): Promise<Map<string, number[]>> {
    return this.write(() => {
      this.fence(lease, 'reverting results');
      // Its unconfirmed results answer no more items. Those of cancelled jobs stay stored, so their
      // entries go; the others are taken back (an entry answers again once its item is recomputed).
      this.st(
        `DELETE FROM result_cache WHERE item_id IN (SELECT r.item_id FROM results r
           JOIN jobs j ON j.id = r.job_id LEFT JOIN verified v ON v.item_id = r.item_id
           WHERE r.worker_id = ? AND v.item_id IS NULL AND j.state = 'cancelled')`,
      ).run(workerId);
      const reopened = this.trust.revertUnverified(workerId);
      // Their chunks may be finished and gone: pending again, the items need one to be claimed.
      this.chunkUncoveredItems(reopened.keys());
      return reopened;
    });
  }

  async setHubUrl(lease: Lease, url: string): Promise<void> {
    this.st('UPDATE hubs SET url = ? WHERE id = ? AND epoch = ?').run(url, lease.hubId, lease.epoch);
  }

  async registerHub(hubId: string, opts: { url: string; ttlMs: number }): Promise<Lease> {
    if (!Number.isInteger(opts.ttlMs) || opts.ttlMs < 1) {
      throw new Error(`lease ttlMs must be a positive integer, not ${String(opts.ttlMs)}`);
    }
    return this.write(() => {
      const epoch = ((this.st('SELECT max(epoch) FROM hubs').pluck().get() as number | null) ?? 0) + 1;
      const now = Date.now();
      this.st(
        `INSERT INTO hubs (id, epoch, url, ttl_ms, state, started_at, renewed_at) VALUES (?, ?, ?, ?, 'live', ?, ?)
           ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, url = excluded.url, ttl_ms = excluded.ttl_ms,
             state = 'live', started_at = excluded.started_at, renewed_at = excluded.renewed_at`,
      ).run(hubId, epoch, opts.url, opts.ttlMs, now, now);
      this.st(
        'UPDATE chunks SET hub_id = NULL, epoch = NULL, cursor = first_id - 1 WHERE hub_id = ? AND epoch <> ?',
      ).run(hubId, epoch);
      return { hubId, epoch, ttlMs: opts.ttlMs, expiresAt: Infinity };
    });
  }

  async renewLease(lease: Lease): Promise<Lease> {
    const r = this.st("UPDATE hubs SET renewed_at = ? WHERE id = ? AND epoch = ? AND state = 'live'").run(
      Date.now(),
      lease.hubId,
      lease.epoch,
    );
    if (r.changes === 0) throw new FencedError(lease, 'lease renewal');
    return { ...lease, expiresAt: Infinity };
  }

  async listHubs(): Promise<HubRecord[]> {
    const rows = this.st(
      `SELECT h.id, h.epoch, h.url, h.state, h.started_at AS startedAt, h.renewed_at AS renewedAt,
           (SELECT count(*) FROM chunks c WHERE c.hub_id = h.id AND c.epoch = h.epoch) AS chunks
         FROM hubs h ORDER BY h.id`,
    ).all() as Omit<HubRecord, 'expiresAt' | 'leaseHeld'>[];
    return rows.map((h) => ({ ...h, expiresAt: Infinity, leaseHeld: h.state === 'live' }));
  }

  /** Nothing lapses on one hub: checks the caller's lease and reaps nobody. */
  async reapExpired(lease: Lease): Promise<{ hubId: string; epoch: number; chunks: number }[]> {
    this.fence(lease, 'reaping');
    return [];
  }

  async claimChunks(
    lease: Lease,
    opts: { maxChunks: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk[]> {
    if (opts.maxChunks < 1) return [];
    return this.write(() => {
      this.fence(lease, 'claims');
      const picked = this.st(
        `SELECT c.id FROM chunks c JOIN jobs j ON j.id = c.job_id
           WHERE c.hub_id IS NULL AND j.state IN (SELECT value FROM json_each(?))
             AND j.id NOT IN (SELECT value FROM json_each(?))
           ORDER BY j.priority DESC, j.rowid, c.first_id LIMIT ?`,
      )
        .pluck()
        .all(
          JSON.stringify(opts.states ?? RUNNABLE_STATES),
          JSON.stringify(opts.exceptJobs ?? []),
          opts.maxChunks,
        ) as number[];
      const take = this.st(
        `UPDATE chunks SET hub_id = ?, epoch = ?, cursor = first_id - 1 WHERE id = ? RETURNING ${CHUNK_COLUMNS}`,
      );
      return picked.map((id) => take.get(lease.hubId, lease.epoch, id) as Chunk).sort((a, b) => a.id - b.id);
    });
  }

  async advanceChunk(lease: Lease, chunkId: number, upto: number): Promise<Chunk | undefined> {
    return this.write(() => {
      this.fence(lease, 'chunk progress');
      return this.st(
        `UPDATE chunks SET cursor = max(cursor, min(?, last_id)) WHERE id = ? AND hub_id = ? AND epoch = ?
           RETURNING ${CHUNK_COLUMNS}`,
      ).get(upto, chunkId, lease.hubId, lease.epoch) as Chunk | undefined;
    });
  }

  async splitTail(
    lease: Lease,
    opts: { minItems: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk | undefined> {
    const min = Math.max(1, opts.minItems);
    return this.write(() => {
      this.fence(lease, 'splits');
      const victim = this.st(
        `SELECT c.id, c.job_id, c.last_id, c.cursor FROM chunks c
           JOIN jobs j ON j.id = c.job_id JOIN hubs h ON h.id = c.hub_id AND h.epoch = c.epoch
           WHERE c.hub_id <> ? AND h.state = 'live' AND j.state IN (SELECT value FROM json_each(?))
             AND j.id NOT IN (SELECT value FROM json_each(?)) AND (c.last_id - c.cursor) / 2 >= ?
             AND NOT EXISTS (SELECT 1 FROM chunks u WHERE u.job_id = c.job_id AND u.hub_id IS NULL)
           ORDER BY j.priority DESC, c.last_id - c.cursor DESC, c.id LIMIT 1`,
      ).get(
        lease.hubId,
        JSON.stringify(opts.states ?? RUNNABLE_STATES),
        JSON.stringify(opts.exceptJobs ?? []),
        min,
      ) as { id: number; job_id: string; last_id: number; cursor: number } | undefined;
      if (!victim) return undefined;
      const mid = victim.last_id - Math.floor((victim.last_id - victim.cursor) / 2) + 1;
      this.st('UPDATE chunks SET last_id = ? WHERE id = ?').run(mid - 1, victim.id);
      return this.st(
        `INSERT INTO chunks (job_id, first_id, last_id, cursor, hub_id, epoch) VALUES (?, ?, ?, ?, ?, ?)
           RETURNING ${CHUNK_COLUMNS}`,
      ).get(victim.job_id, mid, victim.last_id, mid - 1, lease.hubId, lease.epoch) as Chunk;
    });
  }

  async releaseChunks(lease: Lease, chunkIds: readonly number[]): Promise<void> {
    if (chunkIds.length === 0) return;
    this.write(() => {
      this.fence(lease, 'chunk release');
      this.st(
        `UPDATE chunks SET hub_id = NULL, epoch = NULL, cursor = first_id - 1
           WHERE id IN (SELECT value FROM json_each(?)) AND hub_id = ? AND epoch = ?`,
      ).run(JSON.stringify(chunkIds), lease.hubId, lease.epoch);
    });
  }

  async finishChunk(lease: Lease, chunkId: number): Promise<boolean> {
    return this.write(() => {
      this.fence(lease, 'chunk finish');
      const r = this.st(
        `DELETE FROM chunks WHERE id = ? AND hub_id = ? AND epoch = ?
             AND NOT EXISTS (SELECT 1 FROM items i WHERE i.job_id = chunks.job_id AND i.state = 'pending'
                             AND i.id BETWEEN chunks.first_id AND chunks.last_id)`,
      ).run(chunkId, lease.hubId, lease.epoch);
      return r.changes === 1;
    });
  }

  async listChunks(jobId: string): Promise<Chunk[]> {
    return this.st(`SELECT ${CHUNK_COLUMNS} FROM chunks WHERE job_id = ? ORDER BY first_id`).all(
      jobId,
    ) as Chunk[];
  }

  async createRun(lease: Lease, run: { id: string; anchor: string; createdAt: number }): Promise<void> {
    this.st(
      `INSERT INTO pipeline_runs (id, anchor, owner_hub, owner_epoch, state, created_at)
         VALUES (?, ?, ?, ?, 'running', ?)`,
    ).run(run.id, run.anchor, lease.hubId, lease.epoch, run.createdAt);
  }

  async getRun(id: string): Promise<PipelineRun | undefined> {
    return this.st(`SELECT ${RUN_COLUMNS} FROM pipeline_runs WHERE id = ?`).get(id) as
      PipelineRun | undefined;
  }

  async completeRun(id: string): Promise<void> {
    this.st("UPDATE pipeline_runs SET state = 'completed' WHERE id = ?").run(id);
  }

  /** One hub: the runs of its own earlier epochs (before a restart or a re-registration). */
  async takeOverRuns(lease: Lease): Promise<PipelineRun[]> {
    return this.write(() => {
      this.fence(lease, 'run takeover');
      return this.st(
        `UPDATE pipeline_runs SET owner_hub = ?, owner_epoch = ?, takeovers = takeovers + 1
           WHERE state = 'running' AND NOT EXISTS (SELECT 1 FROM hubs h
             WHERE h.id = pipeline_runs.owner_hub AND h.epoch = pipeline_runs.owner_epoch AND h.state = 'live')
           RETURNING ${RUN_COLUMNS}`,
      ).all(lease.hubId, lease.epoch) as PipelineRun[];
    });
  }

  /** Closes the database; later calls do nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.trust.close();
    this.store.close();
  }
}
