/**
 * The `AsyncStore` on SQLite (better-sqlite3): the embedded default, for one hub.
 *
 * Its tables are those of `sqlite.ts` and `trust-store.ts` (created only where missing, with the
 * same definitions, so it opens a hub's existing file) plus what several hubs need: `models`,
 * `hubs`, `chunks`. Pending items of unfinished jobs in a file from before get their chunks when
 * the file is first opened here.
 *
 * The several-hubs operations degenerate to one hub: a lease never lapses (`expiresAt` is
 * `Infinity`) and nothing is ever reaped; a re-registration still starts a new epoch and fences the
 * previous one, and chunks are claimed, split and released with the same rules as on PostgreSQL,
 * so the hub runs the same code on both. Every write is one `BEGIN IMMEDIATE` transaction (other
 * connections to the file wait for it, up to `busy_timeout`); the promises resolve after it committed.
 */
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { IdRun } from '../scheduler/id-runs.ts';
import { FencedError, RUNNABLE_STATES } from './async-store.ts';
import type {
  AsyncStore,
  Chunk,
  HubRecord,
  Lease,
  ModelBlob,
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
  WorkerFilter,
  WorkerRecord,
} from './async-store.ts';

/** Options of `SqliteAsyncStore.open`. */
export interface SqliteAsyncStoreOptions {
  /** Items per chunk cut at append. */
  chunkItems?: number;
}

const DEFAULT_CHUNK_ITEMS = 512;
const RESULT_PAGE = 256;
/** Results per multi-row insert (as `sqlite.ts`). */
const RESULT_ROWS = 16;

