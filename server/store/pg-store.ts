/**
 * The `AsyncStore` on PostgreSQL (`pg` Pool): the store several hubs share.
 *
 * Statements are set-based (`unnest` of array parameters, multi-row `INSERT ... SELECT`), so a batch
 * costs the same few round trips whatever its size. The hot fenced writes (results, claims, cursor
 * moves, assignments, chunk finishes) are each ONE statement, prepared once per connection: a
 * `fence` CTE share-locks the hub's row when its lease holds, every write in the statement is
 * conditioned on it, and the statement is its own transaction — one round trip, where
 * BEGIN/check/write/COMMIT took four to six. The rarer ones (failures, splits, releases, reaps) are
 * explicit transactions that start with the same check. Rows several transactions may both change
 * are locked in id order (`ORDER BY id FOR UPDATE`), so concurrent batches over the same items
 * queue instead of deadlocking. Schema: versioned migrations in `pg-migrations.ts`, applied at open.
 */
import pg from 'pg';
import { createHash } from 'node:crypto';
import type { IdRun } from '../scheduler/id-runs.ts';
import {
  CACHED,
  CACHED_ON_RECORD,
  FencedError,
  RUNNABLE_STATES,
  revertible,
  UNPROVEN_QUORUM,
} from './async-store.ts';
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
import { PG_MIGRATIONS, PG_SCHEMA_VERSION } from './pg-migrations.ts';

/** Options of `PgStore.open`. */
export interface PgStoreOptions {
  /** A schema to keep the tables in (created if missing); the connection's default otherwise. */
  schema?: string;
  /** Pool size (pg's default: 10). */
  maxConnections?: number;
  /** Items per chunk cut at append. */
  chunkItems?: number;
}

/** Items per chunk when not told: a few seconds of work for a fast worker on a small model. */
const DEFAULT_CHUNK_ITEMS = 512;
/** Counter rows per job: hubs committing one job's results spread over this many rows. */
const COUNTER_SLOTS = 16;
/** Rows per query in `iterateResults`. */
const RESULT_PAGE = 256;
/** Input bytes per statement in `appendItems`: a bytea[] parameter travels as hex text. */
const APPEND_BYTES = 8 * 1024 * 1024;
/** Rows per statement of results or inputs (a statement takes at most 65,535 parameters). */
const MAX_ROWS = 4096;
/** Advisory lock key under which hubs starting together migrate once. */
const MIGRATE_LOCK = 7212020;

/** `bigint` columns as numbers: every id and epoch-ms time here is far below 2^53. */
const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8
      ? (v: string) => Number(v)
      : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

const JOB_SELECT = `SELECT j.id, j.model_name AS "modelName", j.model_sha256 AS "modelSha256", j.state,
  j.priority, j.redundancy, j.deadline, j.requirements, j.options, j.created_at AS "createdAt",
  j.started_at AS "startedAt", j.finished_at AS "finishedAt", j.item_count AS "itemCount",
  coalesce(c.done, 0)::int AS "doneCount", coalesce(c.failed, 0)::int AS "failedCount"
  FROM jobs j LEFT JOIN LATERAL (
    SELECT sum(done_count) AS done, sum(failed_count) AS failed FROM job_counters WHERE job_id = j.id
  ) c ON true`;
const WORKER_COLUMNS = `id, secret_hash AS "secretHash", kind, backend, name, pool, concurrency, capabilities,
  first_seen AS "firstSeen", last_seen AS "lastSeen", items_done AS "itemsDone"`;
const ITEM_COLUMNS = `id, job_id AS "jobId", seq, name, state, attempts`;
const CHUNK_COLUMNS = `id, job_id AS "jobId", first_id AS first, last_id AS last, cursor, hub_id AS "hubId", epoch`;
const CHUNK_RETURNING = `chunks.id, chunks.job_id AS "jobId", chunks.first_id AS first, chunks.last_id AS last,
  chunks.cursor, chunks.hub_id AS "hubId", chunks.epoch`;
const RESULT_SELECT = `SELECT r.item_id AS "itemId", i.name, r.worker_id AS "workerId", r.ms, r.outputs
  FROM results r JOIN items i ON i.id = r.item_id`;
/** The fencing check of `fenced()`: see `fence()`. */
const FENCE_CTE = `fence AS (
  SELECT 1 FROM hubs WHERE id = $1 AND epoch = $2 AND state = 'live' AND expires_at > now() FOR SHARE
)`;
const FENCE_OK = '(SELECT count(*) FROM fence)::int AS ok';
const RUN_COLUMNS = `id, anchor, owner_hub AS "ownerHub", owner_epoch AS "ownerEpoch", state, takeovers,
  created_at AS "createdAt"`;
const MS = (col: string) => `(extract(epoch FROM ${col}) * 1000)::float8`;

/** The statement size for `n` rows: a power of two, at least 8, so few statements are prepared. */
function padded(n: number): number {
  return Math.max(8, 2 ** Math.ceil(Math.log2(n)));
}

/** `ARRAY[$from::bytea, ..., $(from + n - 1)::bytea]`: one binary parameter per element. */
const byteaArrays = new Map<string, string>();
function byteaArray(from: number, n: number): string {
  const key = `${from}:${n}`;
  let sql = byteaArrays.get(key);
  if (!sql) {
    sql = `ARRAY[${Array.from({ length: n }, (_, i) => `$${from + i}::bytea`).join(', ')}]`;
    byteaArrays.set(key, sql);
  }
  return sql;
}

function pgCode(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Adds `n` to `key`'s tally. */
function tally<K>(counts: Map<K, number>, key: K, n = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + n);
}

function toTrust(r: Record<string, unknown>): TrustRecord {
  return {
    workerId: r.worker_id as string,
    validated: r.validated as number,
    streak: r.streak as number,
    strikes: r.strikes as number,
    quarantined: r.quarantined as boolean,
    reason: (r.reason as string | null) ?? null,
    at: Number(r.at),
  };
}

