/**
 * The PostgreSQL store's schema, as migrations: entry `i` takes the schema from version `i` to
 * `i + 1`. Append only; never edit one that has shipped. `PgStore.open` applies the missing ones,
 * each in its own transaction with the version bump, under an advisory lock so hubs starting
 * together migrate once.
 *
 * Layout choices, and why:
 * - Item ids are reserved a block per append by `shardhub_reserve_item_ids(n)` (a sequence moved
 *   under a short advisory lock, not a row lock held to commit): an append's items get consecutive
 *   ids, which is what chunks and the hub's id runs are made of, while other jobs append at once.
 * - Blobs (inputs, outputs, model bytes) are stored out of line uncompressed (`STORAGE EXTERNAL`):
 *   tensors barely compress, and reading a length or a page of results then touches no blob.
 * - Inputs in `item_inputs`, not `items`: a `pending → done` flip then writes a small row version,
 *   never a copy of the input (PostgreSQL updates are new row versions).
 * - `results.item_id` is the primary key: exactly-once is the schema's as well as the gate's.
 * - Done and failed counts live in `job_counters`, one row per (job, slot), the slot chosen by the
 *   committing hub's epoch: hubs committing results of one job do not queue on one counter row.
 * - Times the hub sets are epoch ms (`bigint`) as in SQLite; lease times are `timestamptz` from the
 *   server's own clock.
 */
