/**
 * The contributor page's connection to the grid, as a Lit {@link ReactiveController}: it starts the
 * browser worker when asked, mirrors its figures into the host (re-rendering it), pauses the
 * worker while the tab is hidden (when the contributor wants that), and closes the worker when the
 * host leaves the page.
 */
import type { ReactiveController, ReactiveControllerHost } from 'lit';
import type { AgentStats } from '../../worker/agent.ts';
import { errorMessage } from '../../worker/backend.ts';
import { startBrowserWorker, type BrowserWorker } from '../browser/browser-worker.ts';
import type { WorkerReport } from '../browser/figures.ts';
import { PageLogger, type LogEntry } from '../browser/log.ts';
import type { EngineInfo } from '../inference/messages.ts';
import { loadPreferences, savePreferences, type PageParams, type Preferences } from './settings.ts';

/** Where the page is in its life. */
export type Phase = 'ready' | 'starting' | 'running' | 'stopped' | 'unsupported';

/** Who paused the worker. */
export type PauseCause = 'you' | 'hidden' | 'hub';

/** The page's one-line status: a stable key (for tests and styling) and words for people. */
export interface Status {
  key:
    | 'ready'
    | 'unsupported'
    | 'starting'
    | 'connecting'
    | 'registering'
    | 'paused'
    | 'downloading'
    | 'benchmarking'
    | 'verifying'
    | 'working'
    | 'between'
    | 'waiting'
    | 'stopped';
  text: string;
}

/** The status line for a phase, the worker's figures and what the hub reports of it. */
export function statusOf(
  phase: Phase,
  stats: AgentStats | undefined,
  pausedBy: PauseCause | undefined,
  problem?: string,
  figures?: WorkerReport,
): Status {
  switch (phase) {
    case 'ready':
      return { key: 'ready', text: 'Ready: press Start to lend this device to the grid' };
    case 'unsupported':
      return { key: 'unsupported', text: `This browser cannot contribute: ${problem ?? 'unknown reason'}` };
    case 'starting':
      return { key: 'starting', text: 'Starting: loading onnxruntime-web in a background worker' };
    case 'stopped':
      return { key: 'stopped', text: `Stopped${problem ? `: ${problem}` : ''}` };
    case 'running':
      break;
  }
  if (!stats || stats.status === 'closed')
    return { key: 'stopped', text: `Stopped${problem ? `: ${problem}` : ''}` };
  if (!stats.connected) return { key: 'connecting', text: 'Connecting to the hub…' };
  if (!stats.registered) return { key: 'registering', text: 'Registering with the hub…' };
  if (stats.paused) {
    const why =
      pausedBy === 'hidden' ? ' while this tab is hidden' : pausedBy === 'hub' ? ' by the hub operator' : '';
    return { key: 'paused', text: `Paused${why}` };
  }
  const d = stats.download;
  if (d && !d.error && d.waiting)
    return { key: 'downloading', text: `Waiting for another tab’s download of model ${d.model}` };
  if (d && !d.error && d.loaded < d.total)
    return {
      key: 'downloading',
      text: `Downloading model ${d.model} (${Math.floor((100 * d.loaded) / Math.max(1, d.total))}%)`,
    };
  if (stats.benchmarking)
    return {
      key: 'benchmarking',
      text: `Benchmarking ${stats.benchmarking}: measuring this device’s speed before it gets work`,
    };
  if (stats.running > 0 || stats.queued > 0) return { key: 'working', text: 'Working' };
  const queued = (figures?.jobs ?? []).reduce((n, j) => n + (j.queued ?? 0), 0);
  const p = figures?.probation;
  if (p && queued > 0) {
    const waiting = p.awaitingCheck
      ? `${p.awaitingCheck} result${p.awaitingCheck === 1 ? '' : 's'} waiting for another device to confirm them`
      : 'waiting for the next items';
    return {
      key: 'verifying',
      text: `Being verified: ${waiting}. A new device holds at most ${p.maxItems} items until ${p.needed} of its results are confirmed (${Math.min(p.confirmed, p.needed)} so far)`,
    };
  }
  if (queued > 0)
    return {
      key: 'between',
      text: `Ready: ${queued.toLocaleString('en-US')} items are queued on the hub; the next ones are on their way`,
    };
  return { key: 'waiting', text: 'Waiting for work' };
}

