/**
 * The SQLite `Store` (better-sqlite3): one file, WAL journal, every method one transaction.
 *
 * Durability: `synchronous=NORMAL` in WAL mode survives a crash of the process (kill -9) with every
 * committed transaction intact; a power cut may lose the last few commits, never corrupt the file.
 *
 * The schema is `sqlite-migrations.ts`'s (its file comment says why the tables are laid out so).
 *
 * Access choices, and why:
 * - Job counters are bumped once per job per batch, not once per row.
 * - Statements are prepared once; variable-length lists are bound as JSON and read with `json_each`,
 *   so no SQL is built at call time.
 * - Set-based where the hub's hot paths allow it (batches of results and shards of items, not single
 *   rows): a shard's assignments are one `INSERT ... SELECT FROM json_each`, a batch's
 *   pending→done flips one `UPDATE ... RETURNING` per job, a shard's inputs one range scan per run of
 *   consecutive ids (shards are mostly such runs), and appended items one multi-row insert. Each
 *   statement crossing from JavaScript into SQLite costs about a microsecond on its own.
 * - A 32 MiB page cache per connection (SQLite's default is 2 MiB): a million-item job's indexes no
 *   longer miss the cache on every page; the cap keeps memory flat whatever the job's size.
 * - WAL checkpoints run in a thread of their own (`wal-checkpointer.ts`), not on the event loop.
 */
import Database from 'better-sqlite3';
import type { IdRun } from '../scheduler/id-runs.ts';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { migrateSqlite } from './sqlite-migrations.ts';
import { WalCheckpointer } from './wal-checkpointer.ts';
import type {
  FailureRecord,
  ItemRecord,
  ItemState,
  JobEvent,
  JobRecord,
  JobState,
  NewFailure,
  NewJob,
  NewResult,
  ResultRecord,
  SizedInputs,
  Store,
  WorkerFilter,
  WorkerRecord,
} from './store.ts';

/**
 * Results inserted by one statement, when a batch has that many (recording 100,000 noop results in
 * batches of 250, old and new alternated in one process: 3.26-3.39 -> 2.84-3.02 us per result with 16
 * rows a statement, flipping the items included).
 */
const RESULT_ROWS = 16;

/** Page cache per connection, KiB. */
const CACHE_KIB = 32 * 1024;

/** Consecutive ids worth a range scan in `itemInputs`. */
const MIN_RUN = 4;

/** Seq numbers per query in `pendingItemRuns`. */
const PENDING_WINDOW = 65_536;

/** Rows per query in `iterateResults`: bounds memory whatever the job's size. */
const RESULT_PAGE = 256;

const JOB_COLUMNS = `id, model_name AS modelName, model_sha256 AS modelSha256, state, priority, redundancy,
  deadline, requirements, options, created_at AS createdAt, started_at AS startedAt,
  finished_at AS finishedAt, item_count AS itemCount, done_count AS doneCount,
  failed_count AS failedCount`;
const WORKER_COLUMNS = `id, secret_hash AS secretHash, kind, backend, name, pool, concurrency, capabilities,
  first_seen AS firstSeen, last_seen AS lastSeen, items_done AS itemsDone`;
const RESULT_COLUMNS = `r.item_id AS itemId, i.name AS name, r.worker_id AS workerId, r.ms AS ms,
  r.outputs AS outputs`;

/** A job row before its JSON columns are parsed. */
type JobRow = Omit<JobRecord, 'requirements' | 'options'> & { requirements: string | null; options: string };
type WorkerRow = Omit<WorkerRecord, 'capabilities'> & { capabilities: string };
type EventRow = Omit<JobEvent, 'data'> & { data: string };

function toJob(row: JobRow): JobRecord {
  return {
    ...row,
    requirements: row.requirements === null ? null : (JSON.parse(row.requirements) as WorkerFilter),
    options: JSON.parse(row.options) as Record<string, unknown>,
  };
}

function toWorker(row: WorkerRow): WorkerRecord {
  return { ...row, capabilities: JSON.parse(row.capabilities) as Record<string, unknown> };
}

function toEvent(row: EventRow): JobEvent {
  return { ...row, data: JSON.parse(row.data) as Record<string, unknown> };
}

/** Adds `n` to `key`'s tally. */
function tally(counts: Map<string, number>, key: string, n = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + n);
}

