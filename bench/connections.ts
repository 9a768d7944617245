/**
 * `npm run bench -- connections [--json] [--workers 2000] [--baseline 32] [--procs CORES]
 *  [--item-ms 1000] [--seconds 20] [--nice 0] [--profile DIR]`
 *
 * Thousands of workers on one hub: 2,000 sim workers (the real run loop, `WorkerAgent`, each on its
 * own Socket.IO connection with heartbeats at the hub's default interval of 2 s), spread over
 * `--procs` processes (default: one per core), while a job runs; the hub in a process of its own.
 *
 * - Hub RSS: the peak resident memory of the hub process while the job runs (sampled every second)
 *   and over its whole life (`resourceUsage().maxRSS`), all connections open.
 * - Assignment latency, as a worker sees it: from the moment one of its items finished (its
 *   capacity freed) to the arrival of the shard the hub sent in answer to that result. It includes
 *   the worker's own result batching, the hub's queueing behind 2,000 other connections, its work on
 *   the result and the shard, and the wire. Measured for every shard sent while the worker had a
 *   results message unacknowledged (the hub tops a worker up while handling its results and sends
 *   the shard before the ack); see `_worker-child.ts`. Items take `--item-ms` (1 s: every worker
 *   finishes one item a second, 2,000 items/s in all), so the hub is loaded but not saturated: the
 *   figure is the latency of a busy hub, not of a queue that grows without bound. Worker speeds
 *   are spread +-20% (`--spread`): with identical speeds every worker finishes at the same instant
 *   each second and the figure measures a 2,000-message burst instead (`--spread 0` shows that).
 * - Baseline, in the same run: the same measurement with `--baseline` workers (32) first, a fresh
 *   hub each time: the latency a small grid sees, and the hub's memory without the connections.
 *   `--json` prints one object per run, the baseline's marked `"baseline": true`.
 * - `--nice N` runs the worker processes at niceness N (10: they yield the CPU to the hub). The
 *   2,000 workers stand for 2,000 machines, but here they share the hub's cores: in the job's first
 *   second, when every worker's first result arrives at once, they are busy too and take CPU the hub
 *   is waiting for. The default (0) measures the hub with that competition; 10 measures it without.
 *   `workers_cores` is what the worker processes took meanwhile (cores, from their `cpuUsage()`).
 * - One worker process per core by default: each process, and each thread in it, gets an equal turn
 *   on the cores, so the more processes, the smaller the hub's share in that second. 8 processes gave
 *   p99 105 and 116 ms, 4 gave 17-43 ms (median 28, 6 runs), 2 gave 10-27 ms (median 14, 6 runs,
 *   alternated with those). Each process still holds its workers' sockets apart, as separate
 *   machines would.
 * - All clocks are wall clocks of one machine (`performance.timeOrigin + now()`).
 * - Needs one file descriptor per connection in the hub and in the worker processes: the benchmark
 *   checks `ulimit -n` first and says what to raise.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { ROOT, printTable } from './_grid.ts';
import type { GcPause } from './_gc.ts';
import type { RpcChild } from './_rpc.ts';
import {
  flag,
  numFlag,
  percentile,
  profiled,
  startHubProcess,
  startWorkerProcesses,
  stopAll,
  takeCounts,
  trustedNodes,
  warmUp,
} from './_scale.ts';

/** The soft limit on open files of this process (inherited by the children), or undefined. */
function openFilesLimit(): number | undefined {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const soft = line?.split(/\s{2,}/)[1];
    return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
  } catch {
    return undefined;
  }
}

interface Samples {
  freed: Float64Array;
  sent: Float64Array;
  at: Float64Array;
  untimed: number;
}

