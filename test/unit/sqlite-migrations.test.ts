/**
 * The SQLite file's schema versions: a fresh file, files written before versions were recorded
 * (fixtures made by that code), a file from a newer build; and the WAL checkpointing thread.
 */
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { copyFileSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';
import { SQLITE_MIGRATIONS, SQLITE_SCHEMA_VERSION } from '../../server/store/sqlite-migrations.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { TrustStore } from '../../server/store/trust-store.ts';
import { newJob } from '../helpers/store-rows.ts';

const dir = mkdtempSync(join(tmpdir(), 'shardhub-migrations-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const FIXTURES = new URL('../fixtures/', import.meta.url);
let n = 0;

/** A copy of a fixture (opening migrates it in place). */
function copyOf(fixture: string): string {
  const file = join(dir, `${n++}-${fixture}`);
  copyFileSync(new URL(fixture, FIXTURES), file);
  return file;
}

/** What a closed file holds: its version and its tables. */
function inspect(file: string): { version: number; tables: string[] } {
  const db = new Database(file, { readonly: true });
  try {
    return {
      version: db.pragma('user_version', { simple: true }) as number,
      tables: db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .pluck()
        .all() as string[],
    };
  } finally {
    db.close();
  }
}

const ALL_TABLES = [
  'assignments',
  'canaries',
  'chunks',
  'events',
  'failures',
  'hubs',
  'item_inputs',
  'items',
  'jobs',
  'models',
  'pipeline_runs',
  'replicas',
  'result_cache',
  'results',
  'settings',
  'verified',
  'worker_trust',
  'workers',
];

describe('schema versions', () => {
  test('a fresh file gets every migration and records the version; opening it again changes nothing', () => {
    assert.equal(SQLITE_SCHEMA_VERSION, SQLITE_MIGRATIONS.length);
    const file = join(dir, 'fresh', 'hub.sqlite');
    SqliteStore.open(file).close();
    assert.deepEqual(inspect(file), { version: SQLITE_SCHEMA_VERSION, tables: ALL_TABLES });
    const s = SqliteStore.open(file);
    s.createJob(newJob('j'));
    s.close();
    assert.equal(inspect(file).version, SQLITE_SCHEMA_VERSION);
  });

  test("a hub file written before versions were recorded opens with every row, at today's version", () => {
    const file = copyOf('hub-unversioned.sqlite');
    const before = inspect(file);
    assert.equal(before.version, 0);
    assert.ok(before.tables.includes('meta') && !before.tables.includes('chunks'));

    const store = SqliteStore.open(file);
    const trust = TrustStore.open(file);
    try {
      const done = store.getJob('done-job')!;
      assert.equal(done.state, 'completed');
      assert.equal(done.itemCount, 3);
      assert.equal(done.doneCount, 3);
      assert.deepEqual(done.requirements, { kinds: ['native'] });
      assert.deepEqual(done.options, { note: 'before versions' });
      const results = [...store.iterateResults('done-job')];
      assert.deepEqual(
        results.map((r) => [r.name, r.workerId, [...r.outputs]]),
        results.map((r) => [r.name, 'w1', [r.itemId, 7]]),
      );
      assert.deepEqual(
        results.map((r) => r.name),
        ['a-0', 'a-1', 'a-2'],
      );
      const ids = results.map((r) => r.itemId);
      assert.deepEqual([...store.itemInputs([ids[2]]).get(ids[2])!], [2, 10, 20]);

      const open = store.getJob('open-job')!;
      assert.equal(open.state, 'queued');
      assert.equal(open.doneCount, 1);
      const pending = store.pendingItemRuns('open-job');
      assert.equal(
        pending.reduce((k, r) => k + r.last - r.first + 1, 0),
        4,
      );
      assert.equal(store.failuresOf('open-job')[0]?.message, 'oom');
      assert.deepEqual(store.listEvents('open-job')[0]?.data, { from: 'w1' });
      assert.equal(store.getWorker('w1')?.itemsDone, 3);
      assert.equal(store.getWorker('w1')?.pool, 'lab');

      assert.deepEqual(trust.canaryIds('done-job'), [ids[0]]);
      assert.equal(trust.isVerified(ids[0]), true);
      assert.equal(trust.trustOf('w1')?.validated, 1);
      assert.equal(trust.replicaItemIds().length, 1);
      assert.deepEqual(
        trust.verificationOf('done-job').sort((a, b) => a.how.localeCompare(b.how)),
        [
          { how: 'canary', n: 1 },
          { how: 'record:native', n: 2 },
        ],
      );

      // And the file takes new work.
      const more = store.appendItems('open-job', [{ name: 'later', inputs: new Uint8Array([9]) }], {
        running: true,
      });
      assert.equal(store.getItem(more[0])?.seq, 5);
    } finally {
      trust.close();
      store.close();
    }
    assert.deepEqual(inspect(file), { version: SQLITE_SCHEMA_VERSION, tables: ALL_TABLES });
  });

  test('the several-hubs store opens such a hub file and cuts chunks for its pending items', async () => {
    const file = copyOf('hub-unversioned.sqlite');
    const s = await SqliteAsyncStore.open(file, { chunkItems: 2 });
    try {
      const pending = (await s.pendingItemRuns('open-job')).flatMap((r) =>
        Array.from({ length: r.last - r.first + 1 }, (_, i) => r.first + i),
      );
      assert.equal(pending.length, 4);
      assert.deepEqual(
        (await s.listChunks('open-job')).map((c) => [c.first, c.last]),
        [
          [pending[0], pending[1]],
          [pending[2], pending[3]],
        ],
      );
      assert.deepEqual(await s.listChunks('done-job'), [], 'a completed job gets none');
      assert.equal(await s.getSetting('note'), 'kept');
    } finally {
      await s.close();
    }
    // Opening again cuts nothing twice.
    const again = await SqliteAsyncStore.open(file, { chunkItems: 2 });
    assert.equal((await again.listChunks('open-job')).length, 2);
    await again.close();
  });

  test('a file the several-hubs store wrote before versions were recorded keeps its chunks and models', async () => {
    const file = copyOf('async-unversioned.sqlite');
    assert.equal(inspect(file).version, 0);
    const s = await SqliteAsyncStore.open(file, { chunkItems: 2 });
    try {
      assert.deepEqual(
        (await s.listChunks('j')).map((c) => c.last - c.first + 1),
        [2, 1],
      );
      const [model] = await s.listModels();
      assert.equal(model.name, 'm');
      assert.equal(Buffer.from((await s.getModel(model.sha256))!).toString(), 'model');
    } finally {
      await s.close();
    }
    assert.deepEqual(inspect(file), { version: SQLITE_SCHEMA_VERSION, tables: ALL_TABLES });
  });

  test('a file from a newer build is refused, named, and left untouched', async () => {
    const file = join(dir, 'newer.sqlite');
    const raw = new Database(file);
    raw.pragma(`user_version = ${SQLITE_SCHEMA_VERSION + 1}`);
    raw.exec('CREATE TABLE future (x INTEGER)');
    raw.close();
    const message = new RegExp(
      `newer.sqlite is at schema version ${SQLITE_SCHEMA_VERSION + 1}, newer than this build of shardhub ` +
        `understands \\(${SQLITE_SCHEMA_VERSION}\\): upgrade shardhub`,
    );
    assert.throws(() => SqliteStore.open(file), { name: 'SchemaTooNewError', message });
    assert.throws(() => TrustStore.open(file), { name: 'SchemaTooNewError', message });
    await assert.rejects(SqliteAsyncStore.open(file), { name: 'SchemaTooNewError', message });
    assert.deepEqual(inspect(file), { version: SQLITE_SCHEMA_VERSION + 1, tables: ['future'] });
  });
});

describe('the WAL checkpointing thread', () => {
  test("copies committed pages into the database file while the store's own connection does not", async () => {
    const file = join(dir, 'wal', 'hub.sqlite');
    const store = SqliteStore.open(file);
    try {
      store.createJob(newJob('big'));
      const before = statSync(file).size;
      // About 2,000 pages: past SQLite's own 1,000-page checkpoint, well short of the store's backstop.
      const bytes = 8 * 1024 * 1024;
      store.appendItems(
        'big',
        Array.from({ length: 64 }, (_, i) => ({ name: `i${i}`, inputs: new Uint8Array(bytes / 64) })),
      );
      assert.ok(statSync(file).size < before + bytes / 2, 'the commit itself did not checkpoint');
      const end = Date.now() + 10_000;
      while (statSync(file).size < before + bytes && Date.now() < end) await sleep(50);
      assert.ok(statSync(file).size >= before + bytes, `file ${before} -> ${statSync(file).size} bytes`);
    } finally {
      store.close();
    }
    // close() stopped the thread and closed its connection first: the last connection removed the WAL.
    assert.equal(existsSync(`${file}-wal`), false);
  });

  test('a store closed at once (the thread still starting) closes cleanly and leaves no WAL', () => {
    const file = join(dir, 'quick', 'hub.sqlite');
    for (let i = 0; i < 3; i++) SqliteStore.open(file).close();
    assert.equal(existsSync(`${file}-wal`), false);
    assert.equal(inspect(file).version, SQLITE_SCHEMA_VERSION);
  });
});