export const PG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);

  CREATE TABLE jobs (
    id text PRIMARY KEY,
    model_name text NOT NULL,
    model_sha256 text NOT NULL,
    state text NOT NULL CHECK (state IN ('open', 'queued', 'running', 'completed', 'cancelled')),
    priority integer NOT NULL,
    redundancy integer NOT NULL,
    deadline bigint,
    requirements jsonb,
    options jsonb NOT NULL,
    created_at bigint NOT NULL,
    started_at bigint,
    finished_at bigint,
    item_count integer NOT NULL DEFAULT 0,
    serial bigserial NOT NULL
  );
  CREATE INDEX jobs_serial ON jobs (serial);

  CREATE TABLE job_counters (
    job_id text NOT NULL REFERENCES jobs (id),
    slot integer NOT NULL,
    done_count integer NOT NULL DEFAULT 0,
    failed_count integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, slot)
  );

  CREATE SEQUENCE item_ids;
  CREATE FUNCTION shardhub_reserve_item_ids(n integer) RETURNS bigint LANGUAGE plpgsql AS $$
  DECLARE first bigint;
  BEGIN
    PERFORM pg_advisory_lock(7212021);
    first := nextval('item_ids');
    IF n > 1 THEN PERFORM setval('item_ids', first + n - 1); END IF;
    PERFORM pg_advisory_unlock(7212021);
    RETURN first;
  EXCEPTION WHEN OTHERS THEN
    -- A session lock outlives the transaction: never leave it held on a pooled connection.
    PERFORM pg_advisory_unlock(7212021);
    RAISE;
  END $$;

  CREATE TABLE items (
    id bigint PRIMARY KEY,
    job_id text NOT NULL REFERENCES jobs (id),
    seq integer NOT NULL,
    name text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0
  );
  CREATE UNIQUE INDEX items_job_seq ON items (job_id, seq);
  CREATE INDEX items_pending ON items (job_id, id) WHERE state = 'pending';

  CREATE TABLE item_inputs (item_id bigint PRIMARY KEY REFERENCES items (id), inputs bytea NOT NULL);

  CREATE TABLE assignments (
    item_id bigint NOT NULL,
    worker_id text NOT NULL,
    shard_id text NOT NULL,
    at bigint NOT NULL
  );
  CREATE INDEX assignments_item ON assignments (item_id);

  CREATE TABLE results (
    item_id bigint PRIMARY KEY REFERENCES items (id),
    job_id text NOT NULL,
    worker_id text NOT NULL,
    model_sha256 text NOT NULL,
    ms double precision NOT NULL,
    outputs bytea NOT NULL,
    at bigint NOT NULL
  );
  CREATE INDEX results_job ON results (job_id, item_id);
  CREATE INDEX results_worker ON results (worker_id);

  CREATE TABLE failures (
    id bigserial PRIMARY KEY,
    item_id bigint NOT NULL,
    job_id text NOT NULL,
    worker_id text NOT NULL,
    category text NOT NULL,
    message text NOT NULL,
    at bigint NOT NULL
  );
  CREATE INDEX failures_job ON failures (job_id);

  CREATE TABLE workers (
    id text PRIMARY KEY,
    secret_hash text NOT NULL,
    kind text NOT NULL,
    backend text NOT NULL,
    name text NOT NULL,
    pool text,
    concurrency integer NOT NULL,
    capabilities jsonb NOT NULL,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    items_done bigint NOT NULL DEFAULT 0
  );

  CREATE TABLE events (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    at bigint NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL
  );
  CREATE INDEX events_job ON events (job_id, id);

  CREATE TABLE models (
    sha256 text PRIMARY KEY,
    name text NOT NULL,
    size bigint NOT NULL,
    bytes bytea NOT NULL
  );

  CREATE TABLE canaries (item_id bigint PRIMARY KEY, job_id text NOT NULL, outputs bytea NOT NULL);
  CREATE INDEX canaries_job ON canaries (job_id);
  CREATE TABLE replicas (
    item_id bigint NOT NULL, worker_id text NOT NULL, backend text NOT NULL,
    outputs bytea NOT NULL, ms double precision NOT NULL, at bigint NOT NULL,
    PRIMARY KEY (item_id, worker_id)
  );
  CREATE TABLE verified (item_id bigint PRIMARY KEY, how text NOT NULL);
  CREATE TABLE worker_trust (
    worker_id text PRIMARY KEY, validated integer NOT NULL, streak integer NOT NULL,
    strikes integer NOT NULL, quarantined boolean NOT NULL, reason text, at bigint NOT NULL
  );

  CREATE SEQUENCE hub_epochs;
  CREATE TABLE hubs (
    id text PRIMARY KEY,
    epoch bigint NOT NULL,
    url text NOT NULL,
    ttl_ms integer NOT NULL,
    state text NOT NULL CHECK (state IN ('live', 'dead')),
    started_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
  );

  CREATE TABLE chunks (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL REFERENCES jobs (id),
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    cursor bigint NOT NULL,
    hub_id text,
    epoch bigint,
    claimed_at timestamptz,
    CHECK (last_id >= first_id)
  );
  CREATE INDEX chunks_free ON chunks (job_id, first_id) WHERE hub_id IS NULL;
  CREATE INDEX chunks_hub ON chunks (hub_id) WHERE hub_id IS NOT NULL;
  CREATE INDEX chunks_job ON chunks (job_id, last_id);

  -- Tensors and models barely compress; pglz would spend CPU trying on every write.
  ALTER TABLE item_inputs ALTER COLUMN inputs SET STORAGE EXTERNAL;
  ALTER TABLE results ALTER COLUMN outputs SET STORAGE EXTERNAL;
  ALTER TABLE canaries ALTER COLUMN outputs SET STORAGE EXTERNAL;
  ALTER TABLE replicas ALTER COLUMN outputs SET STORAGE EXTERNAL;
  ALTER TABLE models ALTER COLUMN bytes SET STORAGE EXTERNAL;
  `,
  // An uploaded model's manifest (JSON, without its file), so another hub can register the model.
  `ALTER TABLE models ADD COLUMN manifest text;`,
  // The result cache (async-store.ts): an index over results, not a copy; an entry answers once
  // its item has a result.
  `
  CREATE TABLE result_cache (
    model_key text NOT NULL,
    input_sha256 text NOT NULL,
    item_id bigint NOT NULL,
    used_at bigint NOT NULL,
    PRIMARY KEY (model_key, input_sha256)
  );
  CREATE INDEX result_cache_used ON result_cache (used_at);
  `,
  // Pipeline runs' owners (async-store.ts \`PipelineRun\`): one hub carries a run on at a time, and
  // a live hub takes over the runs of a dead one.
  `
  CREATE TABLE pipeline_runs (
    id text PRIMARY KEY,
    anchor text NOT NULL,
    owner_hub text NOT NULL,
    owner_epoch bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'completed')),
    takeovers integer NOT NULL DEFAULT 0,
    created_at bigint NOT NULL
  );
  CREATE INDEX pipeline_runs_running ON pipeline_runs (owner_hub) WHERE state = 'running';
  `,
];

/** The schema version this build writes. */
export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length;