/** Runs the connections benchmark and prints its table (or JSON). */
export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const workers = numFlag(args, 'workers', 2000);
  const procs = numFlag(args, 'procs', availableParallelism());
  const itemMs = numFlag(args, 'item-ms', 1000);
  const seconds = numFlag(args, 'seconds', 20);
  const spread = numFlag(args, 'spread', 0.2);
  const baseline = numFlag(args, 'baseline', 32);
  const nice = numFlag(args, 'nice', 0);
  const profile = flag(args, 'profile') ? join(ROOT, flag(args, 'profile') as string) : undefined;
  const limit = openFilesLimit();
  const need = workers + 200;
  if (limit !== undefined && limit < need) {
    throw new Error(
      `open files limit is ${limit}; ${workers} connections need about ${need} in the hub: run \`ulimit -n ${need * 2}\` first`,
    );
  }
  const log = (s: string) => !json && process.stderr.write(`${s}\n`);

  // Baseline in the same run: the same job, per worker, with a small grid.
  const counts = baseline > 0 && baseline < workers ? [baseline, workers] : [workers];
  const rows: Row[] = [];
  for (const n of counts) {
    rows.push(await measure(n, { procs: Math.min(procs, n), itemMs, seconds, spread, nice, profile }, log));
  }
  const row = rows[rows.length - 1] as Row;
  if (json) {
    for (const r of rows) {
      process.stdout.write(
        `${JSON.stringify({
          workers: r.connected,
          rss_mb: Math.round(r.rss_mb),
          p50_ms: Number(r.p50_ms.toFixed(2)),
          p99_ms: Number(r.p99_ms.toFixed(2)),
          hub_cpu_us_per_msg: Math.round(r.hub_cpu_us_per_msg),
          workers_cores: Number(r.workers_cores.toFixed(2)),
          procs: Math.min(procs, r.workers),
          ...(nice ? { nice } : {}),
          ...(r === row ? {} : { baseline: true }),
        })}\n`,
      );
    }
    return;
  }
  process.stdout.write(
    `connections: ${workers} sim workers (WorkerAgent, own Socket.IO connection each, heartbeats every 2 s) ` +
      `in ${procs} processes${nice ? ` at nice ${nice}` : ''}, ${itemMs} ms items (speeds +-${spread * 100}%); hub in its own process;` +
      ` first row: the baseline, the same load per worker with ${counts[0]} workers\n\n`,
  );
  printTable(rows as unknown as Record<string, unknown>[]);
  process.stdout.write(
    `\np50/p99/max_ms: a worker's item finishing -> the hub's refill arriving at that worker` +
      ` (sent_*: from its results message leaving instead); samples: refills timed; untimed:` +
      ` other shards. rss_mb: hub peak RSS during the job (idle: before it; max: process life).` +
      ` loop_p99_ms: hub event-loop delay. hub_cpu_us_per_msg: the hub's CPU from seal to completion (results, heartbeats, refills, acks) per items:done message. Targets: p99 <= 50 ms, RSS <= 1 GB.\n`,
  );
}

type Row = Awaited<ReturnType<typeof measure>>;

