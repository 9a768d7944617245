/**
 * `npm run bench -- overhead [--json] [--pin] [--items 240] [--rounds 9] [--model ppocr-det] [--profile DIR]`
 *
 * What the grid costs on real compute: one native node (`shardhub node --backend cpu`, a process of
 * its own, onnxruntime-node in a session thread) running a job through a hub (a process of its own)
 * against standalone onnxruntime-node in this process, on PaddleOCR detection at 320x320, on the
 * same machine, in one run.
 *
 * - Same work: the same calibration inputs (`worker/calibration.ts`, one seed per item), the same
 *   session options (`native/ort-session.ts` `sessionOptions`: cpu, intra-op threads = cores /
 *   concurrency = all cores, one inter-op thread, sequential) and the same batching (the model's
 *   batch size, 4, through `OrtSession.run`, which is what the node's session thread runs).
 * - Standalone and grid runs alternate (`--rounds` grid runs, standalone first and last), and each
 *   grid run is compared with the mean of the standalone runs on either side of it. The figure
 *   (JSON `ratio`) is the median of those round ratios: runs of the same code on this machine vary
 *   by 10% from one to the next (a shared VM), and pairing each grid run with its neighbours
 *   cancels the slow drift, while the median drops a round that a burst of other work hit. Nine
 *   rounds by default: with five, one run's figure moved by ±0.03 from the next; with nine, by
 *   ±0.02 over the nine runs measured (about 90 s a run).
 *   `grid_items_per_s` and `standalone_items_per_s` are that median round's. `best_ratio` is best
 *   grid run over best standalone run, the figure before: it compares the best of `rounds + 1`
 *   standalone runs with the best of `rounds` grid runs, so noise alone pulls it below 1. The table
 *   also gives CPU time per item: standalone (this process, all threads) vs the node process plus
 *   the hub process, a measure that contention disturbs little.
 * - The grid's node has benchmarked the model and been proven by canaries (warm-up jobs) first, as
 *   any node is after its first jobs: a node on probation holds only two fresh items at a time.
 *   Grid items/s runs from the job's first assignment to its last result (the hub's own times),
 *   so the hub's pre-flight check of the model, once per job, is not counted.
 * - The gap is split in two: `node_busy`, the share of the job's wall time the node's session was
 *   running (the results' `ms` summed, from the hub's SQLite file: is the hub keeping the node
 *   fed?), and `run_ms_per_item` against standalone's, how much slower each run is in the grid
 *   (the node's and the hub's own work taking cores from onnxruntime's threads).
   `node_main_cpu_ms_per_item` is the node's main thread alone (sockets, staging, results): with
   `--pin` it shares its core with the session thread, so it is most of the gap.
 * - Same process settings: the node runs with the V8 flags and malloc settings of `shardhub node`
 *   (`native/launch.ts`); this process, which runs the standalone session, runs itself again with
 *   the same malloc settings when it was started without them (glibc reads them at start).
 * - Two set-ups. By default the hub, the node and standalone share every CPU: on a small machine the
 *   hub's own CPU (about 3.5 ms per 1.6 MB item, half of it garbage collection) comes out of
 *   onnxruntime's. With `--pin` the hub has CPU 0 and the node and standalone the others, as with a
 *   hub on a machine of its own; both then size their pools from the CPUs left to them (1 intra-op
 *   thread on 2 CPUs), so the ratio is what the node itself costs and whether it is kept fed.
 */
import Database from 'better-sqlite3';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { OrtSession, sessionOptions } from '../native/ort-session.ts';
import { ModelRegistry } from '../models/registry.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { ROOT, printTable } from './_grid.ts';
import { flag, numFlag, profiled, startHubProcess, warmUp } from './_scale.ts';
import { hasMallocEnv, NODE_V8_FLAGS, nodeEnv } from '../native/launch.ts';

/**
 * `--pin`: the hub gets CPU 0 and the node and standalone the other CPUs (`taskset`, Linux), as
 * when the hub runs on a machine of its own; both sides then size their intra-op pools from the
 * CPUs left to them, so they keep the same threads. Without it, all three share every CPU.
 */
interface Pinning {
  hub: string;
  worker: string;
}

function pinning(): Pinning {
  const n = availableParallelism();
  if (n < 2) throw new Error('--pin needs at least 2 CPUs: one for the hub, the rest for the node');
  return { hub: '0', worker: n === 2 ? '1' : `1-${n - 1}` };
}

