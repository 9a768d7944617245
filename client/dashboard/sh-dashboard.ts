/**
 * `<sh-dashboard>`: the operator dashboard (`/dashboard`). Without the operator token it shows the
 * sign-in and nothing else; signed in, a header with the connection and grid totals, and one of
 * five views chosen by the URL's hash: `#workers`, `#jobs` (or `#jobs/<id>`), `#fairness/<id>`,
 * `#submit` (an OCR run it submitted: `#ocr/<id>`) and `#hubs`. Everything comes from {@link OperatorController}: a REST picture kept live by the
 * `/operator` namespace; the views' events become REST actions there.
 */
import { css, html, LitElement } from 'lit';
import { customElement, state } from 'lit/decorators.js';
import type { JobView, WorkerView } from '../../protocol/operator.ts';
import type {
  JobCancelEvent,
  JobPriorityEvent,
  JobSubmittedEvent,
  OcrSubmittedEvent,
  ResultsDownloadEvent,
  SignInEvent,
  WorkerActionEvent,
} from './events.ts';
import { count, rate } from './format.ts';
import { OperatorController } from './operator-controller.ts';
import './sh-fairness-view.ts';
import './sh-hubs-view.ts';
import './sh-job-detail.ts';
import './sh-jobs-table.ts';
import './sh-ocr-run.ts';
import './sh-sign-in.ts';
import './sh-submit-form.ts';
import './sh-workers-table.ts';
import { shared } from './styles.ts';

/** A view and the job it is about. */
export type Route =
  | { view: 'workers' }
  | { view: 'jobs'; jobId?: string }
  | { view: 'fairness'; jobId?: string }
  | { view: 'submit' }
  | { view: 'ocr'; runId: string }
  | { view: 'hubs' };

