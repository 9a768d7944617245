/**
 * `GET /metrics`: the hub's figures in Prometheus text format (prom-client), read from the live
 * hub at scrape time: workers by state and by backend, items/s, items done and failed, queue depth
 * and items in flight, steals, speculative copies and wasted runs, and each recent job's progress.
 *
 * It needs the operator token as a bearer token (`Authorization: Bearer OPERATOR_TOKEN`, which
 * Prometheus sends with `authorization: {credentials: ...}` in a scrape config): job ids, model
 * and worker counts are the operator's business, and the token is the hub's one operator secret.
 *
 * Each hub has its own registry, so several hubs in one process (tests) do not mix. Totals that
 * the hub keeps as live state (items per worker, steals per job) are turned into counters by
 * adding what grew since the last scrape, so they never go down.
 */
import express from 'express';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { WORKER_STATES } from '../protocol/operator.ts';
import { bearer, tokenMatches } from './auth.ts';
import type { Hub } from './hub.ts';
import { ratesOf } from './workers.ts';

/** Jobs whose progress is exported: the running and queued ones plus the most recent others. */
const RECENT_JOBS = 20;

/** Builds the registry of a hub's metrics. */
export function hubMetrics(hub: Hub): Registry {
  const register = new Registry();
  collectDefaultMetrics({ register });
  const registers = [register];

  new Gauge({
    name: 'shardhub_workers',
    help: 'Workers the hub knows, by state',
    labelNames: ['state'] as const,
    registers,
    collect() {
      const counts = new Map<string, number>(WORKER_STATES.map((s) => [s, 0]));
      for (const w of hub.workers.values()) counts.set(w.state, (counts.get(w.state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });

  new Gauge({
    name: 'shardhub_workers_connected',
    help: 'Workers not offline, by kind and backend',
    labelNames: ['kind', 'backend'] as const,
    registers,
    collect() {
      this.reset();
      for (const w of hub.workers.values()) {
        if (w.state !== 'offline') this.inc({ kind: w.kind, backend: w.backend });
      }
    },
  });

  new Gauge({
    name: 'shardhub_items_per_second',
    help: 'Accepted results per second over the last few seconds, all workers',
    registers,
    collect() {
      const rates = ratesOf(hub);
      const now = Date.now();
      let sum = 0;
      for (const w of hub.workers.values()) sum += rates.observe(w.id, w.itemsDone, now);
      this.set(sum);
    },
  });

  const grown = (read: () => number) => {
    let last = 0;
    return () => {
      const v = read();
      const d = Math.max(0, v - last);
      last = Math.max(last, v);
      return d;
    };
  };
  const done = grown(() => sum([...hub.workers.values()].map((w) => w.itemsDone)));
  new Counter({
    name: 'shardhub_items_completed_total',
    help: 'Results accepted from workers since the hub started',
    registers,
    collect() {
      this.inc(done());
    },
  });
  const failed = grown(() => sum([...hub.workers.values()].map((w) => w.itemsFailed)));
  new Counter({
    name: 'shardhub_items_failed_total',
    help: 'Failed item runs reported by workers since the hub started (each may be retried)',
    registers,
    collect() {
      this.inc(failed());
    },
  });

  const liveJobs = () => hub.jobs.list({ states: ['queued', 'running'], limit: 1000 });

  new Gauge({
    name: 'shardhub_queue_depth',
    help: 'Items of queued and running jobs not yet handed to any worker',
    registers,
    async collect() {
      this.set(sum((await liveJobs()).map((j) => hub.jobs.queued(j.id))));
    },
  });
  new Gauge({
    name: 'shardhub_items_in_flight',
    help: 'Items held by workers (handed out, no result yet)',
    registers,
    async collect() {
      this.set(sum((await liveJobs()).map((j) => hub.jobs.inFlight(j.id))));
    },
  });
  new Gauge({
    name: 'shardhub_jobs',
    help: 'Unfinished jobs, by state',
    labelNames: ['state'] as const,
    registers,
    async collect() {
      for (const state of ['open', 'queued', 'running'] as const)
        this.set({ state }, (await hub.jobs.list({ states: [state], limit: 100_000 })).length);
    },
  });

  const recentJobs = async () => {
    const byId = new Map((await liveJobs()).map((j) => [j.id, j]));
    for (const j of await hub.jobs.list({ limit: RECENT_JOBS })) byId.set(j.id, j);
    return [...byId.values()];
  };
  new Gauge({
    name: 'shardhub_job_progress',
    help: 'Finished items (done or failed) over all items, 0..1, of running, queued and recent jobs',
    labelNames: ['job', 'model'] as const,
    registers,
    async collect() {
      const jobs = await recentJobs();
      this.reset();
      for (const j of jobs) {
        const p = j.itemCount ? (j.doneCount + j.failedCount) / j.itemCount : 0;
        this.set({ job: j.id, model: j.modelName }, p);
      }
    },
  });
  new Gauge({
    name: 'shardhub_job_items',
    help: 'Items of running, queued and recent jobs, by status (total, done, failed)',
    labelNames: ['job', 'model', 'status'] as const,
    registers,
    async collect() {
      const jobs = await recentJobs();
      this.reset();
      for (const j of jobs) {
        this.set({ job: j.id, model: j.modelName, status: 'total' }, j.itemCount);
        this.set({ job: j.id, model: j.modelName, status: 'done' }, j.doneCount);
        this.set({ job: j.id, model: j.modelName, status: 'failed' }, j.failedCount);
      }
    },
  });

  // Steals, speculative copies and wasted runs live in each job's fairness figures.
  type Tally = { steals: number; stolen: number; speculative: number; wasted: number };
  const seen = new Map<string, Tally & { final: boolean }>();
  const tally = async (): Promise<Tally> => {
    const add: Tally = { steals: 0, stolen: 0, speculative: 0, wasted: 0 };
    for (const j of await hub.jobs.list({ limit: 50 })) {
      const prev = seen.get(j.id);
      if (prev?.final || (j.state !== 'running' && j.state !== 'completed' && j.state !== 'cancelled'))
        continue;
      const r = await hub.fairnessOf(j.id, j.state !== 'running');
      if (!r) continue;
      const now = {
        steals: r.steals,
        stolen: r.stolenItems,
        speculative: r.speculative,
        wasted: r.wastedItems,
      };
      for (const k of Object.keys(add) as (keyof Tally)[]) add[k] += Math.max(0, now[k] - (prev?.[k] ?? 0));
      seen.set(j.id, { ...now, final: j.state !== 'running' });
    }
    if (seen.size > 1000) for (const id of [...seen.keys()].slice(0, seen.size - 1000)) seen.delete(id);
    return add;
  };
  const counters: [keyof Tally, string, string][] = [
    ['steals', 'shardhub_steals_total', 'Steals: unstarted items moved from one worker to another'],
    ['stolen', 'shardhub_stolen_items_total', 'Items moved by steals'],
    [
      'speculative',
      'shardhub_speculative_copies_total',
      'Speculative copies: in-flight items run a second time elsewhere',
    ],
    [
      'wasted',
      'shardhub_wasted_items_total',
      'Item runs whose result was not used (lost speculative copies, results after a cancel)',
    ],
  ];
  // One scrape collects the four counters at once (prom-client awaits their collects together):
  // the first to ask reads the jobs, and each adds its own share of that one tally.
  let scrape: Promise<Tally> | undefined;
  const shared = (): Promise<Tally> =>
    (scrape ??= tally().finally(() => setImmediate(() => (scrape = undefined))));
  for (const [key, name, help] of counters) {
    new Counter({
      name,
      help,
      registers,
      async collect() {
        this.inc((await shared())[key]);
      },
    });
  }
  new Gauge({
    name: 'shardhub_data_channels_open',
    help: "Native nodes' open data channels (large items' inputs)",
    registers,
    collect() {
      this.set(hub.data.stats.open);
    },
  });
  // Running totals the data channels keep: each scrape adds what they grew by (`grown`).
  const following: [string, string, () => number][] = [
    ['shardhub_data_channel_bytes_total', 'Input bytes sent down data channels', () => hub.data.stats.bytes],
    [
      'shardhub_data_channels_refused_total',
      'Data channel upgrades refused (bad, used or expired tickets; malformed requests)',
      () => hub.data.stats.refused,
    ],
  ];
  for (const [name, help, total] of following) {
    const added = grown(total);
    new Counter({
      name,
      help,
      registers,
      collect() {
        this.inc(added());
      },
    });
  }
  return register;
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** `GET /metrics`, behind the operator token (see the file comment). */
export function metricsRouter(hub: Hub, operatorToken: string): express.Router {
  const register = hubMetrics(hub);
  const r = express.Router();
  r.get('/metrics', async (req, res) => {
    if (!tokenMatches(bearer(req.headers.authorization), operatorToken)) {
      res.setHeader('WWW-Authenticate', 'Bearer realm="shardhub"');
      return void res.status(401).json({
        error: {
          code: 'unauthorized',
          message: 'this needs the operator token: Authorization: Bearer <token>',
        },
      });
    }
    res.setHeader('Content-Type', register.contentType);
    res.send(await register.metrics());
  });
  return r;
}
