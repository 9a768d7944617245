/**
 * Group commit: the results messages judged in one turn of the hub's event loop are stored in one
 * transaction (a real SQLite file), each message is answered with its own share of it, and a commit
 * that fails answers every message in it with an error while their items stay held, so that the
 * workers' resends are accepted; a failure after the commit says the results were stored. What a
 * commit sends a worker (its refill and its ack) leaves the hub in one TCP write. The workers are
 * raw Socket.IO clients, so that the test decides when each result is sent.
 */
import assert from 'node:assert/strict';
import type { Socket as TcpSocket } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, describe, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import type { ItemResult, ShardAssign } from '../../protocol/events.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { DEFAULT_TRUST_OPTIONS } from '../../server/trust.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Scheduler } from '../../server/scheduler/scheduler.ts';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { Rest, startHub, tempDir, waitFor } from '../helpers/grid.ts';

/** A native worker that registers, answers benchmarks and keeps the items it is given. */
interface RawWorker {
  id: string;
  socket: Socket;
  shards: ShardAssign[];
}

async function rawWorker(hub: HubServer, id: string, itemsPerSec: number): Promise<RawWorker> {
  const socket = connect(`${hub.url}/worker`, {
    auth: { workerId: id, workerSecret: `${id}-secret`.padEnd(32, 'x'), token: hub.tokens.joinToken },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  const w: RawWorker = { id, socket, shards: [] };
  socket.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
    ack({ data: { itemsPerSec, batchSize: 1, runs: 1, ms: 10 } }),
  );
  socket.on('shard:assign', (shard: ShardAssign) => w.shards.push(shard));
  await new Promise<void>((ok, fail) => {
    socket.once('connect', () => ok());
    socket.once('connect_error', fail);
  });
  const reg = await socket.timeout(5000).emitWithAck('worker:register', {
    kind: 'native',
    backend: 'cpu',
    name: id,
    concurrency: 2,
    capabilities: { cores: 2, memoryBytes: 2 ** 32 },
  });
  assert.ok(reg.data, JSON.stringify(reg));
  return w;
}

/** The noop model's result for each item this worker holds (y = x). */
function resultsOf(w: RawWorker): ItemResult[] {
  return w.shards.flatMap((s) =>
    s.items.map((it) => ({
      itemId: it.id,
      jobId: s.jobId,
      modelSha256: s.model.sha256,
      ms: 1,
      outputs: [{ ...(it.inputs[0] as ItemResult['outputs'][number]), name: 'y' }],
    })),
  );
}

/** Every raw worker's socket, closed after the tests. */
const sockets: Socket[] = [];

/**
 * Three raw workers, benchmarked (on a warm-up job of a few items, answered), and a noop job of
 * `items` items spread over them, each held by one worker (up to `maxHeldItems` each; the rest wait
 * in the queue).
 */
async function grid(dir: string, items: number, maxHeldItems = 4) {
  // No copies of an item on a second worker (stealing, speculation): each item has one holder here;
  // and at most `maxHeldItems` each (and benchmarks that ask for more), so that a job of 3 times
  // that is spread over the three.
  const hub = await startHub(dir, {
    hub: {
      trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true },
      scheduler: { stealing: false, speculation: false, maxHeldItems },
    },
  });
  const workers: RawWorker[] = [];
  for (const id of ['worker-a', 'worker-b', 'worker-c']) {
    const w = await rawWorker(hub, id, maxHeldItems * 10);
    sockets.push(w.socket);
    workers.push(w);
  }
  const model = hub.hub.models.byName('noop');
  assert.ok(model);
  const rest = new Rest(hub.url, hub.tokens.operatorToken);
  const job = async (n: number) =>
    rest.submit(
      'noop',
      Array.from({ length: n }, (_, i) => ({ name: `g${i}`, tensors: calibrationInputs(model, 1 + i) })),
    );
  const warmUp = await job(6);
  await waitFor('3 workers benchmarked', () =>
    workers.every((w) => hub.hub.schedule.weight(w.id, model.sha256) !== undefined),
  );
  await waitFor('the warm-up job done', async () => {
    for (const w of workers) {
      const results = resultsOf(w);
      w.shards.length = 0;
      if (results.length) await w.socket.timeout(5000).emitWithAck('items:done', { results });
    }
    return (await rest.data('GET', `/api/jobs/${warmUp}`)).state === 'completed';
  });
  const jobId = await job(items);
  const held = Math.min(items, workers.length * maxHeldItems);
  await waitFor(
    `${held} items assigned`,
    () => workers.reduce((n, w) => n + resultsOf(w).length, 0) === held,
  );
  return { hub, workers, rest, jobId };
}