/** Opens the database, sets the pragmas and brings the schema up to date (`sqlite-migrations.ts`). */
function openDatabase(file: string): Database.Database {
  if (file !== ':memory:' && file !== '' && !file.startsWith('file:')) {
    mkdirSync(dirname(file), { recursive: true });
  }
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    db.pragma(`cache_size = -${CACHE_KIB}`);
    db.pragma('temp_store = MEMORY');
    migrateSqlite(db, file);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/**
 * The hub's store on SQLite.
 *
 * Orderings the interface leaves open: `listJobs` and `listEvents` return newest first, and `limit`
 * keeps the newest. Rows naming an item that does not exist or belongs to another job are dropped by
 * `recordResults` (reported) and `recordFailures` (silently); `addWorkerItems` on an unknown worker
 * does nothing. `upsertWorker` keeps an existing worker's `firstSeen` and `itemsDone`: the first is
 * history and the second is only ever changed through `addWorkerItems`.
 */
/** An item to append: its name and its inputs' tensor pack. */
type NewItemRow = { name: string; inputs: Uint8Array };

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private closed = false;
  private readonly checkpointer: WalCheckpointer | undefined;

  private readonly sql;
  private readonly appendTx;
  private readonly assignTx;
  private readonly resultsTx;
  private readonly failuresTx;
  private readonly anyTx;

  private constructor(db: Database.Database, file: string) {
    this.db = db;
    this.checkpointer = WalCheckpointer.start(db, file);
    this.sql = {
      insertJob: db.prepare(
        `INSERT INTO jobs (id, model_name, model_sha256, state, priority, redundancy, deadline, requirements,
           options, created_at)
         VALUES (@id, @modelName, @modelSha256, @state, @priority, @redundancy, @deadline, @requirements,
           @options, @createdAt)`,
      ),
      getJob: db.prepare<[string], JobRow>(`SELECT ${JOB_COLUMNS} FROM jobs WHERE id = ?`),
      listJobs: db.prepare<{ states: string | null; limit: number }, JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs
         WHERE @states IS NULL OR state IN (SELECT value FROM json_each(@states))
         ORDER BY rowid DESC LIMIT @limit`,
      ),
      // One statement for every patch shape: a `set*` flag of 0 leaves the column as it is.
      updateJob: db.prepare(
        `UPDATE jobs SET
           state = CASE WHEN @setState AND (@state <> 'running' OR state = 'queued') THEN @state ELSE state END,
           priority = CASE WHEN @setPriority THEN @priority ELSE priority END,
           started_at = CASE WHEN @setStartedAt THEN @startedAt ELSE started_at END,
           finished_at = CASE WHEN @setFinishedAt THEN @finishedAt ELSE finished_at END,
           deadline = CASE WHEN @setDeadline THEN @deadline ELSE deadline END
         WHERE id = @id`,
      ),
      jobForAppend: db.prepare<[string], { state: JobState; itemCount: number }>(
        'SELECT state, item_count AS itemCount FROM jobs WHERE id = ?',
      ),
      // Rowids of an INTEGER PRIMARY KEY without AUTOINCREMENT are max+1, so the rows of one insert
      // get consecutive ids ending at last_insert_rowid().
      insertItems: db.prepare<[string, number, string]>(
        `INSERT INTO items (job_id, seq, name, state)
         SELECT ?, ? + key, value, 'pending' FROM json_each(?) ORDER BY key`,
      ),
      insertInputs: db.prepare<[number | bigint, Uint8Array]>(
        'INSERT INTO item_inputs (item_id, inputs) VALUES (?, ?)',
      ),
      addItemCount: db.prepare<[number, string]>('UPDATE jobs SET item_count = item_count + ? WHERE id = ?'),
      addDoneCount: db.prepare<[number, string]>('UPDATE jobs SET done_count = done_count + ? WHERE id = ?'),
      addFailedCount: db.prepare<[number, string]>(
        'UPDATE jobs SET failed_count = failed_count + ? WHERE id = ?',
      ),

      pendingWindow: db
        .prepare<[string, number, number, number, number], number>(
          `SELECT id FROM items WHERE job_id = ? AND state = 'pending' AND seq >= ? AND seq < ?
             AND id BETWEEN ? AND ?
           ORDER BY seq`,
        )
        .pluck(),
      getItem: db.prepare<[number], ItemRecord>(
        'SELECT id, job_id AS jobId, seq, name, state, attempts FROM items WHERE id = ?',
      ),
      listItems: db.prepare<
        { jobId: string; state: ItemState | null; limit: number; offset: number },
        ItemRecord
      >(
        `SELECT id, job_id AS jobId, seq, name, state, attempts FROM items
         WHERE job_id = @jobId AND (@state IS NULL OR state = @state)
         ORDER BY seq LIMIT @limit OFFSET @offset`,
      ),
      itemInputs: db
        .prepare<[string], [number, Buffer]>(
          'SELECT item_id, inputs FROM item_inputs WHERE item_id IN (SELECT value FROM json_each(?))',
        )
        .raw(),
      inputsRange: db
        .prepare<[number, number], [number, Buffer]>(
          'SELECT item_id, inputs FROM item_inputs WHERE item_id BETWEEN ? AND ?',
        )
        .raw(),
      // The blob only when it is at most @max bytes: SQLite answers length() from the record header.
      smallInputs: db
        .prepare<[{ max: number; list: string }], [number, number, Buffer | null]>(
          `SELECT item_id, length(inputs), CASE WHEN length(inputs) <= @max THEN inputs END
           FROM item_inputs WHERE item_id IN (SELECT value FROM json_each(@list))`,
        )
        .raw(),
      smallInputsRange: db
        .prepare<[{ max: number; lo: number; hi: number }], [number, number, Buffer | null]>(
          `SELECT item_id, length(inputs), CASE WHEN length(inputs) <= @max THEN inputs END
           FROM item_inputs WHERE item_id BETWEEN @lo AND @hi`,
        )
        .raw(),

      insertAssignments: db.prepare<[string, string, number, string]>(
        `INSERT INTO assignments (item_id, worker_id, shard_id, at)
         SELECT value, ?, ?, ? FROM json_each(?)`,
      ),
      // The pending→done flip is the gate: only the row that changes it may insert the result.
      markDone: db
        .prepare<[string, string], number>(
          // `+` keeps the planner on the rowid: the pending index would scan the whole job.
          `UPDATE items SET state = 'done'
           WHERE id IN (SELECT value FROM json_each(?)) AND +job_id = ? AND +state = 'pending'
           RETURNING id`,
        )
        .pluck(),
      insertResult: db.prepare<[number, string, string, string, number, Uint8Array, number]>(
        `INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      // RESULT_ROWS rows a statement: each call from JavaScript into SQLite costs about a
      // microsecond of its own (a batch of results cannot go through json_each: they carry blobs).
      insertResults: db.prepare<unknown[]>(
        `INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at)
         VALUES ${Array.from({ length: RESULT_ROWS }, () => '(?, ?, ?, ?, ?, ?, ?)').join(', ')}`,
      ),
      markFailed: db.prepare<[number, string]>(
        "UPDATE items SET state = 'failed', attempts = attempts + 1 WHERE id = ? AND job_id = ? AND state = 'pending'",
      ),
      countAttempt: db.prepare<[number, string]>(
        'UPDATE items SET attempts = attempts + 1 WHERE id = ? AND job_id = ?',
      ),
      insertFailure: db.prepare<[number, string, string, string, string, number]>(
        `INSERT INTO failures (item_id, job_id, worker_id, category, message, at) VALUES (?, ?, ?, ?, ?, ?)`,
      ),
      failuresOf: db.prepare<[string], FailureRecord>(
        `SELECT item_id AS itemId, worker_id AS workerId, category, message, at FROM failures
         WHERE job_id = ? ORDER BY id`,
      ),

      getResult: db.prepare<[number], ResultRecord>(
        `SELECT ${RESULT_COLUMNS} FROM results r JOIN items i ON i.id = r.item_id WHERE r.item_id = ?`,
      ),
      resultPage: db.prepare<[string, number, number], ResultRecord>(
        `SELECT ${RESULT_COLUMNS} FROM results r JOIN items i ON i.id = r.item_id
         WHERE r.job_id = ? AND r.item_id > ? ORDER BY r.item_id LIMIT ?`,
      ),

      upsertWorker: db.prepare(
        `INSERT INTO workers (id, secret_hash, kind, backend, name, pool, concurrency, capabilities, first_seen,
           last_seen, items_done)
         VALUES (@id, @secretHash, @kind, @backend, @name, @pool, @concurrency, @capabilities, @firstSeen,
           @lastSeen, @itemsDone)
         ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, kind = excluded.kind,
           backend = excluded.backend, name = excluded.name, pool = excluded.pool,
           concurrency = excluded.concurrency, capabilities = excluded.capabilities,
           last_seen = excluded.last_seen`,
      ),
      getWorker: db.prepare<[string], WorkerRow>(`SELECT ${WORKER_COLUMNS} FROM workers WHERE id = ?`),
      listWorkers: db.prepare<[], WorkerRow>(`SELECT ${WORKER_COLUMNS} FROM workers ORDER BY id`),
      addWorkerItems: db.prepare<[number, number, string]>(
        'UPDATE workers SET items_done = items_done + ?, last_seen = ? WHERE id = ?',
      ),

      addEvent: db.prepare<[string, number, string, string]>(
        'INSERT INTO events (job_id, at, type, data) VALUES (?, ?, ?, ?)',
      ),
      listEvents: db.prepare<{ jobId: string; type: string | null; limit: number }, EventRow>(
        `SELECT id, job_id AS jobId, at, type, data FROM events
         WHERE job_id = @jobId AND (@type IS NULL OR type = @type)
         ORDER BY id DESC LIMIT @limit`,
      ),
    };

    this.appendTx = db.transaction((jobId: string, items: NewItemRow[], running = false) => {
      const job = this.sql.jobForAppend.get(jobId);
      if (!job) throw new Error(`cannot append items: job ${jobId} does not exist`);
      // A pipeline stage (server/pipeline.ts) is fed while it runs.
      const fed = running && (job.state === 'queued' || job.state === 'running');
      if (job.state !== 'open' && !fed) {
        throw new Error(`cannot append items: job ${jobId} is ${job.state}; items go only to an open job`);
      }
      if (items.length === 0) return [];
      const names = JSON.stringify(items.map((it) => it.name));
      const last = Number(this.sql.insertItems.run(jobId, job.itemCount, names).lastInsertRowid);
      const first = last - items.length + 1;
      const ids: number[] = new Array<number>(items.length);
      for (let i = 0; i < items.length; i++) {
        ids[i] = first + i;
        this.sql.insertInputs.run(first + i, items[i].inputs);
      }
      this.sql.addItemCount.run(items.length, jobId);
      return ids;
    });

    this.assignTx = db.transaction(
      (rows: { itemId: number; workerId: string; shardId: string; at: number }[]) => {
        // One statement per run of rows sharing worker, shard and time (a shard is one such run).
        for (let i = 0; i < rows.length;) {
          const { workerId, shardId, at } = rows[i];
          const ids: number[] = [];
          for (; i < rows.length; i++) {
            const r = rows[i];
            if (r.workerId !== workerId || r.shardId !== shardId || r.at !== at) break;
            ids.push(r.itemId);
          }
          this.sql.insertAssignments.run(workerId, shardId, at, JSON.stringify(ids));
        }
      },
    );

    this.resultsTx = db.transaction((rows: NewResult[]) => {
      // Flip every still-pending item of the batch in one statement per job; only the rows it
      // flipped may insert a result (once each, in row order), everything else is dropped.
      const perJob = new Map<string, number[]>();
      for (const r of rows) {
        const ids = perJob.get(r.jobId);
        if (ids) ids.push(r.itemId);
        else perJob.set(r.jobId, [r.itemId]);
      }
      const flipped = new Set<number>();
      for (const [jobId, ids] of perJob) {
        const done = this.sql.markDone.all(JSON.stringify(ids), jobId);
        for (const id of done) flipped.add(id);
        if (done.length > 0) this.sql.addDoneCount.run(done.length, jobId);
      }
      const accepted: number[] = [];
      const dropped: number[] = [];
      const params: unknown[] = []; // up to RESULT_ROWS rows' parameters, in row order
      for (const r of rows) {
        if (flipped.delete(r.itemId)) {
          params.push(r.itemId, r.jobId, r.workerId, r.modelSha256, r.ms, r.outputs, r.at);
          if (params.length === RESULT_ROWS * 7) {
            this.sql.insertResults.run(params);
            params.length = 0;
          }
          accepted.push(r.itemId);
        } else {
          dropped.push(r.itemId);
        }
      }
      for (let i = 0; i < params.length; i += 7)
        this.sql.insertResult.run(
          ...(params.slice(i, i + 7) as Parameters<typeof this.sql.insertResult.run>),
        );
      return { accepted, dropped };
    });

    this.anyTx = db.transaction((fn: () => unknown) => fn());

    this.failuresTx = db.transaction((rows: NewFailure[]) => {
      const failed = new Map<string, number>();
      for (const f of rows) {
        let counted: boolean;
        if (f.final && this.sql.markFailed.run(f.itemId, f.jobId).changes === 1) {
          tally(failed, f.jobId);
          counted = true;
        } else {
          counted = this.sql.countAttempt.run(f.itemId, f.jobId).changes === 1;
        }
        // No such item in that job: nothing to attach the failure to.
        if (counted) this.sql.insertFailure.run(f.itemId, f.jobId, f.workerId, f.category, f.message, f.at);
      }
      for (const [jobId, n] of failed) this.sql.addFailedCount.run(n, jobId);
    });
  }

  /** Opens (creating if needed) the store at `file`; `':memory:'` gives a private in-memory store. */
  static open(file: string): SqliteStore {
    return new SqliteStore(openDatabase(file), file);
  }

  /**
   * The connection, for what keeps its own tables in this file and must write them in this store's
   * transactions (`TrustStore.on`, `SqliteAsyncStore`). It stays this store's to close.
   */
  get connection(): Database.Database {
    return this.db;
  }

  createJob(job: NewJob): JobRecord {
    try {
      this.sql.insertJob.run({
        id: job.id,
        modelName: job.modelName,
        modelSha256: job.modelSha256,
        state: job.state,
        priority: job.priority,
        redundancy: job.redundancy,
        deadline: job.deadline,
        requirements: job.requirements === null ? null : JSON.stringify(job.requirements),
        options: JSON.stringify(job.options),
        createdAt: Date.now(),
      });
    } catch (err) {
      if ((err as { code?: unknown }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new Error(`job ${job.id} already exists`, { cause: err });
      }
      throw err;
    }
    return this.getJob(job.id)!;
  }

  appendItems(jobId: string, items: NewItemRow[], opts?: { running?: boolean }): number[] {
    return this.appendTx.immediate(jobId, items, opts?.running ?? false);
  }

  updateJob(
    id: string,
    patch: Partial<Pick<JobRecord, 'state' | 'priority' | 'startedAt' | 'finishedAt' | 'deadline'>>,
  ): void {
    const info = this.sql.updateJob.run({
      id,
      setState: patch.state === undefined ? 0 : 1,
      state: patch.state ?? null,
      setPriority: patch.priority === undefined ? 0 : 1,
      priority: patch.priority ?? null,
      setStartedAt: patch.startedAt === undefined ? 0 : 1,
      startedAt: patch.startedAt ?? null,
      setFinishedAt: patch.finishedAt === undefined ? 0 : 1,
      finishedAt: patch.finishedAt ?? null,
      setDeadline: patch.deadline === undefined ? 0 : 1,
      deadline: patch.deadline ?? null,
    });
    if (info.changes === 0) throw new Error(`cannot update job ${id}: it does not exist`);
  }

  getJob(id: string): JobRecord | undefined {
    const row = this.sql.getJob.get(id);
    return row && toJob(row);
  }

  listJobs(filter?: { states?: JobState[]; limit?: number }): JobRecord[] {
    const states = filter?.states === undefined ? null : JSON.stringify(filter.states);
    return this.sql.listJobs.all({ states, limit: filter?.limit ?? -1 }).map(toJob);
  }

  /**
   * Read a window of seq numbers at a time and folded into runs as they come: as fast as reading
   * the ids (a window-function query doing the same in SQL took four times as long, and two-column
   * rows seven times), in memory bounded by the window, not the job. `range` keeps the ids within
   * `[first, last]` (a chunk's, for the several-hubs store).
   */
  pendingItemRuns(jobId: string, range?: { first: number; last: number }): IdRun[] {
    const lo = range?.first ?? 0;
    const hi = range?.last ?? Number.MAX_SAFE_INTEGER;
    const runs: IdRun[] = [];
    const count = this.sql.jobForAppend.get(jobId)?.itemCount ?? 0;
    let last: IdRun | undefined;
    for (let from = 0; from < count; from += PENDING_WINDOW) {
      for (const id of this.sql.pendingWindow.all(jobId, from, from + PENDING_WINDOW, lo, hi)) {
        if (last && last.last + 1 === id) last.last = id;
        else runs.push((last = { first: id, last: id }));
      }
    }
    return runs;
  }

  getItem(id: number): ItemRecord | undefined {
    return this.sql.getItem.get(id);
  }

  listItems(jobId: string, opts: { offset: number; limit: number; state?: ItemState }): ItemRecord[] {
    return this.sql.listItems.all({
      jobId,
      state: opts.state ?? null,
      limit: opts.limit,
      offset: opts.offset,
    });
  }

  /**
   * Reads runs of consecutive ids (what a shard of fresh items is) with one range scan each and the
   * rest with one `json_each` lookup.
   */
  itemInputs(ids: readonly number[]): Map<number, Uint8Array> {
    const out = new Map<number, Uint8Array>();
    this.byIds(
      ids,
      (lo, hi) => this.sql.inputsRange.all(lo, hi),
      (list) => this.sql.itemInputs.all(list),
      (row) => out.set(row[0], row[1]),
    );
    return out;
  }

  itemInputsUpTo(ids: readonly number[], maxBytes: number): Map<number, SizedInputs> {
    const out = new Map<number, SizedInputs>();
    this.byIds(
      ids,
      (lo, hi) => this.sql.smallInputsRange.all({ max: maxBytes, lo, hi }),
      (list) => this.sql.smallInputs.all({ max: maxBytes, list }),
      (row) => out.set(row[0], { bytes: row[1], pack: row[2] }),
    );
    return out;
  }

  /** Rows for these ids: runs of consecutive ids through `range`, the rest through `list` (JSON). */
  private byIds<R>(
    ids: readonly number[],
    range: (lo: number, hi: number) => R[],
    list: (json: string) => R[],
    each: (row: R) => void,
  ): void {
    if (ids.length === 0) return;
    const sorted = Float64Array.from(ids).sort();
    const loose: number[] = [];
    for (let i = 0; i < sorted.length;) {
      let j = i + 1;
      while (j < sorted.length && sorted[j] - sorted[j - 1] <= 1) j++;
      if (sorted[j - 1] - sorted[i] >= MIN_RUN - 1) {
        for (const row of range(sorted[i], sorted[j - 1])) each(row);
      } else {
        for (let k = i; k < j; k++) if (k === i || sorted[k] !== sorted[k - 1]) loose.push(sorted[k]);
      }
      i = j;
    }
    if (loose.length > 0) for (const row of list(JSON.stringify(loose))) each(row);
  }

  recordAssignments(rows: { itemId: number; workerId: string; shardId: string; at: number }[]): void {
    if (rows.length > 0) this.assignTx.immediate(rows);
  }

  transaction<T>(fn: () => T): T {
    return this.anyTx.immediate(fn) as T;
  }

  recordResults(rows: NewResult[]): { accepted: number[]; dropped: number[] } {
    if (rows.length === 0) return { accepted: [], dropped: [] };
    return this.resultsTx.immediate(rows);
  }

  recordFailures(rows: NewFailure[]): void {
    if (rows.length > 0) this.failuresTx.immediate(rows);
  }

  failuresOf(jobId: string): FailureRecord[] {
    return this.sql.failuresOf.all(jobId);
  }

  getResult(itemId: number): ResultRecord | undefined {
    return this.sql.getResult.get(itemId);
  }

  /**
   * Pages by item id, one short query per page, so no statement stays open between pages (the
   * connection stays free for writes while a caller streams) and memory stays at one page. Results
   * recorded mid-iteration for items past the current page are included.
   */
  *iterateResults(jobId: string): IterableIterator<ResultRecord> {
    let after = 0;
    for (;;) {
      const page = this.sql.resultPage.all(jobId, after, RESULT_PAGE);
      yield* page;
      if (page.length < RESULT_PAGE) return;
      after = page[page.length - 1].itemId;
    }
  }

  upsertWorker(rec: WorkerRecord): void {
    this.sql.upsertWorker.run({ ...rec, capabilities: JSON.stringify(rec.capabilities) });
  }

  getWorker(id: string): WorkerRecord | undefined {
    const row = this.sql.getWorker.get(id);
    return row && toWorker(row);
  }

  listWorkers(): WorkerRecord[] {
    return this.sql.listWorkers.all().map(toWorker);
  }

  addWorkerItems(id: string, n: number, lastSeen: number): void {
    this.sql.addWorkerItems.run(n, lastSeen, id);
  }

  addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): void {
    this.sql.addEvent.run(jobId, at, type, JSON.stringify(data));
  }

  listEvents(jobId: string, opts?: { type?: string; limit?: number }): JobEvent[] {
    return this.sql.listEvents
      .all({ jobId, type: opts?.type ?? null, limit: opts?.limit ?? -1 })
      .map(toEvent);
  }

  /** Closes the database (and stops the checkpointing thread); later calls do nothing. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.checkpointer?.stop();
    this.db.close();
  }
}
