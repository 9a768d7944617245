/** The SQLite store against a real file: job lifecycle, exactly-once results, failures, paging, durability. */
import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../server/store/sqlite.ts';
import type { NewFailure, NewResult, WorkerRecord } from '../../server/store/store.ts';
import { items, newJob } from '../helpers/store-rows.ts';

/** A job's pending item ids in seq order, from its runs. */
function pendingIds(store: SqliteStore, jobId: string): number[] {
  return store
    .pendingItemRuns(jobId)
    .flatMap((r) => Array.from({ length: r.last - r.first + 1 }, (_, i) => r.first + i));
}

function result(itemId: number, jobId: string, over: Partial<NewResult> = {}): NewResult {
  return {
    itemId,
    jobId,
    workerId: 'w1',
    modelSha256: 'ab'.repeat(32),
    ms: 12.5,
    outputs: new Uint8Array([itemId & 0xff, 7]),
    at: 1000,
    ...over,
  };
}

function failure(itemId: number, jobId: string, final: boolean): NewFailure {
  return { itemId, jobId, workerId: 'w1', category: 'timeout', message: 'too slow', at: 2000, final };
}

function worker(id: string, over: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    secretHash: 'hash',
    kind: 'native',
    backend: 'cpu',
    name: `node ${id}`,
    pool: null,
    concurrency: 4,
    capabilities: { cores: 8, gpus: [] },
    firstSeen: 100,
    lastSeen: 100,
    itemsDone: 0,
    ...over,
  };
}

