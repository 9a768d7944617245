/**
 * The SQLite file's schema, as an ordered list of migrations, and the code that applies them. One
 * schema for every connection to the file: the hub's `SqliteStore`, its `TrustStore` and the
 * several-hubs `SqliteAsyncStore` all open it through `migrateSqlite`.
 *
 * `PRAGMA user_version` records how many migrations a file has had. Opening applies the missing
 * ones in one `BEGIN IMMEDIATE` transaction, together with the version bump: a crash mid-way leaves
 * the file as it was, and two connections opening a fresh file at once migrate it once (the second
 * reads the version again under the write lock). A file from a newer build is refused.
 *
 * Append only; never edit a migration that has shipped. The first two use `IF NOT EXISTS` because
 * they adopt files written before versions were recorded here: those files hold all or part of
 * these tables already (the hub's store kept a version of its own in a `meta` table, the trust
 * store and the async store created theirs where missing), always with these definitions.
 *
 * Layout choices, and why:
 * - Item inputs live in `item_inputs`, not in `items`. SQLite rewrites a whole row on UPDATE, so with
 *   inputs inline every pending→done flip would re-read and re-write the input blob.
 * - `results.item_id` is the primary key: the exactly-once guarantee is enforced by the schema, and an
 *   item's result is only inserted in the same statement sequence that flips it from pending to done.
 * - `items_pending` holds only pending rows: read in seq order, it shrinks as the job finishes.
 */
import type Database from 'better-sqlite3';

/** One step of the schema. */
export interface SqliteMigration {
  /** What it adds, for messages and reviewers. */
  name: string;
  sql: string;
}

