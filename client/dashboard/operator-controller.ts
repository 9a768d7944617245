/**
 * The dashboard's connection to the hub, as a Lit {@link ReactiveController}: it signs in (the
 * operator token, kept in sessionStorage), takes a first picture over REST (`GET /api/workers`,
 * `GET /api/jobs`), keeps it current from the `/operator` namespace's pushes (no polling), watches
 * the job on screen for its fairness report, and carries out the operator's actions over REST.
 * It connects in `hostConnected` and closes the socket in `hostDisconnected`.
 *
 * Pushes that arrive while the REST picture is loading are applied again on top of it, so a job
 * that finished meanwhile is never shown as still running.
 */
import type { ReactiveController, ReactiveControllerHost } from 'lit';
import { io, type Socket } from 'socket.io-client';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type {
  JobView,
  OperatorClientEvents,
  OperatorServerEvents,
  WorkerView,
} from '../../protocol/operator.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { ApiError, OperatorApi } from './api.ts';
import type { WorkerAction } from './events.ts';
import { RecentRate } from './recent-rate.ts';
import { clearToken, loadToken, saveToken } from './session.ts';

/** The dashboard's connection to `/operator`, typed with `protocol/operator.ts`'s event maps. */
type OperatorSocket = Socket<OperatorServerEvents, OperatorClientEvents>;

/** Where the dashboard is: signed out, checking a token, connecting, live, or reconnecting. */
export type Phase = 'signed-out' | 'checking' | 'connecting' | 'live' | 'reconnecting';

/** A short message about the last action, shown for a few seconds. */
export interface Notice {
  kind: 'ok' | 'error';
  text: string;
  id: number;
}

const REFUSED =
  'The hub refused that token. Use the operator token that `shardhub serve` printed (also in data/tokens.json, or SHARDHUB_OPERATOR_TOKEN).';

/** The controller; see the file comment. */
export class OperatorController implements ReactiveController {
  phase: Phase;
  /** Why the page is signed out or not live. */
  problem: string | undefined;
  notice: Notice | undefined;
  readonly workers = new Map<string, WorkerView>();
  readonly jobs = new Map<string, JobView>();
  /** The watched job's fairness report. */
  fairness: FairnessReport | null = null;
  watched: string | null = null;
  /** Hub clock minus ours (ms), from the pushes' timestamps. */
  skewMs = 0;
  /** Each running job's recent rate, from the pushes (for ETAs). */
  readonly recent = new RecentRate();
  /** Bumped when workers or jobs change, so views can skip work when nothing did. */
  version = 0;
  api: OperatorApi | undefined;
  private token: string | undefined;
  private socket: OperatorSocket | undefined;
  private buffered: { workers: WorkerView[][]; jobs: JobView[][] } | undefined;
  private tick: ReturnType<typeof setInterval> | undefined;
  private noticeTimer: ReturnType<typeof setTimeout> | undefined;
  private noticeId = 0;

  constructor(private readonly host: ReactiveControllerHost) {
    host.addController(this);
    this.token = loadToken();
    this.phase = this.token ? 'connecting' : 'signed-out';
  }

  hostConnected(): void {
    if (this.token && !this.socket) this.connect(this.token);
    // Ages ("3 s ago") move with the clock: redraw once a second.
    this.tick = setInterval(() => this.host.requestUpdate(), 1000);
  }

  hostDisconnected(): void {
    if (this.tick !== undefined) clearInterval(this.tick);
    if (this.noticeTimer !== undefined) clearTimeout(this.noticeTimer);
    this.closeSocket();
  }

  /** Now, by the hub's clock. */
  get hubNow(): number {
    return Date.now() + this.skewMs;
  }

  /** Checks a token against the hub, then keeps it and connects. */
  async signIn(token: string): Promise<void> {
    const t = token.trim();
    if (!t) {
      this.problem = 'Enter the operator token.';
      this.host.requestUpdate();
      return;
    }
    this.phase = 'checking';
    this.problem = undefined;
    this.host.requestUpdate();
    try {
      await new OperatorApi(t).get('/api/jobs?limit=1');
    } catch (err) {
      this.phase = 'signed-out';
      this.problem =
        err instanceof ApiError && err.unauthorized ? REFUSED : `Cannot sign in: ${(err as Error).message}`;
      this.host.requestUpdate();
      return;
    }
    saveToken(t);
    this.token = t;
    this.connect(t);
  }