/** The tables `sqlite.ts` and `trust-store.ts` make, as they make them; then this store's own. */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model_name TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'queued', 'running', 'completed', 'cancelled')),
    priority INTEGER NOT NULL, redundancy INTEGER NOT NULL, deadline INTEGER, requirements TEXT,
    options TEXT NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
    item_count INTEGER NOT NULL DEFAULT 0, done_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id), seq INTEGER NOT NULL,
    name TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0
  );
  CREATE UNIQUE INDEX IF NOT EXISTS items_job_seq ON items (job_id, seq);
  CREATE INDEX IF NOT EXISTS items_pending ON items (job_id, seq) WHERE state = 'pending';
  CREATE TABLE IF NOT EXISTS item_inputs (item_id INTEGER PRIMARY KEY REFERENCES items (id), inputs BLOB NOT NULL);
  CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items (id), worker_id TEXT NOT NULL, shard_id TEXT NOT NULL,
    at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS assignments_item ON assignments (item_id);
  CREATE TABLE IF NOT EXISTS results (
    item_id INTEGER PRIMARY KEY REFERENCES items (id), job_id TEXT NOT NULL, worker_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL, ms REAL NOT NULL, outputs BLOB NOT NULL, at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS results_job ON results (job_id);
  CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items (id), job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL, category TEXT NOT NULL, message TEXT NOT NULL, at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS failures_job ON failures (job_id);
  CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, kind TEXT NOT NULL, backend TEXT NOT NULL,
    name TEXT NOT NULL, pool TEXT, concurrency INTEGER NOT NULL, capabilities TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, items_done INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, at INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS events_job ON events (job_id);

  CREATE TABLE IF NOT EXISTS canaries (item_id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, outputs BLOB NOT NULL);
  CREATE INDEX IF NOT EXISTS canaries_job ON canaries (job_id);
  CREATE TABLE IF NOT EXISTS replicas (
    item_id INTEGER NOT NULL, worker_id TEXT NOT NULL, backend TEXT NOT NULL,
    outputs BLOB NOT NULL, ms REAL NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (item_id, worker_id)
  );
  CREATE TABLE IF NOT EXISTS verified (item_id INTEGER PRIMARY KEY, how TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS worker_trust (
    worker_id TEXT PRIMARY KEY, validated INTEGER NOT NULL, streak INTEGER NOT NULL,
    strikes INTEGER NOT NULL, quarantined INTEGER NOT NULL, reason TEXT, at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS results_worker ON results (worker_id);

  CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, bytes BLOB NOT NULL
  );
  CREATE TABLE IF NOT EXISTS hubs (
    id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, url TEXT NOT NULL, ttl_ms INTEGER NOT NULL,
    state TEXT NOT NULL, started_at INTEGER NOT NULL, renewed_at INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id), first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL, cursor INTEGER NOT NULL, hub_id TEXT, epoch INTEGER
  );
  CREATE INDEX IF NOT EXISTS chunks_job ON chunks (job_id, last_id);
  CREATE INDEX IF NOT EXISTS chunks_hub ON chunks (hub_id) WHERE hub_id IS NOT NULL;
`;

const JOB_COLUMNS = `id, model_name AS modelName, model_sha256 AS modelSha256, state, priority, redundancy,
  deadline, requirements, options, created_at AS createdAt, started_at AS startedAt,
  finished_at AS finishedAt, item_count AS itemCount, done_count AS doneCount, failed_count AS failedCount`;
const WORKER_COLUMNS = `id, secret_hash AS secretHash, kind, backend, name, pool, concurrency, capabilities,
  first_seen AS firstSeen, last_seen AS lastSeen, items_done AS itemsDone`;
const ITEM_COLUMNS = 'id, job_id AS jobId, seq, name, state, attempts';
const CHUNK_COLUMNS =
  'id, job_id AS jobId, first_id AS first, last_id AS last, cursor, hub_id AS hubId, epoch';
const RESULT_SELECT = `SELECT r.item_id AS itemId, i.name AS name, r.worker_id AS workerId, r.ms AS ms,
  r.outputs AS outputs FROM results r JOIN items i ON i.id = r.item_id`;

type JobRow = Omit<JobRecord, 'requirements' | 'options'> & { requirements: string | null; options: string };
type WorkerRow = Omit<WorkerRecord, 'capabilities'> & { capabilities: string };
type EventRow = Omit<JobEvent, 'data'> & { data: string };
type TrustRow = {
  worker_id: string;
  validated: number;
  streak: number;
  strikes: number;
  quarantined: number;
  reason: string | null;
  at: number;
};

function toJob(row: JobRow): JobRecord {
  return {
    ...row,
    requirements: row.requirements === null ? null : (JSON.parse(row.requirements) as WorkerFilter),
    options: JSON.parse(row.options) as Record<string, unknown>,
  };
}

function toTrust(r: TrustRow): TrustRecord {
  return {
    workerId: r.worker_id,
    validated: r.validated,
    streak: r.streak,
    strikes: r.strikes,
    quarantined: r.quarantined === 1,
    reason: r.reason ?? null,
    at: r.at,
  };
}

/** Folds ascending ids into runs of consecutive ids. */
function toRuns(ids: Iterable<number>): IdRun[] {
  const runs: IdRun[] = [];
  let last: IdRun | undefined;
  for (const id of ids) {
    if (last && last.last + 1 === id) last.last = id;
    else runs.push((last = { first: id, last: id }));
  }
  return runs;
}

function tally<K>(counts: Map<K, number>, key: K, n = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + n);
}

export class SqliteAsyncStore implements AsyncStore {
  readonly kind = 'sqlite';
  readonly severalHubs = false;
  private closed = false;
  private readonly statements = new Map<string, Database.Statement>();

  private constructor(
    private readonly db: Database.Database,
    private readonly chunkItems: number,
  ) {}

  /** Opens (creating if needed) the store at `file`. */
  static async open(file: string, opts: SqliteAsyncStoreOptions = {}): Promise<SqliteAsyncStore> {
    const chunkItems = opts.chunkItems ?? DEFAULT_CHUNK_ITEMS;
    if (!Number.isInteger(chunkItems) || chunkItems < 1) {
      throw new Error(`chunkItems must be a positive integer, not ${String(opts.chunkItems)}`);
    }
    if (file !== ':memory:' && file !== '') mkdirSync(dirname(file), { recursive: true });
    const db = new Database(file);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      const store = new SqliteAsyncStore(db, chunkItems);
      store.write(() => {
        const hadChunks = db
          .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'")
          .get();
        db.exec(SCHEMA);
        // sqlite.ts reads its schema version here: these tables are its version 1.
        db.exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
          INSERT INTO meta (key, value) VALUES ('schema_version', '1') ON CONFLICT (key) DO NOTHING`);
        if (!hadChunks) store.chunkExistingItems();
      });
      return store;
    } catch (err) {
      db.close();
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
    return this.db.transaction(fn).immediate();
  }

  /** Cuts the pending items of unfinished jobs in a file from before chunks existed. */
  private chunkExistingItems(): void {
    const jobs = this.st("SELECT id FROM jobs WHERE state NOT IN ('completed', 'cancelled')")
      .pluck()
      .all() as string[];
    const ids = this.st("SELECT id FROM items WHERE job_id = ? AND state = 'pending' ORDER BY id").pluck();
    for (const jobId of jobs) {
      for (const run of toRuns(ids.iterate(jobId) as Iterable<number>))
        this.cutChunks(jobId, run.first, run.last);
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
    try {
      this.st(
        `INSERT INTO jobs (id, model_name, model_sha256, state, priority, redundancy, deadline, requirements,
             options, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        job.id,
        job.modelName,
        job.modelSha256,
        job.state,
        job.priority,
        job.redundancy,
        job.deadline,
        job.requirements === null ? null : JSON.stringify(job.requirements),
        JSON.stringify(job.options),
        Date.now(),
      );
    } catch (err) {
      if ((err as { code?: unknown }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new Error(`job ${job.id} already exists`, { cause: err });
      }
      throw err;
    }
    return (await this.getJob(job.id))!;
  }

  async appendItems(jobId: string, items: { name: string; inputs: Uint8Array }[]): Promise<number[]> {
    return this.write(() => {
      const job = this.st('SELECT state, item_count AS n FROM jobs WHERE id = ?').get(jobId) as
        { state: JobState; n: number } | undefined;
      if (!job) throw new Error(`cannot append items: job ${jobId} does not exist`);
      if (job.state !== 'open') {
        throw new Error(`cannot append items: job ${jobId} is ${job.state}; items go only to an open job`);
      }
      if (items.length === 0) return [];
      // Rowids of an INTEGER PRIMARY KEY are max + 1: one insert's rows get consecutive ids, and
      // the write lock keeps any other connection's rows out of the middle.
      const last = Number(
        this.db
          .prepare(
            `INSERT INTO items (job_id, seq, name, state)
             SELECT ?, ? + key, value, 'pending' FROM json_each(?) ORDER BY key`,
          )
          .run(jobId, job.n, JSON.stringify(items.map((it) => it.name))).lastInsertRowid,
      );
      const first = last - items.length + 1;
      const insertInputs = this.st('INSERT INTO item_inputs (item_id, inputs) VALUES (?, ?)');
      for (let i = 0; i < items.length; i++) insertInputs.run(first + i, items[i].inputs);
      this.st('UPDATE jobs SET item_count = item_count + ? WHERE id = ?').run(items.length, jobId);
      this.cutChunks(jobId, first, last);
      return Array.from({ length: items.length }, (_, k) => first + k);
    });
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
    const cols: Record<string, string> = {
      state: 'state',
      priority: 'priority',
      startedAt: 'started_at',
      finishedAt: 'finished_at',
      deadline: 'deadline',
    };
    const keys = Object.keys(patch).filter((k) => k in cols && patch[k as keyof typeof patch] !== undefined);
    const exists = this.st('SELECT 1 FROM jobs WHERE id = ?').get(id);
    if (!exists) throw new Error(`cannot update job ${id}: it does not exist`);
    if (keys.length === 0) return;
    this.st(`UPDATE jobs SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE id = ?`).run(
      ...keys.map((k) => patch[k as keyof typeof patch] ?? null),
      id,
    );
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const row = this.st(`SELECT ${JOB_COLUMNS} FROM jobs WHERE id = ?`).get(id) as JobRow | undefined;
    return row && toJob(row);
  }

  async listJobs(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]> {
    const rows = this.st(
      `SELECT ${JOB_COLUMNS} FROM jobs
         WHERE @states IS NULL OR state IN (SELECT value FROM json_each(@states))
         ORDER BY rowid DESC LIMIT @limit`,
    ).all({
      states: filter?.states === undefined ? null : JSON.stringify(filter.states),
      limit: filter?.limit ?? -1,
    }) as JobRow[];
    return rows.map(toJob);
  }

  async pendingItemRuns(jobId: string, range?: { first: number; last: number }): Promise<IdRun[]> {
    const ids = this.st(
      "SELECT id FROM items WHERE job_id = ? AND state = 'pending' AND id BETWEEN ? AND ? ORDER BY seq",
    )
      .pluck()
      .iterate(jobId, range?.first ?? 0, range?.last ?? Number.MAX_SAFE_INTEGER) as Iterable<number>;
    return toRuns(ids);
  }

  async getItem(id: number): Promise<ItemRecord | undefined> {
    return this.st(`SELECT ${ITEM_COLUMNS} FROM items WHERE id = ?`).get(id) as ItemRecord | undefined;
  }

  async listItems(
    jobId: string,
    opts: { offset: number; limit: number; state?: ItemState },
  ): Promise<ItemRecord[]> {
    return this.st(
      `SELECT ${ITEM_COLUMNS} FROM items WHERE job_id = ? AND (? IS NULL OR state = ?)
         ORDER BY seq LIMIT ? OFFSET ?`,
    ).all(jobId, opts.state ?? null, opts.state ?? null, opts.limit, opts.offset) as ItemRecord[];
  }

  async itemInputs(ids: readonly number[]): Promise<Map<number, Uint8Array>> {
    const rows = this.st(
      'SELECT item_id, inputs FROM item_inputs WHERE item_id IN (SELECT value FROM json_each(?))',
    )
      .raw()
      .all(JSON.stringify(ids)) as [number, Buffer][];
    return new Map(rows);
  }

  async itemInputsUpTo(ids: readonly number[], maxBytes: number): Promise<Map<number, SizedInputs>> {
    const rows = this.st(
      `SELECT item_id, length(inputs), CASE WHEN length(inputs) <= ? THEN inputs END
         FROM item_inputs WHERE item_id IN (SELECT value FROM json_each(?))`,
    )
      .raw()
      .all(maxBytes, JSON.stringify(ids)) as [number, number, Buffer | null][];
    return new Map(rows.map(([id, bytes, pack]) => [id, { bytes, pack }]));
  }

  async recordAssignments(
    lease: Lease,
    rows: { itemId: number; workerId: string; shardId: string; at: number }[],
  ): Promise<void> {
    if (rows.length === 0) return;
    this.write(() => {
      this.fence(lease, 'assignments');
      const insert = this.st(
        'INSERT INTO assignments (item_id, worker_id, shard_id, at) VALUES (?, ?, ?, ?)',
      );
      for (const r of rows) insert.run(r.itemId, r.workerId, r.shardId, r.at);
    });
  }

  /**
   * Set-based as in `sqlite.ts`: one `UPDATE … RETURNING` per job flips the batch's pending items,
   * then the flipped rows' results go in `RESULT_ROWS` a statement (each statement crossing into
   * SQLite costs about a microsecond of its own).
   */
  async recordResults(lease: Lease, rows: NewResult[]): Promise<{ accepted: number[]; dropped: number[] }> {
    if (rows.length === 0) return { accepted: [], dropped: [] };
    return this.write(() => {
      this.fence(lease, 'results');
      const perJob = new Map<string, number[]>();
      for (const r of rows) {
        const ids = perJob.get(r.jobId);
        if (ids) ids.push(r.itemId);
        else perJob.set(r.jobId, [r.itemId]);
      }
      // `+` keeps the planner on the rowid: the pending index would scan the whole job.
      const markDone = this.st(
        `UPDATE items SET state = 'done'
         WHERE id IN (SELECT value FROM json_each(?)) AND +job_id = ? AND +state = 'pending' RETURNING id`,
      ).pluck();
      const bump = this.st('UPDATE jobs SET done_count = done_count + ? WHERE id = ?');
      const flipped = new Set<number>();
      for (const [jobId, ids] of perJob) {
        const done = markDone.all(JSON.stringify(ids), jobId) as number[];
        for (const id of done) flipped.add(id);
        if (done.length > 0) bump.run(done.length, jobId);
      }
      const one = this.st(
        'INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      );
      const many = this.st(
        `INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at) VALUES
         ${Array.from({ length: RESULT_ROWS }, () => '(?, ?, ?, ?, ?, ?, ?)').join(', ')}`,
      );
      const accepted: number[] = [];
      const dropped: number[] = [];
      const params: unknown[] = [];
      for (const r of rows) {
        if (flipped.delete(r.itemId)) {
          params.push(r.itemId, r.jobId, r.workerId, r.modelSha256, r.ms, r.outputs, r.at);
          if (params.length === RESULT_ROWS * 7) {
            many.run(params);
            params.length = 0;
          }
          accepted.push(r.itemId);
        } else {
          dropped.push(r.itemId);
        }
      }
      for (let i = 0; i < params.length; i += 7) one.run(params.slice(i, i + 7));
      return { accepted, dropped };
    });
  }

  async recordFailures(lease: Lease, rows: NewFailure[]): Promise<void> {
    if (rows.length === 0) return;
    this.write(() => {
      this.fence(lease, 'failures');
      const markFailed = this.st(
        "UPDATE items SET state = 'failed', attempts = attempts + 1 WHERE id = ? AND job_id = ? AND state = 'pending'",
      );
      const countAttempt = this.st('UPDATE items SET attempts = attempts + 1 WHERE id = ? AND job_id = ?');
      const insert = this.st(
        'INSERT INTO failures (item_id, job_id, worker_id, category, message, at) VALUES (?, ?, ?, ?, ?, ?)',
      );
      const failed = new Map<string, number>();
      for (const f of rows) {
        let counted: boolean;
        if (f.final && markFailed.run(f.itemId, f.jobId).changes === 1) {
          tally(failed, f.jobId);
          counted = true;
        } else {
          counted = countAttempt.run(f.itemId, f.jobId).changes === 1;
        }
        if (counted) insert.run(f.itemId, f.jobId, f.workerId, f.category, f.message, f.at);
      }
      const bump = this.st('UPDATE jobs SET failed_count = failed_count + ? WHERE id = ?');
      for (const [jobId, n] of failed) bump.run(n, jobId);
    });
  }

  async failuresOf(jobId: string): Promise<FailureRecord[]> {
    return this.st(
      'SELECT item_id AS itemId, worker_id AS workerId, category, message, at FROM failures WHERE job_id = ? ORDER BY id',
    ).all(jobId) as FailureRecord[];
  }

  async getResult(itemId: number): Promise<ResultRecord | undefined> {
    return this.st(`${RESULT_SELECT} WHERE r.item_id = ?`).get(itemId) as ResultRecord | undefined;
  }

  async *iterateResults(jobId: string): AsyncIterableIterator<ResultRecord> {
    const page = this.st(`${RESULT_SELECT} WHERE r.job_id = ? AND r.item_id > ? ORDER BY r.item_id LIMIT ?`);
    let after = 0;
    for (;;) {
      const rows = page.all(jobId, after, RESULT_PAGE) as ResultRecord[];
      yield* rows;
      if (rows.length < RESULT_PAGE) return;
      after = rows[rows.length - 1].itemId;
    }
  }

  async upsertWorker(rec: WorkerRecord): Promise<void> {
    this.st(
      `INSERT INTO workers (id, secret_hash, kind, backend, name, pool, concurrency, capabilities, first_seen,
           last_seen, items_done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, kind = excluded.kind,
           backend = excluded.backend, name = excluded.name, pool = excluded.pool,
           concurrency = excluded.concurrency, capabilities = excluded.capabilities,
           last_seen = excluded.last_seen`,
    ).run(
      rec.id,
      rec.secretHash,
      rec.kind,
      rec.backend,
      rec.name,
      rec.pool,
      rec.concurrency,
      JSON.stringify(rec.capabilities),
      rec.firstSeen,
      rec.lastSeen,
      rec.itemsDone,
    );
  }

  async getWorker(id: string): Promise<WorkerRecord | undefined> {
    const row = this.st(`SELECT ${WORKER_COLUMNS} FROM workers WHERE id = ?`).get(id) as
      WorkerRow | undefined;
    return row && { ...row, capabilities: JSON.parse(row.capabilities) as Record<string, unknown> };
  }

  async listWorkers(): Promise<WorkerRecord[]> {
    const rows = this.st(`SELECT ${WORKER_COLUMNS} FROM workers ORDER BY id`).all() as WorkerRow[];
    return rows.map((row) => ({
      ...row,
      capabilities: JSON.parse(row.capabilities) as Record<string, unknown>,
    }));
  }

  async addWorkerItems(id: string, n: number, lastSeen: number): Promise<void> {
    this.st('UPDATE workers SET items_done = items_done + ?, last_seen = ? WHERE id = ?').run(
      n,
      lastSeen,
      id,
    );
  }

  async addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): Promise<void> {
    this.st('INSERT INTO events (job_id, at, type, data) VALUES (?, ?, ?, ?)').run(
      jobId,
      at,
      type,
      JSON.stringify(data),
    );
  }

  async listEvents(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]> {
    const rows = this.st(
      `SELECT id, job_id AS jobId, at, type, data FROM events
         WHERE job_id = ? AND (? IS NULL OR type = ?) ORDER BY id DESC LIMIT ?`,
    ).all(jobId, opts?.type ?? null, opts?.type ?? null, opts?.limit ?? -1) as EventRow[];
    return rows.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> }));
  }

  async putModel(name: string, sha256: string, bytes: Uint8Array): Promise<void> {
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== sha256) throw new Error(`model ${name}: bytes hash to ${actual}, not ${sha256}`);
    this.st(
      'INSERT INTO models (sha256, name, size, bytes) VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING',
    ).run(sha256, name, bytes.byteLength, bytes);
  }

  async getModel(sha256: string): Promise<Uint8Array | undefined> {
    return this.st('SELECT bytes FROM models WHERE sha256 = ?').pluck().get(sha256) as Buffer | undefined;
  }

  async listModels(): Promise<ModelBlob[]> {
    return this.st('SELECT sha256, name, size FROM models ORDER BY name, sha256').all() as ModelBlob[];
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
    this.write(() => {
      const put = this.st('INSERT OR REPLACE INTO canaries (item_id, job_id, outputs) VALUES (?, ?, ?)');
      for (const r of rows) put.run(r.itemId, jobId, r.outputs);
    });
  }

  async canaryIds(jobId: string): Promise<number[]> {
    return this.st('SELECT item_id FROM canaries WHERE job_id = ? ORDER BY item_id')
      .pluck()
      .all(jobId) as number[];
  }

  async canaryAnswer(itemId: number): Promise<Uint8Array | undefined> {
    return this.st('SELECT outputs FROM canaries WHERE item_id = ?').pluck().get(itemId) as
      Buffer | undefined;
  }

  async addReplica(r: Replica): Promise<void> {
    this.st(
      'INSERT OR REPLACE INTO replicas (item_id, worker_id, backend, outputs, ms, at) VALUES (?, ?, ?, ?, ?, ?)',
    ).run(r.itemId, r.workerId, r.backend, r.outputs, r.ms, r.at);
  }

  async replicasOf(itemId: number): Promise<Replica[]> {
    return this.st(
      `SELECT item_id AS itemId, worker_id AS workerId, backend, outputs, ms, at FROM replicas
         WHERE item_id = ? ORDER BY at, worker_id`,
    ).all(itemId) as Replica[];
  }

  async replicaItemIds(): Promise<number[]> {
    return this.st('SELECT DISTINCT item_id FROM replicas ORDER BY 1').pluck().all() as number[];
  }

  async dropReplicas(itemId: number): Promise<void> {
    this.st('DELETE FROM replicas WHERE item_id = ?').run(itemId);
  }

  async markVerified(itemIds: readonly number[], how: string): Promise<void> {
    this.write(() => {
      const put = this.st('INSERT OR REPLACE INTO verified (item_id, how) VALUES (?, ?)');
      for (const id of itemIds) put.run(id, how);
    });
  }

  async isVerified(itemId: number): Promise<boolean> {
    return this.st('SELECT 1 FROM verified WHERE item_id = ?').get(itemId) !== undefined;
  }

  async trustOf(workerId: string): Promise<TrustRecord | undefined> {
    const r = this.st('SELECT * FROM worker_trust WHERE worker_id = ?').get(workerId) as TrustRow | undefined;
    return r && toTrust(r);
  }

  async allTrust(): Promise<TrustRecord[]> {
    return (this.st('SELECT * FROM worker_trust ORDER BY worker_id').all() as TrustRow[]).map(toTrust);
  }

  async putTrust(t: TrustRecord): Promise<void> {
    this.st(
      `INSERT INTO worker_trust (worker_id, validated, streak, strikes, quarantined, reason, at)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (worker_id) DO UPDATE SET validated = excluded.validated, streak = excluded.streak,
           strikes = excluded.strikes, quarantined = excluded.quarantined, reason = excluded.reason,
           at = excluded.at`,
    ).run(t.workerId, t.validated, t.streak, t.strikes, t.quarantined ? 1 : 0, t.reason, t.at);
  }

  async revertUnverified(lease: Lease, workerId: string): Promise<Map<string, number[]>> {
    return this.write(() => {
      this.fence(lease, 'reverting results');
      const rows = this.st(
        `SELECT r.item_id AS itemId, r.job_id AS jobId FROM results r
           JOIN jobs j ON j.id = r.job_id LEFT JOIN verified v ON v.item_id = r.item_id
           WHERE r.worker_id = ? AND v.item_id IS NULL AND j.state != 'cancelled' ORDER BY r.item_id`,
      ).all(workerId) as { itemId: number; jobId: string }[];
      const del = this.st('DELETE FROM results WHERE item_id = ?');
      const reopen = this.st("UPDATE items SET state = 'pending' WHERE id = ? AND state = 'done'");
      const out = new Map<string, number[]>();
      for (const r of rows) {
        del.run(r.itemId);
        if (reopen.run(r.itemId).changes === 0) continue;
        const list = out.get(r.jobId) ?? [];
        list.push(r.itemId);
        out.set(r.jobId, list);
      }
      const uncount = this.st(
        `UPDATE jobs SET done_count = done_count - ?,
           state = CASE WHEN state = 'completed' THEN 'running' ELSE state END,
           finished_at = CASE WHEN state = 'completed' THEN NULL ELSE finished_at END
         WHERE id = ?`,
      );
      for (const [jobId, ids] of out) uncount.run(ids.length, jobId);
      return out;
    });
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
    opts: { maxChunks: number; states?: readonly JobState[] },
  ): Promise<Chunk[]> {
    if (opts.maxChunks < 1) return [];
    return this.write(() => {
      this.fence(lease, 'claims');
      const picked = this.st(
        `SELECT c.id FROM chunks c JOIN jobs j ON j.id = c.job_id
           WHERE c.hub_id IS NULL AND j.state IN (SELECT value FROM json_each(?))
           ORDER BY j.priority DESC, j.rowid, c.first_id LIMIT ?`,
      )
        .pluck()
        .all(JSON.stringify(opts.states ?? RUNNABLE_STATES), opts.maxChunks) as number[];
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
    opts: { minItems: number; states?: readonly JobState[] },
  ): Promise<Chunk | undefined> {
    const min = Math.max(1, opts.minItems);
    return this.write(() => {
      this.fence(lease, 'splits');
      const victim = this.st(
        `SELECT c.id, c.job_id, c.last_id, c.cursor FROM chunks c
           JOIN jobs j ON j.id = c.job_id JOIN hubs h ON h.id = c.hub_id AND h.epoch = c.epoch
           WHERE c.hub_id <> ? AND h.state = 'live' AND j.state IN (SELECT value FROM json_each(?))
             AND (c.last_id - c.cursor) / 2 >= ?
             AND NOT EXISTS (SELECT 1 FROM chunks u WHERE u.job_id = c.job_id AND u.hub_id IS NULL)
           ORDER BY j.priority DESC, c.last_id - c.cursor DESC, c.id LIMIT 1`,
      ).get(lease.hubId, JSON.stringify(opts.states ?? RUNNABLE_STATES), min) as
        { id: number; job_id: string; last_id: number; cursor: number } | undefined;
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

  /** Closes the database; later calls do nothing. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}
