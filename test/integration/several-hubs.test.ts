/**
 * Several hubs on one real PostgreSQL server (started here: `test/helpers/postgres.ts`).
 *
 * - Two hubs in this process share a job: submitted on one, run by both hubs' workers (each hub
 *   claims chunks of it), seen completed on the other, every item's result stored exactly once.
 * - Three hub processes; native nodes (real `native/` code, sim backend) that know every hub's URL.
 *   A hub is killed with SIGKILL at about 40% of a job: its lease lapses, another hub reaps it, its
 *   chunks are claimed again, its nodes re-register elsewhere and resend what was not acked. The job
 *   completes with one result per item. The time from the kill until items of the dead hub's chunks
 *   are handed out again is printed.
 * - A hub stopped with SIGSTOP past its lease and continued with SIGCONT finds itself fenced: it
 *   registers again under a new epoch, and the store refuses every write under its old lease.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { io } from 'socket.io-client';
import { SimBackend } from '../../native/sim-backend.ts';
import { unpackTensors } from '../../protocol/pack.ts';
import type { WorkerAuth } from '../../protocol/events.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import type { HubServer } from '../../server/app.ts';
import { WorkerAgent, type WorkerSocket } from '../../worker/agent.ts';
import { MemoryModelStore } from '../../worker/model-cache.ts';
import {
  Rest,
  freePort,
  jobDone,
  spawnHub,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';
import { startPostgres, type TestPostgres } from '../helpers/postgres.ts';

const OPERATOR = 'op_hubs-test-operator-token-0123456789';
const JOIN = 'join_hubs-test-join-token-0123456789';

/** noop items of 1 x 4 float32. */
function items(n: number, seed: number) {
  return Array.from({ length: n }, (_, i) => {
    const x = new Float32Array(4).map((_, j) => seed + i + j / 1e4);
    return {
      name: `i${seed}-${String(i).padStart(6, '0')}`,
      tensors: [{ name: 'x', dtype: 'float32' as const, dims: [1, 4], data: new Uint8Array(x.buffer) }],
    };
  });
}

/** Per job: items, items done, result rows, and results per worker, read straight from Postgres. */
async function tally(url: string, jobId: string) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const one = async (sql: string) => Number((await c.query(sql, [jobId])).rows[0].n);
    const byWorker = (
      await c.query<{ worker_id: string; n: string }>(
        'SELECT worker_id, COUNT(*) AS n FROM results WHERE job_id = $1 GROUP BY worker_id',
        [jobId],
      )
    ).rows;
    return {
      items: await one('SELECT COUNT(*) AS n FROM items WHERE job_id = $1'),
      done: await one("SELECT COUNT(*) AS n FROM items WHERE job_id = $1 AND state = 'done'"),
      results: await one('SELECT COUNT(*) AS n FROM results WHERE job_id = $1'),
      distinct: await one('SELECT COUNT(DISTINCT item_id) AS n FROM results WHERE job_id = $1'),
      byWorker: new Map(byWorker.map((r) => [r.worker_id, Number(r.n)])),
    };
  } finally {
    await c.end();
  }
}

