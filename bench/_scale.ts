/**
 * Shared pieces of the scale benchmarks (dispatch, connections, bigjob, liveness): a hub in its own
 * process, processes of sim workers, flags, percentiles, and reading the hub's SQLite file after a
 * run to count what was durably stored.
 */
import Database from 'better-sqlite3';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HubConfig } from '../server/app.ts';
import { NODE_V8_FLAGS } from '../native/launch.ts';
import { HUB_NODE_FLAGS } from '../server/node-flags.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { ROOT } from './_grid.ts';
import { RpcChild } from './_rpc.ts';
import type { WorkerSetup } from './_worker-child.ts';

/** The value of `--name V`, or undefined. */
export function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

/** A numeric flag with a default; throws on a value that is not a number. */
export function numFlag(args: string[], name: string, dflt: number): number {
  const v = flag(args, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got "${v}"`);
  return n;
}

/** The p-th percentile (0..100) of samples, nearest-rank. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

/**
 * Hub options of the scale benchmarks: the defaults, except that native nodes joined with the join
 * token start trusted (`trust.trustNative`, a documented hub option): a grid in its steady state,
 * where results are accepted without waiting for a second worker's replica. Canaries stay on.
 */
export function trustedNodes(): Partial<HubConfig> {
  return { hub: { trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true } } };
}

/** A hub process with its data dir. */
export interface HubProc {
  rpc: RpcChild;
  url: string;
  joinToken: string;
  operatorToken: string;
  pid: number;
  dataDir: string;
  /** Stops the hub (graceful: the store is closed) and removes its data dir unless `keep`. */
  stop(keep?: boolean): Promise<void>;
}

/** Starts a hub in its own process on 127.0.0.1 with a throwaway data dir. */
export async function startHubProcess(config: Partial<HubConfig> = {}): Promise<HubProc> {
  const dataDir = mkdtempSync(join(tmpdir(), 'shardhub-bench-'));
  // --expose-gc: benchmarks can ask for the heap the hub retains (`retained`), not just its peak.
  // HUB_NODE_FLAGS: the hub runs as `npm start` runs it.
  const rpc = RpcChild.start(join(ROOT, 'bench/_hub-child.ts'), {
    nodeArgs: ['--expose-gc', ...HUB_NODE_FLAGS],
  });
  const info = await rpc.call<{ url: string; joinToken: string; operatorToken: string; pid: number }>(
    'start',
    { config: { dataDir, ...config } },
  );
  return {
    rpc,
    ...info,
    dataDir,
    stop: async (keep = false) => {
      await rpc.stop();
      if (!keep) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Profiles children's main threads while `during` runs (V8's sampling profiler through the
 * inspector, so only the measured window is recorded) into `<dir>/<name>-<i>.cpuprofile`; without
 * `dir`, just runs `during`.
 */
export async function profiled<T>(
  children: RpcChild[],
  dir: string | undefined,
  name: string,
  during: () => Promise<T>,
): Promise<T> {
  if (!dir) return during();
  mkdirSync(dir, { recursive: true });
  // SHARDHUB_PROFILE=heap samples allocations instead of CPU time.
  const heap = process.env.SHARDHUB_PROFILE === 'heap';
  await Promise.all(children.map((c) => c.call(heap ? 'heapStart' : 'profStart')));
  try {
    return await during();
  } finally {
    const files = await Promise.all(
      children.map((c, i) =>
        c.call<string>(heap ? 'heapStop' : 'profStop', {
          file: join(dir, `${name}-${i}.${heap ? 'heapprofile' : 'cpuprofile'}`),
        }),
      ),
    );
    process.stderr.write(`profiles: ${files.join(' ')}\n`);
  }
}

/**
 * The V8 flags of the processes hosting sim workers: collection in the process's own thread, not in
 * helper threads on every core, as `shardhub node` runs (`native/launch.ts`). Not the node's other
 * flag, `--no-incremental-marking`: a process of 1,000 sim workers has a heap a hundred times a
 * node's, and marking it in one go held its main thread 52-99 ms every 5 s or so (perf_hooks' gc
 * entries, `SHARDHUB_BENCH_DEBUG=1 npm run bench -- connections`), delaying every one of its workers'
 * messages; marked in steps, the longest pause was 12-24 ms. Connections, 3 runs of each, alternated:
 * p99 17.0, 11.7 and 17.0 ms against 11.2, 23.1 and 20.5 (and 36.6, 20.3 and 26.2 with neither
 * flag: V8's helper threads on both cores). A pause landing in the job's first second is what gave
 * a run of p99 94 ms.
 */
const WORKER_PROCESS_FLAGS = NODE_V8_FLAGS.filter((f) => f !== '--no-incremental-marking');

/** Processes hosting sim workers, `count` spread evenly over `procs`. */
export async function startWorkerProcesses(
  hub: HubProc,
  setup: Omit<WorkerSetup, 'hubUrl' | 'joinToken' | 'count' | 'namePrefix'> & {
    count: number;
    procs: number;
    /** Niceness of the worker processes (0: the hub's; higher yields the CPU to the hub). */
    nice?: number;
  },
): Promise<RpcChild[]> {
  const { count, procs, nice = 0, ...rest } = setup;
  const preload = [
    await hub.rpc.call<{ sha256: string; bytes: Uint8Array }>('modelBytes', { model: 'noop' }),
  ];
  const children: RpcChild[] = [];
  const starts: Promise<unknown>[] = [];
  let firstIndex = 0;
  for (let p = 0; p < procs; p++) {
    const n = Math.floor(count / procs) + (p < count % procs ? 1 : 0);
    if (n === 0) continue;
    const child = RpcChild.start(join(ROOT, 'bench/_worker-child.ts'), {
      nodeArgs: [...WORKER_PROCESS_FLAGS],
    });
    children.push(child);
    if (nice !== 0) setPriority(child.pid, nice);
    starts.push(
      child.call('start', {
        ...rest,
        hubUrl: hub.url,
        joinToken: hub.joinToken,
        count: n,
        namePrefix: `p${p}`,
        firstIndex,
        preload: rest.preload ?? preload,
      } satisfies WorkerSetup),
    );
    firstIndex += n;
  }
  await Promise.all(starts);
  return children;
}

/** What worker processes' sockets received and sent since the last call, summed (`_worker-child.ts`). */
export interface MessageCounts {
  resultMsgs: number;
  resultItems: number;
  shards: number;
  shardItems: number;
}

/** Takes (and resets) the message counts of worker processes, summed over them. */
export async function takeCounts(children: RpcChild[]): Promise<MessageCounts> {
  const all = await Promise.all(children.map((c) => c.call<MessageCounts>('counts')));
  const sum: MessageCounts = { resultMsgs: 0, resultItems: 0, shards: 0, shardItems: 0 };
  for (const c of all) for (const k of Object.keys(sum) as (keyof MessageCounts)[]) sum[k] += c[k];
  return sum;
}

/** Waits until `check` resolves truthy, polling every `everyMs`. */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 120_000,
  everyMs = 50,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, everyMs));
  }
}

/**
 * Runs small jobs until every worker has benchmarked `model` and is proven (trusted: its results
 * no longer wait for a second worker's replica), so the measured job sees a grid in its steady state.
 */
export async function warmUp(
  hub: HubProc,
  model: string,
  workers: number,
  items: number,
  opts: { proven?: boolean; maxJobs?: number; inputs?: 'seq' | 'calibration' } = {},
): Promise<{ jobs: number }> {
  await waitFor(
    `${workers} workers online`,
    async () => (await hub.rpc.call<{ online: number }>('workers', {})).online >= workers,
  );
  const maxJobs = opts.maxJobs ?? 20;
  for (let jobs = 1; ; jobs++) {
    const jobId = await hub.rpc.call<string>('submit', { model, items, inputs: opts.inputs });
    await hub.rpc.call('seal', { jobId });
    await hub.rpc.call('waitJob', { jobId });
    const w = await hub.rpc.call<{ benchmarked: number; proven: number }>('workers', { model });
    if (w.benchmarked >= workers && (opts.proven === false || w.proven >= workers)) return { jobs };
    if (jobs >= maxJobs) {
      throw new Error(`after ${jobs} warm-up jobs: ${w.benchmarked} benchmarked, ${w.proven} proven`);
    }
  }
}

/**
 * Reads the hub's SQLite file (after the hub has stopped) and counts a job's stored results and
 * done items: what is durably there, not what the hub said.
 */
export function countStored(dataDir: string, jobId: string): { results: number; done: number } {
  const db = new Database(join(dataDir, 'hub.sqlite'), { readonly: true });
  try {
    const results = db
      .prepare<[string], number>('SELECT COUNT(*) FROM results WHERE job_id = ?')
      .pluck()
      .get(jobId) as number;
    const done = db
      .prepare<[string], number>("SELECT COUNT(*) FROM items WHERE job_id = ? AND state = 'done'")
      .pluck()
      .get(jobId) as number;
    return { results, done };
  } finally {
    db.close();
  }
}

/** Stops children in parallel. */
export async function stopAll(children: RpcChild[]): Promise<void> {
  await Promise.all(children.map((c) => c.stop()));
}
