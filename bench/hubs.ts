/**
 * `npm run bench -- hubs [--json] [--items 20000] [--chunk 256] [--batch 64] [--hubs 1,2,3]`
 * `npm run bench -- hubs --grid [--json] [--items 20000] [--nodes 6] [--hubs 1,2,3] [--failover-items N]
 *   [--heartbeat-ms 500] [--warmup N]`
 *
 * With `--grid`, the whole grid instead: hub processes, sim nodes, failover (`bench/_hubs-grid.ts`).
 * Without it:
 * The store's side of several hubs, without sockets or workers: 1, 2 and 3 "hubs" (store clients in
 * processes of their own, `bench/_hubs-child.ts`) drain one job through the PostgreSQL store,
 * chunk by chunk, making the calls a hub makes per chunk (claim, advance, pending ids, assignments,
 * inputs, results in batches, finish); the SQLite store with one hub is the baseline, in the same
 * run. Reported per case: items committed per second, CPU µs per item of each hub process and of the
 * PostgreSQL server (postmaster and backends, from /proc), and lock waits sampled every 50 ms from
 * `pg_stat_activity` (backends waiting on a lock) and `pg_locks` (ungranted locks).
 *
 * PostgreSQL runs on this machine (started by `test/helpers/postgres.ts`, fsync off): on 2 cores
 * more hubs cannot add throughput; what the figures show is what each item costs as hubs are
 * added, and whether hubs queue on each other's locks.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { ROOT, printTable } from './_grid.ts';
import { flag, numFlag } from './_scale.ts';
import type { ChildReport, ChildTask } from './_hubs-child.ts';
import type { AsyncStore } from '../server/store/async-store.ts';
import { PgStore } from '../server/store/pg-store.ts';
import { SqliteAsyncStore } from '../server/store/sqlite-async-store.ts';
import { startPostgres } from '../test/helpers/postgres.ts';
import { newJob } from '../test/helpers/store-rows.ts';

/** Clock ticks per second of /proc/<pid>/stat times (Linux: USER_HZ, 100 everywhere it runs). */
const TICKS = 100;