/** How often the worker's figures are redrawn at most while they change (ms). */
const FIGURES_MS = 250;

/** The controller; see the file comment. */
export class ContributorController implements ReactiveController {
  phase: Phase = 'ready';
  worker: BrowserWorker | undefined;
  stats: AgentStats | undefined;
  /** The hub's report of this worker's jobs and probation. */
  figures: WorkerReport | undefined;
  /** The latest error (from the worker or the log), shown on the page until dismissed. */
  alert: { at: number; text: string } | undefined;
  /** Why the page cannot run or stopped. */
  problem: string | undefined;
  prefs: Preferences;
  userPaused = false;
  hidden: boolean;
  readonly log: PageLogger;
  private ownPaused = false;
  private refresh: ReturnType<typeof setInterval> | undefined;
  private redrawTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly unsubscribe: (() => void)[] = [];

  constructor(
    private readonly host: ReactiveControllerHost,
    readonly params: PageParams,
  ) {
    host.addController(this);
    this.log = new PageLogger({ console: params.log, debug: params.debug });
    this.prefs = loadPreferences(safeLocalStorage());
    this.hidden = document.visibilityState === 'hidden';
    if (!isSecureContext) {
      this.phase = 'unsupported';
      this.problem =
        'the page is not a secure context. Open the hub over HTTPS (or on localhost): browsers keep WebGPU, threads, storage and hashing from insecure pages';
    } else if (typeof Worker !== 'function' || typeof WebAssembly !== 'object') {
      this.phase = 'unsupported';
      this.problem = 'this browser has no Web Workers or WebAssembly';
    }
  }

  hostConnected(): void {
    document.addEventListener('visibilitychange', this.onVisibility);
    this.unsubscribe.push(this.log.subscribe((e) => this.onLog(e)));
    // The rate decays between events: refresh the figures every second.
    this.refresh = setInterval(() => {
      if (this.worker) this.setStats(this.worker.agent.stats);
    }, 1000);
    if (this.params.autostart && this.phase === 'ready') void this.start();
  }

  hostDisconnected(): void {
    document.removeEventListener('visibilitychange', this.onVisibility);
    if (this.refresh !== undefined) clearInterval(this.refresh);
    if (this.redrawTimer !== undefined) clearTimeout(this.redrawTimer);
    this.redrawTimer = undefined;
    for (const u of this.unsubscribe.splice(0)) u();
    void this.worker?.close();
  }

  /** Who paused the worker, if it is paused. */
  get pausedBy(): PauseCause | undefined {
    if (!this.stats?.paused) return undefined;
    if (this.userPaused) return 'you';
    if (this.prefs.autoPause && this.hidden) return 'hidden';
    return 'hub';
  }

  /** The status line. */
  get status(): Status {
    return statusOf(this.phase, this.stats, this.pausedBy, this.problem, this.figures);
  }

  /** Hides the alert. */
  dismissAlert(): void {
    this.alert = undefined;
    this.host.requestUpdate();
  }

  /** Errors reach the page, not only the collapsed log. */
  private onLog(e: LogEntry): void {
    if (e.level !== 'error') return;
    const detail = (e.data as { error?: unknown }).error;
    this.alert = { at: e.at, text: typeof detail === 'string' && detail ? `${e.msg}: ${detail}` : e.msg };
    this.host.requestUpdate();
  }

  /** Starts the worker (once). */
  async start(): Promise<void> {
    if (this.phase !== 'ready') return;
    this.phase = 'starting';
    this.host.requestUpdate();
    try {
      const worker = await startBrowserWorker({
        hubUrl: location.origin,
        backend: this.params.backend,
        numThreads: this.params.threads,
        token: this.params.token,
        name: this.params.name,
        logger: this.log,
      });
      this.worker = worker;
      this.phase = 'running';
      this.unsubscribe.push(
        worker.agent.on('stats', (s) => this.setStats(s)),
        worker.agent.on('closed', () => {
          this.phase = 'stopped';
          this.host.requestUpdate();
        }),
        worker.onFigures((f) => {
          this.figures = f;
          this.host.requestUpdate();
        }),
        worker.onFatal((err) => {
          this.problem = err.message;
          this.host.requestUpdate();
        }),
      );
      worker.agent.setThrottle(this.prefs.throttle);
      this.applyPause();
      this.setStats(worker.agent.stats);
      if (this.params.debug) exposeForTests(this);
    } catch (err) {
      this.phase = 'stopped';
      this.problem = errorMessage(err);
      this.log.error({ error: this.problem }, 'could not start');
    }
    this.host.requestUpdate();
  }