describe('SqliteStore', () => {
  let dir: string;
  let file: string;
  let store: SqliteStore;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'shardhub-store-'));
    file = join(dir, 'nested', 'hub.db');
    store = SqliteStore.open(file);
  });
  afterEach(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a job is created open, takes items with continuing seq, and seals to queued', () => {
    const job = store.createJob(newJob('j1', { requirements: { backend: 'cpu' }, options: { steal: true } }));
    assert.equal(job.state, 'open');
    assert.deepEqual(job.requirements, { backend: 'cpu' });
    assert.deepEqual(job.options, { steal: true });
    assert.equal(job.deadline, null);
    assert.equal(job.startedAt, null);
    assert.equal(job.itemCount, 0);

    const first = store.appendItems('j1', items(3, 'a'));
    const second = store.appendItems('j1', items(2, 'b'));
    assert.equal(first.length, 3);
    assert.equal(second.length, 2);
    assert.deepEqual(
      [...first, ...second].map((id) => store.getItem(id)?.seq),
      [0, 1, 2, 3, 4],
    );
    assert.deepEqual(store.getItem(second[1]), {
      id: second[1],
      jobId: 'j1',
      seq: 4,
      name: 'b-1',
      state: 'pending',
      attempts: 0,
    });
    assert.equal(store.getJob('j1')?.itemCount, 5);

    store.updateJob('j1', { state: 'queued', priority: 3 });
    const sealed = store.getJob('j1');
    assert.equal(sealed?.state, 'queued');
    assert.equal(sealed?.priority, 3);
    assert.throws(() => store.appendItems('j1', items(1)), /job j1 is queued/);
  });

  test('appending to a missing job throws and stores nothing', () => {
    assert.throws(() => store.appendItems('nope', items(2)), /job nope does not exist/);
    assert.equal(store.getItem(1), undefined);
  });

  test('creating a job twice throws a clear error', () => {
    store.createJob(newJob('j1'));
    assert.throws(() => store.createJob(newJob('j1')), /job j1 already exists/);
  });

  test('updateJob changes only the fields in the patch and can set nullable fields to null', () => {
    store.createJob(newJob('j1', { deadline: 5000, state: 'queued' }));
    store.updateJob('j1', { state: 'running', startedAt: 10 });
    store.updateJob('j1', { deadline: null });
    const job = store.getJob('j1');
    assert.equal(job?.state, 'running');
    assert.equal(job?.startedAt, 10);
    assert.equal(job?.deadline, null);
    assert.equal(job?.finishedAt, null);
    assert.equal(job?.priority, 0);
    assert.throws(() => store.updateJob('ghost', { state: 'cancelled' }), /job ghost/);
  });

  test('listJobs filters by state and returns newest first up to the limit', () => {
    store.createJob(newJob('a'));
    store.createJob(newJob('b', { state: 'queued' }));
    store.createJob(newJob('c'));
    store.updateJob('b', { state: 'running' });
    assert.deepEqual(
      store.listJobs().map((j) => j.id),
      ['c', 'b', 'a'],
    );
    assert.deepEqual(
      store.listJobs({ states: ['open'] }).map((j) => j.id),
      ['c', 'a'],
    );
    assert.deepEqual(
      store.listJobs({ states: ['running', 'open'], limit: 2 }).map((j) => j.id),
      ['c', 'b'],
    );
    assert.deepEqual(store.listJobs({ states: [] }), []);
  });

  test('itemInputs returns the stored bytes and leaves missing ids out', () => {
    store.createJob(newJob('j1'));
    const backing = new Uint8Array([9, 9, 1, 2, 3, 9]);
    const [id] = store.appendItems('j1', [{ name: 'x', inputs: backing.subarray(2, 5) }]);
    const inputs = store.itemInputs([id, 9999]);
    assert.equal(inputs.size, 1);
    assert.deepEqual([...inputs.get(id)!], [1, 2, 3]);
    assert.equal(store.itemInputs([]).size, 0);
  });

  test('itemInputsUpTo gives every size, and the bytes only of inputs up to the limit', () => {
    store.createJob(newJob('j1'));
    // Five consecutive ids (read as a range) and one loose id.
    const sizes = [3, 10, 4, 11, 2];
    const ids = store.appendItems(
      'j1',
      sizes.map((n, i) => ({ name: `i${i}`, inputs: new Uint8Array(n).fill(i + 1) })),
    );
    const got = store.itemInputsUpTo([...ids, 9999], 4);
    assert.equal(got.size, 5);
    ids.forEach((id, i) => {
      const r = got.get(id)!;
      assert.equal(r.bytes, sizes[i]);
      if ((sizes[i] as number) <= 4) assert.deepEqual([...r.pack!], new Array(sizes[i]).fill(i + 1));
      else assert.equal(r.pack, null);
    });
    const loose = store.itemInputsUpTo([ids[3] as number], 100).get(ids[3] as number)!;
    assert.deepEqual([loose.bytes, loose.pack?.byteLength], [11, 11]);
  });

  test('a result is accepted once: a repeat for the same item is dropped and the stored one kept', () => {
    store.createJob(newJob('j1'));
    const [a, b] = store.appendItems('j1', items(2));
    store.recordAssignments([
      { itemId: a, workerId: 'w1', shardId: 's1', at: 1 },
      { itemId: a, workerId: 'w2', shardId: 's2', at: 2 },
    ]);

    assert.deepEqual(store.recordResults([result(a, 'j1')]), { accepted: [a], dropped: [] });
    const again = store.recordResults([
      result(a, 'j1', { workerId: 'w2', outputs: new Uint8Array([99]) }),
      result(b, 'j1'),
    ]);
    assert.deepEqual(again, { accepted: [b], dropped: [a] });

    const stored = store.getResult(a);
    assert.equal(stored?.workerId, 'w1');
    assert.equal(stored?.name, 'item-0');
    assert.equal(stored?.ms, 12.5);
    assert.deepEqual([...stored!.outputs], [a & 0xff, 7]);
    assert.equal(store.getItem(a)?.state, 'done');
    assert.equal(store.getJob('j1')?.doneCount, 2);
  });

  test('duplicates inside one batch are accepted once', () => {
    store.createJob(newJob('j1'));
    const [a] = store.appendItems('j1', items(1));
    assert.deepEqual(store.recordResults([result(a, 'j1'), result(a, 'j1', { workerId: 'w2' })]), {
      accepted: [a],
      dropped: [a],
    });
    assert.equal(store.getJob('j1')?.doneCount, 1);
  });

  test('a result naming the wrong job or a missing item is dropped without touching either job', () => {
    store.createJob(newJob('j1'));
    store.createJob(newJob('j2'));
    const [a] = store.appendItems('j1', items(1));
    assert.deepEqual(store.recordResults([result(a, 'j2'), result(424242, 'j1')]), {
      accepted: [],
      dropped: [a, 424242],
    });
    assert.equal(store.getItem(a)?.state, 'pending');
    assert.equal(store.getResult(a), undefined);
    assert.equal(store.getJob('j1')?.doneCount, 0);
    assert.equal(store.getJob('j2')?.doneCount, 0);
  });

  test('non-final failures count attempts and keep the item pending; a final one fails it once', () => {
    store.createJob(newJob('j1'));
    const [a, b] = store.appendItems('j1', items(2));
    store.recordFailures([failure(a, 'j1', false), failure(a, 'j1', false)]);
    assert.equal(store.getItem(a)?.state, 'pending');
    assert.equal(store.getItem(a)?.attempts, 2);
    assert.equal(store.getJob('j1')?.failedCount, 0);

    store.recordFailures([failure(a, 'j1', true)]);
    assert.equal(store.getItem(a)?.state, 'failed');
    assert.equal(store.getItem(a)?.attempts, 3);
    assert.equal(store.getJob('j1')?.failedCount, 1);

    // A late final failure for an item already failed, and one for an item already done, count
    // the attempt but neither changes state nor bumps the failed counter.
    store.recordResults([result(b, 'j1')]);
    store.recordFailures([failure(a, 'j1', true), failure(b, 'j1', true)]);
    assert.equal(store.getItem(a)?.attempts, 4);
    assert.equal(store.getItem(b)?.state, 'done');
    assert.equal(store.getItem(b)?.attempts, 1);
    assert.equal(store.getJob('j1')?.failedCount, 1);
    assert.equal(store.getJob('j1')?.doneCount, 1);

    // A result for a failed item is dropped.
    assert.deepEqual(store.recordResults([result(a, 'j1')]).dropped, [a]);

    const f = store.failuresOf('j1');
    assert.equal(f.length, 5);
    assert.deepEqual(f[0], { itemId: a, workerId: 'w1', category: 'timeout', message: 'too slow', at: 2000 });
  });

  test('failures naming the wrong job are ignored', () => {
    store.createJob(newJob('j1'));
    store.createJob(newJob('j2'));
    const [a] = store.appendItems('j1', items(1));
    store.recordFailures([failure(a, 'j2', true)]);
    assert.equal(store.getItem(a)?.attempts, 0);
    assert.equal(store.getItem(a)?.state, 'pending');
    assert.deepEqual(store.failuresOf('j2'), []);
    assert.equal(store.getJob('j2')?.failedCount, 0);
  });

  test('pendingItemRuns gives the pending ids as runs of consecutive ids, uploads of other jobs between', () => {
    store.createJob(newJob('j1'));
    store.createJob(newJob('other'));
    const a = store.appendItems('j1', items(5));
    store.appendItems('other', items(2));
    const b = store.appendItems('j1', items(3, 'more'));
    store.recordResults([result(a[2], 'j1')]);
    const runs = store.pendingItemRuns('j1');
    assert.deepEqual(runs, [
      { first: a[0], last: a[1] },
      { first: a[3], last: a[4] },
      { first: b[0], last: b[2] },
    ]);
    assert.deepEqual(store.pendingItemRuns('j1', { first: a[4], last: b[1] }), [
      { first: a[4], last: a[4] },
      { first: b[0], last: b[1] },
    ]);
  });

  test('pendingItemRuns list what is still pending in seq order after a mix of outcomes', () => {
    store.createJob(newJob('j1'));
    store.createJob(newJob('other'));
    const ids = store.appendItems('j1', items(6));
    store.appendItems('other', items(3));
    store.recordResults([result(ids[1], 'j1'), result(ids[4], 'j1')]);
    store.recordFailures([failure(ids[2], 'j1', true), failure(ids[3], 'j1', false)]);
    assert.deepEqual(pendingIds(store, 'j1'), [ids[0], ids[3], ids[5]]);
    assert.deepEqual(store.pendingItemRuns('j1'), [
      { first: ids[0], last: ids[0] },
      { first: ids[3], last: ids[3] },
      { first: ids[5], last: ids[5] },
    ]);

    assert.deepEqual(
      store.listItems('j1', { offset: 0, limit: 10, state: 'done' }).map((i) => i.id),
      [ids[1], ids[4]],
    );
    assert.deepEqual(
      store.listItems('j1', { offset: 2, limit: 2 }).map((i) => i.seq),
      [2, 3],
    );
  });

  test('iterateResults streams every result of a job in item order across pages', () => {
    store.createJob(newJob('j1'));
    store.createJob(newJob('j2'));
    const n = 700;
    const ids = store.appendItems('j1', items(n));
    const otherIds = store.appendItems('j2', items(5));
    // Record out of order and in several batches; the other job's results must not leak in.
    const shuffled = [...ids].reverse();
    for (let i = 0; i < n; i += 250)
      store.recordResults(shuffled.slice(i, i + 250).map((id) => result(id, 'j1')));
    store.recordResults(otherIds.map((id) => result(id, 'j2')));

    const seen = [...store.iterateResults('j1')];
    assert.equal(seen.length, n);
    assert.deepEqual(
      seen.map((r) => r.itemId),
      ids,
    );
    assert.equal(seen[650].name, 'item-650');
    assert.deepEqual([...seen[650].outputs], [ids[650] & 0xff, 7]);
    assert.deepEqual([...store.iterateResults('empty')], []);
  });

  test('everything committed survives close and reopen of the same file', () => {
    store.createJob(newJob('j1'));
    const [a, b] = store.appendItems('j1', items(2));
    store.recordResults([result(a, 'j1')]);
    store.recordFailures([failure(b, 'j1', false)]);
    store.upsertWorker(worker('w1'));
    store.addEvent('j1', 'steal', { from: 'w1' }, 5);
    store.close();
    store.close(); // idempotent

    store = SqliteStore.open(file);
    assert.equal(store.getJob('j1')?.doneCount, 1);
    assert.equal(store.getResult(a)?.workerId, 'w1');
    assert.deepEqual(pendingIds(store, 'j1'), [b]);
    assert.equal(store.getItem(b)?.attempts, 1);
    assert.equal(store.failuresOf('j1').length, 1);
    assert.equal(store.getWorker('w1')?.name, 'node w1');
    assert.equal(store.listEvents('j1').length, 1);
    assert.deepEqual(
      store.appendItems('j1', items(1)).map((id) => store.getItem(id)?.seq),
      [2],
    );
  });

  test('workers upsert, keep firstSeen and itemsDone across upserts, and count items done', () => {
    store.upsertWorker(worker('w2', { pool: 'lab', capabilities: { cores: 2 } }));
    store.upsertWorker(worker('w1'));
    assert.deepEqual(store.getWorker('w2'), worker('w2', { pool: 'lab', capabilities: { cores: 2 } }));
    assert.equal(store.getWorker('nobody'), undefined);

    store.addWorkerItems('w1', 5, 200);
    store.addWorkerItems('w1', 3, 300);
    store.addWorkerItems('nobody', 3, 300); // no row, no error
    store.upsertWorker(worker('w1', { name: 'renamed', firstSeen: 999, lastSeen: 400, itemsDone: 0 }));
    const w1 = store.getWorker('w1');
    assert.equal(w1?.name, 'renamed');
    assert.equal(w1?.lastSeen, 400);
    assert.equal(w1?.firstSeen, 100);
    assert.equal(w1?.itemsDone, 8);

    assert.deepEqual(
      store.listWorkers().map((w) => w.id),
      ['w1', 'w2'],
    );
    assert.equal(store.listWorkers()[0].pool, null);
  });

  test('events list newest first per job, filter by type and honour the limit', () => {
    store.addEvent('j1', 'steal', { n: 1 }, 10);
    store.addEvent('j1', 'speculate', { n: 2 }, 20);
    store.addEvent('j2', 'steal', { n: 3 }, 25);
    store.addEvent('j1', 'steal', { n: 4 }, 30);

    const all = store.listEvents('j1');
    assert.deepEqual(
      all.map((e) => e.data.n),
      [4, 2, 1],
    );
    assert.equal(all[0].jobId, 'j1');
    assert.equal(all[0].type, 'steal');
    assert.equal(all[0].at, 30);
    assert.deepEqual(
      store.listEvents('j1', { type: 'steal' }).map((e) => e.data.n),
      [4, 1],
    );
    assert.deepEqual(
      store.listEvents('j1', { limit: 1 }).map((e) => e.data.n),
      [4],
    );
    assert.deepEqual(store.listEvents('none'), []);
  });
});