/** One hub process and `workers` sim workers: connect, warm up, run a job, take the figures. */
async function measure(
  workers: number,
  o: { procs: number; itemMs: number; seconds: number; spread: number; nice: number; profile?: string },
  log: (s: string) => void,
) {
  const { procs, itemMs, seconds, spread, nice, profile } = o;
  const hub = await startHubProcess(trustedNodes());
  let children: RpcChild[] = [];
  try {
    const t0 = Date.now();
    children = await startWorkerProcesses(hub, {
      count: workers,
      procs,
      concurrency: 1,
      itemMs,
      spread,
      timing: true,
      connectBatch: 50,
      nice,
    });
    log(`${workers} workers registered in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // Every worker benchmarks the model (a warm-up job of two items each).
    await warmUp(hub, 'noop', workers, workers * 2);
    log('warm-up done');
    const memIdle = await hub.rpc.call<{ rssMb: number }>('mem');
    for (const c of children) await c.call('takeSamples');

    // Enough items to keep every worker busy for `seconds`.
    const items = Math.round((workers * seconds * 1000) / itemMs);
    const jobId = await hub.rpc.call<string>('submit', { model: 'noop', items });
    let peakRss = memIdle.rssMb;
    await takeCounts(children); // from zero: the warm-up's messages are not the job's
    const workersCpu = () => Promise.all(children.map((c) => c.call<{ cpuUs: number }>('cpu')));
    const cpu0 = await workersCpu();
    const gcPauses = () => Promise.all([hub.rpc, ...children].map((c) => c.call<GcPause[]>('gcPauses')));
    await gcPauses(); // from here on
    const { start, end, lag } = await profiled([hub.rpc], profile, 'connections', async () => {
      await hub.rpc.call('lagStart');
      const start = await hub.rpc.call<{ cpuUs: number; t: number }>('seal', { jobId });
      const sampler = setInterval(() => {
        void hub.rpc
          .call<{ rssMb: number }>('mem')
          .then((m) => (peakRss = Math.max(peakRss, m.rssMb)))
          .catch(() => undefined);
      }, 1000);
      try {
        const end = await hub.rpc.call<{ cpuUs: number; t: number }>('waitJob', { jobId });
        const lag = await hub.rpc.call<{ p50Ms: number; p99Ms: number; maxMs: number }>('lagStop');
        return { start, end, lag };
      } finally {
        clearInterval(sampler);
      }
    });
    const cpu1 = await workersCpu();
    const gcs = await gcPauses();
    const workersCpuUs = cpu1.reduce((n, c, i) => n + c.cpuUs - (cpu0[i]?.cpuUs ?? 0), 0);
    const { resultMsgs } = await takeCounts(children);
    const mem = await hub.rpc.call<{ rssMb: number; maxRssMb: number; heapMb: number }>('mem');
    peakRss = Math.max(peakRss, mem.rssMb);
    const stats = await Promise.all(
      children.map((c) => c.call<{ connected: number; serverDisconnects: number }>('stats')),
    );
    const samples = await Promise.all(children.map((c) => c.call<Samples>('takeSamples')));
    const freed = Float64Array.from(samples.flatMap((s) => [...s.freed])).sort();
    const sent = Float64Array.from(samples.flatMap((s) => [...s.sent])).sort();
    const untimed = samples.reduce((n, s) => n + s.untimed, 0);
    if (process.env.SHARDHUB_BENCH_DEBUG) {
      // p99 per second of the job: where the slow refills are.
      const bySecond = new Map<number, number[]>();
      for (const s of samples)
        s.at.forEach((t, i) => {
          const sec = Math.floor((t - start.t) / 1000);
          bySecond.set(sec, [...(bySecond.get(sec) ?? []), s.freed[i] as number]);
        });
      // Collections that held a main thread for 5 ms or more: the hub's, then each worker process's.
      gcs.forEach((pauses, i) => {
        for (const g of pauses.filter((x) => x.ms >= 5)) {
          process.stderr.write(
            `gc: ${i === 0 ? 'hub' : `workers ${i - 1}`} at ${((g.at - start.t) / 1000).toFixed(2)} s: ${g.ms.toFixed(1)} ms ${g.kind}\n`,
          );
        }
      });
      for (const [sec, xs] of [...bySecond].sort((a, b) => a[0] - b[0])) {
        const sorted = Float64Array.from(xs).sort();
        process.stderr.write(
          `second ${sec}: n=${xs.length} p50=${percentile(sorted, 50).toFixed(1)} p99=${percentile(sorted, 99).toFixed(1)} max=${(sorted[sorted.length - 1] as number).toFixed(1)}\n`,
        );
      }
    }
    const wall = (end.t - start.t) / 1000;
    return {
      workers,
      connected: stats.reduce((n, s) => n + s.connected, 0),
      reconnects: stats.reduce((n, s) => n + s.serverDisconnects, 0),
      items,
      items_per_s: items / wall,
      rss_mb: peakRss,
      rss_idle_mb: memIdle.rssMb,
      max_rss_mb: mem.maxRssMb,
      p50_ms: percentile(freed, 50),
      p99_ms: percentile(freed, 99),
      max_ms: freed.length ? (freed[freed.length - 1] as number) : Number.NaN,
      sent_p50_ms: percentile(sent, 50),
      sent_p99_ms: percentile(sent, 99),
      samples: freed.length,
      untimed,
      hub_cores: (end.cpuUs - start.cpuUs) / 1e6 / wall,
      hub_cpu_us_per_msg: (end.cpuUs - start.cpuUs) / resultMsgs,
      workers_cores: workersCpuUs / 1e6 / wall,
      loop_p99_ms: lag.p99Ms,
      loop_max_ms: lag.maxMs,
    };
  } finally {
    await stopAll(children);
    await hub.stop();
  }
}
