/**
 * The `/operator` Socket.IO namespace: live updates for the dashboard and the CLI
 * (protocol/operator.ts). Operators authenticate with the operator token in the handshake.
 *
 * Updates are coalesced: every `everyMs` the hub sends one `jobs:updated` with the jobs that
 * changed (running jobs at least once a second, for their rate and ETA) and one `workers:updated`
 * with the workers whose state changed; workers whose figures changed follow once a second (a
 * worker's items and heartbeats change without a hub event, so that push compares a fingerprint
 * of what the dashboard shows). With 500 busy workers that is 500 rows a second, not 2000.
 * Fairness reports cost a pass over every worker's per-second series, so they go only to the
 * clients watching that job (`job:watch`), at most once a second while it runs. Nothing is
 * computed while no operator is connected, except sampling the workers' rates (every tick, so
 * `GET /api/workers` and `/metrics` have a current rate too).
 *
 * Several hubs: dashboards on any hub show every hub's updates (through Socket.IO's Postgres
 * adapter). A hub with operators connected says so to the others (`hub:watching`, on each
 * connection and every `WATCHING_EVERY_MS`); a hub publishes through the adapter only while it has
 * heard that within `WATCHING_FOR_MS`, and to its own operators alone otherwise, so a grid nobody
 * watches sends nothing between hubs.
 */
import type { Namespace, Socket } from 'socket.io';
import type { InterHubEvents } from '../protocol/events.ts';
import type {
  JobView,
  OperatorClientEvents,
  OperatorServerEvents,
  WorkerView,
} from '../protocol/operator.ts';
import { describeZodError, WatchRequestSchema } from '../protocol/schemas.ts';
import { tokenMatches } from './auth.ts';
import type { Hub } from './hub.ts';
import { jobJson, jobRatesOf, sampleJobRate } from './job-view.ts';
import { ratesOf, WorkerFigures, workerJson } from './workers.ts';

/** The operator namespace, typed with `protocol/operator.ts`'s event maps. It keeps no socket data. */
export type OperatorNamespace = Namespace<OperatorClientEvents, OperatorServerEvents, InterHubEvents>;
/** An operator's connection. */
type OperatorSocket = Socket<OperatorClientEvents, OperatorServerEvents, InterHubEvents>;

const room = (jobId: string) => `job:${jobId}`;

/** Several hubs: how often a hub with operators connected tells the other hubs (see above)... */
const WATCHING_EVERY_MS = 5000;
/** ...and how long after the last word the others publish to it. */
const WATCHING_FOR_MS = 12_000;
/** How often the running jobs are read while none runs and no dashboard is connected (see the tick). */
const QUIET_READ_MS = 5000;

