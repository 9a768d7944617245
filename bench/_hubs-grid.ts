/**
 * `npm run bench -- hubs --grid [--json] [--items 20000] [--nodes 6] [--failover-items 5000]
 * [--heartbeat-ms 500] [--warmup 5000]`: the whole grid on several hubs (`bench/hubs.ts` without
 * `--grid` measures the store alone).
 *
 * One no-op job (model `noop`) run by native sim nodes (`--item-ms 0`, 4 slots each) through real
 * `shardhub serve` processes: SQLite with one hub (the baseline, in the same run), then PostgreSQL
 * (one server, started here, a fresh database per case) with 1, 2 and 3 hub processes, the nodes
 * spread evenly over the hubs (each node knows every hub, its own first). Each case first runs a
 * job of `--warmup` items to completion, so what is measured is a hub that has been up a while
 * (compiled, pools grown), not its first minutes. Then, for 2 and 3 hubs, the same processes
 * "apart": each hub its own database, its own nodes and its share of the items as a job of its own,
 * sharing nothing. That is the control: what that many hub processes cost on this machine without
 * working together. Per case: items/s from the seal to the job's completion, and CPU µs per item of
 * each hub process, of the PostgreSQL server (postmaster and backends, from /proc) and of all nodes
 * together, over the same span; lock waits sampled every 50 ms as the store bench does.
 *
 * Failover, a separate run on 2 hubs with `--lease-ms 1500`: one hub is killed with SIGKILL at
 * about 40% of the job, and the time from the kill until none of the chunks it held is still
 * unheld or the dead hub's (as `test/integration/several-hubs.test.ts` measures it) is reported, with the job
 * still completing with one result per item.
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { treeCpuUs, sampleLocks } from './hubs.ts';
import { HUB_NODE_FLAGS } from '../server/node-flags.ts';
import { startPostgres, type TestPostgres } from '../test/helpers/postgres.ts';
import {
  Rest,
  freePort,
  jobDone,
  serveArgs,
  spawnTs,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../test/helpers/grid.ts';
import { packItems } from '../protocol/pack.ts';

const OPERATOR = 'op_hubs-bench-operator-token-0123456789';
const JOIN = 'join_hubs-bench-join-token-0123456789';
const UPLOAD = 500;
/** How long the idle cost is measured, before each case's seal. */
const IDLE_MS = 3000;

/**
 * With SHARDHUB_BENCH_PROF=DIR, each hub writes a V8 CPU profile (`--cpu-prof`) to DIR/NAME when it
 * exits: open it in Chrome's DevTools (Performance) to see where a case's hub CPU goes.
 */