  /** Forgets the token and everything shown. */
  signOut(problem?: string): void {
    clearToken();
    this.token = undefined;
    this.api = undefined;
    this.closeSocket();
    this.workers.clear();
    this.jobs.clear();
    this.fairness = null;
    this.phase = 'signed-out';
    this.problem = problem;
    this.version++;
    this.host.requestUpdate();
  }

  private connect(token: string): void {
    this.closeSocket();
    this.api = new OperatorApi(token);
    this.phase = 'connecting';
    const socket: OperatorSocket = io('/operator', {
      auth: { token },
      parser: shardhubParser,
      reconnectionDelayMax: 5000,
    });
    this.socket = socket;
    socket.on('connect', () => void this.loadSnapshot(socket));
    socket.on('connect_error', (err) => {
      if (/unauthorized/i.test(err.message)) return void this.signOut(REFUSED);
      this.phase = 'reconnecting';
      this.problem = `cannot reach the hub (${err.message}); retrying`;
      this.host.requestUpdate();
    });
    socket.on('disconnect', (reason) => {
      if (this.socket !== socket) return;
      this.phase = 'reconnecting';
      this.problem = `connection lost (${reason}); reconnecting`;
      this.host.requestUpdate();
    });
    socket.on('workers:updated', (list, at) => {
      this.skewMs = at - Date.now();
      this.buffered?.workers.push(list);
      this.mergeWorkers(list);
    });
    socket.on('workers:removed', (ids) => this.dropWorkers(ids));
    socket.on('jobs:updated', (list, at) => {
      this.skewMs = at - Date.now();
      this.buffered?.jobs.push(list);
      this.mergeJobs(list, at);
    });
    socket.on('job:fairness', (report) => {
      if (report.jobId !== this.watched) return;
      this.fairness = report;
      this.host.requestUpdate();
    });
  }

  private closeSocket(): void {
    const s = this.socket;
    this.socket = undefined;
    s?.removeAllListeners();
    s?.close();
  }