/**
 * Replaces a method of a class for every instance (the hub's store and scheduler among them) until
 * `restore`: a spy or a fault, without reaching into the hub.
 */
function patch<T extends object, K extends keyof T>(
  proto: T,
  key: K,
  make: (inner: T[K]) => T[K],
): { restore(): void } {
  const inner = proto[key];
  proto[key] = make(inner);
  return { restore: () => void (proto[key] = inner) };
}

/**
 * Counts the store's results writes (each one transaction) until `restore`. Other transactions of
 * the same moment (the job's completion, the refills' assignments) are not the commit's.
 */
function countResultWrites(): { count: number; restore(): void } {
  const seen = { count: 0, restore: () => {} };
  seen.restore = patch(
    SqliteAsyncStore.prototype,
    'recordResults',
    (inner) =>
      function (this: SqliteAsyncStore, ...args: Parameters<SqliteAsyncStore['recordResults']>) {
        seen.count++;
        return inner.apply(this, args);
      },
  ).restore;
  return seen;
}

describe('group commit', () => {
  const tmp = tempDir();
  /** Faults and spies to take away after each test. */
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const restore of cleanups.splice(0)) restore();
  });
  after(() => {
    for (const s of sockets) s.close();
    tmp.cleanup();
  });

  test('results messages judged in one turn are stored in one transaction, each answered with its own share', async () => {
    const { hub, workers, rest, jobId } = await grid(join(tmp.dir, 'one'), 12);
    try {
      const busy = workers.filter((w) => resultsOf(w).length > 0);
      assert.ok(busy.length >= 2, `items spread over ${busy.length} worker(s)`);
      const before = new Map<string, number>();
      for (const w of busy) before.set(w.id, (await hub.hub.storedWorker(w.id))?.itemsDone ?? 0);
      const tx = countResultWrites();
      // One turn: every worker's results, and the first worker's again (a resend after a lost ack):
      // its items are still held when the second copy is judged, so both copies reach the commit.
      const [first] = busy as [RawWorker];
      const calls = busy.map((w) => hub.hub.acceptResults(w.id, resultsOf(w)));
      calls.push(hub.hub.acceptResults(first.id, resultsOf(first)));
      const replies = await Promise.all(calls).finally(() => tx.restore());
      assert.equal(tx.count, 1, 'one results write (one transaction) for every message of the turn');

      for (const [i, w] of busy.entries()) {
        const mine = resultsOf(w).map((r) => r.itemId);
        assert.deepEqual(replies[i]?.accepted, mine, `${w.id}'s reply names its own items`);
        assert.deepEqual(replies[i]?.dropped, []);
        for (const id of mine) assert.equal((await hub.hub.jobs.result(id))?.workerId, w.id);
        assert.equal(
          (await hub.hub.storedWorker(w.id))?.itemsDone,
          (before.get(w.id) ?? 0) + mine.length,
          `${w.id} is credited once each`,
        );
      }
      // The second copy: every item dropped as done, none stored twice.
      const again = replies.at(-1);
      assert.deepEqual(again?.accepted, []);
      assert.deepEqual(
        again?.dropped,
        resultsOf(first).map((r) => r.itemId),
      );
      const job = await rest.data('GET', `/api/jobs/${jobId}`);
      assert.equal(job.state, 'completed');
      assert.equal(job.done, 12);
      let stored = 0;
      for await (const r of hub.hub.jobs.results(jobId)) stored += r ? 1 : 0;
      assert.equal(stored, 12);
    } finally {
      await hub.close();
    }
  });

  test('a message of 64 results or more is stored at once, without waiting for others', async () => {
    const { hub, workers, jobId } = await grid(join(tmp.dir, 'big'), 300, 100);
    try {
      // 300 items over three workers: one holds at least 100.
      const big = workers.reduce((a, b) => (resultsOf(b).length > resultsOf(a).length ? b : a));
      const results = resultsOf(big);
      assert.ok(results.length >= 64, `${results.length} items`);
      const reply = hub.hub.acceptResults(big.id, results);
      // Before this turn ends: stored already.
      for (const r of results) assert.equal((await hub.hub.jobs.result(r.itemId))?.workerId, big.id);
      assert.equal((await hub.hub.jobs.get(jobId))?.doneCount, results.length);
      assert.deepEqual(
        (await reply).accepted,
        results.map((r) => r.itemId),
      );
    } finally {
      await hub.close();
    }
  });

  test('a commit that fails answers every message in it with an error; the items stay held and their resends are stored', async () => {
    const { hub, workers, rest, jobId } = await grid(join(tmp.dir, 'fail'), 12);
    try {
      const busy = workers.filter((w) => resultsOf(w).length > 0);
      // The disk fails once, as SQLite reports it (the machine has no failing disk to test with).
      let failures = 1;
      const fault = patch(
        SqliteStore.prototype,
        'recordResults',
        (record) =>
          function (this: SqliteStore, rows) {
            if (failures-- > 0) throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' });
            return record.call(this, rows);
          },
      );
      cleanups.push(fault.restore);
      const calls = busy.map((w) => hub.hub.acceptResults(w.id, resultsOf(w)).then(() => 'stored', String));
      assert.deepEqual(
        await Promise.all(calls),
        busy.map(() => 'Error: disk I/O error'),
      );
      for (const w of busy) {
        for (const r of resultsOf(w)) assert.deepEqual(hub.hub.schedule.holdersOf(r.itemId), [w.id]);
      }
      assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).done, 0, 'nothing stored');

      // Through the socket this time: the gateway's error, then the resend.
      failures = 1;
      const [w] = busy as [RawWorker];
      const refused = await w.socket.timeout(5000).emitWithAck('items:done', { results: resultsOf(w) });
      assert.equal(refused.error?.code, 'internal');
      assert.match(refused.error?.message, /send them again/);
      for (const x of busy) {
        const reply = await x.socket.timeout(5000).emitWithAck('items:done', { results: resultsOf(x) });
        assert.deepEqual(
          reply.data?.accepted,
          resultsOf(x).map((r) => r.itemId),
          JSON.stringify(reply),
        );
      }
      const job = await rest.data('GET', `/api/jobs/${jobId}`);
      assert.equal(job.state, 'completed');
      assert.equal(job.done, 12);
    } finally {
      await hub.close();
    }
  });

  test('a failure after the commit says the results were stored; the resend is dropped as done and frees the items', async () => {
    const { hub, workers, rest, jobId } = await grid(join(tmp.dir, 'after'), 12);
    try {
      const [w] = workers.filter((x) => resultsOf(x).length > 0) as [RawWorker];
      const results = resultsOf(w);
      const ids = results.map((r) => r.itemId);
      // The scheduler fails once, after the results are stored (a bug, as far as the hub knows).
      const scheduler = hub.hub.schedule;
      let failures = 1;
      const fault = patch(
        Scheduler.prototype,
        'finished',
        (finished) =>
          function (this: Scheduler, workerId, itemIds) {
            if (failures-- > 0) throw new Error('scheduler bug');
            return finished.call(this, workerId, itemIds);
          },
      );
      cleanups.push(fault.restore);
      const failed = await w.socket.timeout(5000).emitWithAck('items:done', { results });
      assert.equal(failed.error?.code, 'internal');
      assert.match(failed.error?.message, /stored these results/);
      for (const r of results) assert.equal((await hub.hub.jobs.result(r.itemId))?.workerId, w.id, 'stored');
      for (const id of ids) assert.deepEqual(scheduler.holdersOf(id), [w.id], 'still held: nothing freed');

      const again = await w.socket.timeout(5000).emitWithAck('items:done', { results });
      assert.deepEqual(again.data?.accepted, []);
      assert.deepEqual(again.data?.dropped, ids, 'dropped as done');
      for (const id of ids) assert.deepEqual(scheduler.holdersOf(id), [], 'freed by the resend');
      assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).done, ids.length, 'each stored once');
    } finally {
      await hub.close();
    }
  });

  test('a job whose items are all stored completes within a tick, even while the scheduler still holds some', async () => {
    // After each commit the hub reads a job's row only when the scheduler has nothing of it left
    // queued or held; the tick reads every active job's row. Here the rows are written behind the
    // scheduler's back, so only the tick can see the job is done.
    const { hub, workers, rest, jobId } = await grid(join(tmp.dir, 'tick'), 12);
    try {
      const results = workers.flatMap((w) =>
        resultsOf(w).map((r) => ({
          itemId: r.itemId,
          jobId: r.jobId,
          workerId: w.id,
          modelSha256: r.modelSha256,
          ms: 1,
          outputs: new Uint8Array(4),
          at: Date.now(),
        })),
      );
      assert.equal(results.length, 12);
      // Written through a connection of its own: the hub's scheduler knows nothing of it.
      const other = SqliteStore.open(join(tmp.dir, 'tick', 'hub.sqlite'));
      other.recordResults(results);
      other.close();
      assert.ok(hub.hub.schedule.inFlight(jobId) > 0, 'the scheduler still holds items');
      // The tick runs every second (half the 2 s heartbeat).
      await waitFor(
        'the job completed',
        async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
        3000,
      );
    } finally {
      await hub.close();
    }
  });

  test("a worker's refill and the ack of its results leave the hub in one write", async () => {
    // 24 items, at most 4 held by each of the three workers: 12 wait in the queue for refills.
    const { hub, workers } = await grid(join(tmp.dir, 'write'), 24);
    try {
      const [w] = workers.filter((x) => resultsOf(x).length > 0) as [RawWorker];
      const results = resultsOf(w);
      w.shards.length = 0;
      // The hub's end of this worker's connection: the upgrade request's TCP socket, which the
      // WebSocket keeps. Every write system call on it goes through _writev or _write.
      const conn = [...hub.io.of('/worker').sockets.values()].find((s) => s.data.workerId === w.id);
      assert.ok(conn, 'the hub has the worker');
      const tcp = conn.request.socket as TcpSocket & Record<'_writev' | '_write', (...a: unknown[]) => void>;
      let writes = 0;
      for (const k of ['_writev', '_write'] as const) {
        const inner = tcp[k].bind(tcp);
        tcp[k] = (...a: unknown[]) => {
          writes++;
          inner(...a);
        };
      }
      // engine.io's own ping (every few seconds) may fall in this window: a write of its own.
      let pings = 0;
      const countPing = (p: { type: string }) => p.type === 'ping' && pings++;
      conn.conn.on('packetCreate', countPing);
      const reply = await w.socket.timeout(5000).emitWithAck('items:done', { results });
      conn.conn.off('packetCreate', countPing);
      assert.deepEqual(
        reply.data?.accepted,
        results.map((r) => r.itemId),
      );
      assert.equal(w.shards.length, 1, 'the refill came before the ack');
      assert.ok(w.shards[0]?.items.length, 'with items');
      assert.ok(
        writes >= 1 && writes <= 1 + pings,
        `one write for the refill (a JSON and a binary frame) and the ack: ${writes} (pings: ${pings})`,
      );
    } finally {
      await hub.close();
    }
  });
});