/** CPU µs of a process and of its children, waited-for ones included (backends that have exited). */
export function treeCpuUs(pid: number): number {
  const stat = (p: number | string) => {
    const s = readFileSync(`/proc/${p}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  };
  try {
    const own = stat(pid); // fields from the 3rd: state=0, ppid=1, utime=11, stime=12, cutime=13, cstime=14
    let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
    for (const p of readdirSync('/proc')) {
      if (!/^\d+$/.test(p)) continue;
      try {
        const f = stat(p);
        if (Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
      } catch {
        // gone meanwhile
      }
    }
    return (ticks * 1e6) / TICKS;
  } catch {
    return NaN;
  }
}

interface Case {
  store: 'sqlite' | 'postgres';
  hubs: number;
}

interface Row {
  store: string;
  hubs: number;
  items: number;
  itemsPerS: number;
  /** CPU µs per item of each hub process, over the items it committed. */
  hubCpuUsPerItem: string;
  /** All hubs' CPU µs over all items. */
  hubsCpuUsPerItem: number;
  pgCpuUsPerItem: number | string;
  lockWaitingMean: number | string;
  lockWaitingMax: number | string;
  ungrantedMax: number | string;
  /** Lock-wait samples by wait event (e.g. `extend`: growing a table; `tuple`/`transactionid`: rows). */
  lockEvents: string;
}

async function prepare(store: AsyncStore, jobId: string, items: number): Promise<void> {
  await store.createJob(newJob(jobId, { modelName: 'bench' }));
  const input = new Uint8Array(16);
  for (let i = 0; i < items; i += 2000) {
    const n = Math.min(2000, items - i);
    await store.appendItems(
      jobId,
      Array.from({ length: n }, (_, k) => ({ name: `i${i + k}`, inputs: input })),
    );
  }
  await store.updateJob(jobId, { state: 'queued' });
}

/** Forks a hub process and gives it its task; resolves once it registered. */
function startChild(task: ChildTask): Promise<{ child: ChildProcess; done: Promise<ChildReport> }> {
  const child = fork(join(ROOT, 'bench/_hubs-child.ts'), [], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    let resolveDone: (r: ChildReport) => void;
    let rejectDone: (e: Error) => void;
    const done = new Promise<ChildReport>((res, rej) => {
      resolveDone = res;
      rejectDone = rej;
    });
    done.catch(() => {}); // reported where awaited
    child.on('message', (m: { type: string; report?: ChildReport; message?: string }) => {
      if (m.type === 'ready') resolve({ child, done });
      else if (m.type === 'done') resolveDone(m.report!);
      else if (m.type === 'error') {
        const err = new Error(`hub ${task.hubId}: ${m.message}`);
        reject(err);
        rejectDone(err);
      }
    });
    child.once('exit', (code) => {
      const err = new Error(`hub ${task.hubId} exited with ${code}`);
      reject(err);
      rejectDone(err);
    });
    child.send(task);
  });
}

/** Lock waits seen by the sampler. */
interface LockFigures {
  /** Backends waiting on a lock, mean over samples. */
  mean: number;
  max: number;
  ungrantedMax: number;
  /** Samples of a backend waiting, by what it waited for (`pg_stat_activity.wait_event`). */
  byEvent: Record<string, number>;
}

/** Samples lock waits on the server every 50 ms until stopped. */
export function sampleLocks(url: string): { stop: () => Promise<LockFigures> } {
  const client = new pg.Client({ connectionString: url });
  let running = true;
  const waiting: number[] = [];
  const byEvent: Record<string, number> = {};
  let ungrantedMax = 0;
  const loop = (async () => {
    await client.connect();
    while (running) {
      const r = await client.query<{ event: string | null; n: number }>(
        `SELECT wait_event AS event, count(*)::int AS n FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' GROUP BY wait_event
         UNION ALL SELECT '(ungranted)', count(*)::int FROM pg_locks WHERE NOT granted`,
      );
      let n = 0;
      for (const row of r.rows) {
        if (row.event === '(ungranted)') ungrantedMax = Math.max(ungrantedMax, row.n);
        else {
          n += row.n;
          byEvent[row.event ?? '?'] = (byEvent[row.event ?? '?'] ?? 0) + row.n;
        }
      }
      waiting.push(n);
      await new Promise((res) => setTimeout(res, 50));
    }
    await client.end();
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      const mean = waiting.reduce((a, b) => a + b, 0) / Math.max(1, waiting.length);
      return { mean, max: Math.max(0, ...waiting), ungrantedMax, byEvent };
    },
  };
}

async function runCase(
  c: Case,
  opts: { items: number; chunk: number; batch: number; dir: string; pgUrl?: string; pgPid?: number },
  n: number,
): Promise<Row> {
  const jobId = 'bench';
  const schema = `bench_${n}`;
  const where = c.store === 'postgres' ? opts.pgUrl! : join(opts.dir, `hubs-${n}.sqlite`);
  const setup =
    c.store === 'postgres'
      ? await PgStore.open(where, { schema, chunkItems: opts.chunk })
      : await SqliteAsyncStore.open(where, { chunkItems: opts.chunk });
  await prepare(setup, jobId, opts.items);
  await setup.close();

  const children = await Promise.all(
    Array.from({ length: c.hubs }, (_, i) =>
      startChild({ kind: c.store, where, schema, hubId: `hub${i + 1}`, jobId, batch: opts.batch }),
    ),
  );
  const locks = c.store === 'postgres' ? sampleLocks(where) : undefined;
  const pg0 = opts.pgPid && c.store === 'postgres' ? treeCpuUs(opts.pgPid) : NaN;
  for (const ch of children) ch.child.send('go');
  const reports = await Promise.all(children.map((ch) => ch.done));
  const lockFigures = await locks?.stop();
  for (const ch of children) if (ch.child.connected) ch.child.disconnect();
  await Promise.all(
    children.map((ch) => (ch.child.exitCode === null ? new Promise((r) => ch.child.once('exit', r)) : null)),
  );
  await new Promise((r) => setTimeout(r, 300)); // backends of the closed pools exit and are reaped
  const pgCpu = opts.pgPid && c.store === 'postgres' ? treeCpuUs(opts.pgPid) - pg0 : NaN;

  const items = reports.reduce((a, r) => a + r.items, 0);
  if (items !== opts.items)
    throw new Error(`${c.store} x${c.hubs}: ${items} results stored, expected ${opts.items}`);
  const wall = Math.max(...reports.map((r) => r.wallMs));
  const hubsCpu = reports.reduce((a, r) => a + r.cpuUs, 0);
  return {
    store: c.store,
    hubs: c.hubs,
    items,
    itemsPerS: Math.round((items / wall) * 1000),
    hubCpuUsPerItem: reports.map((r) => (r.items ? (r.cpuUs / r.items).toFixed(1) : '-')).join(' / '),
    hubsCpuUsPerItem: Number((hubsCpu / items).toFixed(1)),
    pgCpuUsPerItem: Number.isNaN(pgCpu) ? '-' : Number((pgCpu / items).toFixed(1)),
    lockWaitingMean: lockFigures ? Number(lockFigures.mean.toFixed(2)) : '-',
    lockWaitingMax: lockFigures ? lockFigures.max : '-',
    ungrantedMax: lockFigures ? lockFigures.ungrantedMax : '-',
    lockEvents: lockFigures
      ? Object.entries(lockFigures.byEvent)
          .map(([e, n]) => `${e}:${n}`)
          .join(' ') || 'none'
      : '-',
  };
}

export async function main(args: string[]): Promise<void> {
  if (args.includes('--grid')) return grid(args);
  const json = args.includes('--json');
  const items = numFlag(args, 'items', 20_000);
  const chunk = numFlag(args, 'chunk', 256);
  const batch = numFlag(args, 'batch', 64);
  const hubCounts = (flag(args, 'hubs') ?? '1,2,3').split(',').map(Number);
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-hubs-'));
  const server = await startPostgres();
  if ('skip' in server) {
    process.stderr.write(`hubs: ${server.skip}\n`);
    process.exitCode = 2;
    return;
  }
  const rows: Row[] = [];
  try {
    const cases: Case[] = [
      { store: 'sqlite', hubs: 1 },
      ...hubCounts.map((h) => ({ store: 'postgres' as const, hubs: h })),
    ];
    let n = 0;
    for (const c of cases) {
      if (!json) process.stderr.write(`${c.store} x${c.hubs}...\n`);
      rows.push(await runCase(c, { items, chunk, batch, dir, pgUrl: server.url, pgPid: server.pid }, n++));
    }
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  if (json) {
    process.stdout.write(`${JSON.stringify({ bench: 'hubs', items, chunk, batch, rows }, null, 2)}\n`);
  } else {
    printTable(rows as unknown as Record<string, unknown>[]);
  }
}

/** `--grid`: the whole grid (hub processes, sim nodes) on SQLite and on PostgreSQL, and failover. */
async function grid(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const items = numFlag(args, 'items', 20_000);
  const nodes = numFlag(args, 'nodes', 6);
  const failoverItems = numFlag(args, 'failover-items', Math.round(items / 4));
  const warmup = numFlag(args, 'warmup', Math.round(items / 4));
  const hubCounts = (flag(args, 'hubs') ?? '1,2,3').split(',').map(Number);
  const { runGrid } = await import('./_hubs-grid.ts');
  const out = await runGrid({
    items,
    nodes,
    hubCounts,
    failoverItems,
    heartbeatMs: numFlag(args, 'heartbeat-ms', 500),
    warmup,
    progress: (s) => {
      if (!json) process.stderr.write(`${s}\n`);
    },
  });
  if ('skip' in out) {
    process.stderr.write(`hubs: ${out.skip}\n`);
    process.exitCode = 2;
    return;
  }
  const base = out.rows.find((r) => r.store === 'sqlite');
  const pg1 = out.rows.find((r) => r.store === 'postgres' && r.hubs === 1);
  const pgRows = out.rows.filter((r) => r.store === 'postgres');
  const apartRows = out.rows.filter((r) => r.store === 'postgres, apart');
  const server = pgRows.map((r) => r.serverCpuUsPerItem);
  const net = pgRows.map((r) => r.serverCpuUsPerItemNetOfIdle);
  const spread = (v: number[]) => (v.length ? Number((Math.max(...v) / Math.min(...v)).toFixed(2)) : null);
  const goals = {
    /** Hubs + Postgres CPU per item, highest over lowest across the Postgres cases (goal: ≤ 1.15). */
    serverCostSpread: spread(server),
    /** The same, less each case's idle cost over its run: what the items themselves cost. */
    serverCostSpreadNetOfIdle: spread(net),
    /**
     * Per hub count: hubs + Postgres CPU per item of N hubs on one store over N hubs that share
     * nothing (each its own database, nodes and items): what working together costs, net of
     * running that many processes on this machine.
     */
    sharedOverApart: Object.fromEntries(
      apartRows.flatMap((a) => {
        const shared = pgRows.find((r) => r.hubs === a.hubs);
        return shared
          ? [[a.hubs, Number((shared.serverCpuUsPerItem / a.serverCpuUsPerItem).toFixed(2))]]
          : [];
      }),
    ) as Record<number, number>,
    /** One Postgres hub's items/s over the SQLite hub's (goal: ≥ 0.40). */
    pgOneHubOfSqlite: base && pg1 ? Number((pg1.itemsPerS / base.itemsPerS).toFixed(2)) : null,
  };
  if (json) {
    process.stdout.write(
      `${JSON.stringify({ bench: 'hubs', mode: 'grid', items, nodes, rows: out.rows, failover: out.failover, goals }, null, 2)}\n`,
    );
    return;
  }
  printTable(out.rows as unknown as Record<string, unknown>[]);
  process.stdout.write('\n');
  printTable([out.failover] as unknown as Record<string, unknown>[]);
  process.stdout.write(
    `\nserver CPU/item (hubs + Postgres) highest/lowest over 1-${Math.max(...hubCounts)} Postgres hubs: ` +
      `${goals.serverCostSpread} (goal ≤ 1.15), less the idle cost: ${goals.serverCostSpreadNetOfIdle}; ` +
      `one Postgres hub / SQLite hub items/s: ${goals.pgOneHubOfSqlite} (goal ≥ 0.40)\n` +
      `hubs on one store / as many hubs apart (nothing shared), CPU per item: ${
        Object.entries(goals.sharedOverApart)
          .map(([n, r]) => `${n} hubs ${r}`)
          .join(', ') || '-'
      }\n` +
      `Each case first runs a job of ${warmup} items to completion (--warmup), then measures the next one.\n` +
      'A hub on a shared store keeps max(64, 2 x its slots) items queued, up to 16 times that while its\n' +
      'claim passes come less than 250 ms apart, claiming chunks as its queue runs low.\n' +
      'On 2 cores the hubs, PostgreSQL and the nodes share two CPUs: more hubs cannot add CPU. Per-item CPU\n' +
      'includes what each process spends per second (ticks, heartbeats, leases, polling): idleServerMsPerS is\n' +
      'that cost, measured for 3 s before the seal with the nodes connected.\n',
  );
}