  /** The first picture (and a fresh one after every reconnect). */
  private async loadSnapshot(socket: OperatorSocket): Promise<void> {
    const api = this.api;
    if (!api) return;
    this.buffered = { workers: [], jobs: [] };
    try {
      const [w, j] = await Promise.all([
        api.get<{ workers: WorkerView[] }>('/api/workers'),
        api.get<{ jobs: JobView[] }>('/api/jobs?limit=200'),
      ]);
      if (this.socket !== socket) return;
      this.workers.clear();
      this.jobs.clear();
      this.mergeWorkers(w.workers);
      this.mergeJobs(j.jobs);
      for (const list of this.buffered.workers) this.mergeWorkers(list);
      for (const list of this.buffered.jobs) this.mergeJobs(list);
      this.phase = 'live';
      this.problem = undefined;
      if (this.watched) await this.watch(this.watched);
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) return void this.signOut(REFUSED);
      this.phase = 'reconnecting';
      this.problem = `cannot load the hub's state: ${(err as Error).message}`;
    } finally {
      this.buffered = undefined;
      this.host.requestUpdate();
    }
  }

  private mergeWorkers(list: readonly WorkerView[]): void {
    for (const w of list) this.workers.set(w.id, w);
    this.version++;
    this.host.requestUpdate();
  }

  private dropWorkers(ids: readonly string[]): void {
    for (const id of ids) this.workers.delete(id);
    this.version++;
    this.host.requestUpdate();
  }

  private mergeJobs(list: readonly JobView[], at = this.hubNow): void {
    for (const j of list) {
      this.jobs.set(j.id, j);
      if (j.state === 'running') this.recent.observe(j.id, at, j.done + j.failed);
      else this.recent.forget(j.id);
    }
    this.version++;
    this.host.requestUpdate();
  }

  /** A job's items per second lately, and the ETA at that rate (the hub's figures since its start until known). */
  pace(job: JobView): { itemsPerSec: number; etaS: number | null; recent: boolean } {
    const r = job.state === 'running' ? this.recent.rate(job.id) : undefined;
    if (r === undefined) return { itemsPerSec: job.itemsPerSec, etaS: job.etaS, recent: false };
    const left = job.items - job.done - job.failed;
    return { itemsPerSec: r, etaS: r > 0 ? left / r : null, recent: true };
  }

  /** Shows one job's fairness (and asks the hub to push it); null stops watching. */
  async watch(jobId: string | null): Promise<void> {
    if (this.watched !== jobId || this.fairness?.jobId !== jobId) this.fairness = null;
    this.watched = jobId;
    this.host.requestUpdate();
    const socket = this.socket;
    if (!socket?.connected) return;
    if (jobId && !this.jobs.has(jobId)) {
      // An older job than the first picture holds.
      try {
        const job = await this.api?.get<JobView>(`/api/jobs/${encodeURIComponent(jobId)}`);
        if (job) this.mergeJobs([job]);
      } catch (err) {
        if (this.watched === jobId) this.say('error', (err as Error).message);
        return;
      }
    }
    try {
      const res = await socket.timeout(5000).emitWithAck('job:watch', { jobId });
      if (this.watched !== jobId) return;
      if ('data' in res) this.fairness = res.data;
      else this.say('error', res.error.message);
    } catch {
      // no answer: the next push brings it
    }
    this.host.requestUpdate();
  }

  /** Pause, resume, drain or evict a worker, or remove an offline one from the list. */
  async workerAction(workerId: string, action: WorkerAction): Promise<void> {
    const name = this.workers.get(workerId)?.name ?? workerId;
    if (action === 'remove') {
      return this.act(async (api) => {
        await api.delete(`/api/workers/${encodeURIComponent(workerId)}`);
        this.dropWorkers([workerId]);
        return `${name}: removed`;
      });
    }
    await this.act(async (api) => {
      const w = await api.post<WorkerView>(`/api/workers/${encodeURIComponent(workerId)}/${action}`);
      const old = this.workers.get(workerId);
      // The reply has the state, not the live figures: keep those.
      this.mergeWorkers([old ? { ...old, state: w.state, online: w.online } : w]);
      const done = { pause: 'paused', resume: 'resumed', drain: 'draining', evict: 'evicted' }[action];
      return `${name}: ${done}`;
    });
  }

  /** Cancels a job. */
  async cancelJob(jobId: string): Promise<void> {
    await this.act(async (api) => {
      this.mergeJobs([await api.post<JobView>(`/api/jobs/${encodeURIComponent(jobId)}/cancel`)]);
      return `Job ${jobId} cancelled`;
    });
  }

  /** Sets a job's priority. */
  async setPriority(jobId: string, priority: number): Promise<void> {
    await this.act(async (api) => {
      this.mergeJobs([await api.patch<JobView>(`/api/jobs/${encodeURIComponent(jobId)}`, { priority })]);
      return `Job ${jobId}: priority ${priority}`;
    });
  }

  /** Downloads a job's results as one tar of .npy files. */
  async downloadResults(jobId: string): Promise<void> {
    await this.act(async (api) => {
      const size = await api.download(
        `/api/jobs/${encodeURIComponent(jobId)}/results.tar`,
        `${jobId}-results.tar`,
      );
      return `Downloading ${jobId}-results.tar (${Math.max(1, Math.round(size / 1024))} KB)`;
    });
  }

  /** Shows a message for a few seconds. */
  say(kind: Notice['kind'], text: string): void {
    this.notice = { kind, text, id: ++this.noticeId };
    if (this.noticeTimer !== undefined) clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => {
      this.notice = undefined;
      this.host.requestUpdate();
    }, 6000);
    this.host.requestUpdate();
  }

  private async act(fn: (api: OperatorApi) => Promise<string>): Promise<void> {
    const api = this.api;
    if (!api) return;
    try {
      this.say('ok', await fn(api));
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) return void this.signOut(REFUSED);
      this.say('error', (err as Error).message);
    }
  }
}