/** Wires the operator namespace; returns a function that stops its timer. */
export function attachOperatorNamespace(
  nsp: OperatorNamespace,
  hub: Hub,
  operatorToken: string,
  everyMs = 250,
): () => void {
  nsp.use((socket, next) => {
    const token = (socket.handshake.auth as { token?: unknown } | undefined)?.token;
    if (!tokenMatches(token, operatorToken)) return next(new Error('unauthorized: operator token required'));
    next();
  });
  // Several hubs: when other hubs' operators last said they are connected, and when this hub last
  // said its are.
  let watchedUntil = 0;
  let toldWatching = 0;
  const tellWatching = (now: number) => {
    toldWatching = now;
    nsp.serverSideEmit('hub:watching');
  };
  if (hub.shared) nsp.on('hub:watching', () => (watchedUntil = Date.now() + WATCHING_FOR_MS));
  nsp.on('connection', (socket) => {
    onConnection(socket, hub);
    if (hub.shared) tellWatching(Date.now());
  });

  const jobs = new Set<string>();
  const fairnessDue = new Set<string>();
  const sent = new Map<string, string>();
  let lastSecond = 0;
  /** When the running jobs were last read, and whether any was. */
  let lastRead = 0;
  let anyRunning = false;
  const onJob = (id: string) => {
    jobs.add(id);
    fairnessDue.add(id);
  };
  const onWorker = (id: string) => sent.delete(id);
  hub.on('job:updated', onJob);
  hub.on('worker:updated', onWorker);

  // One tick at a time: a tick reads the store, and a slow store must not stack them up.
  let ticking = false;
  const timer = setInterval(() => {
    if (ticking) return;
    ticking = true;
    tick()
      .catch((err: unknown) => hub.log.warn({ err }, 'dashboard update failed'))
      .finally(() => (ticking = false));
  }, everyMs);
  const tick = async (): Promise<void> => {
    const now = Date.now();
    const rates = ratesOf(hub);
    for (const w of hub.workers.values()) rates.observe(w.id, w.itemsDone, now); // keep the windows full
    const everySecond = now - lastSecond >= 1000;
    // With several hubs, dashboards on the other hubs see this one's updates (the adapter), while
    // any is connected.
    const here = nsp.sockets.size > 0;
    if (hub.shared && here && now - toldWatching >= WATCHING_EVERY_MS) tellWatching(now);
    const elsewhere = hub.shared && now < watchedUntil;
    // The running jobs' recent rates are sampled whether or not a dashboard is connected: the ETAs
    // of `GET /api/jobs` come from them. Every second while any job runs (or a dashboard shows
    // them); with none running, and none active here, a look every `QUIET_READ_MS` finds a job
    // another hub started.
    const readRunning =
      everySecond &&
      (here ||
        elsewhere ||
        anyRunning ||
        hub.jobs.activeRecords().length > 0 ||
        now - lastRead >= QUIET_READ_MS);
    const running = readRunning ? await hub.jobs.list({ states: ['running'] }) : [];
    if (everySecond) lastSecond = now;
    if (readRunning) {
      lastRead = now;
      anyRunning = running.length > 0;
      for (const j of running) sampleJobRate(hub, j, now);
      const ids = new Set(running.map((j) => j.id));
      const jobRates = jobRatesOf(hub);
      for (const id of [...jobRates.jobs()]) if (!ids.has(id)) jobRates.forget(id);
    }
    if (!here && !elsewhere) {
      jobs.clear();
      fairnessDue.clear();
      sent.clear();
      return;
    }
    const out = elsewhere ? nsp : nsp.local;
    // Reads the running jobs' fairness only if a worker row is built this tick.
    const figures = WorkerFigures.of(hub, now);
    if (everySecond) {
      for (const j of running.slice(0, 50)) {
        jobs.add(j.id);
        fairnessDue.add(j.id);
      }
    }
    const jobViews: JobView[] = [];
    for (const id of [...jobs]) {
      const job = await hub.jobs.get(id);
      if (job) jobViews.push(await jobJson(hub, job, now));
    }
    if (jobViews.length) out.emit('jobs:updated', jobViews, now);
    jobs.clear();

    if (everySecond) {
      for (const id of fairnessDue) {
        if (!elsewhere && !nsp.adapter.rooms.get(room(id))?.size) continue;
        const job = await hub.jobs.get(id);
        const report =
          job && (await hub.fairnessOf(id, job.state === 'completed' || job.state === 'cancelled'));
        if (report) out.to(room(id)).emit('job:fairness', report);
      }
      fairnessDue.clear();
    }

    // A worker whose state changed goes out now; one whose figures changed, once a second.
    const workerViews: WorkerView[] = [];
    for (const w of hub.workers.values()) {
      if (!everySecond && sent.has(w.id)) continue;
      const view: WorkerView = {
        ...workerJson(w, figures),
        probation: hub.probationOf(w.id),
        ...(hub.shared ? { hub: hub.hubId } : {}),
      };
      const print = fingerprint(view);
      if (sent.get(w.id) === print) continue;
      sent.set(w.id, print);
      workerViews.push(view);
    }
    if (workerViews.length) out.emit('workers:updated', workerViews, now);
    // Workers the hub no longer lists (removed by an operator): dashboards drop their rows.
    const removed = [...sent.keys()].filter((id) => !hub.workers.has(id));
    for (const id of removed) sent.delete(id);
    if (removed.length) out.emit('workers:removed', removed);
  };
  timer.unref();
  return () => {
    clearInterval(timer);
    hub.off('job:updated', onJob);
    hub.off('worker:updated', onWorker);
  };
}

function onConnection(socket: OperatorSocket, hub: Hub): void {
  socket.on('job:watch', async (req, ack) => {
    if (typeof ack !== 'function') return;
    const parsed = WatchRequestSchema.safeParse(req);
    if (!parsed.success) {
      ack({ error: { code: 'invalid_request', message: describeZodError(parsed.error) } });
      return;
    }
    for (const r of socket.rooms) if (r.startsWith('job:')) void socket.leave(r);
    const { jobId } = parsed.data;
    if (jobId === null) return void ack({ data: null });
    try {
      const job = await hub.jobs.get(jobId);
      if (!job) return void ack({ error: { code: 'unknown_job', message: 'no such job' } });
      void socket.join(room(jobId));
      const final = job.state === 'completed' || job.state === 'cancelled';
      ack({ data: (await hub.fairnessOf(jobId, final)) ?? null });
    } catch (err) {
      hub.log.warn({ err, jobId }, 'job:watch failed');
      ack({ error: { code: 'internal', message: 'the hub could not read this job' } });
    }
  });
}

/**
 * What a worker row shows, rounded as shown: a push is due when this changes. Heartbeats move
 * `lastSeen` every couple of seconds; the dashboard ages it by its own clock in between.
 */
function fingerprint(v: WorkerView): string {
  const r = (x: number | null, digits = 2) => (x === null ? '-' : x.toPrecision(digits));
  return [
    v.state,
    v.itemsDone,
    v.itemsFailed,
    v.queued,
    v.running,
    Math.floor(v.lastSeen / 2000),
    r(v.rate),
    v.load ? `${r(v.load.cpu)}:${r(v.load.memUsedBytes)}` : '-',
    v.probation ? `${v.probation.confirmed}:${v.probation.awaitingCheck}` : 'proven',
    ...v.jobs.map((j) => `${j.jobId}:${r(j.benchmark)}:${r(j.weight)}:${r(j.fairShare)}:${r(j.share)}`),
  ].join('|');
}
