/**
 * A hub in a process of its own, driven by a benchmark over IPC (see `_rpc.ts`). Keeping it apart
 * makes `process.cpuUsage()` here the hub's CPU time alone (main thread, SQLite, GC, libuv), and
 * `resourceUsage().maxRSS` its peak memory. Jobs are filled through the store API (not timed) or,
 * for `bigjob`, by the benchmark over REST.
 */
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { HubServer, type HubConfig } from '../server/app.ts';
import { createLogger } from '../server/logger.ts';
import type { JobRecord } from '../server/store/store.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { packTensors } from '../protocol/pack.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { recordGc } from './_gc.ts';
import { serve } from './_rpc.ts';
import { openJob } from '../test/helpers/store-rows.ts';

const gc = recordGc();

let server: HubServer | undefined;
const completed = new Map<string, { cpuUs: number; t: number }>();
const requeues: { workerId: string; items: number; reason: string; t: number }[] = [];
let lag: ReturnType<typeof monitorEventLoopDelay> | undefined;

const now = () => performance.timeOrigin + performance.now();
const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

function hub(): HubServer {
  if (!server) throw new Error('hub not started');
  return server;
}

function model(name: string): ModelInfo {
  const m = hub().hub.models.byName(name);
  if (!m) throw new Error(`model ${name} missing: run \`npm run models\``);
  return m;
}

/** Item inputs: `seq` gives x[1,4] = [n, n, n, n] (n = the item's number, so sim outputs name it). */
function inputsOf(m: ModelInfo, kind: 'seq' | 'calibration', n: number): WireTensor[] {
  if (kind === 'calibration') return calibrationInputs(m, m.calibration.seed + n);
  const spec = m.inputs[0];
  if (!spec) throw new Error(`model ${m.name} has no inputs`);
  const dims = spec.shape.map((d) => (typeof d === 'number' ? d : 1));
  const len = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(len).fill(n);
  return [{ name: spec.name, dtype: 'float32', dims, data: new Uint8Array(data.buffer) }];
}

function jobView(job: JobRecord | undefined) {
  if (!job) throw new Error('no such job');
  return {
    id: job.id,
    state: job.state,
    items: job.itemCount,
    done: job.doneCount,
    failed: job.failedCount,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
  };
}

