/**
 * One conformance suite for every `AsyncStore`: the SQLite store on a temporary file and the
 * PostgreSQL store on a real server (`SHARDHUB_TEST_PG_URL`, or one started here by
 * `test/helpers/postgres.ts`). Each test gets a fresh space (a new file; a new schema) that several
 * clients can open at once, which is how the races run: two writers recording results for the same
 * items, appending while claiming, two hubs claiming, and a lapsed hub reaped and fenced.
 */
import { after, before, describe, test } from 'node:test';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FencedError } from '../../server/store/async-store.ts';
import type { AsyncStore, Chunk, Lease, NewJob, NewResult } from '../../server/store/async-store.ts';
import pg from 'pg';
import { LeaseKeeper } from '../../server/store/lease-keeper.ts';
import { PgStore } from '../../server/store/pg-store.ts';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { postgresBin, startPostgres } from '../helpers/postgres.ts';
import type { TestPostgres } from '../helpers/postgres.ts';
import type { WriterTask } from '../helpers/results-writer.ts';
import { items, newJob } from '../helpers/store-rows.ts';
import { TrustCache } from '../../server/hub/trust-cache.ts';

/** A fresh store's data, which any number of clients can open. */
interface Space {
  open(opts?: { chunkItems?: number }): Promise<AsyncStore>;
  /** Where it is, for a child process to open it. */
  where: Pick<WriterTask, 'kind' | 'where' | 'schema'>;
}

interface Target {
  name: string;
  skip: string | false;
  setUp(): Promise<void>;
  tearDown(): Promise<void>;
  space(): Space;
}

const sqliteTarget = (): Target => {
  let dir = '';
  let n = 0;
  return {
    name: 'sqlite',
    skip: false,
    async setUp() {
      dir = mkdtempSync(join(tmpdir(), 'shardhub-conf-'));
    },
    async tearDown() {
      rmSync(dir, { recursive: true, force: true });
    },
    space() {
      const file = join(dir, `s${n++}.sqlite`);
      return { open: (o) => SqliteAsyncStore.open(file, o), where: { kind: 'sqlite', where: file } };
    },
  };
};

const postgresTarget = (): Target => {
  let server: TestPostgres | undefined;
  let n = 0;
  const run = `t${process.pid}_${Date.now() % 100000}`;
  return {
    name: 'postgres',
    skip:
      !process.env.SHARDHUB_TEST_PG_URL && !postgresBin()
        ? 'PostgreSQL binaries not found: install Debian `postgresql` or set SHARDHUB_TEST_PG_URL'
        : false,
    async setUp() {
      const started = await startPostgres();
      if ('skip' in started) throw new Error(started.skip);
      server = started;
    },
    async tearDown() {
      if (process.env.SHARDHUB_TEST_PG_URL && server) {
        // Someone else's server: leave it as it was.
        const c = new pg.Client({ connectionString: server.url });
        await c.connect();
        try {
          for (let i = 0; i < n; i++) await c.query(`DROP SCHEMA IF EXISTS ${run}_${i} CASCADE`);
        } finally {
          await c.end();
        }
      }
      await server?.stop();
    },
    space() {
      const schema = `${run}_${n++}`;
      return {
        open: (o) => PgStore.open(server!.url, { schema, ...o }),
        where: { kind: 'postgres', where: server!.url, schema },
      };
    },
  };
};

function result(itemId: number, jobId: string, workerId = 'w1'): NewResult {
  return {
    itemId,
    jobId,
    workerId,
    modelSha256: 'ab'.repeat(32),
    ms: 1.5,
    outputs: new Uint8Array([itemId & 0xff, workerId.length]),
    at: 1000,
  };
}

/** A sealed job of `n` items; returns their ids. */
async function sealedJob(
  s: AsyncStore,
  id: string,
  n: number,
  over: Partial<NewJob> = {},
): Promise<number[]> {
  await s.createJob(newJob(id, over));
  const ids = await s.appendItems(id, items(n));
  await s.updateJob(id, { state: 'queued' });
  return ids;
}

/** Every id of these chunks, asserting none appears twice. */
function idsOf(chunks: readonly Chunk[]): number[] {
  const seen = new Set<number>();
  for (const c of chunks) {
    for (let id = c.first; id <= c.last; id++) {
      assert.ok(!seen.has(id), `item ${id} is in two chunks`);
      seen.add(id);
    }
  }
  return [...seen].sort((a, b) => a - b);
}