describe('several hubs on one PostgreSQL store', () => {
  const tmp = tempDir('shardhub-hubs-');
  let pgServer: TestPostgres | undefined;
  let skip: string | undefined;

  before(async () => {
    const started = await startPostgres();
    if ('skip' in started) skip = started.skip;
    else pgServer = started;
  });
  after(async () => {
    await pgServer?.stop();
    tmp.cleanup();
  });

  /** A sim worker in this process, registered on `url`. */
  async function simWorker(
    url: string,
    name: string,
  ): Promise<{ agent: WorkerAgent; close: () => Promise<void> }> {
    const auth: WorkerAuth = { workerId: name, workerSecret: `secret-${name}-0123456789`, token: JOIN };
    const socket = io(`${url}/worker`, {
      auth,
      forceNew: true,
      transports: ['websocket'],
      parser: shardhubParser,
    }) as WorkerSocket;
    const agent = new WorkerAgent({
      socket,
      backend: () => SimBackend.create({ itemMs: 2 }),
      store: new MemoryModelStore(),
      hubUrl: url,
      register: { kind: 'native', name, capabilities: { cores: 1, memoryBytes: 1 } },
      concurrency: 2,
      fetchHeaders: { authorization: `Bearer ${JOIN}` },
    });
    await agent.start();
    return {
      agent,
      close: async () => {
        await agent.close();
        socket.disconnect();
      },
    };
  }

  test("a job submitted on one hub is run by both hubs' workers, each item stored once", async (t) => {
    if (skip) return t.skip(skip);
    const url = (pgServer as TestPostgres).url;
    const config = { store: url, operatorToken: OPERATOR, joinToken: JOIN, hub: { leaseMs: 2000 } };
    const hubs: HubServer[] = [];
    const workers: { close: () => Promise<void> }[] = [];
    try {
      hubs.push(await startHub(join(tmp.dir, 'a'), config));
      hubs.push(await startHub(join(tmp.dir, 'b'), config));
      const [a, b] = hubs as [HubServer, HubServer];
      for (const [i, h] of hubs.entries())
        for (let k = 0; k < 2; k++) workers.push(await simWorker(h.url, `sim-hub${i}-${k}`));
      // A dashboard on hub b sees hub a's workers live (the Postgres adapter carries the updates).
      const dashboard = io(`${b.url}/operator`, {
        auth: { token: OPERATOR },
        forceNew: true,
        transports: ['websocket'],
      });
      const seen = new Map<string, string | undefined>();
      dashboard.on('workers:updated', (views: { id: string; hub?: string }[]) => {
        for (const v of views) seen.set(v.id, v.hub);
      });
      const sent = items(3000, 1);
      const jobId = await new Rest(a.url, OPERATOR).submit('noop', sent);
      const view = await jobDone(new Rest(b.url, OPERATOR), jobId, 120_000);
      assert.equal(view.done, sent.length, 'the other hub sees it completed with every item done');
      const n = await tally(url, jobId);
      assert.equal(n.items, sent.length);
      assert.equal(n.done, sent.length);
      assert.equal(n.results, sent.length, 'one result row per item');
      assert.equal(n.distinct, sent.length);
      const ran = (prefix: string) =>
        [...n.byWorker].filter(([w]) => w.startsWith(prefix)).reduce((s, [, k]) => s + k, 0);
      assert.ok(
        ran('sim-hub0-') > 0 && ran('sim-hub1-') > 0,
        `both hubs' workers ran items (${ran('sim-hub0-')}, ${ran('sim-hub1-')})`,
      );
      await waitFor(
        "hub a's workers on hub b's dashboard",
        () => seen.has('sim-hub0-0') && seen.has('sim-hub1-0'),
        20_000,
      );
      dashboard.close();
      const hubIds = new Set([a.hub.hubId, b.hub.hubId]);
      assert.equal(seen.get('sim-hub0-0'), a.hub.hubId, 'each row says which hub its worker is on');
      assert.equal(seen.get('sim-hub1-0'), b.hub.hubId);
      // GET /api/workers on either hub lists every hub's workers.
      const listed = (await new Rest(b.url, OPERATOR).data('GET', '/api/workers')).workers as {
        id: string;
        hub: string;
      }[];
      for (const id of ['sim-hub0-0', 'sim-hub0-1', 'sim-hub1-0', 'sim-hub1-1'])
        assert.ok(
          listed.some((w) => w.id === id && hubIds.has(w.hub)),
          `${id} is listed with its hub`,
        );
      const hubsView = await new Rest(b.url, OPERATOR).data('GET', '/api/hubs');
      assert.equal(hubsView.hubs.filter((h: { state: string }) => h.state === 'live').length, 2);

      // A quarantine is the store's: a worker quarantined on one hub is quarantined on all. Hub a
      // and its workers stop first (what hub a still had to write is written as it closes).
      for (const w of workers.splice(0, 2)) await w.close();
      await (hubs.shift() as HubServer).close();
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      await c.query(
        `INSERT INTO worker_trust (worker_id, validated, streak, strikes, quarantined, reason, at)
         VALUES ('sim-hub0-0', 0, 0, 2, true, 'wrong canary (test)', $1)
         ON CONFLICT (worker_id) DO UPDATE SET quarantined = true, at = $1`,
        [Date.now()],
      );
      await c.end();
      workers.push(await simWorker(b.url, 'sim-hub0-0'));
      await waitFor(
        'hub b lists the worker quarantined',
        async () =>
          (
            (await new Rest(b.url, OPERATOR).data('GET', '/api/workers')).workers as {
              id: string;
              state: string;
            }[]
          ).some((w) => w.id === 'sim-hub0-0' && w.state === 'quarantined'),
        20_000,
      ).catch(async (err: Error) => {
        const list = await new Rest(b.url, OPERATOR).data('GET', '/api/workers');
        throw new Error(
          `${err.message}: ${JSON.stringify(list.workers.map((w: { id: string; state: string }) => [w.id, w.state]))}`,
        );
      });
    } finally {
      for (const w of workers) await w.close();
      for (const h of hubs) await h.close();
    }
  });
  /** Items whose stored result is not their input (noop, y = x), read straight from Postgres. */
  async function wrongOutputs(url: string, jobId: string): Promise<number> {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query<{ outputs: Buffer; inputs: Buffer }>(
        `SELECT r.outputs, i.inputs FROM results r JOIN item_inputs i ON i.item_id = r.item_id
         WHERE r.job_id = $1`,
        [jobId],
      );
      return rows.filter((r) => {
        const y = unpackTensors(new Uint8Array(r.outputs))[0];
        const x = unpackTensors(new Uint8Array(r.inputs))[0];
        return !x || !y || Buffer.compare(Buffer.from(x.data), Buffer.from(y.data)) !== 0;
      }).length;
    } finally {
      await c.end();
    }
  }

  test('three hub processes: one killed with SIGKILL mid-job loses nothing; one paused past its lease is fenced', async (t) => {
    if (skip) return t.skip(skip);
    const url = (pgServer as TestPostgres).url;
    const hubs: { proc: Proc; url: string; rest: Rest }[] = [];
    const nodes: Proc[] = [];
    const LEASE_MS = 1500;
    try {
      for (let i = 0; i < 3; i++) {
        const port = await freePort();
        const proc = spawnHub(port, join(tmp.dir, `proc-hub${i}`), [
          '--store',
          url,
          '--operator-token',
          OPERATOR,
          '--join-token',
          JOIN,
          '--lease-ms',
          String(LEASE_MS),
        ]);
        hubs.push({
          proc,
          url: `http://127.0.0.1:${port}`,
          rest: new Rest(`http://127.0.0.1:${port}`, OPERATOR),
        });
      }
      for (const h of hubs) await waitFor('hub up', () => h.proc.output().includes('hub is up'), 90_000);
      const urls = hubs.map((h) => h.url);
      // Two nodes start on each hub; each knows every hub, in its own order.
      for (let i = 0; i < 6; i++) {
        const order = [...urls.slice(i % 3), ...urls.slice(0, i % 3)];
        nodes.push(
          startNode(order.join(','), JOIN, join(tmp.dir, `node${i}`), [
            '--backend',
            'sim',
            '--item-ms',
            '4',
            '--concurrency',
            '4',
            '--id',
            `sim-node-${i}-of-six`,
          ]),
        );
      }
      const [front, victim, paused] = hubs as [(typeof hubs)[0], (typeof hubs)[0], (typeof hubs)[0]];
      // Any hub lists every hub's workers, each with its hub: two nodes on each.
      await waitFor(
        'six nodes online, two on each hub',
        async () => {
          const { workers } = await front.rest.data('GET', '/api/workers?online=true');
          const perHub = new Map<string, number>();
          for (const w of workers as { hub: string }[]) perHub.set(w.hub, (perHub.get(w.hub) ?? 0) + 1);
          return workers.length === 6 && perHub.size === 3 && [...perHub.values()].every((n) => n === 2);
        },
        90_000,
        200,
      );
      const sent = items(6000, 7);
      const jobId = await front.rest.submit('noop', sent);
      const pairs = items(600, 9);
      const pairJob = await front.rest.submit('noop', pairs, { redundancy: 2 });

      // SIGKILL one hub at about 40%.
      const victimId = (
        (await victim.rest.data('GET', '/api/hubs')).hubs as { id: string; self: boolean }[]
      ).find((h) => h.self)?.id;
      assert.ok(victimId);
      await waitFor('40% done', async () => (await tally(url, jobId)).done >= sent.length * 0.4, 120_000, 20);
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        const held = (
          await c.query<{ id: string }>('SELECT id FROM chunks WHERE hub_id = $1', [victimId])
        ).rows.map((r) => r.id);
        victim.proc.child.kill('SIGKILL');
        const killedAt = Date.now();
        // Orphaned: the chunks it held; they run again once another hub holds them (or they are done).
        await waitFor(
          "the dead hub's chunks taken up",
          async () => {
            const { rows } = await c.query<{ n: string }>(
              'SELECT COUNT(*) AS n FROM chunks WHERE id = ANY($1::bigint[]) AND (hub_id IS NULL OR hub_id = $2)',
              [held, victimId],
            );
            return Number(rows[0]?.n) === 0;
          },
          60_000,
          20,
        );
        const rerunMs = Date.now() - killedAt;
        const reaped = (await c.query<{ state: string }>('SELECT state FROM hubs WHERE id = $1', [victimId]))
          .rows[0];
        assert.equal(reaped?.state, 'dead', 'the killed hub was reaped');
        t.diagnostic(
          `SIGKILL: ${held.length} chunks held; taken up again ${rerunMs} ms after the kill (lease ${LEASE_MS} ms)`,
        );

        // SIGSTOP another hub past its lease, then SIGCONT: it is fenced and registers again.
        const before = (
          await c.query<{ epoch: string }>("SELECT epoch FROM hubs WHERE state = 'live' ORDER BY epoch")
        ).rows;
        paused.proc.child.kill('SIGSTOP');
        await new Promise((ok) => setTimeout(ok, LEASE_MS * 3));
        paused.proc.child.kill('SIGCONT');
        await waitFor(
          'the paused hub registered again',
          () => paused.proc.output().includes('registered again'),
          30_000,
        );
        assert.match(paused.proc.output(), /lost its lease: fenced/);
        const after = (
          await c.query<{ epoch: string }>("SELECT epoch FROM hubs WHERE state = 'live' ORDER BY epoch")
        ).rows;
        assert.equal(after.length, before.length, 'as many hubs live as before the pause');
        assert.notDeepEqual(after, before, 'the paused hub lives on under a new epoch');
      } finally {
        await c.end();
      }

      for (const [id, n] of [
        [jobId, sent.length],
        [pairJob, pairs.length],
      ] as const) {
        const view = await jobDone(front.rest, id, 120_000).catch(async (err: Error) => {
          const d = new pg.Client({ connectionString: url });
          await d.connect();
          const q = async (sql: string) => JSON.stringify((await d.query(sql)).rows);
          const info = [
            await q('SELECT id, epoch, state, expires_at > now() AS held FROM hubs'),
            await q('SELECT id, job_id, first_id, last_id, cursor, hub_id, epoch FROM chunks'),
            await q('SELECT job_id, state, COUNT(*) FROM items GROUP BY 1, 2'),
            await q('SELECT id, state, item_count FROM jobs'),
          ];
          await d.end();
          const outs = hubs.map((h, i) => `hub${i}: ${h.proc.output().slice(-1500)}`);
          throw new Error(`${err.message}\n${info.join('\n')}\n${outs.join('\n')}`);
        });
        assert.equal(view.done, n);
        const k = await tally(url, id);
        assert.equal(k.done, n, 'every item done');
        assert.equal(k.results, n, 'one result row per item: none lost, none twice');
        assert.equal(k.distinct, n);
        assert.equal(await wrongOutputs(url, id), 0, 'every result is its input (noop), as one hub gives');
      }
    } finally {
      for (const n of nodes) n.child.kill('SIGTERM');
      for (const h of hubs) {
        h.proc.child.kill('SIGCONT');
        h.proc.child.kill('SIGTERM');
      }
      await Promise.all([...nodes, ...hubs.map((h) => h.proc)].map((p) => p.exited));
    }
  });
});
