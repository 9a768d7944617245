/**
 * Several hubs on one real PostgreSQL server (started here: `test/helpers/postgres.ts`).
 *
 * - Two hubs in this process share a job: submitted on one, run by both hubs' workers (each hub
 *   claims chunks of it), seen completed on the other, every item's result stored exactly once.
 * - Three hub processes behind a real HAProxy (the configuration `scripts/haproxy-config.ts`
 *   writes), 30 native sim nodes (real `native/` code, `runNode`, 10 to a process): 24 reach the
 *   hubs through the balancer, each from its own loopback address so that HAProxy's address hash
 *   spreads them as it would 24 machines, and 6 take the list of every hub's URL. A 30,000-item
 *   job and a redundancy-2 job are submitted through the balancer. The hub with the most nodes is
 *   killed with SIGKILL at 40%: its lease lapses, another hub reaps it, its chunks are claimed
 *   again, its nodes come back through the balancer (or the next URL of their list) and resend
 *   what was not acked. The time from the kill until its orphaned items are stored again is
 *   printed. Both jobs complete with one result per item, each what one hub stores (noop: the
 *   input).
 * - A hub stopped with SIGSTOP until a live hub has reaped it, then continued with SIGCONT, finds
 *   itself fenced: it registers again under a new epoch, and the store counts nothing under its
 *   old lease after the fence (`job_counters` keeps a slot per committing epoch) and holds no chunk
 *   under it.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
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
  HAPROXY,
  Rest,
  freePort,
  jobDone,
  spawnHub,
  startHaproxy,
  startHub,
  startSimNodes,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';
import { createDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.ts';

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
      // Hub b's claim passes wait while there is nothing to claim: the job sealed on a wakes them
      // (the hub-to-hub channel), not their next slow pass.
      let woken = 0;
      const peerClaimable = b.hub.peerClaimable.bind(b.hub);
      b.hub.peerClaimable = () => {
        woken++;
        peerClaimable();
      };
      const sent = items(3000, 1);
      const jobId = await new Rest(a.url, OPERATOR).submit('noop', sent);
      await waitFor('hub b told that work is claimable', () => woken > 0, 10_000);
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
  test('a hub whose only worker is quarantined holds no chunk: the job runs on the other hub', async (t) => {
    if (skip) return t.skip(skip);
    const url = (pgServer as TestPostgres).url;
    const config = { store: url, operatorToken: OPERATOR, joinToken: JOIN, hub: { leaseMs: 2000 } };
    const hubs: HubServer[] = [];
    const workers: { close: () => Promise<void> }[] = [];
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      hubs.push(await startHub(join(tmp.dir, 'q-a'), config));
      hubs.push(await startHub(join(tmp.dir, 'q-b'), config));
      const [a, b] = hubs as [HubServer, HubServer];
      await c.query(
        `INSERT INTO worker_trust (worker_id, validated, streak, strikes, quarantined, reason, at)
         VALUES ('sim-quarantined-0', 0, 0, 2, true, 'wrong canary (test)', $1)
         ON CONFLICT (worker_id) DO UPDATE SET quarantined = true, at = $1`,
        [Date.now()],
      );
      workers.push(await simWorker(a.url, 'sim-quarantined-0'));
      for (let k = 0; k < 2; k++) workers.push(await simWorker(b.url, `sim-honest-b-${k}`));
      await waitFor(
        'hub a lists its worker quarantined',
        async () =>
          (
            (await new Rest(a.url, OPERATOR).data('GET', '/api/workers?online=true')).workers as {
              id: string;
              state: string;
            }[]
          ).some((w) => w.id === 'sim-quarantined-0' && w.state === 'quarantined'),
        20_000,
      );
      const sent = items(2000, 3);
      const jobId = await new Rest(a.url, OPERATOR).submit('noop', sent);
      const view = await jobDone(new Rest(b.url, OPERATOR), jobId, 60_000);
      assert.equal(view.done, sent.length, 'the other hub ran every item');
      const held = await c.query('SELECT id FROM chunks WHERE hub_id = $1', [a.hub.hubId]);
      assert.equal(held.rowCount, 0, 'the hub with only a quarantined worker holds no chunk');
      const k = await tally(url, jobId);
      assert.equal(k.results, sent.length, 'one result row per item');
      assert.equal(k.byWorker.get('sim-quarantined-0') ?? 0, 0, 'none from the quarantined worker');
    } finally {
      await c.end();
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

  /** Stops processes: SIGTERM (a stopped one continued first), SIGKILL for any still there after 15 s. */
  async function stopAll(procs: Proc[]): Promise<void> {
    for (const p of procs) {
      p.child.kill('SIGCONT');
      p.child.kill('SIGTERM');
    }
    await Promise.all(
      procs.map(async (p) => {
        const late = setTimeout(() => p.child.kill('SIGKILL'), 15_000);
        await p.exited;
        clearTimeout(late);
      }),
    );
  }

  test(
    'three hub processes behind HAProxy, 30 sim nodes: a hub killed with SIGKILL at 40% loses nothing; one paused past its lease is fenced and nothing it sends after is stored',
    { skip: existsSync(HAPROXY) ? false : `${HAPROXY} is not installed (apt-get install haproxy)` },
    async (t) => {
      if (skip) return t.skip(skip);
      const startedAt = Date.now();
      // A database of its own: hub epochs start at 1, so each epoch commits to a counter slot of
      // its own (`job_counters.slot` is the committing lease's epoch modulo pg-store's 16 slots).
      const fresh = await createDatabase((pgServer as TestPostgres).url, 'shardhub_lb');
      const url = fresh.url;
      const SLOTS = 16;
      const LEASE_MS = 1500;
      const NODES = 30;
      const PER_PROCESS = 10;
      const hubs: { proc: Proc; url: string; rest: Rest; id: string }[] = [];
      const procs: Proc[] = [];
      let lbProc: Proc | undefined;
      const db = new pg.Client({ connectionString: url });
      await db.connect();
      const rows = async <R extends pg.QueryResultRow>(sql: string, params: unknown[] = []) =>
        (await db.query<R>(sql, params)).rows;
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
          procs.push(proc);
          const hubUrl = `http://127.0.0.1:${port}`;
          hubs.push({ proc, url: hubUrl, rest: new Rest(hubUrl, OPERATOR), id: '' });
        }
        for (const h of hubs) {
          await waitFor(
            'hub up',
            () => {
              if (h.proc.child.exitCode !== null) throw new Error('the hub exited');
              return h.proc.output().includes('hub is up');
            },
            90_000,
          ).catch((err: Error) => {
            throw new Error(`${err.message}; it said:\n${h.proc.output().slice(-3000)}`);
          });
          const listed = (await h.rest.data('GET', '/api/hubs')).hubs as { id: string; self: boolean }[];
          h.id = listed.find((x) => x.self)?.id ?? '';
          assert.ok(h.id, 'each hub names itself in GET /api/hubs');
        }
        // The balancer, with the configuration users deploy (scripts/haproxy-config.ts).
        const lb = await startHaproxy(
          tmp.dir,
          hubs.map((h) => new URL(h.url).host),
          { checkMs: 1000 },
        );
        procs.push(lb.proc);
        lbProc = lb.proc;

        // 30 nodes, 10 to a process (`test/helpers/sim-nodes.ts`: `runNode` per node). 24 go through
        // the balancer, each from its own loopback address, as 24 machines would: HAProxy hashes the
        // client's address. The other 6 take the list of hub URLs instead, two first on each hub.
        const urls = hubs.map((h) => h.url);
        for (let p = 0; p < NODES / PER_PROCESS; p++) {
          const nodes = [];
          for (let k = p * PER_PROCESS; k < (p + 1) * PER_PROCESS; k++) {
            const r = k % 3;
            nodes.push({
              id: `lb-sim-node-${String(k).padStart(2, '0')}`,
              hubs: k < 24 ? [lb.url] : [...urls.slice(r), ...urls.slice(0, r)],
              localAddress: `127.0.1.${k + 1}`,
            });
          }
          procs.push(
            startSimNodes({
              token: JOIN,
              stateDir: join(tmp.dir, `nodes${p}`),
              itemMs: 2,
              concurrency: 2,
              nodes,
            }),
          );
        }
        const spread = await waitFor(
          `${NODES} nodes online`,
          async () => {
            const { workers } = await (hubs[0] as (typeof hubs)[0]).rest.data(
              'GET',
              '/api/workers?online=true',
            );
            const perHub = new Map<string, number>();
            const balanced = new Set<string>();
            for (const w of workers as { id: string; hub: string }[]) {
              perHub.set(w.hub, (perHub.get(w.hub) ?? 0) + 1);
              if (Number(w.id.slice(-2)) < 24) balanced.add(w.hub);
            }
            return workers.length === NODES ? { perHub, balanced } : undefined;
          },
          120_000,
          250,
        );
        const on = (h: (typeof hubs)[0]) => spread.perHub.get(h.id) ?? 0;
        t.diagnostic(`nodes per hub: ${hubs.map(on).join(', ')}`);
        assert.ok(spread.balanced.size > 1, 'the balancer spread the nodes over the hubs by their addresses');
        // The hub with the most nodes is killed, the next is paused, the third lives throughout.
        const [victim, paused, survivor] = [...hubs].sort((a, b) => on(b) - on(a)) as [
          (typeof hubs)[0],
          (typeof hubs)[0],
          (typeof hubs)[0],
        ];
        assert.ok(on(victim) > 0 && on(paused) > 0, 'the hubs to kill and to pause have nodes');

        // Submitted through the balancer.
        const rest = new Rest(lb.url, OPERATOR);
        const sent = items(30_000, 7);
        const jobId = await rest.submit('noop', sent);
        const sealedAt = Date.now();
        const pairs = items(1000, 9);
        const pairJob = await rest.submit('noop', pairs, { redundancy: 2 });
        const done = async (id: string) =>
          Number(
            (
              await rows<{ n: string }>(
                'SELECT coalesce(sum(done_count), 0) AS n FROM job_counters WHERE job_id = $1',
                [id],
              )
            )[0]?.n,
          );

        // SIGKILL at 40%. Orphaned: the items still pending in the chunks the victim held.
        await waitFor('40% done', async () => (await done(jobId)) >= sent.length * 0.4, 180_000, 50);
        const held = await rows<{ id: string; first_id: string; last_id: string }>(
          'SELECT id, first_id, last_id FROM chunks WHERE hub_id = $1',
          [victim.id],
        );
        victim.proc.child.kill('SIGKILL');
        const killedAt = Date.now();
        const orphans = (
          await rows<{ id: string }>(
            `SELECT i.id FROM items i JOIN unnest($1::bigint[], $2::bigint[]) AS r (f, l)
             ON i.id BETWEEN r.f AND r.l WHERE i.state = 'pending'`,
            [held.map((c) => c.first_id), held.map((c) => c.last_id)],
          )
        ).map((r) => r.id);
        assert.ok(orphans.length > 0, `the killed hub held pending items (${held.length} chunks)`);
        await waitFor(
          "the dead hub's chunks taken up",
          async () =>
            Number(
              (
                await rows<{ n: string }>(
                  'SELECT COUNT(*) AS n FROM chunks WHERE id = ANY($1::bigint[]) AND (hub_id IS NULL OR hub_id = $2)',
                  [held.map((c) => c.id), victim.id],
                )
              )[0]?.n,
            ) === 0,
          60_000,
          20,
        );
        const takenUpMs = Date.now() - killedAt;
        const reaped = (
          await rows<{ state: string }>('SELECT state FROM hubs WHERE id = $1', [victim.id])
        )[0];
        assert.equal(reaped?.state, 'dead', 'the killed hub was reaped');
        // The balancer took it out, and every node is back, on the two live hubs.
        await waitFor(
          'HAProxy marks the killed hub down',
          () => lb.proc.output().includes(`Server hubs/hub${hubs.indexOf(victim) + 1} is DOWN`),
          30_000,
        );
        await waitFor(
          `${NODES} nodes online again`,
          async () => {
            const { workers } = await survivor.rest.data('GET', '/api/workers?online=true');
            return (
              workers.length === NODES && (workers as { hub: string }[]).every((w) => w.hub !== victim.id)
            );
          },
          60_000,
          250,
        );
        const backMs = Date.now() - killedAt;
        // Work for the hub to pause to hold: the first two jobs may be done by now.
        const third = items(6000, 11);
        const thirdJob = await rest.submit('noop', third);

        // SIGSTOP another hub while it holds chunks, until a live hub has reaped it: from then on
        // the store refuses every write under its old lease. What it stored under that lease is
        // counted in its epoch's slot; after SIGCONT that count must not move.
        await waitFor(
          'the hub to pause holds chunks',
          async () =>
            Number(
              (
                await rows<{ n: string }>('SELECT COUNT(*) AS n FROM chunks WHERE hub_id = $1', [paused.id])
              )[0]?.n,
            ) > 0,
          30_000,
          20,
        );
        const oldEpoch = Number(
          (await rows<{ epoch: string }>('SELECT epoch FROM hubs WHERE id = $1', [paused.id]))[0]?.epoch,
        );
        paused.proc.child.kill('SIGSTOP');
        const pausedAt = Date.now();
        await waitFor(
          'the paused hub reaped',
          async () =>
            (
              await rows("SELECT 1 FROM hubs WHERE id = $1 AND epoch = $2 AND state = 'dead'", [
                paused.id,
                oldEpoch,
              ])
            ).length === 1,
          30_000,
          20,
        );
        const slot = async () =>
          JSON.stringify(
            await rows(
              'SELECT job_id, done_count, failed_count FROM job_counters WHERE slot = $1 ORDER BY job_id',
              [oldEpoch % SLOTS],
            ),
          );
        const atFence = await slot();
        assert.notEqual(atFence, '[]', 'the paused hub had stored results under its old lease');
        // Paused three leases in all: its nodes' results pile up in its sockets meanwhile.
        await new Promise((ok) => setTimeout(ok, Math.max(0, pausedAt + LEASE_MS * 3 - Date.now())));
        paused.proc.child.kill('SIGCONT');
        await waitFor(
          'the paused hub registered again',
          () => paused.proc.output().includes('registered again'),
          30_000,
        );
        assert.match(paused.proc.output(), /lost its lease: fenced/);
        // It lives on under a new epoch (on a loaded machine a late renewal may fence it once more
        // before it settles: each time it registers again).
        await waitFor(
          'the paused hub live under a new epoch',
          async () =>
            (
              await rows("SELECT 1 FROM hubs WHERE id = $1 AND epoch > $2 AND state = 'live'", [
                paused.id,
                oldEpoch,
              ])
            ).length === 1,
          30_000,
          50,
        );

        for (const [id, n] of [
          [jobId, sent.length],
          [pairJob, pairs.length],
          [thirdJob, third.length],
        ] as const) {
          const view = await jobDone(survivor.rest, id, 180_000).catch(async (err: Error) => {
            const q = async (sql: string) => JSON.stringify(await rows(sql));
            const info = [
              await q('SELECT id, epoch, state, expires_at > now() AS held FROM hubs'),
              await q('SELECT id, job_id, first_id, last_id, cursor, hub_id, epoch FROM chunks'),
              await q('SELECT job_id, state, COUNT(*) FROM items GROUP BY 1, 2'),
            ];
            const outs = hubs.map((h, i) => `hub${i}: ${h.proc.output().slice(-1500)}`);
            throw new Error(`${err.message}\n${info.join('\n')}\n${outs.join('\n')}`);
          });
          assert.equal(view.done, n);
          // The balancer answers for the whole grid too.
          assert.equal((await rest.data('GET', `/api/jobs/${id}`)).state, 'completed');
          const k = await tally(url, id);
          assert.equal(k.items, n);
          assert.equal(k.done, n, 'every item done');
          assert.equal(k.results, n, 'one result row per item: none lost, none twice');
          assert.equal(k.distinct, n);
          // noop on the sim backend returns its input: what a single hub stores for these items.
          assert.equal(await wrongOutputs(url, id), 0, 'every result is its input, as one hub gives');
        }
        const jobMs = Date.now() - sealedAt;

        // Nothing stored under the fenced lease after the fence: its slot's counts did not move, and
        // no chunk is held under it.
        assert.equal(
          await slot(),
          atFence,
          'no result or failure counted under the old lease after the fence',
        );
        assert.equal(
          (await rows('SELECT 1 FROM chunks WHERE hub_id = $1 AND epoch = $2', [paused.id, oldEpoch])).length,
          0,
          'no chunk held under the old lease',
        );
        const epochs = (await rows<{ n: string }>('SELECT last_value AS n FROM hub_epochs'))[0]?.n;
        assert.ok(Number(epochs) < SLOTS, 'no later epoch shares the old lease’s counter slot');

        // `results.at` is when a hub accepted the result. Orphans accepted before the kill were in
        // a commit the dead hub had sent (Postgres finishes a statement whose client died); the
        // others ran again elsewhere (or were resent by their node).
        const rerun = (
          await rows<{ n: string; inflight: string; first: string; last: string }>(
            `SELECT count(*) AS n, count(*) FILTER (WHERE at < $2) AS inflight,
               min(at) FILTER (WHERE at >= $2) AS first, max(at) AS last
             FROM results WHERE item_id = ANY($1::bigint[])`,
            [orphans, killedAt],
          )
        )[0];
        assert.equal(Number(rerun?.n), orphans.length, 'every orphaned item has its result');
        t.diagnostic(
          `SIGKILL at 40%: ${held.length} chunks, ${orphans.length} pending items orphaned ` +
            `(${rerun?.inflight} of them in the dead hub's last commit); chunks taken up ${takenUpMs} ms ` +
            `after the kill, every node back on a live hub after ${backMs} ms; orphans stored again from ` +
            `${Number(rerun?.first) - killedAt} ms to ${Number(rerun?.last) - killedAt} ms after the kill ` +
            `(lease ${LEASE_MS} ms)`,
        );
        t.diagnostic(
          `${sent.length} + ${pairs.length} x2 items in ${jobMs} ms from the seal; test ${Date.now() - startedAt} ms`,
        );
      } catch (err) {
        // What the balancer saw (one line per request, and health check changes) says where it went.
        const said =
          lbProc
            ?.output()
            .split('\n')
            .filter((l) => !/ 200 "/.test(l)) ?? [];
        (err as Error).message += `\nHAProxy (but 200s):\n${said.slice(-40).join('\n')}`;
        throw err;
      } finally {
        await stopAll(procs);
        await db.end();
        await fresh.drop();
      }
    },
  );
});