/** Reads a route from a location hash. */
export function parseRoute(hash: string): Route {
  const [view, id] = hash.replace(/^#\/?/, '').split('/');
  const jobId = id ? decodeURIComponent(id) : undefined;
  switch (view) {
    case 'jobs':
      return { view: 'jobs', jobId };
    case 'fairness':
      return { view: 'fairness', jobId };
    case 'submit':
      return { view: 'submit' };
    case 'hubs':
      return { view: 'hubs' };
    case 'ocr':
      return jobId ? { view: 'ocr', runId: jobId } : { view: 'submit' };
    default:
      return { view: 'workers' };
  }
}

/** The dashboard; see the file comment. */
@customElement('sh-dashboard')
export class ShDashboard extends LitElement {
  static override styles = [
    shared,
    css`
      :host {
        display: block;
        min-height: 100vh;
      }
      header {
        display: flex;
        align-items: center;
        flex-wrap: wrap;
        gap: 0.5rem 1.25rem;
        padding: 0.6rem 1.25rem;
        background: #1f2933;
        color: #f5f7fa;
      }
      header h1 {
        font-size: 1.05rem;
        margin: 0;
      }
      header .totals {
        display: flex;
        gap: 1rem;
        font-variant-numeric: tabular-nums;
        color: #cbd2d9;
      }
      header .totals strong {
        color: #fff;
      }
      header .grow {
        flex: 1;
      }
      header button {
        background: transparent;
        color: #f5f7fa;
        border-color: #616e7c;
      }
      header button:hover:not([disabled]) {
        background: #323f4b;
      }
      nav {
        display: flex;
        gap: 0.25rem;
        padding: 0 1.25rem;
        background: #fff;
        border-bottom: 1px solid #d5dbe1;
      }
      nav a {
        padding: 0.6rem 0.9rem;
        text-decoration: none;
        color: #3e4c59;
        border-bottom: 3px solid transparent;
        font-weight: 600;
      }
      nav a[aria-current='page'] {
        color: #1d4ed8;
        border-bottom-color: #2563eb;
      }
      main {
        padding: 1rem 1.25rem 2rem;
      }
      .problem {
        margin: 0.75rem 1.25rem 0;
        padding: 0.5rem 0.75rem;
        border-radius: 0.35rem;
        background: #fef3f2;
        color: #b42318;
        border: 1px solid #fecdca;
      }
      .toast {
        position: fixed;
        right: 1rem;
        bottom: 1rem;
        max-width: 32rem;
        padding: 0.6rem 0.9rem;
        border-radius: 0.4rem;
        box-shadow: 0 4px 16px rgb(0 0 0 / 18%);
        background: #1f2933;
        color: #fff;
      }
      .toast.error {
        background: #b42318;
      }
    `,
  ];

  private readonly op = new OperatorController(this);
  @state() private route: Route = parseRoute(location.hash);

  private readonly onHash = () => {
    this.route = parseRoute(location.hash);
    void this.follow();
  };

  override connectedCallback(): void {
    super.connectedCallback();
    window.addEventListener('hashchange', this.onHash);
    void this.follow();
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    window.removeEventListener('hashchange', this.onHash);
  }

  /** Watches the job the route is about (for its fairness report, charts included). */
  private async follow(): Promise<void> {
    const r = this.route;
    const jobId = r.view === 'jobs' || r.view === 'fairness' ? (r.jobId ?? null) : null;
    if (jobId !== this.op.watched) await this.op.watch(jobId);
  }

  protected override updated(): void {
    // `#fairness` alone: settle on a job once one has started, so it is watched and linkable.
    const r = this.route;
    if (r.view === 'fairness' && !r.jobId && this.op.phase === 'live') {
      const job = this.defaultJob([...this.op.jobs.values()]);
      if (job) {
        history.replaceState(null, '', `#fairness/${job.id}`);
        this.route = { view: 'fairness', jobId: job.id };
        void this.follow();
      }
    }
  }

  override render() {
    const op = this.op;
    if (op.phase === 'signed-out' || op.phase === 'checking') {
      return html`<sh-sign-in
        .problem=${op.problem}
        ?busy=${op.phase === 'checking'}
        @sign-in=${(e: SignInEvent) => void op.signIn(e.token)}
      ></sh-sign-in>`;
    }
    const workers = [...op.workers.values()];
    const jobs = [...op.jobs.values()];
    const connected = workers.filter((w) => w.state !== 'offline').length;
    const running = jobs.filter((j) => j.state === 'running').length;
    const itemsPerSec = workers.reduce((s, w) => s + w.rate, 0);
    const r = this.route;
    return html`
      <header>
        <h1>shardhub · operator</h1>
        <span class="pill ${op.phase}" data-test="connection"
          >${op.phase === 'live' ? 'live' : op.phase}</span
        >
        <span class="totals">
          <span
            ><strong data-test="workers-online">${count(connected)}</strong> of ${count(workers.length)}
            workers connected</span
          >
          <span><strong>${count(running)}</strong> jobs running</span>
          <span><strong data-test="grid-rate">${rate(itemsPerSec)}</strong> items/s</span>
        </span>
        <span class="grow"></span>
        <button data-test="sign-out" @click=${() => op.signOut()}>Sign out</button>
      </header>
      <nav aria-label="views">
        ${this.tab('#workers', 'Workers', r.view === 'workers')}
        ${this.tab('#jobs', 'Jobs', r.view === 'jobs')}
        ${this.tab(this.fairnessHref(jobs), 'Fairness', r.view === 'fairness')}
        ${this.tab('#submit', 'Submit a job', r.view === 'submit' || r.view === 'ocr')}
        ${this.tab('#hubs', 'Hubs', r.view === 'hubs')}
      </nav>
      ${op.problem && op.phase !== 'live' ? html`<p class="problem" role="alert">${op.problem}</p>` : null}
      <main
        @worker-action=${(e: WorkerActionEvent) => void op.workerAction(e.workerId, e.action)}
        @job-cancel=${(e: JobCancelEvent) => void op.cancelJob(e.jobId)}
        @job-priority=${(e: JobPriorityEvent) => void op.setPriority(e.jobId, e.priority)}
        @results-download=${(e: ResultsDownloadEvent) => void op.downloadResults(e.jobId)}
        @job-submitted=${(e: JobSubmittedEvent) => (location.hash = `#jobs/${e.jobId}`)}
        @ocr-submitted=${(e: OcrSubmittedEvent) => (location.hash = `#ocr/${encodeURIComponent(e.runId)}`)}
      >
        ${this.view(r, workers, jobs)}
      </main>
      ${
        op.notice
          ? html`<div class="toast ${op.notice.kind}" role="status" data-test="notice">
              ${op.notice.text}
            </div>`
          : null
      }
    `;
  }

  private view(r: Route, workers: WorkerView[], jobs: JobView[]) {
    const op = this.op;
    switch (r.view) {
      case 'workers':
        return html`<sh-workers-table .workers=${workers} .now=${op.hubNow}></sh-workers-table>`;
      case 'jobs': {
        if (r.jobId) {
          const job = op.jobs.get(r.jobId);
          return html`<sh-job-detail
            .job=${job}
            .pace=${job ? op.pace(job) : undefined}
            .api=${op.api}
            .workers=${op.workers}
            .report=${op.fairness?.jobId === r.jobId ? op.fairness : null}
          ></sh-job-detail>`;
        }
        // Rates and ETAs from the recent rate, as on the job's page.
        const paced = jobs.map((j) => ({ ...j, ...op.pace(j) }));
        return html`<sh-jobs-table .jobs=${paced} .now=${op.hubNow}></sh-jobs-table>`;
      }
      case 'fairness': {
        const jobId = r.jobId ?? this.defaultJob(jobs)?.id;
        return html`<sh-fairness-view
          .jobs=${jobs}
          .workers=${op.workers}
          .job=${jobId ? op.jobs.get(jobId) : undefined}
          .report=${jobId && op.fairness?.jobId === jobId ? op.fairness : null}
        ></sh-fairness-view>`;
      }
      case 'submit':
        return html`<sh-submit-form .api=${op.api}></sh-submit-form>`;
      case 'hubs':
        return html`<sh-hubs-view .api=${op.api} .workers=${workers}></sh-hubs-view>`;
      case 'ocr':
        return html`<sh-ocr-run
          .api=${op.api}
          .runId=${r.runId}
          .jobs=${op.jobs}
          .now=${op.hubNow}
        ></sh-ocr-run>`;
    }
  }

  /** The job the Fairness tab opens: the newest running one, else the newest that started. */
  private defaultJob(jobs: readonly JobView[]): JobView | undefined {
    const started = jobs.filter((j) => j.startedAt !== null).sort((a, b) => b.createdAt - a.createdAt);
    return started.find((j) => j.state === 'running') ?? started[0];
  }

  private fairnessHref(jobs: readonly JobView[]): string {
    const r = this.route;
    const id =
      (r.view === 'jobs' || r.view === 'fairness' ? r.jobId : undefined) ?? this.defaultJob(jobs)?.id;
    return id ? `#fairness/${id}` : '#fairness';
  }

  private tab(href: string, label: string, current: boolean) {
    return html`<a href=${href} aria-current=${current ? 'page' : 'false'}>${label}</a>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-dashboard': ShDashboard;
  }
}