function profileFlags(name: string): string[] {
  const dir = process.env.SHARDHUB_BENCH_PROF;
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${join(dir, name)}`] : [];
}

export interface GridRow {
  store: string;
  hubs: number;
  nodes: number;
  items: number;
  itemsPerS: number;
  /** CPU µs per item of each hub process (over all items: what hosting 1/N of the grid costs). */
  hubCpuUsPerItem: string;
  /** All hubs together. */
  hubsCpuUsPerItem: number;
  pgCpuUsPerItem: number | string;
  nodesCpuUsPerItem: number;
  /**
   * Read and write system calls of all hubs together per item: the hubs' messages and store round
   * trips: a count of work rather than of CPU time, though it too moved between runs and with the
   * number of processes on the machine (docs/performance.md).
   */
  hubSyscallsPerItem: number;
  /** Hubs + Postgres: what the grid's hub side costs per item. */
  serverCpuUsPerItem: number;
  /**
   * Hubs + Postgres CPU per second of wall time with the nodes connected and the job's items
   * uploaded but not sealed (ms/s): what the grid costs whatever it runs (ticks, leases, the
   * hub-to-hub channel, heartbeats).
   */
  idleServerMsPerS: number;
  /** {@link serverCpuUsPerItem} less the idle cost over the run's wall time. */
  serverCpuUsPerItemNetOfIdle: number;
  /** Transactions committed in the case's database per item (`pg_stat_database.xact_commit`). */
  pgXactsPerItem: number | string;
  lockWaitingMax: number | string;
  lockEvents: string;
}

export interface FailoverRow {
  hubs: number;
  leaseMs: number;
  items: number;
  /** Chunks the killed hub held when it was killed. */
  heldChunks: number;
  /** From SIGKILL until none of those chunks is unheld or still the dead hub's. */
  takenUpMs: number;
  /** From SIGKILL until the dead hub's row says `dead` (reaped by a live hub). */
  reapedMs: number;
  results: number;
  distinctResults: number;
}

/** Every process this bench started, so a failure or Ctrl-C still stops them. */
const live = new Set<Proc>();

function itemsOf(n: number) {
  return Array.from({ length: n }, (_, i) => {
    const x = new Float32Array([i, i + 0.25, i + 0.5, i + 0.75]);
    return {
      name: `i${String(i).padStart(7, '0')}`,
      tensors: [{ name: 'x', dtype: 'float32' as const, dims: [1, 4], data: new Uint8Array(x.buffer) }],
    };
  });
}

/** A fresh database on the server for one case (hubs of a case share it, cases share nothing). */
async function freshDatabase(server: TestPostgres, name: string): Promise<string> {
  const c = new pg.Client({ connectionString: server.url });
  await c.connect();
  try {
    await c.query(`CREATE DATABASE ${name}`);
  } finally {
    await c.end();
  }
  const u = new URL(server.url);
  u.pathname = `/${name}`;
  return u.toString();
}

interface Grid {
  hubs: { proc: Proc; url: string; rest: Rest; pid: number }[];
  nodes: Proc[];
  stop: () => Promise<void>;
}

async function stopProcs(procs: Proc[]): Promise<void> {
  for (const p of procs) {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
  }
  await Promise.all(
    procs.map((p) =>
      Promise.race([
        p.exited,
        new Promise((ok) => setTimeout(ok, 10_000)).then(() => p.child.kill('SIGKILL')),
      ]),
    ),
  );
  for (const p of procs) live.delete(p);
}

/** Starts `hubs` hub processes (on `store`, or SQLite when undefined) and `nodes` sim nodes. */
async function startGrid(
  dir: string,
  hubCount: number,
  nodeCount: number,
  store: string | undefined | (string | undefined)[],
  heartbeatMs: number,
  extra: string[] = [],
): Promise<Grid> {
  const storeOf = (i: number) => (Array.isArray(store) ? store[i] : store);
  const independent = Array.isArray(store);
  const hubs: Grid['hubs'] = [];
  const nodes: Proc[] = [];
  const stop = () => stopProcs([...nodes, ...hubs.map((h) => h.proc)]);
  try {
    for (let i = 0; i < hubCount; i++) {
      const port = await freePort();
      const proc = spawnTs(
        'server/cli.ts',
        serveArgs(port, join(dir, `hub${i}`), [
          ...(storeOf(i) ? ['--store', storeOf(i)!] : []),
          '--operator-token',
          OPERATOR,
          '--join-token',
          JOIN,
          '--heartbeat-ms',
          String(heartbeatMs),
          '--offline-after-ms',
          '2000',
          ...extra,
        ]),
        { SHARDHUB_LOG_LEVEL: 'error' },
        [...HUB_NODE_FLAGS, ...profileFlags(`${store ? 'pg' : 'sqlite'}${hubCount}-hub${i}`)],
      );
      live.add(proc);
      const url = `http://127.0.0.1:${port}`;
      hubs.push({ proc, url, rest: new Rest(url, OPERATOR), pid: proc.child.pid! });
    }
    for (const h of hubs) {
      await waitFor(
        'hub up',
        () => {
          if (h.proc.child.exitCode !== null) throw new Error(`hub exited: ${h.proc.output().slice(-2000)}`);
          return h.proc.output().includes('hub is up');
        },
        120_000,
      );
    }
    const urls = hubs.map((h) => h.url);
    for (let i = 0; i < nodeCount; i++) {
      const k = i % hubCount;
      const order = independent ? [urls[k]!] : [...urls.slice(k), ...urls.slice(0, k)];
      const node = startNode(
        order.join(','),
        JOIN,
        join(dir, `node${i}`),
        ['--backend', 'sim', '--item-ms', '0', '--concurrency', '4', '--id', `bench-sim-node-${i}`],
        { SHARDHUB_LOG_LEVEL: 'error' },
      );
      live.add(node);
      nodes.push(node);
    }
    // With a shared store every hub lists every hub's workers; with one hub it lists its own.
    for (const [k, h] of (independent ? hubs : hubs.slice(0, 1)).entries()) {
      const want = independent ? nodes.filter((_, i) => i % hubCount === k).length : nodeCount;
      await waitFor(
        `${want} nodes online`,
        async () =>
          ((await h.rest.data('GET', '/api/workers?online=true&limit=1000')).total as number) >= want,
        120_000,
        200,
      );
    }
    return { hubs, nodes, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Creates a job on `rest` and uploads its items, unsealed. */
async function upload(rest: Rest, n: number): Promise<string> {
  const job = await rest.data('POST', '/api/jobs', { model: 'noop', cache: false });
  const all = itemsOf(n);
  for (let i = 0; i < n; i += UPLOAD) {
    await rest.data('POST', `/api/jobs/${job.id}/items`, undefined, packItems(all.slice(i, i + UPLOAD)));
  }
  return job.id as string;
}

/** Read and write system calls `pid` has made (`/proc/PID/io`, all its threads). */
function syscalls(pid: number): number {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    return Number(/^syscr: (\d+)/m.exec(io)?.[1]) + Number(/^syscw: (\d+)/m.exec(io)?.[1]);
  } catch {
    return NaN;
  }
}