/** Pins every thread of process `pid` (taskset -a) to `cpus`; threads it starts later inherit. */
function pin(pid: number, cpus: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

/**
 * CPU time (user + system) of another process so far, ms, Linux only: all its threads, or with
 * `mainThread` its main thread alone (the one whose id is the process's).
 */
function procCpuMs(pid: number | undefined, mainThread = false): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line, in clock ticks (100 per second on Linux).
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** One timed run: items/s and CPU milliseconds per item (all threads of the processes doing it). */
interface Run {
  itemsPerS: number;
  cpuMsPerItem: number;
  /** Grid: the node's main thread's share of `cpuMsPerItem` (sockets, batching, results). */
  mainCpuMsPerItem?: number;
  hubCpuMsPerItem?: number;
  /** Grid: the node's session busy time (the results' `ms`, summed) over the job's wall time. */
  busy?: number;
  /** Wall ms per item of the session's runs: grid from the results' `ms`, standalone 1000 / items/s. */
  runMsPerItem?: number;
}

/** The session time a job's results report (the node's `ms`, summed), from the hub's SQLite file. */
function sessionMs(dataDir: string, jobId: string): number {
  const db = new Database(join(dataDir, 'hub.sqlite'), { readonly: true });
  try {
    return (
      db.prepare<[string], number>('SELECT SUM(ms) FROM results WHERE job_id = ?').pluck().get(jobId) ?? 0
    );
  } finally {
    db.close();
  }
}

/** Standalone onnxruntime-node in this process: the model loaded once, then timed runs. */
async function standaloneRunner(
  model: string,
): Promise<{ run: (items: number) => Promise<Run>; close: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-overhead-'));
  try {
    const registry = await ModelRegistry.open({ modelsDir: join(ROOT, 'models'), uploadDir: dir });
    const info = registry.byName(model);
    const path = info && registry.filePath(info.sha256);
    if (!info || !path) throw new Error(`model ${model} missing`);
    const session = await OrtSession.create(
      info,
      new Uint8Array(readFileSync(path)),
      // A node with --concurrency 1: all cores to its one session (native/ort-backend.ts).
      sessionOptions('cpu', Math.max(1, Math.floor(availableParallelism() / 1))),
    );
    const batch = info.batchable ? info.batchSize : 1;
    const inputs = (n: number) =>
      Array.from({ length: n }, (_, i) => calibrationInputs(info, info.calibration.seed + i));
    await session.run(inputs(batch)); // warm-up: allocations, first-run costs
    return {
      /** `items` items in batches of the model's size, back to back; items/s. */
      run: async (items: number) => {
        const all = inputs(items);
        const c0 = cpuMs();
        const t0 = performance.now();
        for (let off = 0; off < items; off += batch) await session.run(all.slice(off, off + batch));
        const t1 = performance.now();
        return {
          itemsPerS: items / ((t1 - t0) / 1000),
          cpuMsPerItem: (cpuMs() - c0) / items,
          runMsPerItem: (t1 - t0) / items,
        };
      },
      close: () => session.dispose(),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The grid: a hub process and one native node process, warmed up; `run` does one job. */
async function gridRunner(
  model: string,
  log: (s: string) => void,
  profile: string | undefined,
  pins: Pinning | undefined,
): Promise<{ run: (items: number) => Promise<Run>; close: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-overhead-node-'));
  const hub = await startHubProcess({});
  if (pins) pin(hub.pid, pins.hub);
  const node: ChildProcess = spawn(
    pins ? 'taskset' : process.execPath,
    [
      ...(pins ? ['-c', pins.worker, process.execPath] : []),
      '--import',
      'tsx',
      ...NODE_V8_FLAGS, // as `shardhub node` runs (native/launch.ts), with signals going straight to it
      // With --profile the node records its whole life and writes the profile when it exits.
      ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${profile}`] : []),
      join(ROOT, 'native/main.ts'),
      ...['--hub', hub.url, '--token', hub.joinToken, '--backend', 'cpu', '--concurrency', '1'],
      ...['--state', join(dir, 'state'), '--cache', join(dir, 'cache'), '--name', 'overhead-node'],
    ],
    { cwd: ROOT, stdio: 'ignore', env: nodeEnv({ ...process.env, SHARDHUB_LOG_LEVEL: 'error' }) },
  );
  const close = async () => {
    if (profile) {
      // A graceful exit (SIGTERM drains), so that the node writes its profile.
      const exited = new Promise((ok) => node.once('exit', ok));
      node.kill('SIGTERM');
      await Promise.race([exited, new Promise((ok) => setTimeout(ok, 10_000))]);
    }
    node.kill('SIGKILL');
    await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // Jobs of 12 items: the smallest with canaries (2), the checks that prove a node.
    const warm = await warmUp(hub, model, 1, 12, { maxJobs: 30, inputs: 'calibration' });
    log(`node benchmarked and proven after ${warm.jobs} warm-up job(s)`);
  } catch (err) {
    await close();
    throw err;
  }
  let jobs = 0;
  return {
    run: async (items: number) => {
      const jobId = await hub.rpc.call<string>('submit', { model, items, inputs: 'calibration' });
      const node0 = procCpuMs(node.pid);
      const main0 = procCpuMs(node.pid, true);
      const { start, end } = await profiled([hub.rpc], profile, `overhead-hub-${++jobs}`, async () => {
        const start = await hub.rpc.call<{ cpuUs: number }>('seal', { jobId });
        const end = await hub.rpc.call<{
          cpuUs: number;
          job: { startedAt: number; finishedAt: number; done: number };
        }>('waitJob', { jobId });
        return { start, end };
      });
      const node1 = procCpuMs(node.pid);
      const main1 = procCpuMs(node.pid, true);
      if (end.job.done !== items) throw new Error(`only ${end.job.done} of ${items} items done`);
      const wallMs = end.job.finishedAt - end.job.startedAt;
      const busyMs = sessionMs(hub.dataDir, jobId);
      return {
        itemsPerS: items / (wallMs / 1000),
        busy: busyMs / wallMs,
        runMsPerItem: busyMs / items,
        cpuMsPerItem: (node1 - node0) / items,
        mainCpuMsPerItem: (main1 - main0) / items,
        hubCpuMsPerItem: (end.cpuUs - start.cpuUs) / 1000 / items,
      };
    },
    close,
  };
}

/**
 * Alternates standalone and grid runs (standalone first and last) and prints the table (or JSON);
 * see the file comment for the figures.
 */
export async function main(args: string[]): Promise<void> {
  if (!hasMallocEnv()) {
    // The standalone side runs in this process: it gets the malloc settings the node runs with
    // (native/launch.ts), which glibc reads only when a process starts. So the bench runs again.
    const again = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: nodeEnv(process.env),
    });
    process.exitCode = again.status ?? 1;
    return;
  }
  const json = args.includes('--json');
  const items = numFlag(args, 'items', 240);
  const rounds = numFlag(args, 'rounds', 9);
  const model = flag(args, 'model') ?? 'ppocr-det';
  const log = (s: string) => !json && process.stderr.write(`${s}\n`);
  const pins = args.includes('--pin') ? pinning() : undefined;
  // Pinned before any session or child exists: the standalone session's threads inherit it.
  if (pins) pin(process.pid, pins.worker);
  const alone = await standaloneRunner(model);
  const profile = flag(args, 'profile') ? join(ROOT, flag(args, 'profile') as string) : undefined;
  const inGrid = await gridRunner(model, log, profile, pins);
  const rows: Record<string, number | string>[] = [];
  const standaloneRuns: Run[] = [];
  const gridRuns: Run[] = [];
  try {
    standaloneRuns.push(await alone.run(items));
    for (let r = 1; r <= rounds; r++) {
      gridRuns.push(await inGrid.run(items));
      standaloneRuns.push(await alone.run(items));
      const [b, g, a] = [standaloneRuns[r - 1], gridRuns[r - 1], standaloneRuns[r]] as Run[];
      const mean = (b.itemsPerS + a.itemsPerS) / 2;
      log(
        `round ${r}: grid ${g.itemsPerS.toFixed(2)} items/s, standalone ${b.itemsPerS.toFixed(2)} / ${a.itemsPerS.toFixed(2)}`,
      );
      rows.push({
        run: `round ${r}`,
        standalone_items_per_s: mean,
        grid_items_per_s: g.itemsPerS,
        ratio: g.itemsPerS / mean,
        standalone_cpu_ms_per_item: (b.cpuMsPerItem + a.cpuMsPerItem) / 2,
        node_cpu_ms_per_item: g.cpuMsPerItem,
        node_main_cpu_ms_per_item: g.mainCpuMsPerItem ?? Number.NaN,
        hub_cpu_ms_per_item: g.hubCpuMsPerItem ?? Number.NaN,
        node_busy: g.busy ?? Number.NaN,
        run_ms_per_item: g.runMsPerItem ?? Number.NaN,
        standalone_run_ms_per_item: ((b.runMsPerItem ?? 0) + (a.runMsPerItem ?? 0)) / 2,
      });
    }
  } finally {
    await inGrid.close();
    await alone.close();
  }
  const best = (runs: Run[]) => Math.max(...runs.map((r) => r.itemsPerS));
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const bestGrid = best(gridRuns);
  const bestAlone = best(standaloneRuns);
  const aloneCpu = median(standaloneRuns.map((r) => r.cpuMsPerItem));
  const nodeCpu = median(gridRuns.map((r) => r.cpuMsPerItem));
  const mainCpu = median(gridRuns.map((r) => r.mainCpuMsPerItem ?? Number.NaN));
  const hubCpu = median(gridRuns.map((r) => r.hubCpuMsPerItem ?? Number.NaN));
  const busy = median(gridRuns.map((r) => r.busy ?? Number.NaN));
  const runMs = median(gridRuns.map((r) => r.runMsPerItem ?? Number.NaN));
  const aloneRunMs = median(standaloneRuns.map((r) => r.runMsPerItem ?? Number.NaN));
  const mid = [...rows].sort((a, b) => (a.ratio as number) - (b.ratio as number))[
    Math.floor(rows.length / 2)
  ] as Record<string, number>;
  if (json) {
    process.stdout.write(
      `${JSON.stringify({
        pinned: pins !== undefined,
        intra_op_threads: availableParallelism(),
        grid_items_per_s: Number((mid.grid_items_per_s as number).toFixed(2)),
        standalone_items_per_s: Number((mid.standalone_items_per_s as number).toFixed(2)),
        ratio: Number((mid.ratio as number).toFixed(3)),
        best_ratio: Number((bestGrid / bestAlone).toFixed(3)),
        round_ratios: rows.map((r) => Number((r.ratio as number).toFixed(3))),
        cpu_ratio: Number((aloneCpu / (nodeCpu + hubCpu)).toFixed(3)),
        standalone_cpu_ms_per_item: Number(aloneCpu.toFixed(2)),
        node_cpu_ms_per_item: Number(nodeCpu.toFixed(2)),
        node_main_cpu_ms_per_item: Number(mainCpu.toFixed(2)),
        hub_cpu_ms_per_item: Number(hubCpu.toFixed(2)),
        node_busy: Number(busy.toFixed(3)),
        run_slowdown: Number((runMs / aloneRunMs).toFixed(3)),
      })}\n`,
    );
    return;
  }
  process.stdout.write(
    `overhead: ${model}, ${items} items per run, batches of the model's size; one native node (cpu,` +
      ` concurrency 1, ${availableParallelism()} intra-op threads) through a hub vs standalone onnxruntime-node` +
      ` (same options, same inputs), alternated; ${pins ? `hub on CPU ${pins.hub}, node and standalone on CPU ${pins.worker}` : 'all sharing every CPU'}\n\n`,
  );
  printTable([
    ...rows,
    { ...mid, run: 'median round' },
    {
      run: 'best runs / medians',
      standalone_items_per_s: bestAlone,
      grid_items_per_s: bestGrid,
      ratio: bestGrid / bestAlone,
      standalone_cpu_ms_per_item: aloneCpu,
      node_cpu_ms_per_item: nodeCpu,
      node_main_cpu_ms_per_item: mainCpu,
      hub_cpu_ms_per_item: hubCpu,
      node_busy: busy,
      run_ms_per_item: runMs,
      standalone_run_ms_per_item: aloneRunMs,
    },
  ]);
  process.stdout.write(
    `\nround ratios: a grid run over the mean of the standalone runs around it; the figure is the` +
      ` median round's ratio. Last row: best run of each and median CPU. cpu_ms_per_item: CPU time of the processes` +
      ` doing the work (all threads), node_main the node's main thread (sockets, batching, results); standalone / (node + hub) = ${(aloneCpu / (nodeCpu + hubCpu)).toFixed(3)}` +
      ` bounds the throughput ratio on a dedicated machine. node_busy: the node's session busy` +
      ` over the job's wall time (is the node kept fed?); run_ms_per_item: the session's time per` +
      ` item in the grid vs alone (how much the node's and hub's own work slows the runs down on` +
      ` shared cores); ratio ~= node_busy x standalone_run_ms / run_ms. Target: median round ratio >= 0.95.\n`,
  );
}