/** The migrations, in order: a file at version `v` has had the first `v`. */
export const SQLITE_MIGRATIONS: readonly SqliteMigration[] = [
  {
    name: "the hub's tables: jobs, items, inputs, assignments, results, failures, workers, events, trust",
    sql: `
  CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

  CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'queued', 'running', 'completed', 'cancelled')),
    priority INTEGER NOT NULL,
    redundancy INTEGER NOT NULL,
    deadline INTEGER,
    requirements TEXT,
    options TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    item_count INTEGER NOT NULL DEFAULT 0,
    done_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0
  );

  CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0
  );
  CREATE UNIQUE INDEX IF NOT EXISTS items_job_seq ON items (job_id, seq);
  CREATE INDEX IF NOT EXISTS items_pending ON items (job_id, seq) WHERE state = 'pending';

  CREATE TABLE IF NOT EXISTS item_inputs (
    item_id INTEGER PRIMARY KEY REFERENCES items (id),
    inputs BLOB NOT NULL
  );

  CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items (id),
    worker_id TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS assignments_item ON assignments (item_id);

  CREATE TABLE IF NOT EXISTS results (
    item_id INTEGER PRIMARY KEY REFERENCES items (id),
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    ms REAL NOT NULL,
    outputs BLOB NOT NULL,
    at INTEGER NOT NULL
  );
  -- The rowid (item_id) rides along in every index, so this also serves "job's results by item id".
  CREATE INDEX IF NOT EXISTS results_job ON results (job_id);
  -- A quarantined worker's results, for the trust store's revertUnverified.
  CREATE INDEX IF NOT EXISTS results_worker ON results (worker_id);

  CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items (id),
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    category TEXT NOT NULL,
    message TEXT NOT NULL,
    at INTEGER NOT NULL
  );
  CREATE INDEX IF NOT EXISTS failures_job ON failures (job_id);

  CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    pool TEXT,
    concurrency INTEGER NOT NULL,
    capabilities TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    items_done INTEGER NOT NULL DEFAULT 0
  );

  -- No foreign key to jobs: events are a log and may outlive or precede the job row they name.
  CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS events_job ON events (job_id);

  -- Trust (trust-store.ts): canary answers, replicas awaiting a quorum, how results were verified.
  CREATE TABLE IF NOT EXISTS canaries (
    item_id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    outputs BLOB NOT NULL
  );
  CREATE INDEX IF NOT EXISTS canaries_job ON canaries (job_id);
  CREATE TABLE IF NOT EXISTS replicas (
    item_id INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    outputs BLOB NOT NULL,
    ms REAL NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (item_id, worker_id)
  );
  CREATE TABLE IF NOT EXISTS verified (item_id INTEGER PRIMARY KEY, how TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS worker_trust (
    worker_id TEXT PRIMARY KEY,
    validated INTEGER NOT NULL,
    streak INTEGER NOT NULL,
    strikes INTEGER NOT NULL,
    quarantined INTEGER NOT NULL,
    reason TEXT,
    at INTEGER NOT NULL
  );

  -- The version the hub's store kept before user_version recorded it (it was always 1).
  DROP TABLE IF EXISTS meta;
  `,
  },
  {
    name: 'several hubs (sqlite-async-store.ts): model bytes, hubs and their leases, chunks of items',
    sql: `
  CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL
  );
  CREATE TABLE IF NOT EXISTS hubs (
    id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    url TEXT NOT NULL,
    ttl_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL
  );
  CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    hub_id TEXT,
    epoch INTEGER
  );
  CREATE INDEX IF NOT EXISTS chunks_job ON chunks (job_id, last_id);
  CREATE INDEX IF NOT EXISTS chunks_hub ON chunks (hub_id) WHERE hub_id IS NOT NULL;
  `,
  },
  {
    name: "models: an uploaded model's manifest, so another hub on the store can register it",
    sql: `ALTER TABLE models ADD COLUMN manifest TEXT;`,
  },
  {
    name: 'the result cache: hash of (model key, input sha256) -> the item computed for it (async-store.ts)',
    sql: `
  -- An index over results, not a copy: an entry answers once its item has a result. Keyed by the
  -- hash of (model key, input sha256): id its first 52 bits, key all of it (sqlite-async-store.ts).
  CREATE TABLE result_cache (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    item_id INTEGER NOT NULL,
    used_at INTEGER NOT NULL
  );
  -- Eviction of the least recently used. No index on item_id: each one costs every append a few
  -- microseconds per item, and only a quarantine looks entries up by item (a scan, rarely).
  CREATE INDEX result_cache_used ON result_cache (used_at);
  `,
  },
  {
    name: "pipeline runs' owners (async-store.ts PipelineRun): one hub carries a run on at a time",
    sql: `
  CREATE TABLE pipeline_runs (
    id TEXT PRIMARY KEY,
    anchor TEXT NOT NULL,
    owner_hub TEXT NOT NULL,
    owner_epoch INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'completed')),
    takeovers INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  );
  `,
  },
];

/** The schema version this build writes. */
export const SQLITE_SCHEMA_VERSION = SQLITE_MIGRATIONS.length;

/** Raised when a file was written by a newer build than this one. */
export class SchemaTooNewError extends Error {
  override readonly name = 'SchemaTooNewError';
  readonly code = 'schema_too_new';
  constructor(file: string, version: number) {
    super(
      `${file} is at schema version ${version}, newer than this build of shardhub understands ` +
        `(${SQLITE_SCHEMA_VERSION}): upgrade shardhub, or point it at another data directory`,
    );
  }
}

/** The file's schema version (`PRAGMA user_version`). */
export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Brings the file's schema up to `SQLITE_SCHEMA_VERSION` (see the file comment); `file` names it in
 * errors. Refuses a file from a newer build before touching anything.
 */
export function migrateSqlite(db: Database.Database, file: string): void {
  const seen = schemaVersion(db);
  if (seen > SQLITE_SCHEMA_VERSION) throw new SchemaTooNewError(file, seen);
  if (seen === SQLITE_SCHEMA_VERSION) return;
  db.transaction(() => {
    // Again under the write lock: another connection may have migrated the file meanwhile.
    const from = schemaVersion(db);
    if (from > SQLITE_SCHEMA_VERSION) throw new SchemaTooNewError(file, from);
    for (let v = from; v < SQLITE_SCHEMA_VERSION; v++) db.exec(SQLITE_MIGRATIONS[v].sql);
    db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION}`);
  }).immediate();
}