async function gridCase(
  server: TestPostgres,
  dir: string,
  store: 'sqlite' | 'postgres',
  hubCount: number,
  nodeCount: number,
  items: number,
  n: number,
  heartbeatMs: number,
  warmup: number,
  independent = false,
): Promise<GridRow> {
  // Independent: each hub its own database, its own nodes and its own share of the items, nothing
  // shared between hubs: what the same processes cost on this machine without working together.
  const urls =
    store !== 'postgres'
      ? [undefined]
      : independent
        ? await Promise.all(
            Array.from({ length: hubCount }, (_, i) => freshDatabase(server, `hubs_grid_${n}_${i}`)),
          )
        : [await freshDatabase(server, `hubs_grid_${n}`)];
  const url = urls[0];
  const grid = await startGrid(
    join(dir, `case${n}`),
    hubCount,
    nodeCount,
    independent ? urls : url,
    heartbeatMs,
  );
  try {
    const front = grid.hubs[0]!;
    const targets = independent ? grid.hubs : [front];
    const share = (total: number, k: number) =>
      Math.floor(total / targets.length) + (k < total % targets.length ? 1 : 0);
    if (warmup > 0) {
      // A job run to completion first, so every hub's code paths are compiled and its pools grown
      // before the measured job: what a hub that has been up a while costs per item.
      const ws = await Promise.all(targets.map((h, k) => upload(h.rest, share(warmup, k))));
      await Promise.all(targets.map((h, k) => h.rest.data('POST', `/api/jobs/${ws[k]}/seal`)));
      await Promise.all(targets.map((h, k) => jobDone(h.rest, ws[k]!, 600_000, 50)));
    }
    const jobIds = await Promise.all(targets.map((h, k) => upload(h.rest, share(items, k))));
    const locks = url ? sampleLocks(server.url) : undefined; // cluster-wide views; kept out of the case database's counts
    const cpu = () => ({
      syscalls: grid.hubs.reduce((a, h) => a + syscalls(h.pid), 0),
      hubs: grid.hubs.map((h) => treeCpuUs(h.pid)),
      pg: url && server.pid ? treeCpuUs(server.pid) : NaN,
      nodes: grid.nodes.reduce((a, p) => a + treeCpuUs(p.child.pid!), 0),
    });
    const xacts = async () => {
      let sum = 0;
      for (const u of urls) {
        if (!u) return NaN;
        const c = new pg.Client({ connectionString: u });
        await c.connect();
        try {
          const r = await c.query<{ n: string }>(
            'SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()',
          );
          sum += Number(r.rows[0]?.n);
        } finally {
          await c.end();
        }
      }
      return sum;
    };
    // What the grid costs doing nothing, over the same processes, before the seal.
    const serverUs = (c: ReturnType<typeof cpu>) =>
      c.hubs.reduce((a, b) => a + b, 0) + (Number.isNaN(c.pg) ? 0 : c.pg);
    const i0 = cpu();
    const idleT0 = performance.now();
    await new Promise((ok) => setTimeout(ok, IDLE_MS));
    const idleMsPerS = (serverUs(cpu()) - serverUs(i0)) / (performance.now() - idleT0);
    const x0 = await xacts();
    const c0 = cpu();
    const t0 = performance.now();
    await Promise.all(targets.map((h, k) => h.rest.data('POST', `/api/jobs/${jobIds[k]}/seal`)));
    const views = await Promise.all(targets.map((h, k) => jobDone(h.rest, jobIds[k]!, 600_000, 50)));
    const wall = performance.now() - t0;
    const c1 = cpu();
    const lockFigures = await locks?.stop();
    // Backends flush their statistics at most once a second.
    if (url) await new Promise((ok) => setTimeout(ok, 1100));
    const x1 = await xacts();
    const done = views.reduce((a, v) => a + (v.done as number), 0);
    if (done !== items) throw new Error(`${store} x${hubCount}: ${done} of ${items} items done`);
    const hubCpu = c1.hubs.map((v, i) => v - c0.hubs[i]!);
    const hubsCpu = hubCpu.reduce((a, b) => a + b, 0);
    const pgCpu = c1.pg - c0.pg;
    const per = (us: number) => Number((us / items).toFixed(1));
    return {
      store: independent ? `${store}, apart` : store,
      hubs: hubCount,
      nodes: nodeCount,
      items,
      itemsPerS: Math.round((items / wall) * 1000),
      hubCpuUsPerItem: hubCpu.map((v) => (v / items).toFixed(1)).join(' / '),
      hubsCpuUsPerItem: per(hubsCpu),
      pgCpuUsPerItem: Number.isNaN(pgCpu) ? '-' : per(pgCpu),
      nodesCpuUsPerItem: per(c1.nodes - c0.nodes),
      hubSyscallsPerItem: Number(((c1.syscalls - c0.syscalls) / items).toFixed(3)),
      serverCpuUsPerItem: per(hubsCpu + (Number.isNaN(pgCpu) ? 0 : pgCpu)),
      idleServerMsPerS: Number(idleMsPerS.toFixed(1)),
      serverCpuUsPerItemNetOfIdle: per(hubsCpu + (Number.isNaN(pgCpu) ? 0 : pgCpu) - idleMsPerS * wall),
      pgXactsPerItem: url ? Number(((x1 - x0) / items).toFixed(2)) : '-',
      lockWaitingMax: lockFigures ? lockFigures.max : '-',
      lockEvents: lockFigures
        ? Object.entries(lockFigures.byEvent)
            .map(([e, k]) => `${e}:${k}`)
            .join(' ') || 'none'
        : '-',
    };
  } finally {
    await grid.stop();
  }
}