  /** The contributor's pause button. */
  setPaused(paused: boolean): void {
    this.userPaused = paused;
    // Resuming by hand also lifts a pause the contributor did not make (hidden tab, operator).
    if (!paused) this.ownPaused = true;
    this.applyPause();
  }

  /** The throttle slider: share of time the worker may compute. */
  setThrottle(fraction: number): void {
    const f = Math.min(1, Math.max(0.05, fraction));
    this.prefs = { ...this.prefs, throttle: f };
    savePreferences(safeLocalStorage(), this.prefs);
    this.worker?.agent.setThrottle(f);
    this.host.requestUpdate();
  }

  /** The "pause while hidden" setting. */
  setAutoPause(enabled: boolean): void {
    this.prefs = { ...this.prefs, autoPause: enabled };
    savePreferences(safeLocalStorage(), this.prefs);
    this.applyPause();
  }

  private readonly onVisibility = (): void => {
    this.hidden = document.visibilityState === 'hidden';
    this.log.info({ hidden: this.hidden }, this.hidden ? 'tab hidden' : 'tab visible');
    this.applyPause();
  };

  /** Pauses or resumes the worker when the page's own reasons to pause change. */
  private applyPause(): void {
    const want = this.userPaused || (this.prefs.autoPause && this.hidden);
    const agent = this.worker?.agent;
    if (agent && want !== this.ownPaused) {
      this.ownPaused = want;
      agent.setPaused(want);
    }
    this.host.requestUpdate();
  }

  /**
   * Takes the agent's figures and redraws at most every {@link FIGURES_MS}; a change of state
   * (connected, registered, paused, closed, working or waiting) redraws at once. The agent reports
   * a change on every batch, assignment and ack, tens of times a second: redrawing the page each
   * time (style, layout, paint, compositing in the renderer, GPU and browser processes) took CPU
   * from the inference worker on a small machine, for figures nobody reads that fast.
   */
  private setStats(s: AgentStats): void {
    const before = this.stats;
    this.stats = s;
    if (s.lastError && s.lastError !== before?.lastError) this.alert = { at: Date.now(), text: s.lastError };
    const urgent =
      !before ||
      before.status !== s.status ||
      before.connected !== s.connected ||
      before.registered !== s.registered ||
      before.paused !== s.paused ||
      before.lastError !== s.lastError ||
      before.benchmarking !== s.benchmarking ||
      before.download?.error !== s.download?.error ||
      before.running + before.queued > 0 !== s.running + s.queued > 0;
    if (urgent) {
      this.redraw();
      return;
    }
    this.redrawTimer ??= setTimeout(() => this.redraw(), FIGURES_MS);
  }

  private redraw(): void {
    if (this.redrawTimer !== undefined) clearTimeout(this.redrawTimer);
    this.redrawTimer = undefined;
    this.host.requestUpdate();
  }
}

function safeLocalStorage(): Storage | undefined {
  try {
    return localStorage;
  } catch {
    return undefined;
  }
}

/** What `?debug=1` puts on `window.shardhub`, for end-to-end tests. */
export interface DebugHandle {
  stats(): AgentStats | undefined;
  status(): Status;
  workerId(): string | undefined;
  /** What the inference worker reported (provider, threads, onnxruntime-web version). */
  engineInfo(): EngineInfo | undefined;
  /** Destroys the WebGPU device as a driver reset would. */
  loseDevice(): Promise<void>;
}

declare global {
  interface Window {
    shardhub?: DebugHandle;
  }
}

function exposeForTests(c: ContributorController): void {
  window.shardhub = {
    stats: () => c.worker?.agent.stats,
    status: () => c.status,
    workerId: () => c.worker?.workerId,
    engineInfo: () => c.worker?.backend.info,
    loseDevice: async () => {
      // The worker may be gone before it confirms: the loss is what was asked for either way.
      await c.worker?.backend.loseDevice().catch(() => undefined);
    },
  };
}