export class PgStore implements AsyncStore {
  readonly kind = 'postgres';
  readonly severalHubs = true;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly chunkItems: number,
  ) {}

  /** Connects, creates the schema if asked, and brings it up to `PG_SCHEMA_VERSION`. */
  static async open(url: string, opts: PgStoreOptions = {}): Promise<PgStore> {
    const chunkItems = opts.chunkItems ?? DEFAULT_CHUNK_ITEMS;
    if (!Number.isInteger(chunkItems) || chunkItems < 1) {
      throw new Error(`chunkItems must be a positive integer, not ${String(opts.chunkItems)}`);
    }
    if (opts.schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(opts.schema)) {
      throw new Error(`schema must be a lowercase SQL identifier, not ${JSON.stringify(opts.schema)}`);
    }
    const pool = new pg.Pool({
      connectionString: url,
      max: opts.maxConnections ?? 10,
      types: TYPES,
      ...(opts.schema ? { options: `-c search_path=${opts.schema}` } : {}),
    });
    // An idle client's error (the server restarted) must not take the hub down; the next query
    // on a fresh connection reports it.
    pool.on('error', () => {});
    try {
      if (opts.schema) await pool.query(`CREATE SCHEMA IF NOT EXISTS ${opts.schema}`);
      await migrate(pool);
    } catch (err) {
      await pool.end();
      throw err;
    }
    return new PgStore(pool, chunkItems);
  }

  /** Runs `fn` in one transaction on one connection; rolls back and rethrows if it throws. */
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    // A connection whose ROLLBACK failed is in an unknown state: the pool destroys it, not reuses it.
    let broken: Error | undefined;
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch((e: Error) => {
        broken = e;
      });
      throw err;
    } finally {
      c.release(broken);
    }
  }

  /**
   * The fencing check, first in a fenced transaction: the lease must be the hub's current epoch,
   * live and unexpired by the server's clock. The share lock on the hub's row makes a reaper (or a
   * re-registration) wait for this transaction, so none commits after its hub was fenced.
   */
  private async fence(c: pg.PoolClient, lease: Lease, what: string): Promise<void> {
    const r = await c.query(
      `SELECT 1 FROM hubs WHERE id = $1 AND epoch = $2 AND state = 'live' AND expires_at > now() FOR SHARE`,
      [lease.hubId, lease.epoch],
    );
    if (r.rowCount === 0) throw new FencedError(lease, what);
  }

  /**
   * A fenced write as one statement (its own transaction, one round trip): \`body\` continues a
   * \`WITH\` after the \`fence\` CTE, which share-locks the hub's row when the lease holds (\`$1\`
   * hub id, \`$2\` epoch; \`params\` are \`$3\` on). Each write in \`body\` must be conditioned on
   * \`EXISTS (SELECT 1 FROM fence)\`, and its final SELECT must include \`FENCE_OK\`: a lapsed lease
   * then changes nothing and throws \`FencedError\`.
   */
  private async fenced<T>(
    lease: Lease,
    what: string,
    body: string,
    params: unknown[],
    name = what,
  ): Promise<T> {
    // Named: prepared once per connection, so a long statement is not parsed and analysed again on
    // every call.
    const r = await this.pool.query<T & { ok: number }>({
      name: `fenced ${name}`,
      text: `WITH ${FENCE_CTE}, ${body}`,
      values: [lease.hubId, lease.epoch, ...params],
    });
    if (r.rows[0].ok !== 1) throw new FencedError(lease, what);
    return r.rows[0];
  }

  async getSetting(key: string): Promise<string | undefined> {
    const r = await this.pool.query<{ value: string }>('SELECT value FROM settings WHERE key = $1', [key]);
    return r.rows[0]?.value;
  }

  async setSetting(key: string, value: string): Promise<void> {
    await this.pool.query(
      'INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      [key, value],
    );
  }

  async createJob(job: NewJob): Promise<JobRecord> {
    try {
      await this.pool.query(
        `INSERT INTO jobs (id, model_name, model_sha256, state, priority, redundancy, deadline, requirements,
           options, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
        [
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
        ],
      );
    } catch (err) {
      if (pgCode(err) === '23505') throw new Error(`job ${job.id} already exists`, { cause: err });
      throw err;
    }
    return (await this.getJob(job.id))!;
  }

  async appendItems(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts?: { running?: boolean },
  ): Promise<number[]> {
    return this.tx((c) => this.appendIn(c, jobId, items, opts));
  }

  /** `appendItems` inside a transaction. */
  private async appendIn(
    c: pg.PoolClient,
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts?: { running?: boolean },
  ): Promise<number[]> {
    // The job's row lock orders its appends: ids are reserved under it, so they rise with seq.
    const job = await c.query<{ state: JobState; item_count: number }>(
      'SELECT state, item_count FROM jobs WHERE id = $1 FOR UPDATE',
      [jobId],
    );
    if (job.rowCount === 0) throw new Error(`cannot append items: job ${jobId} does not exist`);
    const { state, item_count: count } = job.rows[0];
    // A pipeline stage (server/pipeline.ts) is fed while it runs.
    const fed = opts?.running === true && (state === 'queued' || state === 'running');
    if (state !== 'open' && !fed) {
      throw new Error(`cannot append items: job ${jobId} is ${state}; items go only to an open job`);
    }
    const n = items.length;
    if (n === 0) return [];
    const first = (
      await c.query<{ first: number }>('SELECT shardhub_reserve_item_ids($1)::bigint AS first', [n])
    ).rows[0].first;
    await c.query(
      `INSERT INTO items (id, job_id, seq, name, state)
       SELECT $1::bigint + o - 1, $2, $3::int + o - 1, name, 'pending'
       FROM unnest($4::text[]) WITH ORDINALITY AS t (name, o)`,
      [first, jobId, count, items.map((it) => it.name)],
    );
    // Inputs as separate binary parameters (see `gate`), a few MiB and at most MAX_ROWS a statement.
    for (let i = 0; i < n;) {
      const blobs: (Uint8Array | null)[] = [];
      let bytes = 0;
      const from = i;
      while (
        i < n &&
        blobs.length < MAX_ROWS &&
        (blobs.length === 0 || bytes + items[i].inputs.byteLength <= APPEND_BYTES)
      ) {
        bytes += items[i].inputs.byteLength;
        blobs.push(items[i++].inputs);
      }
      const size = padded(blobs.length);
      while (blobs.length < size) blobs.push(null);
      await c.query({
        name: `append inputs ${size}`,
        text: `INSERT INTO item_inputs (item_id, inputs)
               SELECT $1::bigint + o - 1, b FROM unnest(${byteaArray(2, size)}) WITH ORDINALITY AS t (b, o)
               WHERE b IS NOT NULL`,
        values: [first + from, ...blobs],
      });
    }
    await c.query('UPDATE jobs SET item_count = item_count + $1 WHERE id = $2', [n, jobId]);
    await this.cutChunks(c, jobId, first, first + n - 1);
    return Array.from({ length: n }, (_, k) => first + k);
  }

  async appendItemsCached(
    jobId: string,
    items: { name: string; inputs: Uint8Array }[],
    opts: { running?: boolean; cache: CacheKeys },
  ): Promise<AppendedItems> {
    if (opts.cache.inputs.length !== items.length) {
      throw new Error(`${opts.cache.inputs.length} cache keys for ${items.length} items`);
    }
    // The same transaction as `appendItems`, with the cache's statements after the items' own.
    return this.tx(async (c) => {
      const ids = await this.appendIn(c, jobId, items, opts);
      const cached = ids.length ? await this.answerFromCache(c, jobId, ids, opts.cache, Date.now()) : [];
      return { ids, cached };
    });
  }

  /**
   * Inside an append's transaction: answers the new items whose key has a stored result, and makes
   * each other item its key's entry where the entry has no result. The source results are share
   * locked, so a quarantine's take-back waits for the copies (and then takes them back too).
   */
  private async answerFromCache(
    c: pg.PoolClient,
    jobId: string,
    ids: readonly number[],
    keys: CacheKeys,
    now: number,
  ): Promise<number[]> {
    const hits = await c.query<{ id: number; src: number; how: string | null }>(
      `SELECT k.id, ce.item_id AS src, v.how FROM unnest($2::bigint[], $3::text[]) AS k (id, sha)
         JOIN result_cache ce ON ce.model_key = $1 AND ce.input_sha256 = k.sha
         JOIN results r ON r.item_id = ce.item_id
         LEFT JOIN verified v ON v.item_id = ce.item_id
         ORDER BY k.id FOR SHARE OF r`,
      [keys.modelKey, ids, keys.inputs],
    );
    const hit = new Set(hits.rows.map((h) => h.id));
    const missed = ids.flatMap((id, i) => (hit.has(id) ? [] : [[id, keys.inputs[i]] as const]));
    if (missed.length > 0) {
      // One row per key (ON CONFLICT may not touch a row twice): the first item of each.
      await c.query(
        `INSERT INTO result_cache (model_key, input_sha256, item_id, used_at)
         SELECT DISTINCT ON (sha) $1, sha, id, $4 FROM unnest($2::bigint[], $3::text[]) AS k (id, sha)
           ORDER BY sha, id
         ON CONFLICT (model_key, input_sha256) DO UPDATE SET item_id = excluded.item_id, used_at = excluded.used_at
         WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.item_id = result_cache.item_id)`,
        [keys.modelKey, missed.map((m) => m[0]), missed.map((m) => m[1]), now],
      );
    }
    if (hits.rows.length === 0) return [];
    const cached = hits.rows.map((h) => h.id);
    const srcs = hits.rows.map((h) => h.src);
    await c.query(`UPDATE items SET state = 'done' WHERE id = ANY($1::bigint[])`, [cached]);
    await c.query(
      `INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at)
       SELECT h.id, $3, r.worker_id, r.model_sha256, 0, r.outputs, $4
       FROM unnest($1::bigint[], $2::bigint[]) AS h (id, src) JOIN results r ON r.item_id = h.src`,
      [cached, srcs, jobId, now],
    );
    await c.query(
      `INSERT INTO verified (item_id, how) SELECT * FROM unnest($1::bigint[], $2::text[])
       ON CONFLICT (item_id) DO UPDATE SET how = excluded.how`,
      [cached, hits.rows.map((h) => (revertible(h.how) ? CACHED_ON_RECORD : CACHED))],
    );
    const keyOf = new Map(ids.map((id, i) => [id, keys.inputs[i]]));
    await c.query(
      `UPDATE result_cache SET used_at = $3
       WHERE model_key = $1 AND input_sha256 = ANY($2::text[]) AND used_at < $3`,
      [keys.modelKey, cached.map((id) => keyOf.get(id)), now],
    );
    await this.addCounts(c, undefined, new Map([[jobId, cached.length]]), 'done_count');
    return cached;
  }

  async trimCache(maxEntries: number): Promise<number> {
    const r = await this.pool.query(
      `DELETE FROM result_cache WHERE ctid IN (SELECT ctid FROM result_cache ORDER BY used_at
         LIMIT greatest(0, (SELECT count(*) FROM result_cache) - $1))`,
      [Math.max(0, maxEntries)],
    );
    return r.rowCount ?? 0;
  }

  async cacheEntries(): Promise<number> {
    const r = await this.pool.query<{ n: string }>('SELECT count(*) AS n FROM result_cache');
    return Number(r.rows[0].n);
  }

  /** Puts ids `first..last` into chunks: the job's last chunk grows when unheld, short, and adjacent. */
  /**
   * Cuts chunks for items made pending again (a revert) that no chunk covers: their chunk may be
   * finished and gone, and only a chunk gets an item claimed. Ids in order; a chunk spans several
   * when no other chunk lies between them.
   */
  private async chunkUncovered(c: pg.PoolClient, jobId: string, ids: readonly number[]): Promise<void> {
    const chunks = (
      await c.query<{ first_id: number; last_id: number }>(
        'SELECT first_id, last_id FROM chunks WHERE job_id = $1 ORDER BY first_id FOR UPDATE',
        [jobId],
      )
    ).rows;
    const runs: IdRun[] = [];
    let k = 0;
    for (const id of ids) {
      while (k < chunks.length && chunks[k].last_id < id) k++;
      if (k < chunks.length && chunks[k].first_id <= id) continue; // covered
      const run = runs[runs.length - 1];
      const between = k > 0 && run !== undefined && chunks[k - 1].first_id > run.last;
      if (run && !between && id - run.first < this.chunkItems) run.last = id;
      else runs.push({ first: id, last: id });
    }
    for (const r of runs) {
      await c.query(
        'INSERT INTO chunks (job_id, first_id, last_id, cursor) VALUES ($1, $2, $3, $2::bigint - 1)',
        [jobId, r.first, r.last],
      );
    }
  }

  private async cutChunks(c: pg.PoolClient, jobId: string, first: number, last: number): Promise<void> {
    const tail = await c.query<{ id: number; first_id: number; last_id: number; hub_id: string | null }>(
      'SELECT id, first_id, last_id, hub_id FROM chunks WHERE job_id = $1 ORDER BY last_id DESC LIMIT 1 FOR UPDATE',
      [jobId],
    );
    let from = first;
    const t = tail.rows[0];
    if (t && t.hub_id === null && t.last_id + 1 === first) {
      const room = this.chunkItems - (t.last_id - t.first_id + 1);
      if (room > 0) {
        const upto = Math.min(last, t.last_id + room);
        await c.query('UPDATE chunks SET last_id = $1 WHERE id = $2', [upto, t.id]);
        from = upto + 1;
      }
    }
    if (from <= last) {
      await c.query(
        `INSERT INTO chunks (job_id, first_id, last_id, cursor)
         SELECT $1, s, least(s + $2 - 1, $3::bigint), s - 1 FROM generate_series($4::bigint, $3::bigint, $2::bigint) s`,
        [jobId, this.chunkItems, last, from],
      );
    }
  }

  async updateJob(
    id: string,
    patch: Partial<Pick<JobRecord, 'state' | 'priority' | 'startedAt' | 'finishedAt' | 'deadline'>>,
  ): Promise<void> {
    const r = await this.pool.query(
      `UPDATE jobs SET
         state = CASE WHEN $2 AND ($3 <> 'running' OR state = 'queued') THEN $3 ELSE state END,
         priority = CASE WHEN $4 THEN $5::int ELSE priority END,
         started_at = CASE WHEN $6 THEN $7::bigint ELSE started_at END,
         finished_at = CASE WHEN $8 THEN $9::bigint ELSE finished_at END,
         deadline = CASE WHEN $10 THEN $11::bigint ELSE deadline END
       WHERE id = $1`,
      [
        id,
        patch.state !== undefined,
        patch.state ?? null,
        patch.priority !== undefined,
        patch.priority ?? null,
        patch.startedAt !== undefined,
        patch.startedAt ?? null,
        patch.finishedAt !== undefined,
        patch.finishedAt ?? null,
        patch.deadline !== undefined,
        patch.deadline ?? null,
      ],
    );
    if (r.rowCount === 0) throw new Error(`cannot update job ${id}: it does not exist`);
    // A finished job's chunks have nothing left to claim (a revert cuts new ones).
    if (patch.state === 'completed' || patch.state === 'cancelled')
      await this.pool.query('DELETE FROM chunks WHERE job_id = $1', [id]);
  }

  async completeJob(id: string, finishedAt: number): Promise<boolean> {
    return this.tx(async (c) => {
      // The row lock first, then the counts, each statement seeing what committed before it: a
      // revert (which reopens the job under this lock) or an append either committed before, and
      // its counts are read, or waits, and reopens or refuses the job once it is completed.
      const row = await c.query<{ state: string }>('SELECT state FROM jobs WHERE id = $1 FOR UPDATE', [id]);
      const state = row.rows[0]?.state;
      if (state !== 'running' && state !== 'queued') return false;
      const r = await c.query(
        `UPDATE jobs SET state = 'completed', finished_at = $2 WHERE id = $1 AND item_count <= (
           SELECT coalesce(sum(done_count), 0) + coalesce(sum(failed_count), 0) FROM job_counters WHERE job_id = $1)`,
        [id, finishedAt],
      );
      if (r.rowCount === 0) return false;
      await c.query('DELETE FROM chunks WHERE job_id = $1', [id]);
      return true;
    });
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const r = await this.pool.query<JobRecord>(`${JOB_SELECT} WHERE j.id = $1`, [id]);
    return r.rows[0];
  }

  async listJobs(filter?: { states?: JobState[]; limit?: number }): Promise<JobRecord[]> {
    const r = await this.pool.query<JobRecord>(
      `${JOB_SELECT} WHERE $1::text[] IS NULL OR j.state = ANY ($1) ORDER BY j.serial DESC LIMIT $2`,
      [filter?.states ?? null, filter?.limit ?? null],
    );
    return r.rows;
  }

  async pendingItemRuns(jobId: string, range?: { first: number; last: number }): Promise<IdRun[]> {
    // Gaps and islands: consecutive ids share `id - row_number()`.
    const r = await this.pool.query<{ first: number; last: number }>(
      `SELECT min(id) AS first, max(id) AS last FROM (
         SELECT id, id - row_number() OVER (ORDER BY id) AS g FROM items
         WHERE job_id = $1 AND state = 'pending' AND id BETWEEN $2 AND $3
       ) t GROUP BY g ORDER BY 1`,
      [jobId, range?.first ?? 0, range?.last ?? Number.MAX_SAFE_INTEGER],
    );
    return r.rows;
  }

  async getItem(id: number): Promise<ItemRecord | undefined> {
    const r = await this.pool.query<ItemRecord>(`SELECT ${ITEM_COLUMNS} FROM items WHERE id = $1`, [id]);
    return r.rows[0];
  }

  async listItems(
    jobId: string,
    opts: { offset: number; limit: number; state?: ItemState },
  ): Promise<ItemRecord[]> {
    const r = await this.pool.query<ItemRecord>(
      `SELECT ${ITEM_COLUMNS} FROM items WHERE job_id = $1 AND ($2::text IS NULL OR state = $2)
       ORDER BY seq LIMIT $3 OFFSET $4`,
      [jobId, opts.state ?? null, opts.limit, opts.offset],
    );
    return r.rows;
  }

  async itemInputs(ids: readonly number[]): Promise<Map<number, Uint8Array>> {
    const out = new Map<number, Uint8Array>();
    if (ids.length === 0) return out;
    const r = await this.pool.query<{ item_id: number; inputs: Buffer }>(
      'SELECT item_id, inputs FROM item_inputs WHERE item_id = ANY ($1::bigint[])',
      [ids],
    );
    for (const row of r.rows) out.set(row.item_id, row.inputs);
    return out;
  }

  async itemInputsUpTo(ids: readonly number[], maxBytes: number): Promise<Map<number, SizedInputs>> {
    const out = new Map<number, SizedInputs>();
    if (ids.length === 0) return out;
    // octet_length of an out-of-line value is read from its TOAST pointer: large packs are not fetched.
    const r = await this.pool.query<{ item_id: number; bytes: number; pack: Buffer | null }>(
      `SELECT item_id, octet_length(inputs) AS bytes, CASE WHEN octet_length(inputs) <= $2 THEN inputs END AS pack
       FROM item_inputs WHERE item_id = ANY ($1::bigint[])`,
      [ids, maxBytes],
    );
    for (const row of r.rows) out.set(row.item_id, { bytes: row.bytes, pack: row.pack });
    return out;
  }

  async recordAssignments(
    lease: Lease,
    rows: { itemId: number; workerId: string; shardId: string; at: number }[],
  ): Promise<void> {
    if (rows.length === 0) return;
    await this.fenced(
      lease,
      'assignments',
      `ins AS (
         INSERT INTO assignments (item_id, worker_id, shard_id, at)
         SELECT * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bigint[]) WHERE EXISTS (SELECT 1 FROM fence)
       )
       SELECT ${FENCE_OK}`,
      [
        rows.map((r) => r.itemId),
        rows.map((r) => r.workerId),
        rows.map((r) => r.shardId),
        rows.map((r) => r.at),
      ],
    );
  }

  /**
   * Stores at most `MAX_ROWS` rows per statement (each statement its own transaction): a larger
   * batch commits a slice at a time. Exactly-once holds either way — it is per item.
   */
  async recordResults(lease: Lease, rows: NewResult[]): Promise<{ accepted: number[]; dropped: number[] }> {
    if (rows.length === 0) return { accepted: [], dropped: [] };
    const flipped = new Set<number>();
    for (let i = 0; i < rows.length; i += MAX_ROWS) {
      for (const id of await this.gate(lease, rows.slice(i, i + MAX_ROWS))) flipped.add(id);
    }
    const accepted: number[] = [];
    const dropped: number[] = [];
    for (const x of rows) {
      if (flipped.delete(x.itemId)) accepted.push(x.itemId);
      else dropped.push(x.itemId);
    }
    return { accepted, dropped };
  }

  /**
   * The gate, one statement: lock the rows' pending items in id order and flip them (a row
   * another transaction flipped first no longer matches once its lock is granted); only flipped
   * items insert a result (the first row of each), and the counts follow from what was inserted.
   * The items are found by primary key. A join on (id, job), or a plain `state = 'pending'` beside
   * the ids, lets the prepared statement's generic plan go through the pending-items index instead
   * (`items_pending`, which leads with the job): every pending item of the job read per commit, a
   * cost that grows with the job and is paid by each of many small commits. `(state = 'pending')
   * IS TRUE` is the same test, and that partial index does not match it.
   * Outputs go as separate binary parameters (a bytea[] parameter travels as hex text, which the
   * hub spends CPU writing and Postgres reading), padded with NULLs to a power of two so a few
   * prepared statements serve every batch size. Returns the ids whose result was stored.
   */
  private async gate(lease: Lease, rows: NewResult[]): Promise<number[]> {
    const n = padded(rows.length);
    const outputs: (Uint8Array | null)[] = rows.map((x) => x.outputs);
    while (outputs.length < n) outputs.push(null);
    const r = await this.fenced<{ accepted: number[] }>(
      lease,
      'results',
      `r AS (
         SELECT * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::bigint[],
           ${byteaArray(10, n)}) WITH ORDINALITY AS r (item_id, job_id, worker_id, model_sha256, ms, at, outputs, ord)
       ),
       locked AS (
         SELECT i.id FROM items i
         WHERE i.id = ANY ($3::bigint[]) AND (i.state = 'pending') IS TRUE AND EXISTS (SELECT 1 FROM fence)
           AND EXISTS (SELECT 1 FROM r WHERE r.item_id = i.id AND r.job_id = i.job_id)
         ORDER BY i.id FOR UPDATE OF i
       ),
       flipped AS (
         UPDATE items SET state = 'done' FROM locked WHERE items.id = locked.id AND items.state = 'pending'
         RETURNING items.id, items.job_id
       ),
       firsts AS (
         SELECT DISTINCT ON (r.item_id) r.* FROM r JOIN flipped f ON f.id = r.item_id AND f.job_id = r.job_id
         ORDER BY r.item_id, r.ord
       ),
       ins AS (
         INSERT INTO results (item_id, job_id, worker_id, model_sha256, ms, outputs, at)
         SELECT item_id, job_id, worker_id, model_sha256, ms, outputs, at FROM firsts RETURNING item_id, job_id
       ),
       counted AS (
         INSERT INTO job_counters (job_id, slot, done_count)
         SELECT job_id, $9::int, count(*) FROM ins GROUP BY job_id ORDER BY job_id
         ON CONFLICT (job_id, slot) DO UPDATE SET done_count = job_counters.done_count + excluded.done_count
       )
       SELECT ${FENCE_OK}, coalesce((SELECT array_agg(item_id::float8) FROM ins), '{}') AS accepted`,
      [
        rows.map((x) => x.itemId),
        rows.map((x) => x.jobId),
        rows.map((x) => x.workerId),
        rows.map((x) => x.modelSha256),
        rows.map((x) => x.ms),
        rows.map((x) => x.at),
        lease.epoch % COUNTER_SLOTS,
        ...outputs,
      ],
      `results ${n}`,
    );
    return r.accepted;
  }

  /** Adds to jobs' done or failed counts, in the lease's counter slot, in job order. */
  private async addCounts(
    c: pg.PoolClient,
    lease: Lease | undefined,
    perJob: Map<string, number>,
    column: 'done_count' | 'failed_count',
  ): Promise<void> {
    if (perJob.size === 0) return;
    const jobs = [...perJob.keys()].sort();
    await c.query(
      `INSERT INTO job_counters (job_id, slot, ${column})
       SELECT * FROM unnest($1::text[], $2::int[], $3::int[])
       ON CONFLICT (job_id, slot) DO UPDATE SET ${column} = job_counters.${column} + excluded.${column}`,
      [jobs, jobs.map(() => (lease ? lease.epoch % COUNTER_SLOTS : 0)), jobs.map((j) => perJob.get(j)!)],
    );
  }

  async recordFailures(lease: Lease, rows: NewFailure[]): Promise<void> {
    if (rows.length === 0) return;
    await this.tx(async (c) => {
      await this.fence(c, lease, 'failures');
      // Each row is one attempt; a final row fails the item if it is still pending.
      const updated = await c.query<{ id: number; job_id: string; failed: boolean }>(
        `WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS r (id, job_id, final)),
         agg AS (SELECT id, job_id, count(*)::int AS n, bool_or(final) AS final FROM r GROUP BY id, job_id),
         old AS (
           SELECT i.id, i.state, agg.n, agg.final FROM items i JOIN agg ON agg.id = i.id AND agg.job_id = i.job_id
           WHERE i.id = ANY ($1::bigint[]) -- by primary key, not a scan of the job's items
           ORDER BY i.id FOR UPDATE OF i
         )
         UPDATE items SET attempts = items.attempts + old.n,
           state = CASE WHEN old.final AND old.state = 'pending' THEN 'failed' ELSE items.state END
         FROM old WHERE items.id = old.id
         RETURNING items.id, items.job_id, (old.final AND old.state = 'pending') AS failed`,
        [rows.map((r) => r.itemId), rows.map((r) => r.jobId), rows.map((r) => r.final)],
      );
      const known = new Set<string>();
      const failed = new Map<string, number>();
      for (const u of updated.rows) {
        known.add(`${u.id}\n${u.job_id}`);
        if (u.failed) tally(failed, u.job_id);
      }
      const kept = rows.filter((r) => known.has(`${r.itemId}\n${r.jobId}`));
      if (kept.length > 0) {
        await c.query(
          `INSERT INTO failures (item_id, job_id, worker_id, category, message, at)
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])`,
          [
            kept.map((r) => r.itemId),
            kept.map((r) => r.jobId),
            kept.map((r) => r.workerId),
            kept.map((r) => r.category),
            kept.map((r) => r.message),
            kept.map((r) => r.at),
          ],
        );
      }
      await this.addCounts(c, lease, failed, 'failed_count');
    });
  }

  async failuresOf(jobId: string): Promise<FailureRecord[]> {
    const r = await this.pool.query<FailureRecord>(
      `SELECT item_id AS "itemId", worker_id AS "workerId", category, message, at FROM failures
       WHERE job_id = $1 ORDER BY id`,
      [jobId],
    );
    return r.rows;
  }

  async getResult(itemId: number): Promise<ResultRecord | undefined> {
    const r = await this.pool.query<ResultRecord>(`${RESULT_SELECT} WHERE r.item_id = $1`, [itemId]);
    return r.rows[0];
  }

  /** Pages by item id, one short query per page: no cursor or connection is held between pages. */
  async *iterateResults(jobId: string): AsyncIterableIterator<ResultRecord> {
    let after = 0;
    for (;;) {
      const page = (
        await this.pool.query<ResultRecord>(
          `${RESULT_SELECT} WHERE r.job_id = $1 AND r.item_id > $2 ORDER BY r.item_id LIMIT $3`,
          [jobId, after, RESULT_PAGE],
        )
      ).rows;
      yield* page;
      if (page.length < RESULT_PAGE) return;
      after = page[page.length - 1].itemId;
    }
  }

  async upsertWorker(rec: WorkerRecord): Promise<void> {
    await this.pool.query(
      `INSERT INTO workers (id, secret_hash, kind, backend, name, pool, concurrency, capabilities, first_seen,
         last_seen, items_done) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
       ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, kind = excluded.kind,
         backend = excluded.backend, name = excluded.name, pool = excluded.pool,
         concurrency = excluded.concurrency, capabilities = excluded.capabilities, last_seen = excluded.last_seen`,
      [
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
      ],
    );
  }

  async getWorker(id: string): Promise<WorkerRecord | undefined> {
    const r = await this.pool.query<WorkerRecord>(`SELECT ${WORKER_COLUMNS} FROM workers WHERE id = $1`, [
      id,
    ]);
    return r.rows[0];
  }

  async listWorkers(): Promise<WorkerRecord[]> {
    return (await this.pool.query<WorkerRecord>(`SELECT ${WORKER_COLUMNS} FROM workers ORDER BY id`)).rows;
  }

  async addWorkerItems(id: string, n: number, lastSeen: number): Promise<void> {
    await this.pool.query('UPDATE workers SET items_done = items_done + $1, last_seen = $2 WHERE id = $3', [
      n,
      lastSeen,
      id,
    ]);
  }

  async addEvent(jobId: string, type: string, data: Record<string, unknown>, at: number): Promise<void> {
    await this.pool.query('INSERT INTO events (job_id, at, type, data) VALUES ($1, $2, $3, $4)', [
      jobId,
      at,
      type,
      JSON.stringify(data),
    ]);
  }

  async listEvents(jobId: string, opts?: { type?: string; limit?: number }): Promise<JobEvent[]> {
    const r = await this.pool.query<JobEvent>(
      `SELECT id, job_id AS "jobId", at, type, data FROM events
       WHERE job_id = $1 AND ($2::text IS NULL OR type = $2) ORDER BY id DESC LIMIT $3`,
      [jobId, opts?.type ?? null, opts?.limit ?? null],
    );
    return r.rows;
  }

  async putModel(name: string, sha256: string, bytes: Uint8Array, manifest?: string): Promise<void> {
    const actual = sha256Hex(bytes);
    if (actual !== sha256) throw new Error(`model ${name}: bytes hash to ${actual}, not ${sha256}`);
    await this.pool.query(
      `INSERT INTO models (sha256, name, size, bytes, manifest) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (sha256) DO NOTHING`,
      [sha256, name, bytes.byteLength, bytes, manifest ?? null],
    );
  }

  async getModel(sha256: string): Promise<Uint8Array | undefined> {
    const r = await this.pool.query<{ bytes: Buffer }>('SELECT bytes FROM models WHERE sha256 = $1', [
      sha256,
    ]);
    return r.rows[0]?.bytes;
  }

  async listModels(): Promise<ModelBlob[]> {
    return (
      await this.pool.query<ModelBlob>(
        'SELECT sha256, name, size, manifest FROM models ORDER BY name, sha256',
      )
    ).rows;
  }

  async findModel(nameOrSha: string): Promise<ModelBlob | undefined> {
    const r = await this.pool.query<ModelBlob>(
      `SELECT sha256, name, size, manifest FROM models WHERE sha256 = $1 OR name = $1
       ORDER BY sha256 = $1 DESC, sha256 LIMIT 1`,
      [nameOrSha],
    );
    return r.rows[0];
  }

  async initTokens(candidate: StoredTokens): Promise<StoredTokens> {
    await this.pool.query(
      `INSERT INTO settings (key, value) VALUES ('operator_token', $1), ('join_token', $2) ON CONFLICT (key) DO NOTHING`,
      [candidate.operatorToken, candidate.joinToken],
    );
    const r = await this.pool.query<{ key: string; value: string }>(
      `SELECT key, value FROM settings WHERE key IN ('operator_token', 'join_token')`,
    );
    const get = (k: string) => r.rows.find((x) => x.key === k)!.value;
    return { operatorToken: get('operator_token'), joinToken: get('join_token') };
  }

  async addCanaries(jobId: string, rows: { itemId: number; outputs: Uint8Array }[]): Promise<void> {
    if (rows.length === 0) return;
    await this.pool.query(
      `INSERT INTO canaries (item_id, job_id, outputs) SELECT i, $1, o FROM unnest($2::bigint[], $3::bytea[]) AS t (i, o)
       ON CONFLICT (item_id) DO UPDATE SET job_id = excluded.job_id, outputs = excluded.outputs`,
      [jobId, rows.map((r) => r.itemId), rows.map((r) => r.outputs)],
    );
  }

  async canaryIds(jobId: string): Promise<number[]> {
    const r = await this.pool.query<{ item_id: number }>(
      'SELECT item_id FROM canaries WHERE job_id = $1 ORDER BY item_id',
      [jobId],
    );
    return r.rows.map((x) => x.item_id);
  }

  async canaryAnswer(itemId: number): Promise<Uint8Array | undefined> {
    const r = await this.pool.query<{ outputs: Buffer }>('SELECT outputs FROM canaries WHERE item_id = $1', [
      itemId,
    ]);
    return r.rows[0]?.outputs;
  }

  async addReplicas(rows: readonly Replica[]): Promise<void> {
    // One row per item and worker (the last): ON CONFLICT may not touch a row twice in a statement.
    const last = new Map<string, Replica>();
    for (const x of rows) last.set(`${x.itemId}\n${x.workerId}`, x);
    const all = [...last.values()];
    for (let i = 0; i < all.length; i += MAX_ROWS) {
      const part = all.slice(i, i + MAX_ROWS);
      const n = padded(part.length);
      const outputs: (Uint8Array | null)[] = part.map((x) => x.outputs);
      while (outputs.length < n) outputs.push(null);
      await this.pool.query({
        name: `replicas ${n}`,
        text: `INSERT INTO replicas (item_id, worker_id, backend, outputs, ms, at)
           SELECT item_id, worker_id, backend, outputs, ms, at
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::bigint[], ${byteaArray(6, n)})
             AS r (item_id, worker_id, backend, ms, at, outputs)
           WHERE item_id IS NOT NULL
           ON CONFLICT (item_id, worker_id) DO UPDATE SET backend = excluded.backend, outputs = excluded.outputs,
             ms = excluded.ms, at = excluded.at`,
        values: [
          part.map((x) => x.itemId),
          part.map((x) => x.workerId),
          part.map((x) => x.backend),
          part.map((x) => x.ms),
          part.map((x) => x.at),
          ...outputs,
        ],
      });
    }
  }

  async replicasOf(itemId: number): Promise<Replica[]> {
    const r = await this.pool.query<Replica>(
      `SELECT item_id AS "itemId", worker_id AS "workerId", backend, outputs, ms, at FROM replicas
       WHERE item_id = $1 ORDER BY at, worker_id`,
      [itemId],
    );
    return r.rows;
  }

  async allReplicas(): Promise<Replica[]> {
    const r = await this.pool.query<Replica>(
      `SELECT item_id AS "itemId", worker_id AS "workerId", backend, outputs, ms, at FROM replicas
       ORDER BY item_id, at, worker_id`,
    );
    return r.rows;
  }

  async replicasIn(range: { first: number; last: number }): Promise<Replica[]> {
    const r = await this.pool.query<Replica>(
      `SELECT item_id AS "itemId", worker_id AS "workerId", backend, outputs, ms, at FROM replicas
       WHERE item_id BETWEEN $1 AND $2 ORDER BY item_id, at, worker_id`,
      [range.first, range.last],
    );
    return r.rows;
  }

  async replicaItemIds(): Promise<number[]> {
    const r = await this.pool.query<{ item_id: number }>('SELECT DISTINCT item_id FROM replicas ORDER BY 1');
    return r.rows.map((x) => x.item_id);
  }

  async dropReplicas(itemIds: readonly number[]): Promise<void> {
    if (itemIds.length === 0) return;
    await this.pool.query('DELETE FROM replicas WHERE item_id = ANY ($1::bigint[])', [itemIds]);
  }

  async markVerified(itemIds: readonly number[], how: string): Promise<void> {
    if (itemIds.length === 0) return;
    await this.pool.query(
      `INSERT INTO verified (item_id, how) SELECT DISTINCT i, $2 FROM unnest($1::bigint[]) AS i
       ON CONFLICT (item_id) DO UPDATE SET how = excluded.how`,
      [itemIds, how],
    );
  }

  async isVerified(itemId: number): Promise<boolean> {
    return ((await this.pool.query('SELECT 1 FROM verified WHERE item_id = $1', [itemId])).rowCount ?? 0) > 0;
  }

  async verificationOf(jobId: string): Promise<{ how: string; n: number }[]> {
    const { rows } = await this.pool.query<{ how: string; n: string }>(
      `SELECT COALESCE(v.how, 'record:' || COALESCE(w.kind, 'browser')) AS how, COUNT(*) AS n
       FROM results r LEFT JOIN verified v ON v.item_id = r.item_id
       LEFT JOIN workers w ON w.id = r.worker_id
       WHERE r.job_id = $1 GROUP BY 1`,
      [jobId],
    );
    return rows.map((r) => ({ how: r.how, n: Number(r.n) }));
  }

  async trustOf(workerId: string): Promise<TrustRecord | undefined> {
    const r = await this.pool.query('SELECT * FROM worker_trust WHERE worker_id = $1', [workerId]);
    return r.rows[0] ? toTrust(r.rows[0] as Record<string, unknown>) : undefined;
  }

  async allTrust(): Promise<TrustRecord[]> {
    const r = await this.pool.query('SELECT * FROM worker_trust ORDER BY worker_id');
    return r.rows.map((x) => toTrust(x as Record<string, unknown>));
  }

  async putTrust(t: TrustRecord): Promise<void> {
    await this.pool.query(
      `INSERT INTO worker_trust (worker_id, validated, streak, strikes, quarantined, reason, at)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (worker_id) DO UPDATE SET validated = excluded.validated, streak = excluded.streak,
         strikes = excluded.strikes, quarantined = excluded.quarantined, reason = excluded.reason, at = excluded.at`,
      [t.workerId, t.validated, t.streak, t.strikes, t.quarantined, t.reason, t.at],
    );
  }

  async revertUnverified(lease: Lease, workerId: string): Promise<Map<string, number[]>> {
    return this.tx(async (c) => {
      await this.fence(c, lease, 'reverting results');
      // Its unconfirmed results answer no more items. Those of cancelled jobs stay stored, so their
      // entries go; the others are taken back (an entry answers again once its item is recomputed).
      await c.query(
        `DELETE FROM result_cache WHERE item_id IN (SELECT r.item_id FROM results r JOIN jobs j ON j.id = r.job_id
           WHERE r.worker_id = $1 AND j.state = 'cancelled'
             AND NOT EXISTS (SELECT 1 FROM verified v WHERE v.item_id = r.item_id))`,
        [workerId],
      );
      // Copies the cache answered from its results on record (`cached:record`) go with them.
      const reopened = await c.query<{ id: number; job_id: string }>(
        `WITH gone AS (
           DELETE FROM results r USING jobs j
           WHERE r.worker_id = $1 AND j.id = r.job_id AND j.state <> 'cancelled'
             AND NOT EXISTS (SELECT 1 FROM verified v WHERE v.item_id = r.item_id AND v.how <> $2
                             AND v.how NOT LIKE '%${UNPROVEN_QUORUM}')
           RETURNING r.item_id
         ),
         unverified AS (DELETE FROM verified v USING gone WHERE v.item_id = gone.item_id)
         UPDATE items SET state = 'pending' FROM gone WHERE items.id = gone.item_id AND items.state = 'done'
         RETURNING items.id, items.job_id`,
        [workerId, CACHED_ON_RECORD],
      );
      const out = new Map<string, number[]>();
      for (const r of [...reopened.rows].sort((a, b) => a.id - b.id)) {
        const list = out.get(r.job_id);
        if (list) list.push(r.id);
        else out.set(r.job_id, [r.id]);
      }
      const jobs = [...out.keys()].sort();
      for (const jobId of jobs) {
        const n = out.get(jobId)!.length;
        await c.query(
          `INSERT INTO job_counters (job_id, slot, done_count) VALUES ($1, 0, $2)
           ON CONFLICT (job_id, slot) DO UPDATE SET done_count = job_counters.done_count + excluded.done_count`,
          [jobId, -n],
        );
        await c.query(
          `UPDATE jobs SET state = CASE WHEN state = 'completed' THEN 'running' ELSE state END,
             finished_at = CASE WHEN state = 'completed' THEN NULL ELSE finished_at END WHERE id = $1`,
          [jobId],
        );
        await this.chunkUncovered(c, jobId, out.get(jobId)!);
      }
      return out;
    });
  }

  async setHubUrl(lease: Lease, url: string): Promise<void> {
    await this.pool.query('UPDATE hubs SET url = $3 WHERE id = $1 AND epoch = $2', [
      lease.hubId,
      lease.epoch,
      url,
    ]);
  }

  async registerHub(hubId: string, opts: { url: string; ttlMs: number }): Promise<Lease> {
    if (!Number.isInteger(opts.ttlMs) || opts.ttlMs < 1) {
      throw new Error(`lease ttlMs must be a positive integer, not ${String(opts.ttlMs)}`);
    }
    return this.tx(async (c) => {
      // The upsert waits for the previous incarnation's fenced transactions (they share-lock the row).
      const r = await c.query<{ epoch: number; expires: number }>(
        `INSERT INTO hubs (id, epoch, url, ttl_ms, state, started_at, renewed_at, expires_at)
         VALUES ($1, nextval('hub_epochs'), $2, $3::int, 'live', now(), now(), now() + $3::int * interval '1 millisecond')
         ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, url = excluded.url, ttl_ms = excluded.ttl_ms,
           state = 'live', started_at = excluded.started_at, renewed_at = excluded.renewed_at,
           expires_at = excluded.expires_at
         RETURNING epoch, ${MS('expires_at')} AS expires`,
        [hubId, opts.url, opts.ttlMs],
      );
      const { epoch, expires } = r.rows[0];
      await c.query(
        `UPDATE chunks SET hub_id = NULL, epoch = NULL, claimed_at = NULL, cursor = first_id - 1
         WHERE hub_id = $1 AND epoch <> $2`,
        [hubId, epoch],
      );
      return { hubId, epoch, ttlMs: opts.ttlMs, expiresAt: expires };
    });
  }

  async renewLease(lease: Lease): Promise<Lease> {
    const r = await this.pool.query<{ expires: number }>(
      `UPDATE hubs SET renewed_at = now(), expires_at = now() + ttl_ms * interval '1 millisecond'
       WHERE id = $1 AND epoch = $2 AND state = 'live' AND expires_at > now()
       RETURNING ${MS('expires_at')} AS expires`,
      [lease.hubId, lease.epoch],
    );
    if (r.rowCount === 0) throw new FencedError(lease, 'lease renewal');
    return { ...lease, expiresAt: r.rows[0].expires };
  }

  async listHubs(): Promise<HubRecord[]> {
    const r = await this.pool.query<HubRecord>(
      `SELECT h.id, h.epoch, h.url, h.state, ${MS('h.started_at')} AS "startedAt",
         ${MS('h.renewed_at')} AS "renewedAt", ${MS('h.expires_at')} AS "expiresAt",
         (h.state = 'live' AND h.expires_at > now()) AS "leaseHeld",
         (SELECT count(*) FROM chunks c WHERE c.hub_id = h.id AND c.epoch = h.epoch)::int AS chunks
       FROM hubs h ORDER BY h.id`,
    );
    return r.rows;
  }

  async reapExpired(lease: Lease): Promise<{ hubId: string; epoch: number; chunks: number }[]> {
    return this.tx(async (c) => {
      await this.fence(c, lease, 'reaping');
      // FOR UPDATE waits for the lapsed hub's commits already past their fence check.
      const dead = await c.query<{ id: string; epoch: number }>(
        `SELECT id, epoch FROM hubs WHERE state = 'live' AND expires_at <= now() ORDER BY id FOR UPDATE`,
      );
      if (dead.rowCount === 0) return [];
      const ids = dead.rows.map((d) => d.id);
      await c.query(`UPDATE hubs SET state = 'dead' WHERE id = ANY ($1::text[])`, [ids]);
      const freed = await c.query<{ hub_id: string; n: number }>(
        `WITH l AS (SELECT id, hub_id FROM chunks WHERE hub_id = ANY ($1::text[]) ORDER BY id FOR UPDATE),
         u AS (
           UPDATE chunks SET hub_id = NULL, epoch = NULL, claimed_at = NULL, cursor = first_id - 1
           FROM l WHERE chunks.id = l.id RETURNING l.hub_id
         )
         SELECT hub_id, count(*)::int AS n FROM u GROUP BY hub_id`,
        [ids],
      );
      const counts = new Map(freed.rows.map((f) => [f.hub_id, f.n]));
      return dead.rows.map((d) => ({ hubId: d.id, epoch: d.epoch, chunks: counts.get(d.id) ?? 0 }));
    });
  }

  async claimChunks(
    lease: Lease,
    opts: { maxChunks: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk[]> {
    if (opts.maxChunks < 1) return [];
    const r = await this.fenced<{ chunks: Chunk[] }>(
      lease,
      'claims',
      `pick AS (
         SELECT c.id FROM chunks c JOIN jobs j ON j.id = c.job_id
         WHERE c.hub_id IS NULL AND j.state = ANY ($3::text[]) AND NOT (j.id = ANY ($5::text[]))
           AND EXISTS (SELECT 1 FROM fence)
         ORDER BY j.priority DESC, j.serial, c.first_id
         LIMIT $4 FOR UPDATE OF c SKIP LOCKED
       ),
       taken AS (
         UPDATE chunks SET hub_id = $1, epoch = $2, claimed_at = now(), cursor = first_id - 1
         FROM pick WHERE chunks.id = pick.id
         RETURNING ${CHUNK_RETURNING}
       )
       SELECT ${FENCE_OK}, coalesce((SELECT json_agg(taken ORDER BY taken.id) FROM taken), '[]') AS chunks`,
      [opts.states ?? RUNNABLE_STATES, opts.maxChunks, opts.exceptJobs ?? []],
    );
    return r.chunks;
  }

  async advanceChunk(lease: Lease, chunkId: number, upto: number): Promise<Chunk | undefined> {
    const r = await this.fenced<{ chunk: Chunk | null }>(
      lease,
      'chunk progress',
      `moved AS (
         UPDATE chunks SET cursor = greatest(cursor, least($4::bigint, last_id))
         WHERE id = $3 AND hub_id = $1 AND epoch = $2 AND EXISTS (SELECT 1 FROM fence)
         RETURNING ${CHUNK_RETURNING}
       )
       SELECT ${FENCE_OK}, (SELECT row_to_json(moved) FROM moved) AS chunk`,
      [chunkId, upto],
    );
    return r.chunk ?? undefined;
  }

  async splitTail(
    lease: Lease,
    opts: { minItems: number; states?: readonly JobState[]; exceptJobs?: readonly string[] },
  ): Promise<Chunk | undefined> {
    const min = Math.max(1, opts.minItems);
    return this.tx(async (c) => {
      await this.fence(c, lease, 'splits');
      const pick = await c.query<{ id: number; job_id: string; last_id: number; cursor: number }>(
        `SELECT c.id, c.job_id, c.last_id, c.cursor FROM chunks c
         JOIN jobs j ON j.id = c.job_id
         JOIN hubs h ON h.id = c.hub_id AND h.epoch = c.epoch
         WHERE c.hub_id <> $1 AND h.state = 'live' AND h.expires_at > now() AND j.state = ANY ($2::text[])
           AND NOT (j.id = ANY ($4::text[])) AND (c.last_id - c.cursor) / 2 >= $3
           AND NOT EXISTS (SELECT 1 FROM chunks u WHERE u.job_id = c.job_id AND u.hub_id IS NULL)
         ORDER BY j.priority DESC, c.last_id - c.cursor DESC, c.id
         LIMIT 1 FOR UPDATE OF c SKIP LOCKED`,
        [lease.hubId, opts.states ?? RUNNABLE_STATES, min, opts.exceptJobs ?? []],
      );
      const victim = pick.rows[0];
      if (!victim) return undefined;
      const take = Math.floor((victim.last_id - victim.cursor) / 2);
      const mid = victim.last_id - take + 1;
      await c.query('UPDATE chunks SET last_id = $1 WHERE id = $2', [mid - 1, victim.id]);
      const r = await c.query<Chunk>(
        `INSERT INTO chunks (job_id, first_id, last_id, cursor, hub_id, epoch, claimed_at)
         VALUES ($1, $2, $3, $2::bigint - 1, $4, $5, now()) RETURNING ${CHUNK_COLUMNS}`,
        [victim.job_id, mid, victim.last_id, lease.hubId, lease.epoch],
      );
      return r.rows[0];
    });
  }

  async releaseChunks(lease: Lease, chunkIds: readonly number[]): Promise<void> {
    if (chunkIds.length === 0) return;
    await this.tx(async (c) => {
      await this.fence(c, lease, 'chunk release');
      await c.query(
        `UPDATE chunks SET hub_id = NULL, epoch = NULL, claimed_at = NULL, cursor = first_id - 1
         WHERE id = ANY ($1::bigint[]) AND hub_id = $2 AND epoch = $3`,
        [chunkIds, lease.hubId, lease.epoch],
      );
    });
  }

  async finishChunk(lease: Lease, chunkId: number): Promise<boolean> {
    return this.tx(async (c) => {
      await this.fence(c, lease, 'chunk finish');
      // The chunk's lock first, then its items in a statement of their own. A revert that reopened
      // an item of it locks the chunk to find the item covered: by the time this has the lock, that
      // revert has committed and its item reads pending. In one statement the items would be judged
      // by the snapshot taken before waiting for the lock, and the chunk deleted from under them.
      const held = await c.query(
        'SELECT 1 FROM chunks WHERE id = $1 AND hub_id = $2 AND epoch = $3 FOR UPDATE',
        [chunkId, lease.hubId, lease.epoch],
      );
      if (held.rowCount === 0) return false;
      const gone = await c.query(
        `DELETE FROM chunks c WHERE c.id = $1
           AND NOT EXISTS (SELECT 1 FROM items i WHERE i.job_id = c.job_id AND i.state = 'pending'
                           AND i.id BETWEEN c.first_id AND c.last_id)`,
        [chunkId],
      );
      return gone.rowCount === 1;
    });
  }

  async listChunks(jobId: string): Promise<Chunk[]> {
    const r = await this.pool.query<Chunk>(
      `SELECT ${CHUNK_COLUMNS} FROM chunks WHERE job_id = $1 ORDER BY first_id`,
      [jobId],
    );
    return r.rows;
  }

  async createRun(lease: Lease, run: { id: string; anchor: string; createdAt: number }): Promise<void> {
    await this.pool.query(
      `INSERT INTO pipeline_runs (id, anchor, owner_hub, owner_epoch, state, created_at)
       VALUES ($1, $2, $3, $4, 'running', $5)`,
      [run.id, run.anchor, lease.hubId, lease.epoch, run.createdAt],
    );
  }

  async getRun(id: string): Promise<PipelineRun | undefined> {
    const r = await this.pool.query<PipelineRun>(`SELECT ${RUN_COLUMNS} FROM pipeline_runs WHERE id = $1`, [
      id,
    ]);
    return r.rows[0];
  }

  async completeRun(id: string): Promise<void> {
    await this.pool.query(`UPDATE pipeline_runs SET state = 'completed' WHERE id = $1`, [id]);
  }

  async takeOverRuns(lease: Lease): Promise<PipelineRun[]> {
    // The compare-and-set: the update matches a run only while its owner and epoch are still the
    // orphaned ones read in \`orphans\`. A hub that takes the same run at the same time waits for
    // the row's lock, and READ COMMITTED then re-checks the row as committed: its owner changed,
    // so it no longer matches.
    const r = await this.fenced<{ runs: PipelineRun[] }>(
      lease,
      'run takeover',
      `orphans AS (
         SELECT r.id, r.owner_hub, r.owner_epoch FROM pipeline_runs r
         WHERE r.state = 'running' AND NOT EXISTS (
           SELECT 1 FROM hubs h WHERE h.id = r.owner_hub AND h.epoch = r.owner_epoch AND h.state = 'live')
       ),
       taken AS (
         UPDATE pipeline_runs p SET owner_hub = $1, owner_epoch = $2, takeovers = p.takeovers + 1
         FROM orphans o
         WHERE p.id = o.id AND p.owner_hub = o.owner_hub AND p.owner_epoch = o.owner_epoch
           AND p.state = 'running' AND EXISTS (SELECT 1 FROM fence)
         RETURNING p.id, p.anchor, p.owner_hub AS "ownerHub", p.owner_epoch AS "ownerEpoch", p.state,
           p.takeovers, p.created_at AS "createdAt"
       )
       SELECT ${FENCE_OK}, coalesce((SELECT json_agg(taken ORDER BY taken."createdAt") FROM taken), '[]') AS runs`,
      [],
    );
    return r.runs;
  }

  /** Ends the pool (waits for checked-out clients); the same promise every time. */
  close(): Promise<void> {
    this.closing ??= this.pool.end();
    return this.closing;
  }
}

/** Applies the migrations the database has not seen, once across hubs starting together. */
async function migrate(pool: pg.Pool): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('SELECT pg_advisory_lock($1)', [MIGRATE_LOCK]);
    await c.query('CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)');
    const r = await c.query<{ value: string }>(`SELECT value FROM meta WHERE key = 'schema_version'`);
    const current = Number(r.rows[0]?.value ?? 0);
    if (!Number.isInteger(current) || current < 0) {
      throw new Error(`store schema_version is not a version number: ${String(r.rows[0]?.value)}`);
    }
    if (current > PG_SCHEMA_VERSION) {
      throw new Error(
        `store schema_version ${current} is newer than this build understands (${PG_SCHEMA_VERSION}); upgrade shardhub`,
      );
    }
    for (let v = current; v < PG_SCHEMA_VERSION; v++) {
      await c.query('BEGIN');
      try {
        await c.query(PG_MIGRATIONS[v]);
        await c.query(
          `INSERT INTO meta (key, value) VALUES ('schema_version', $1)
           ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
          [String(v + 1)],
        );
        await c.query('COMMIT');
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {});
        throw err;
      }
    }
  } finally {
    await c.query('SELECT pg_advisory_unlock($1)', [MIGRATE_LOCK]).catch(() => {});
    c.release();
  }
}