async function failover(
  server: TestPostgres,
  dir: string,
  hubCount: number,
  nodeCount: number,
  items: number,
  heartbeatMs: number,
): Promise<FailoverRow> {
  const LEASE_MS = 1500;
  const url = await freshDatabase(server, 'hubs_grid_failover');
  const grid = await startGrid(join(dir, 'failover'), hubCount, nodeCount, url, heartbeatMs, [
    '--lease-ms',
    String(LEASE_MS),
  ]);
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const [front, victim] = grid.hubs as [Grid['hubs'][0], Grid['hubs'][0]];
    const victimId = (
      (await victim.rest.data('GET', '/api/hubs')).hubs as { id: string; self: boolean }[]
    ).find((h) => h.self)?.id;
    if (!victimId) throw new Error('the hub to kill does not say its id (GET /api/hubs)');
    const jobId = await upload(front.rest, items);
    await front.rest.data('POST', `/api/jobs/${jobId}/seal`);
    const count = async (sql: string, params: unknown[]) =>
      Number((await c.query<{ n: string }>(sql, params)).rows[0]?.n);
    await waitFor(
      '40% done',
      async () =>
        (await count("SELECT COUNT(*) AS n FROM items WHERE job_id = $1 AND state = 'done'", [jobId])) >=
        items * 0.4,
      120_000,
      10,
    );
    const held = (
      await c.query<{ id: string }>('SELECT id FROM chunks WHERE hub_id = $1', [victimId])
    ).rows.map((r) => r.id);
    victim.proc.child.kill('SIGKILL');
    const killedAt = performance.now();
    let reapedMs = NaN;
    await waitFor(
      "the dead hub's chunks taken up",
      async () => {
        if (Number.isNaN(reapedMs)) {
          const r = await c.query<{ state: string }>('SELECT state FROM hubs WHERE id = $1', [victimId]);
          if (r.rows[0]?.state === 'dead') reapedMs = performance.now() - killedAt;
        }
        return (
          (await count(
            'SELECT COUNT(*) AS n FROM chunks WHERE id = ANY($1::bigint[]) AND (hub_id IS NULL OR hub_id = $2)',
            [held, victimId],
          )) === 0
        );
      },
      60_000,
      10,
    );
    const takenUpMs = performance.now() - killedAt;
    await jobDone(front.rest, jobId, 300_000, 50);
    if (Number.isNaN(reapedMs)) {
      const r = await c.query<{ state: string }>('SELECT state FROM hubs WHERE id = $1', [victimId]);
      if (r.rows[0]?.state === 'dead') reapedMs = takenUpMs;
    }
    return {
      hubs: hubCount,
      leaseMs: LEASE_MS,
      items,
      heldChunks: held.length,
      takenUpMs: Math.round(takenUpMs),
      reapedMs: Math.round(reapedMs),
      results: await count('SELECT COUNT(*) AS n FROM results WHERE job_id = $1', [jobId]),
      distinctResults: await count('SELECT COUNT(DISTINCT item_id) AS n FROM results WHERE job_id = $1', [
        jobId,
      ]),
    };
  } finally {
    await c.end();
    await grid.stop();
  }
}