serve(
  {
    async start(args: { config: Partial<HubConfig> }) {
      server = await HubServer.start(
        { host: '127.0.0.1', port: 0, ...args.config },
        createLogger('hub', process.env.SHARDHUB_LOG_LEVEL ?? 'error'),
      );
      server.hub.on('job:completed', (id) => completed.set(id, { cpuUs: cpuUs(), t: now() }));
      server.hub.on('items:requeued', (e) =>
        requeues.push({ workerId: e.workerId, items: e.items, reason: e.reason, t: now() }),
      );
      return {
        url: server.url,
        joinToken: server.tokens.joinToken,
        operatorToken: server.tokens.operatorToken,
        pid: process.pid,
      };
    },

    /** Creates an open job; with `items`, fills it through the store in chunks (untimed). */
    async submit(args: { model: string; items?: number; inputs?: 'seq' | 'calibration'; chunk?: number }) {
      const h = hub().hub;
      const m = model(args.model);
      const job = await h.createJob(openJob(args.model));
      const n = args.items ?? 0;
      const chunk = args.chunk ?? 10_000;
      for (let off = 0; off < n; off += chunk) {
        const batch = [];
        for (let i = off; i < Math.min(n, off + chunk); i++) {
          batch.push({ name: `i${i}`, inputs: packTensors(inputsOf(m, args.inputs ?? 'seq', i + 1)) });
        }
        await h.appendItems(job.id, batch);
      }
      return job.id;
    },

    /**
     * Seals (schedules) a job; returns the hub's CPU time and the wall clock just before, so the
     * measured window includes the pre-flight check and the first assignments.
     */
    async seal(args: { jobId: string }) {
      const mark = { cpuUs: cpuUs(), t: now() };
      await hub().hub.sealJob(args.jobId);
      return mark;
    },

    /** Waits for a job to complete; returns the hub's CPU time and the wall clock when it did. */
    async waitJob(args: { jobId: string; timeoutMs?: number }) {
      const end = Date.now() + (args.timeoutMs ?? 600_000);
      for (;;) {
        const c = completed.get(args.jobId);
        if (c) {
          const f = await hub().hub.fairnessOf(args.jobId, true);
          const sched = f
            ? {
                steals: f.steals,
                stolenItems: f.stolenItems,
                speculative: f.speculative,
                wasted: f.wastedItems,
                weights: f.workers.map((w) => [
                  Math.round(w.weight ?? 0),
                  Math.round(w.benchmark ?? 0),
                  w.items,
                ]),
                timeline: f.timeline.slice(0, 60),
              }
            : undefined;
          return { ...c, job: jobView(await hub().hub.jobs.get(args.jobId)), sched };
        }
        if (Date.now() > end) throw new Error(`job ${args.jobId} not done in time`);
        await new Promise((ok) => setTimeout(ok, 20));
      }
    },

    async job(args: { jobId: string }) {
      return jobView(await hub().hub.jobs.get(args.jobId));
    },

    /**
     * Online workers, how many have a benchmark figure for `model`, and how many are proven (their
     * results are accepted without a second worker's replica: the steady state of a trusted grid).
     */
    workers(args: { model?: string }) {
      const h = hub().hub;
      const online = [...h.workers.values()].filter((w) => w.state === 'online');
      const sha = args.model ? model(args.model).sha256 : undefined;
      return {
        online: online.length,
        benchmarked: sha ? online.filter((w) => h.schedule.benchmark(w.id, sha) !== undefined).length : 0,
        proven: online.filter((w) => h.trust.isProven(w.id, w.kind)).length,
      };
    },

    /** A model's sha256 and bytes (benchmarks preload them into workers' model caches). */
    modelBytes(args: { model: string }) {
      const m = model(args.model);
      const path = hub().hub.models.filePath(m.sha256);
      if (!path) throw new Error(`no file for model ${args.model}`);
      return { sha256: m.sha256, bytes: new Uint8Array(readFileSync(path)) };
    },

    /** Items a worker holds now. */
    held(args: { workerId: string }) {
      return hub().hub.schedule.heldBy(args.workerId).length;
    },

    mem() {
      const m = process.memoryUsage();
      return {
        rssMb: m.rss / 2 ** 20,
        heapMb: m.heapUsed / 2 ** 20,
        externalMb: m.external / 2 ** 20,
        maxRssMb: process.resourceUsage().maxRSS / 1024,
      };
    },

    cpu() {
      return { cpuUs: cpuUs(), t: now() };
    },

    /** This process's collections since the last call (`_gc.ts`). */
    gcPauses() {
      return gc.take();
    },

    /** A full garbage collection (the hub process runs with --expose-gc), then the heap in use. */
    retained() {
      (globalThis as { gc?: () => void }).gc?.();
      return { heapMb: process.memoryUsage().heapUsed / 2 ** 20 };
    },

    /** Starts (or restarts) sampling the event loop's delay. */
    lagStart() {
      lag?.disable();
      lag = monitorEventLoopDelay({ resolution: 5 });
      lag.enable();
    },

    lagStop() {
      if (!lag) return null;
      lag.disable();
      return { p50Ms: lag.percentile(50) / 1e6, p99Ms: lag.percentile(99) / 1e6, maxMs: lag.max / 1e6 };
    },

    /**
     * Liveness: once `workerId` holds items, sends `signal` to `pid` (a worker process) and waits for
     * the hub to requeue that worker's items. Both moments are taken here, on one clock.
     */
    async killAndTime(args: { workerId: string; pid: number; signal: NodeJS.Signals; timeoutMs?: number }) {
      const h = hub().hub;
      const deadline = Date.now() + 60_000;
      while (h.schedule.heldBy(args.workerId).length === 0) {
        if (Date.now() > deadline) throw new Error(`worker ${args.workerId} never held items`);
        await new Promise((ok) => setTimeout(ok, 5));
      }
      const held = h.schedule.heldBy(args.workerId).length;
      const before = requeues.length;
      const t0 = now();
      process.kill(args.pid, args.signal);
      const end = Date.now() + (args.timeoutMs ?? 60_000);
      for (;;) {
        const hit = requeues.slice(before).find((r) => r.workerId === args.workerId);
        if (hit) return { ms: hit.t - t0, held, requeued: hit.items, reason: hit.reason };
        if (Date.now() > end) throw new Error(`no requeue for ${args.workerId}`);
        await new Promise((ok) => setTimeout(ok, 1));
      }
    },
  },
  async () => {
    await server?.close();
  },
);