/** `p`, or a rejection after `ms` (a timer that keeps the process alive while the keeper's do not). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A `results-writer.ts` process given `task`, registered; `go()` starts it, `done` is what it accepted. */
async function writer(task: WriterTask): Promise<{ go: () => void; done: Promise<number[]> }> {
  const child = fork(fileURLToPath(new URL('../helpers/results-writer.ts', import.meta.url)), [], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let ready!: () => void;
  let fail!: (e: Error) => void;
  let finish!: (ids: number[]) => void;
  const registered = new Promise<void>((res, rej) => {
    ready = res;
    fail = rej;
  });
  const done = new Promise<number[]>((res, rej) => {
    finish = res;
    const prev = fail;
    fail = (e) => {
      prev(e);
      rej(e);
    };
  });
  done.catch(() => {});
  child.on('message', (m: { type: string; accepted?: number[]; message?: string }) => {
    if (m.type === 'ready') ready();
    else if (m.type === 'done') finish(m.accepted!);
    else fail(new Error(`writer ${task.hubId}: ${m.message}`));
  });
  child.once('exit', (code) => fail(new Error(`writer ${task.hubId} exited with ${code}`)));
  child.send(task);
  await registered;
  return { go: () => child.send('go'), done };
}

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function conformance(target: Target): void {
  describe(`AsyncStore conformance: ${target.name}`, { skip: target.skip }, () => {
    const open: AsyncStore[] = [];
    /** A new space, and `k` clients on it. */
    const clients = async (k: number, opts?: { chunkItems?: number }): Promise<AsyncStore[]> => {
      const space = target.space();
      const out: AsyncStore[] = [];
      for (let i = 0; i < k; i++) out.push(await space.open(opts));
      open.push(...out);
      return out;
    };
    const one = async (opts?: { chunkItems?: number }) => (await clients(1, opts))[0];

    before(async () => {
      const t0 = performance.now();
      await target.setUp();
      process.stdout.write(`# ${target.name}: set up in ${Math.round(performance.now() - t0)} ms\n`);
    });
    after(async () => {
      await Promise.all(open.map((s) => s.close()));
      await target.tearDown();
    });

    test('jobs: created, read back, listed newest first, updated; a duplicate id is refused', async () => {
      const s = await one();
      const j = await s.createJob(
        newJob('a', { priority: 3, requirements: { kind: 'native' }, options: { x: 1 } }),
      );
      assert.equal(j.state, 'open');
      assert.deepEqual(j.requirements, { kind: 'native' });
      assert.deepEqual(j.options, { x: 1 });
      assert.equal(j.itemCount, 0);
      await s.createJob(newJob('b', { state: 'queued' }));
      await assert.rejects(s.createJob(newJob('a')), /job a already exists/);
      assert.deepEqual(
        (await s.listJobs()).map((x) => x.id),
        ['b', 'a'],
      );
      assert.deepEqual(
        (await s.listJobs({ states: ['queued'] })).map((x) => x.id),
        ['b'],
      );
      assert.deepEqual(
        (await s.listJobs({ limit: 1 })).map((x) => x.id),
        ['b'],
      );
      await s.updateJob('b', { state: 'running', startedAt: 5, priority: 9 });
      const b = (await s.getJob('b'))!;
      assert.equal(b.state, 'running');
      assert.equal(b.startedAt, 5);
      assert.equal(b.priority, 9);
      assert.equal(b.finishedAt, null);
      // The running mark is written behind: arriving after the job's end, it changes no state.
      await s.updateJob('b', { state: 'completed', finishedAt: 7 });
      await s.updateJob('b', { state: 'running', startedAt: 8 });
      assert.equal((await s.getJob('b'))!.state, 'completed');
      await s.updateJob('a', { state: 'running' });
      assert.equal((await s.getJob('a'))!.state, 'open', 'only a queued job starts running');
      await assert.rejects(s.updateJob('nope', { state: 'running' }), /does not exist/);
      assert.equal(await s.getJob('nope'), undefined);
    });

    test('append: consecutive ids in seq order, inputs read back, cut into chunks; only to an open job', async () => {
      const s = await one({ chunkItems: 4 });
      await s.createJob(newJob('j'));
      const ids = await s.appendItems('j', items(10));
      assert.equal(ids.length, 10);
      ids.forEach((id, i) => assert.equal(id, ids[0] + i));
      const more = await s.appendItems('j', items(3, 'more'));
      assert.equal(more[0], ids[9] + 1);
      assert.deepEqual(
        (await s.listChunks('j')).map((c) => [c.first - ids[0], c.last - ids[0], c.hubId]),
        [
          [0, 3, null],
          [4, 7, null],
          [8, 11, null], // the short tail chunk grew to its full size
          [12, 12, null],
        ],
      );
      assert.equal((await s.getJob('j'))!.itemCount, 13);
      const item = (await s.getItem(ids[2]))!;
      assert.deepEqual(item, {
        id: ids[2],
        jobId: 'j',
        seq: 2,
        name: 'item-2',
        state: 'pending',
        attempts: 0,
      });
      assert.deepEqual(
        (await s.listItems('j', { offset: 9, limit: 2 })).map((x) => x.name),
        ['item-9', 'more-0'],
      );
      const inputs = await s.itemInputs([ids[1], ids[3], 999_999]);
      assert.deepEqual([...inputs.keys()].sort(), [ids[1], ids[3]].sort());
      assert.deepEqual([...inputs.get(ids[3])!], [3, 1, 2]);
      const sized = await s.itemInputsUpTo([ids[0]], 2);
      assert.deepEqual(sized.get(ids[0]), { bytes: 3, pack: null });
      assert.deepEqual([...(await s.itemInputsUpTo([ids[0]], 3)).get(ids[0])!.pack!], [0, 1, 2]);
      assert.deepEqual(await s.pendingItemRuns('j'), [{ first: ids[0], last: more[2] }]);
      await s.updateJob('j', { state: 'queued' });
      await assert.rejects(s.appendItems('j', items(1)), /job j is queued; items go only to an open job/);
      await assert.rejects(s.appendItems('nope', items(1)), /job nope does not exist/);
    });

    test('results: the first result of a pending item is stored, every later one dropped; counts and paging', async () => {
      const s = await one();
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(s, 'j', 600);
      const first = await s.recordResults(lease, [
        result(ids[0], 'j'),
        result(ids[1], 'j'),
        result(ids[0], 'j', 'w2'),
        result(ids[2], 'other-job'),
      ]);
      assert.deepEqual(first.accepted, [ids[0], ids[1]]);
      assert.deepEqual(first.dropped, [ids[0], ids[2]]);
      const again = await s.recordResults(lease, [result(ids[1], 'j', 'w3'), result(ids[3], 'j', 'w3')]);
      assert.deepEqual(again, { accepted: [ids[3]], dropped: [ids[1]] });
      assert.equal((await s.getResult(ids[1]))!.workerId, 'w1');
      assert.deepEqual(await s.pendingItemRuns('j', { first: ids[0], last: ids[9] }), [
        { first: ids[2], last: ids[2] },
        { first: ids[4], last: ids[9] },
      ]);
      await s.recordResults(
        lease,
        ids.slice(4).map((id) => result(id, 'j')),
      );
      const job = (await s.getJob('j'))!;
      assert.equal(job.doneCount, 599);
      const all = await collect(s.iterateResults('j'));
      assert.equal(all.length, 599);
      assert.deepEqual(
        all.map((r) => r.itemId),
        ids.filter((id) => id !== ids[2]),
      );
      assert.equal(all[0].name, 'item-0');
      assert.deepEqual([...all[5].outputs], [(ids[6] & 0xff) >>> 0, 2]);
      await s.recordAssignments(lease, [{ itemId: ids[2], workerId: 'w1', shardId: 's1', at: 1 }]);
    });

    test('results: a batch larger than one statement is stored whole, a repeat across its slices dropped', async () => {
      const s = await one();
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(s, 'big', 4200);
      const rows = [...ids.map((id) => result(id, 'big')), result(ids[0], 'big', 'again')];
      const { accepted, dropped } = await s.recordResults(lease, rows);
      assert.deepEqual(accepted, ids);
      assert.deepEqual(dropped, [ids[0]]);
      assert.equal((await s.getJob('big'))!.doneCount, 4200);
      assert.equal((await s.getResult(ids[0]))!.workerId, 'w1');
      assert.deepEqual([...(await s.getResult(ids[4199]))!.outputs], [ids[4199] & 0xff, 2]);
    });

    test('failures: each counts an attempt; a final one fails a pending item; unknown items are ignored', async () => {
      const s = await one();
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(s, 'j', 3);
      const f = (itemId: number, final: boolean, jobId = 'j') => ({
        itemId,
        jobId,
        workerId: 'w1',
        category: 'timeout' as const,
        message: 'slow',
        at: 7,
        final,
      });
      await s.recordFailures(lease, [
        f(ids[0], false),
        f(ids[0], false),
        f(ids[1], true),
        f(ids[2], true, 'zz'),
      ]);
      await s.recordResults(lease, [result(ids[2], 'j')]);
      await s.recordFailures(lease, [f(ids[2], true)]); // done already: counted, not failed
      assert.deepEqual(
        [(await s.getItem(ids[0]))!, (await s.getItem(ids[1]))!, (await s.getItem(ids[2]))!].map((i) => [
          i.state,
          i.attempts,
        ]),
        [
          ['pending', 2],
          ['failed', 1],
          ['done', 1],
        ],
      );
      const job = (await s.getJob('j'))!;
      assert.equal(job.failedCount, 1);
      assert.equal(job.doneCount, 1);
      assert.deepEqual(
        (await s.failuresOf('j')).map((x) => x.itemId),
        [ids[0], ids[0], ids[1], ids[2]],
      );
    });

    test('workers, events, settings, models by sha256 and tokens are shared through the store', async () => {
      const [a, b] = await clients(2);
      const w = {
        id: 'w1',
        secretHash: 'h',
        kind: 'native' as const,
        backend: 'cpu',
        name: 'n',
        pool: null,
        concurrency: 2,
        capabilities: { cores: 4 },
        firstSeen: 1,
        lastSeen: 1,
        itemsDone: 0,
      };
      await a.upsertWorker(w);
      await a.addWorkerItems('w1', 5, 9);
      await a.upsertWorker({ ...w, firstSeen: 100, lastSeen: 50, itemsDone: 0, backend: 'cuda' });
      const got = (await b.getWorker('w1'))!;
      assert.deepEqual([got.firstSeen, got.itemsDone, got.lastSeen, got.backend], [1, 5, 50, 'cuda']);
      assert.deepEqual(got.capabilities, { cores: 4 });
      assert.equal((await b.listWorkers()).length, 1);

      await a.addEvent('j', 'steal', { n: 1 }, 1);
      await a.addEvent('j', 'speculate', { n: 2 }, 2);
      await a.addEvent('j', 'steal', { n: 3 }, 3);
      assert.deepEqual(
        (await b.listEvents('j')).map((e) => e.data.n),
        [3, 2, 1],
      );
      assert.deepEqual(
        (await b.listEvents('j', { type: 'steal', limit: 1 })).map((e) => e.data),
        [{ n: 3 }],
      );

      await a.setSetting('k', 'v1');
      await a.setSetting('k', 'v2');
      assert.equal(await b.getSetting('k'), 'v2');
      assert.equal(await b.getSetting('none'), undefined);

      const bytes = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
      const sha = createHash('sha256').update(bytes).digest('hex');
      await a.putModel('mlp', sha, bytes, '{"name":"mlp"}');
      await a.putModel('mlp', sha, bytes);
      await assert.rejects(a.putModel('bad', 'ab'.repeat(32), bytes), /bytes hash to/);
      assert.deepEqual(Buffer.compare(Buffer.from((await b.getModel(sha))!), Buffer.from(bytes)), 0);
      assert.deepEqual(await b.listModels(), [
        { sha256: sha, name: 'mlp', size: 200_000, manifest: '{"name":"mlp"}' },
      ]);
      assert.equal(await b.getModel('cd'.repeat(32)), undefined);
      const row = { sha256: sha, name: 'mlp', size: 200_000, manifest: '{"name":"mlp"}' };
      assert.deepEqual(await b.findModel(sha), row, 'by sha256');
      assert.deepEqual(await b.findModel('mlp'), row, 'by name');
      assert.equal(await b.findModel('cd'.repeat(32)), undefined);
      assert.equal(await b.findModel('nope'), undefined);

      const t1 = await a.initTokens({ operatorToken: 'op-1', joinToken: 'join-1' });
      const t2 = await b.initTokens({ operatorToken: 'op-2', joinToken: 'join-2' });
      assert.deepEqual(t1, { operatorToken: 'op-1', joinToken: 'join-1' });
      assert.deepEqual(t2, t1, 'the first hub to start sets the tokens every hub uses');
    });

    test('trust: canaries, replicas, verification and quarantines are seen by every client; revert reopens', async () => {
      const [a, b] = await clients(2);
      const lease = await a.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(a, 'j', 4);
      await a.addCanaries('j', [{ itemId: ids[0], outputs: new Uint8Array([9]) }]);
      assert.deepEqual(await b.canaryIds('j'), [ids[0]]);
      assert.deepEqual([...(await b.canaryAnswer(ids[0]))!], [9]);
      assert.equal(await b.canaryAnswer(ids[1]), undefined);
      const replica = (itemId: number, workerId: string, backend: string, at: number, out = 1) => ({
        itemId,
        workerId,
        backend,
        outputs: new Uint8Array([out]),
        ms: 1,
        at,
      });
      // One write of several rows; a later row for the same item and worker replaces the earlier.
      await a.addReplicas([
        replica(ids[1], 'w1', 'cpu', 1, 7),
        replica(ids[1], 'w2', 'cuda', 2),
        replica(ids[2], 'w1', 'cpu', 3),
        replica(ids[1], 'w1', 'cpu', 1),
      ]);
      const rs = await b.replicasOf(ids[1]);
      assert.deepEqual(
        (await b.allReplicas()).filter((r) => r.itemId === ids[1]),
        rs,
        'every replica, read at once, as replicasOf reads them',
      );
      // A hub starting on this store has them at hand, by item; with several hubs, none: they come
      // with the chunks it takes (`replicasIn`).
      const cache = await TrustCache.load(b, { later: () => undefined, laterRows: () => undefined });
      assert.deepEqual(cache.replicasOf(ids[1]), b.severalHubs ? [] : rs);
      assert.deepEqual(
        rs.map((r) => [r.workerId, [...r.outputs]]),
        [
          ['w1', [1]],
          ['w2', [1]],
        ],
      );
      assert.deepEqual(await b.replicaItemIds(), [ids[1], ids[2]]);
      // A chunk's range: the replicas of its items only, as replicasOf reads them, item by item.
      assert.deepEqual(await b.replicasIn({ first: ids[1], last: ids[1] }), rs);
      assert.deepEqual(
        (await b.replicasIn({ first: ids[0], last: ids[3] })).map((r) => [r.itemId, r.workerId]),
        [
          [ids[1], 'w1'],
          [ids[1], 'w2'],
          [ids[2], 'w1'],
        ],
      );
      assert.deepEqual(await b.replicasIn({ first: ids[3], last: ids[3] + 10 }), []);
      await b.dropReplicas([ids[1], ids[2]]);
      assert.deepEqual(await a.replicaItemIds(), []);

      await a.recordResults(lease, [
        result(ids[0], 'j', 'liar'),
        result(ids[1], 'j', 'liar'),
        result(ids[2], 'j'),
        result(ids[3], 'j', 'liar'),
      ]);
      await a.markVerified([ids[0]], 'canary');
      // Two unproven workers that agreed: taken back like an unconfirmed result.
      await a.markVerified([ids[3]], 'quorum-2-unproven');
      assert.equal(await b.isVerified(ids[0]), true);
      assert.equal(await b.isVerified(ids[1]), false);
      await a.putTrust({
        workerId: 'liar',
        validated: 1,
        streak: 0,
        strikes: 2,
        quarantined: true,
        reason: 'canary',
        at: 5,
      });
      assert.deepEqual(await b.trustOf('liar'), {
        workerId: 'liar',
        validated: 1,
        streak: 0,
        strikes: 2,
        quarantined: true,
        reason: 'canary',
        at: 5,
      });
      assert.equal((await b.allTrust()).length, 1);
      const stale = await b.registerHub('other', { url: 'http://o', ttlMs: 60_000 });
      await b.registerHub('other', { url: 'http://o', ttlMs: 60_000 }); // replaces `stale`
      await assert.rejects(b.revertUnverified(stale, 'liar'), FencedError);
      const reverted = await b.revertUnverified(lease, 'liar');
      assert.deepEqual([...reverted], [['j', [ids[1], ids[3]]]]);
      assert.equal((await a.getItem(ids[1]))!.state, 'pending');
      assert.equal(await a.isVerified(ids[3]), false, 'its unproven quorum mark went with it');
      assert.equal(await a.getResult(ids[1]), undefined);
      assert.equal((await a.getJob('j'))!.doneCount, 2);
      assert.deepEqual((await a.recordResults(lease, [result(ids[1], 'j', 'honest')])).accepted, [ids[1]]);
    });

    test('chunks: a finished job keeps none; items a revert reopens get a chunk again, which any hub claims', async () => {
      const [a, b] = await clients(2);
      const lease = await a.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(a, 'j', 4);
      const [chunk] = await a.claimChunks(lease, { maxChunks: 1 });
      assert.ok(chunk);
      await a.advanceChunk(lease, chunk.id, chunk.last);
      await a.recordResults(
        lease,
        ids.map((id) => result(id, 'j', id === ids[2] ? 'liar' : 'honest')),
      );
      assert.equal(await a.finishChunk(lease, chunk.id), true);
      await sealedJob(a, 'k', 3);
      await a.updateJob('k', { state: 'cancelled', finishedAt: 1 });
      await a.updateJob('j', { state: 'completed', finishedAt: 1 });
      assert.deepEqual(await b.listChunks('k'), [], "a cancelled job's unclaimed chunks are gone");
      assert.deepEqual(await b.listChunks('j'), []);
      assert.deepEqual([...(await b.revertUnverified(lease, 'liar'))], [['j', [ids[2]]]]);
      assert.equal((await b.getJob('j'))!.state, 'running');
      const other = await b.registerHub('h2', { url: 'http://h2', ttlMs: 60_000 });
      const claimed = await b.claimChunks(other, { maxChunks: 4 });
      assert.deepEqual(
        claimed.map((c) => [c.jobId, c.first, c.last]),
        [['j', ids[2], ids[2]]],
        'the reopened item is in a chunk another hub claims',
      );
    });

    test('completeJob: only with full counts; racing a revert, a job is never left completed with pending items, and reopened items keep a chunk', async () => {
      const [a, b] = await clients(2);
      const lease = await a.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const ids = await sealedJob(a, 'short', 2);
      await a.recordResults(lease, [result(ids[0], 'short')]);
      assert.equal(await a.completeJob('short', 5), false, 'an item is still pending');
      assert.equal((await a.getJob('short'))!.state, 'queued');
      await a.recordFailures(lease, [
        {
          itemId: ids[1],
          jobId: 'short',
          workerId: 'w1',
          category: 'timeout',
          message: 'slow',
          at: 1,
          final: true,
        },
      ]);
      assert.equal(await a.completeJob('short', 5), true);
      const done = (await a.getJob('short'))!;
      assert.deepEqual([done.state, done.finishedAt], ['completed', 5]);
      assert.deepEqual(await a.listChunks('short'), [], "a completed job's chunks are gone");
      assert.equal(await a.completeJob('short', 6), false, 'already completed');
      assert.equal(await a.completeJob('nope', 6), false);

      // One hub completes a job whose counts are full while another takes back a quarantined
      // worker's results in it: whichever lands first, the job ends unfinished with the reopened
      // items pending, each in a chunk a hub can claim.
      for (let round = 0; round < 30; round++) {
        const job = `race${round}`;
        const liar = `liar${round}`;
        const jobIds = await sealedJob(a, job, 8);
        await a.recordResults(
          lease,
          jobIds.map((id, k) => result(id, job, k % 2 ? liar : 'honest')),
        );
        const [, reverted] = await Promise.all([a.completeJob(job, 1), b.revertUnverified(lease, liar)]);
        const reopened = reverted.get(job) ?? [];
        assert.deepEqual(
          reopened,
          jobIds.filter((_, k) => k % 2),
          `round ${round}: the liar's results went`,
        );
        const row = (await a.getJob(job))!;
        // Running when the revert reopened the completed job; queued (as it was) when it came first.
        assert.notEqual(row.state, 'completed', `round ${round}: a job with pending items is not completed`);
        assert.equal(row.doneCount, 4);
        const chunks = await a.listChunks(job);
        for (const id of reopened)
          assert.ok(
            chunks.some((c) => c.first <= id && id <= c.last),
            `round ${round}: reopened item ${id} is in a chunk (${JSON.stringify(chunks)})`,
          );
      }
    });

    test(
      'finishChunk waits for a revert holding its chunk, and keeps the chunk for the item it reopened',
      { skip: target.name === 'postgres' ? false : 'row locks: one writer at a time on SQLite' },
      async () => {
        const space = target.space();
        const a = await space.open();
        open.push(a);
        const lease = await a.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
        const ids = await sealedJob(a, 'j', 4);
        const [chunk] = await a.claimChunks(lease, { maxChunks: 1 });
        await a.advanceChunk(lease, chunk.id, chunk.last);
        await a.recordResults(
          lease,
          ids.map((id) => result(id, 'j')),
        );
        // `revertUnverified`'s steps, held open: an item reopened, then the job's chunks locked to
        // see which reopened items they cover.
        const raw = new pg.Client({
          connectionString: space.where.where,
          options: `-c search_path=${space.where.schema}`,
        });
        await raw.connect();
        try {
          await raw.query('BEGIN');
          await raw.query(`UPDATE items SET state = 'pending' WHERE id = $1`, [ids[1]]);
          await raw.query('SELECT id FROM chunks WHERE job_id = $1 FOR UPDATE', ['j']);
          const finishing = a.finishChunk(lease, chunk.id);
          // Until the finish waits for the chunk's lock.
          const waiting = async () =>
            Number(
              (
                await raw.query(
                  `SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`,
                )
              ).rows[0].n,
            );
          for (let t = 0; (await waiting()) === 0; t++) {
            assert.ok(t < 500, 'the finish never waited for the lock');
            await sleep(10);
          }
          await raw.query('COMMIT');
          assert.equal(await finishing, false, 'an item of the chunk is pending again');
        } finally {
          await raw.end();
        }
        assert.deepEqual(
          (await a.listChunks('j')).map((c) => c.id),
          [chunk.id],
        );
      },
    );

    test('result cache: an item whose key has a stored result is answered at append with a copy of it; misses become entries', async () => {
      const [a, b] = await clients(2);
      const lease = await a.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const cache = (n: number, modelKey = 'm', extra: string[] = []) => ({
        modelKey,
        inputs: [...items(n).map((it) => sha(it.inputs)), ...extra],
      });
      await a.createJob(newJob('j1'));
      const first = await a.appendItemsCached('j1', items(4), { cache: cache(4) });
      assert.deepEqual(first.cached, [], 'nothing stored yet');
      assert.equal(await a.cacheEntries(), 4);
      await a.updateJob('j1', { state: 'queued' });
      await a.recordResults(lease, [result(first.ids[0], 'j1'), result(first.ids[1], 'j1', 'w22')]);
      await a.markVerified([first.ids[0]], 'canary');

      // Another client, another job, the same inputs and two more (one a repeat of the first).
      await b.createJob(newJob('j2'));
      const more = [...items(4), { name: 'new', inputs: new Uint8Array([7, 7]) }, items(1)[0]];
      const second = await b.appendItemsCached('j2', more, {
        cache: cache(4, 'm', [sha(new Uint8Array([7, 7])), sha(items(1)[0].inputs)]),
      });
      const [x0, x1, x2, , , x5] = second.ids;
      assert.deepEqual(second.cached, [x0, x1, x5], 'items whose source has a result, a repeat included');
      for (const [copy, src] of [
        [x0, first.ids[0]],
        [x1, first.ids[1]],
        [x5, first.ids[0]],
      ]) {
        assert.equal((await a.getItem(copy))!.state, 'done');
        const r = (await a.getResult(copy))!;
        const o = (await a.getResult(src))!;
        assert.deepEqual([...r.outputs], [...o.outputs], 'the stored result, copied');
        assert.equal(r.workerId, o.workerId, 'the worker that computed it');
        assert.equal(r.ms, 0);
      }
      assert.equal((await a.getItem(x2))!.state, 'pending');
      const j2 = (await a.getJob('j2'))!;
      assert.equal(j2.itemCount, 6);
      assert.equal(j2.doneCount, 3);
      assert.deepEqual(
        (await a.verificationOf('j2')).sort((p, q) => p.how.localeCompare(q.how)),
        [
          { how: 'cached', n: 2 },
          { how: 'cached:record', n: 1 },
        ],
      );
      assert.deepEqual(
        (await a.pendingItemRuns('j2')).flatMap((r) => [r.first, r.last]),
        [x2, second.ids[4]],
      );
      assert.equal(await a.cacheEntries(), 5, 'the new input made an entry; the repeats did not');

      // Another model key with the same inputs is not answered; a job appended `running` is.
      await a.createJob(newJob('j3'));
      assert.deepEqual((await a.appendItemsCached('j3', items(2), { cache: cache(2, 'other') })).cached, []);
      await a.updateJob('j3', { state: 'running' });
      const run = await a.appendItemsCached('j3', items(2), { running: true, cache: cache(2) });
      assert.deepEqual(run.cached, run.ids);
      await assert.rejects(
        a.appendItemsCached('j1', items(1), { cache: cache(1) }),
        /items go only to an open job/,
      );
      await assert.rejects(a.appendItemsCached('j3', items(2), { cache: cache(1) }), /1 cache keys for 2/);

      // Once the source of an entry whose item never got a result is computed elsewhere, it answers.
      await b.updateJob('j2', { state: 'queued' });
      await b.recordResults(lease, [result(x2, 'j2', 'w3')]);
      await a.createJob(newJob('j4'));
      const late = await a.appendItemsCached('j4', items(3), { cache: cache(3) });
      assert.deepEqual(late.cached, late.ids);
      assert.equal((await a.getResult(late.ids[2]))!.workerId, 'w3');
    });

    test('result cache: trimmed to a bound, least recently used first; an evicted key runs again', async () => {
      const s = await one();
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const keys = items(3).map((it) => sha(it.inputs));
      await s.createJob(newJob('j1'));
      const { ids } = await s.appendItemsCached('j1', items(3), { cache: { modelKey: 'm', inputs: keys } });
      await s.updateJob('j1', { state: 'queued' });
      await s.recordResults(
        lease,
        ids.map((id) => result(id, 'j1')),
      );
      await sleep(5);
      await s.createJob(newJob('j2'));
      const used = await s.appendItemsCached('j2', items(1), {
        cache: { modelKey: 'm', inputs: keys.slice(0, 1) },
      });
      assert.deepEqual(used.cached, used.ids);
      assert.equal(await s.trimCache(10), 0, 'under the bound: nothing goes');
      assert.equal(await s.trimCache(1), 2);
      assert.equal(await s.cacheEntries(), 1);
      await s.createJob(newJob('j3'));
      const again = await s.appendItemsCached('j3', items(3), { cache: { modelKey: 'm', inputs: keys } });
      assert.deepEqual(again.cached, [again.ids[0]], 'the entry used last stayed');
      assert.equal(await s.trimCache(0), 3);
      assert.equal(await s.cacheEntries(), 0);
    });

    test("result cache: a quarantine takes a worker's unconfirmed results out of it, and the copies made of them back", async () => {
      const s = await one();
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      const cache = { modelKey: 'm', inputs: items(3).map((it) => sha(it.inputs)) };
      await s.createJob(newJob('j1'));
      const src = (await s.appendItemsCached('j1', items(3), { cache })).ids;
      await s.updateJob('j1', { state: 'queued' });
      await s.recordResults(lease, [
        result(src[0], 'j1', 'liar'),
        result(src[1], 'j1', 'liar'),
        result(src[2], 'j1', 'honest'),
      ]);
      await s.markVerified([src[1]], 'quorum-2');
      await s.createJob(newJob('j2'));
      const copies = (await s.appendItemsCached('j2', items(3), { cache })).ids;
      await s.updateJob('j2', { state: 'queued' });
      // The source job is cancelled: its results stay, but the liar's must answer nothing more.
      await s.updateJob('j1', { state: 'cancelled' });
      const reverted = await s.revertUnverified(lease, 'liar');
      assert.deepEqual([...reverted], [['j2', [copies[0]]]], 'the copy of its result on record');
      assert.equal((await s.getItem(copies[0]))!.state, 'pending');
      assert.equal(await s.isVerified(copies[0]), false, 'its `cached:record` mark went with it');
      assert.equal((await s.getItem(copies[1]))!.state, 'done', 'a copy of a confirmed result stays');
      assert.equal((await s.getJob('j2'))!.doneCount, 2);
      await s.createJob(newJob('j3'));
      const after = await s.appendItemsCached('j3', items(3), { cache });
      assert.deepEqual(
        after.cached,
        [after.ids[1], after.ids[2]],
        "the liar's unconfirmed result answers nothing",
      );
    });

    test('hubs: register, renew, list; a re-registration fences the old epoch and frees its chunks', async () => {
      const s = await one({ chunkItems: 10 });
      await sealedJob(s, 'j', 30);
      const old = await s.registerHub('h1', { url: 'http://h1', ttlMs: 60_000 });
      assert.equal((await s.claimChunks(old, { maxChunks: 2 })).length, 2);
      const renewed = await s.renewLease(old);
      assert.equal(renewed.epoch, old.epoch);
      assert.ok(renewed.expiresAt >= old.expiresAt);
      const fresh = await s.registerHub('h1', { url: 'http://h1', ttlMs: 60_000 });
      assert.ok(fresh.epoch > old.epoch);
      await assert.rejects(s.renewLease(old), FencedError);
      await assert.rejects(s.claimChunks(old, { maxChunks: 1 }), FencedError);
      await assert.rejects(s.recordResults(old, [result(1, 'j')]), /is fenced/);
      assert.ok(
        (await s.listChunks('j')).every((c) => c.hubId === null),
        'the old epoch held nothing after',
      );
      const hubs = await s.listHubs();
      assert.deepEqual(
        hubs.map((h) => [h.id, h.epoch, h.state, h.leaseHeld, h.chunks]),
        [['h1', fresh.epoch, 'live', true, 0]],
      );
      await assert.rejects(s.registerHub('h2', { url: 'x', ttlMs: 0 }), /ttlMs must be a positive integer/);
    });

    test('claims: highest priority first, only sealed jobs, each chunk once; advance, split, release, finish', async () => {
      const s = await one({ chunkItems: 8 });
      const low = await sealedJob(s, 'low', 16, { priority: 0 });
      const high = await sealedJob(s, 'high', 16, { priority: 5 });
      await s.createJob(newJob('open'));
      await s.appendItems('open', items(8));
      const a = await s.registerHub('a', { url: 'http://a', ttlMs: 60_000 });
      const b = await s.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      const first = await s.claimChunks(a, { maxChunks: 1 });
      assert.deepEqual(
        first.map((c) => [c.jobId, c.first, c.last, c.cursor, c.hubId]),
        [['high', high[0], high[7], high[0] - 1, 'a']],
      );
      assert.equal(
        await s.splitTail(b, { minItems: 1 }),
        undefined,
        'a job with an unheld chunk is not split',
      );
      const next = await s.claimChunks(a, { maxChunks: 2 });
      assert.deepEqual(
        next.map((c) => [c.jobId, c.first, c.last]),
        [
          ['low', low[0], low[7]],
          ['high', high[8], high[15]],
        ],
      );
      first.push(...next);
      const rest = await s.claimChunks(b, { maxChunks: 5 });
      assert.deepEqual(
        rest.map((c) => [c.jobId, c.first]),
        [['low', low[8]]],
        'the open job is not claimed',
      );
      assert.deepEqual(await s.claimChunks(b, { maxChunks: 5 }), []);

      // The holder advances its cursor before dispatching; another hub splits the untouched tail.
      const c = first.find((x) => x.jobId === 'high' && x.first === high[8])!;
      assert.equal((await s.advanceChunk(a, c.id, high[9]))!.cursor, high[9]);
      await s.recordResults(b, [result(low[8], 'low')]);
      const tail = await s.splitTail(b, { minItems: 3 });
      assert.ok(tail, 'no unheld chunk is left: the largest untouched tail is split');
      assert.equal(tail.hubId, 'b');
      assert.equal(tail.jobId, 'high');
      // high[0..7] untouched (8 left, 4 taken) or high[10..15] (6 left, 3 taken): the larger goes first.
      assert.deepEqual([tail.first, tail.last], [high[4], high[7]]);
      const shrunk = (await s.advanceChunk(a, first.find((x) => x.first === high[0])!.id, high[7]))!;
      assert.deepEqual(
        [shrunk.last, shrunk.cursor],
        [high[3], high[3]],
        'the holder dispatches only up to the new end',
      );
      assert.deepEqual(idsOf(await s.listChunks('high')), high);

      // Finishing needs every item of the chunk done; releasing puts a chunk back with its cursor reset.
      const lowChunk = rest[0];
      assert.equal(await s.finishChunk(b, lowChunk.id), false);
      await s.recordResults(
        b,
        low.slice(9).map((id) => result(id, 'low')),
      );
      assert.equal(await s.finishChunk(a, lowChunk.id), false, 'only the holder finishes a chunk');
      assert.equal(await s.finishChunk(b, lowChunk.id), true);
      await s.releaseChunks(b, [tail.id]);
      const again = await s.claimChunks(a, { maxChunks: 5 });
      assert.deepEqual(
        again.map((x) => [x.first, x.cursor, x.hubId]),
        [[high[4], high[4] - 1, 'a']],
      );
      const hubs = await s.listHubs();
      assert.deepEqual(
        hubs.map((h) => [h.id, h.chunks]),
        [
          ['a', 4],
          ['b', 0],
        ],
      );
    });

    test('race: two writers record results for the same items at once; each result is stored exactly once', async () => {
      const [a, b] = await clients(2);
      const la = await a.registerHub('a', { url: 'http://a', ttlMs: 60_000 });
      const lb = await b.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      const ids = await sealedJob(a, 'j', 2000);
      // Opposite orders and several batches in flight per writer: a store that locks rows in
      // arrival order deadlocks here, one without a gate stores results twice.
      const batches = (order: number[], worker: string) => {
        const out: NewResult[][] = [];
        for (let i = 0; i < order.length; i += 50)
          out.push(order.slice(i, i + 50).map((id) => result(id, 'j', worker)));
        return out;
      };
      const write = async (s: AsyncStore, lease: Lease, list: NewResult[][]) => {
        const accepted: number[] = [];
        const lanes = 4;
        await Promise.all(
          Array.from({ length: lanes }, async (_, lane) => {
            for (let i = lane; i < list.length; i += lanes)
              accepted.push(...(await s.recordResults(lease, list[i])).accepted);
          }),
        );
        return accepted;
      };
      const t0 = performance.now();
      const [fromA, fromB] = await Promise.all([
        write(a, la, batches(ids, 'wa')),
        write(b, lb, batches([...ids].reverse(), 'wb')),
      ]);
      const ms = performance.now() - t0;
      const both = new Set([...fromA, ...fromB]);
      assert.equal(fromA.length + fromB.length, ids.length, 'every item accepted once in all');
      assert.equal(both.size, ids.length, 'no item accepted by both writers');
      const stored = await collect(a.iterateResults('j'));
      assert.equal(stored.length, ids.length);
      const owner = new Map(stored.map((r) => [r.itemId, r.workerId]));
      for (const id of fromA) assert.equal(owner.get(id), 'wa');
      for (const id of fromB) assert.equal(owner.get(id), 'wb');
      assert.equal((await b.getJob('j'))!.doneCount, ids.length);
      process.stdout.write(
        `# ${target.name} race results: 2 writers x 2000 items, accepted ${fromA.length} + ${fromB.length}, ${stored.length} stored, ${Math.round(ms)} ms\n`,
      );
    });

    test('race across processes: two hub processes record results for the same items; each stored exactly once', async () => {
      const space = target.space();
      const s = await space.open();
      open.push(s);
      const ids = await sealedJob(s, 'j', 3000);
      const task = { ...space.where, jobId: 'j', batch: 100 };
      const [a, b] = await Promise.all([
        writer({ ...task, hubId: 'pa', ids }),
        writer({ ...task, hubId: 'pb', ids: [...ids].reverse() }),
      ]);
      a.go();
      b.go();
      const [fromA, fromB] = await within(Promise.all([a.done, b.done]), 60_000, 'writers');
      assert.equal(new Set([...fromA, ...fromB]).size, ids.length, 'no item accepted by both');
      assert.equal(fromA.length + fromB.length, ids.length);
      const stored = await collect(s.iterateResults('j'));
      assert.equal(stored.length, ids.length);
      const owner = new Map(stored.map((r) => [r.itemId, r.workerId]));
      assert.ok(fromA.every((id) => owner.get(id) === 'pa') && fromB.every((id) => owner.get(id) === 'pb'));
      assert.equal((await s.getJob('j'))!.doneCount, ids.length);
      process.stdout.write(
        `# ${target.name} race across processes: 2 x 3000 items, accepted ${fromA.length} + ${fromB.length}\n`,
      );
    });

    test('race: two clients append while a third claims; ids stay consecutive per append, every item claimed once', async () => {
      const [a1, a2, claimer] = await clients(3, { chunkItems: 16 });
      await a1.createJob(newJob('stream'));
      await a1.createJob(newJob('other'));
      const lease = await claimer.registerHub('c', { url: 'http://c', ttlMs: 60_000 });
      const appends: number[][] = [];
      let done = false;
      // Two writers on one job, and one of them on a second job between, all at once.
      const appending = Promise.all(
        [a1, a2].map(async (s, w) => {
          for (let i = 0; i < 15; i++) {
            appends.push(await s.appendItems('stream', items(37, `w${w}b${i}`)));
            if (w === 1) await s.appendItems('other', items(5));
          }
        }),
      ).then(() => {
        done = true;
      });
      const claimed: Chunk[] = [];
      for (;;) {
        const finished = done;
        const got = await claimer.claimChunks(lease, { maxChunks: 3, states: ['open'] });
        claimed.push(...got.filter((c) => c.jobId === 'stream'));
        if (finished && got.length === 0) break;
        if (got.length === 0) await sleep(1);
      }
      await appending;
      for (const ids of appends)
        ids.forEach((id, k) => assert.equal(id, ids[0] + k, 'one append, consecutive ids'));
      const byId = (await claimer.listItems('stream', { offset: 0, limit: 10_000 })).map((it) => it.id);
      assert.deepEqual(
        byId,
        [...byId].sort((x, y) => x - y),
        'ids rise with seq',
      );
      assert.deepEqual(
        idsOf(claimed),
        appends.flat().sort((x, y) => x - y),
      );
      process.stdout.write(
        `# ${target.name} race append/claim: ${byId.length} items by 2 writers, ${claimed.length} chunks claimed\n`,
      );
    });

    test('race: two hubs claim at once; no item is claimed twice and none is left', async () => {
      const [a, b] = await clients(2, { chunkItems: 16 });
      const ids = await sealedJob(a, 'j', 5000);
      const la = await a.registerHub('a', { url: 'http://a', ttlMs: 60_000 });
      const lb = await b.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      const claim = async (s: AsyncStore, lease: Lease) => {
        const got: Chunk[] = [];
        await Promise.all(
          Array.from({ length: 3 }, async () => {
            for (;;) {
              const c = await s.claimChunks(lease, { maxChunks: 4 });
              if (c.length === 0) return;
              got.push(...c);
            }
          }),
        );
        return got;
      };
      const t0 = performance.now();
      const [ca, cb] = await Promise.all([claim(a, la), claim(b, lb)]);
      const ms = performance.now() - t0;
      assert.deepEqual(idsOf([...ca, ...cb]), ids);
      assert.ok(ca.every((c) => c.hubId === 'a') && cb.every((c) => c.hubId === 'b'));
      process.stdout.write(
        `# ${target.name} race claims: ${ca.length} + ${cb.length} chunks of 16, none twice, ${Math.round(ms)} ms\n`,
      );
    });

    test('a lapsed lease is reaped by another hub; the fenced hub claims and commits nothing more', async (t) => {
      const [sa, sb] = await clients(2, { chunkItems: 10 });
      if (!sa.severalHubs) {
        t.skip(`${target.name} is a one-hub store: leases never lapse`);
        return;
      }
      const ids = await sealedJob(sa, 'j', 40);
      const la = await sa.registerHub('a', { url: 'http://a', ttlMs: 300 });
      const lb = await sb.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      const held = await sa.claimChunks(la, { maxChunks: 2 });
      assert.equal(held.length, 2);
      await sa.recordResults(la, [result(held[0].first, 'j', 'wa')]);
      assert.deepEqual(await sb.reapExpired(lb), [], 'a live lease is not reaped');
      await sleep(600); // past the TTL on the server's clock (a hub paused, e.g. SIGSTOP)
      assert.equal((await sb.listHubs()).find((h) => h.id === 'a')!.leaseHeld, false);
      const reaped = await sb.reapExpired(lb);
      assert.deepEqual(reaped, [{ hubId: 'a', epoch: la.epoch, chunks: 2 }]);
      // The fenced hub wakes up and tries to carry on.
      const late = [result(held[0].first + 1, 'j', 'wa'), result(held[1].first, 'j', 'wa')];
      await assert.rejects(sa.recordResults(la, late), FencedError);
      await assert.rejects(
        sa.recordFailures(la, [{ ...late[0], category: 'timeout', message: 'x', final: true }]),
        FencedError,
      );
      await assert.rejects(sa.claimChunks(la, { maxChunks: 5 }), FencedError);
      await assert.rejects(sa.advanceChunk(la, held[0].id, held[0].last), FencedError);
      await assert.rejects(sa.renewLease(la), FencedError);
      // Its chunks went back to the pool; the other hub runs them and its results count.
      const retaken = await sb.claimChunks(lb, { maxChunks: 10 });
      assert.deepEqual(idsOf(retaken), ids);
      assert.deepEqual(await sb.pendingItemRuns('j', { first: held[0].first, last: held[0].last }), [
        { first: held[0].first + 1, last: held[0].last },
      ]);
      const ok = await sb.recordResults(
        lb,
        late.map((r) => ({ ...r, workerId: 'wb' })),
      );
      assert.equal(ok.accepted.length, 2);
      const stored = await collect(sb.iterateResults('j'));
      assert.deepEqual(
        stored.map((r) => r.workerId),
        ['wa', 'wb', 'wb'],
        'nothing the fenced hub sent after the reap was stored',
      );
      assert.equal((await sb.listHubs()).find((h) => h.id === 'a')!.state, 'dead');
      // Registering again is how a fenced hub comes back: a new epoch, nothing held.
      const back = await sa.registerHub('a', { url: 'http://a', ttlMs: 60_000 });
      assert.ok(back.epoch > la.epoch);
      assert.deepEqual(await sa.claimChunks(back, { maxChunks: 5 }), []);
    });

    test('pipeline runs: recorded with their owner; once it is gone, hubs taking over at once take each run once', async () => {
      const [sa, sb, sc] = await clients(3);
      const several = sa.severalHubs;
      const la = await sa.registerHub('a', { url: 'http://a', ttlMs: several ? 300 : 60_000 });
      const lb = await sb.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      const lc = await sc.registerHub('c', { url: 'http://c', ttlMs: 60_000 });
      const ids = Array.from({ length: 20 }, (_, i) => `r${String(i).padStart(2, '0')}`);
      for (const [i, id] of ids.entries())
        await sa.createRun(la, { id, anchor: `j${i}`, createdAt: 1000 + i });
      assert.deepEqual(await sb.getRun('r03'), {
        id: 'r03',
        anchor: 'j3',
        ownerHub: 'a',
        ownerEpoch: la.epoch,
        state: 'running',
        takeovers: 0,
        createdAt: 1003,
      });
      assert.equal(await sb.getRun('nope'), undefined);
      await sa.completeRun('r19');
      assert.deepEqual(await sb.takeOverRuns(lb), [], "a live owner's runs are not taken");
      // The owner goes: reaped once its lease lapsed (several hubs), or registered again.
      if (several) {
        await sleep(600);
        assert.equal((await sb.reapExpired(lb)).length, 1);
      } else await sa.registerHub('a', { url: 'http://a', ttlMs: 60_000 });
      const [byB, byC] = await Promise.all([sb.takeOverRuns(lb), sc.takeOverRuns(lc)]);
      const taken = [...byB, ...byC].map((r) => r.id).sort();
      assert.deepEqual(taken, ids.slice(0, 19), 'every running run taken once, the completed one not');
      for (const r of [...byB, ...byC]) {
        const owner = byB.includes(r) ? lb : lc;
        assert.deepEqual(await sa.getRun(r.id), {
          ...r,
          ownerHub: owner.hubId,
          ownerEpoch: owner.epoch,
          takeovers: 1,
        });
      }
      assert.deepEqual([...(await sb.takeOverRuns(lb)), ...(await sc.takeOverRuns(lc))], []);
      await assert.rejects(sa.takeOverRuns(la), FencedError, 'a hub whose lease is gone takes nothing over');
    });

    test('lease keeper: renews past several TTLs; once stopped, its lease lapses and another hub reaps it', async () => {
      const [sa, sb] = await clients(2, { chunkItems: 10 });
      const ids = await sealedJob(sa, 'j', 20);
      const a = await LeaseKeeper.start(sa, 'a', { url: 'http://a', ttlMs: 600 });
      await sa.claimChunks(a.lease, { maxChunks: 1 });
      await sleep(1500); // 2.5 TTLs: only renewals keep it
      assert.ok(a.held());
      assert.deepEqual(
        (await sa.recordResults(a.lease, [result(ids[0], 'j')])).accepted,
        [ids[0]],
        'commits pass the fence',
      );
      if (!sa.severalHubs) {
        a.stop();
        return;
      }
      const b = await LeaseKeeper.start(sb, 'b', { url: 'http://b', ttlMs: 10_000, reapEveryMs: 50 });
      const reaped = new Promise((resolve) => b.once('reaped', resolve));
      a.stop();
      assert.deepEqual(await within(reaped, 10_000, 'reap'), [
        { hubId: 'a', epoch: a.lease.epoch, chunks: 1 },
      ]);
      assert.equal(a.held(), false);
      b.stop();
    });

    test('lease keeper: a hub registered again elsewhere under the same id is told it is fenced', async () => {
      const [sa, sb] = await clients(2);
      const a = await LeaseKeeper.start(sa, 'a', { url: 'http://a', ttlMs: 300 });
      const fenced = new Promise<unknown>((resolve) => a.once('fenced', resolve));
      await sb.registerHub('a', { url: 'http://a2', ttlMs: 60_000 });
      assert.ok((await within(fenced, 10_000, 'fenced')) instanceof FencedError);
      assert.equal(a.held(), false);
    });

    test('a reap waits for a commit that passed its fence: that commit is kept, the next is refused', async (t) => {
      const [sa, sb] = await clients(2);
      if (!sa.severalHubs) {
        t.skip(`${target.name} is a one-hub store: leases never lapse`);
        return;
      }
      const ids = await sealedJob(sa, 'j', 2000);
      const la = await sa.registerHub('a', { url: 'http://a', ttlMs: 400 });
      const lb = await sb.registerHub('b', { url: 'http://b', ttlMs: 60_000 });
      // A stream of commits from hub a straddling its expiry while b reaps as soon as it can.
      const accepted: number[] = [];
      let refusedAt = -1;
      const commits = (async () => {
        for (let i = 0; i < ids.length; i += 20) {
          try {
            accepted.push(
              ...(
                await sa.recordResults(
                  la,
                  ids.slice(i, i + 20).map((id) => result(id, 'j', 'wa')),
                )
              ).accepted,
            );
          } catch (err) {
            assert.ok(err instanceof FencedError);
            refusedAt = i;
            return;
          }
          await sleep(5);
        }
      })();
      let reaped: { hubId: string }[] = [];
      while (reaped.length === 0) {
        await sleep(20);
        reaped = await sb.reapExpired(lb);
      }
      await commits;
      assert.ok(refusedAt >= 0, 'the stream of commits was cut by the fence');
      const stored = await collect(sb.iterateResults('j'));
      assert.deepEqual(
        stored.map((r) => r.itemId),
        accepted,
        'exactly the commits acknowledged before the fence are stored',
      );
      assert.deepEqual(accepted, ids.slice(0, refusedAt));
    });
  });
}

conformance(sqliteTarget());
conformance(postgresTarget());

describe("SqliteAsyncStore and the hub's SqliteStore open each other's files", () => {
  test('a hub file from before gets chunks for its pending items; the hub store still opens the file after', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shardhub-conf-'));
    try {
      const file = join(dir, 'hub.sqlite');
      const old = SqliteStore.open(file);
      old.createJob(newJob('j'));
      const ids = old.appendItems('j', items(20));
      old.updateJob('j', { state: 'queued' });
      old.recordResults([result(ids[0], 'j')]);
      old.close();
      const s = await SqliteAsyncStore.open(file, { chunkItems: 8 });
      assert.equal((await s.getJob('j'))!.doneCount, 1);
      assert.deepEqual(
        (await s.listChunks('j')).map((c) => [c.first, c.last]),
        [
          [ids[1], ids[8]],
          [ids[9], ids[16]],
          [ids[17], ids[19]],
        ],
      );
      const lease = await s.registerHub('h', { url: 'http://h', ttlMs: 1000 });
      await s.recordResults(lease, [result(ids[1], 'j')]);
      await s.close();
      const again = SqliteStore.open(file);
      assert.equal(again.getJob('j')!.doneCount, 2);
      again.close();
      const fresh = join(dir, 'fresh.sqlite');
      await (await SqliteAsyncStore.open(fresh)).close();
      const hub = SqliteStore.open(fresh); // the tables it finds are its schema version 1
      hub.createJob(newJob('k'));
      hub.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