export async function runGrid(opts: {
  items: number;
  nodes: number;
  hubCounts: number[];
  failoverItems: number;
  /** The hubs' `--heartbeat-ms` (their housekeeping tick is half of it). */
  heartbeatMs: number;
  /** Items of a job each case runs to completion before the measured one (0: none). */
  warmup: number;
  progress: (s: string) => void;
}): Promise<{ rows: GridRow[]; failover: FailoverRow } | { skip: string }> {
  const tmp = tempDir('shardhub-hubs-grid-');
  let server: TestPostgres | undefined;
  const cleanUp = async () => {
    await stopProcs([...live]);
    await server?.stop();
    server = undefined;
    tmp.cleanup();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    void cleanUp().finally(() => process.kill(process.pid, sig));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const started = await startPostgres();
    if ('skip' in started) return started;
    server = started;
    const rows: GridRow[] = [];
    let n = 0;
    for (const [store, hubs, apart] of [
      ['sqlite', 1, false] as const,
      ...opts.hubCounts.map((h) => ['postgres', h, false] as const),
      ...opts.hubCounts.filter((h) => h > 1).map((h) => ['postgres', h, true] as const),
    ]) {
      opts.progress(
        `grid: ${store} x${hubs}${apart ? ' apart' : ''}, ${opts.nodes} nodes, ${opts.items} items...`,
      );
      rows.push(
        await gridCase(
          server,
          tmp.dir,
          store,
          hubs,
          opts.nodes,
          opts.items,
          n++,
          opts.heartbeatMs,
          opts.warmup,
          apart,
        ),
      );
    }
    opts.progress(`grid: failover, postgres x2, SIGKILL one hub at 40%...`);
    const fo = await failover(server, tmp.dir, 2, opts.nodes, opts.failoverItems, opts.heartbeatMs);
    return { rows, failover: fo };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanUp();
  }
}
