/**
 * `<sh-job-detail>`: one job, live: a progress bar, its figures (done, failed, in flight, queued,
 * recent rate, elapsed, ETA at the recent rate), throughput over time, each worker's contribution
 * over time, its failed items and events (`<sh-job-log>`), and the operator's controls: priority,
 * cancel (asks twice) and the results archive.
 *
 * @fires job-priority - {@link JobPriorityEvent} when a new priority is set
 * @fires job-cancel - {@link JobCancelEvent} on the second press of Cancel
 * @fires results-download - {@link ResultsDownloadEvent} when the results are asked for
 */
import { css, html, LitElement } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type { JobView, WorkerView } from '../../protocol/operator.ts';
import type { OperatorApi } from './api.ts';
import { colour, contributionSeries, lineOptions, throughputData } from './charts.ts';
import { JobCancelEvent, JobPriorityEvent, ResultsDownloadEvent } from './events.ts';
import { count, duration, percent, rate } from './format.ts';
import './sh-chart.ts';
import './sh-job-log.ts';
import { figureCard, shared, viewStyles } from './styles.ts';

/** The job page; see the file comment. */
@customElement('sh-job-detail')
export class ShJobDetail extends LitElement {
  static override styles = [
    shared,
    viewStyles,
    css`
      .grow {
        flex: 1;
      }
      .progress {
        display: grid;
        gap: 0.3rem;
      }
      .progress .bar {
        height: 1.1rem;
        border-radius: 0.55rem;
      }
      .controls {
        display: flex;
        flex-wrap: wrap;
        gap: 0.5rem 1rem;
        align-items: center;
      }
      .controls label {
        display: flex;
        gap: 0.4rem;
        align-items: center;
      }
      .controls input {
        width: 5rem;
        padding: 0.2rem 0.4rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
      }
      .charts {
        display: grid;
        grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr));
        gap: 0.9rem;
      }
    `,
  ];

  /** The job. */
  @property({ attribute: false }) job: JobView | undefined;
  /** Its fairness report (throughput and contributions come from there). */
  @property({ attribute: false }) report: FairnessReport | null = null;
  /** Rate and ETA to show: recent (from the pushes) once known, else since the start. */
  @property({ attribute: false }) pace:
    { itemsPerSec: number; etaS: number | null; recent: boolean } | undefined;
  /** For the failed items and events. */
  @property({ attribute: false }) api: OperatorApi | undefined;
  @property({ attribute: false }) workers: ReadonlyMap<string, WorkerView> = new Map();

  @state() private confirmCancel = false;
  @state() private priorityDraft: string | undefined;
  private confirmTimer: ReturnType<typeof setTimeout> | undefined;

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    if (this.confirmTimer !== undefined) clearTimeout(this.confirmTimer);
  }

  /** How the job's results were verified (completed jobs; issue 18, docs/trust.md). */
  private _verification(j: JobView) {
    const v = j.verification;
    if (!v) return '';
    const byK = (m: Record<string, number>) =>
      Object.entries(m)
        .map(([k, n]) => `${count(n)} by ${k}`)
        .join(', ') || '0';
    return html`<p class="panel muted" data-test="job-verification">
      Verified: confirmed by several workers ${byK(v.confirmed)}; spot-checked ${byK(v.spotChecked)}; canaries
      ${count(v.canary)}; reference backend ${count(v.reference)}; from canary-proven workers
      ${count(v.provenWorker)}; from trusted workers ${count(v.trustedWorker)}; from the result cache
      ${count(v.cached ?? 0)}.
    </p>`;
  }

  override render() {
    const j = this.job;
    if (!j) return html`<p class="muted">Loading the job…</p>`;
    const finished = j.state === 'completed' || j.state === 'cancelled';
    const r = this.report;
    const contrib = r ? contributionSeries(r) : undefined;
    const pace = this.pace ?? { itemsPerSec: j.itemsPerSec, etaS: j.etaS, recent: false };
    const since = pace.recent ? 'items/s, last 10 s' : 'items/s since start';
    return html`
      <header>
        <a href="#jobs">← all jobs</a>
        <h2 data-test="job-id">${j.id}</h2>
        <span class="pill ${j.state}" data-test="job-state">${j.state}</span>
        <span class="muted">model <strong>${j.model}</strong></span>
        <span class="grow"></span>
        <a href="#fairness/${j.id}">Fairness of this job →</a>
      </header>
      <div class="panel progress">
        <div
          class="bar"
          role="progressbar"
          aria-label="progress"
          aria-valuemin="0"
          aria-valuemax="100"
          aria-valuenow=${Math.round(j.progress * 100)}
        >
          <div class="fill" style="width:${(100 * j.done) / Math.max(1, j.items)}%"></div>
          <div
            class="fill failed"
            style="left:${(100 * j.done) / Math.max(1, j.items)}%;width:${
              (100 * j.failed) / Math.max(1, j.items)
            }%"
          ></div>
        </div>
        <span data-test="job-progress"
          ><strong data-test="job-done">${count(j.done)}</strong> of
          <span data-test="job-items">${count(j.items)}</span> items done
          (${percent(j.progress, 1)})${j.failed ? `, ${count(j.failed)} failed` : ''}</span
        >
      </div>
      <div class="cards">
        ${figureCard('Done', count(j.done), `of ${count(j.items)}`, 'done')}
        ${figureCard('Failed', count(j.failed), 'after retries', 'failed')}
        ${figureCard('In flight', count(j.inFlight), 'held by workers', 'in-flight')}
        ${figureCard('Queued', count(j.queued), 'not handed out', 'queued')}
        ${figureCard('Rate', rate(finished ? j.itemsPerSec : pace.itemsPerSec), finished ? 'items/s, whole job' : since, 'rate')}
        ${figureCard('Elapsed', duration(j.startedAt ? j.elapsedS : null), finished ? 'final' : 'so far', 'elapsed')}
        ${figureCard('ETA', finished ? 'done' : duration(pace.etaS), 'at that rate', 'eta')}
        ${figureCard('Priority', String(j.priority), 'higher runs first', 'priority')}
      </div>
      ${this._verification(j)}
      <div class="panel controls">
        <label
          >Priority
          <input
            type="number"
            min="-100"
            max="100"
            step="1"
            data-test="priority-input"
            .value=${this.priorityDraft ?? String(j.priority)}
            @input=${(e: Event) => (this.priorityDraft = (e.target as HTMLInputElement).value)}
            @keydown=${(e: KeyboardEvent) => e.key === 'Enter' && this._setPriority()}
          />
        </label>
        <button data-action="set-priority" ?disabled=${finished} @click=${this._setPriority}>
          Set priority
        </button>
        <button
          data-action="cancel"
          class=${this.confirmCancel ? 'confirm' : 'danger'}
          ?disabled=${finished}
          @click=${this._cancel}
        >
          ${this.confirmCancel ? 'Really cancel?' : 'Cancel job'}
        </button>
        <button data-action="results" ?disabled=${j.done === 0} @click=${this._download}>
          Download results (.tar)
        </button>
        <span class="muted">${count(j.done)} result${j.done === 1 ? '' : 's'} as .npy files</span>
      </div>
      <div class="charts">
        <sh-chart
          class="panel"
          data-chart="throughput"
          heading="Throughput over time"
          empty=${j.startedAt ? 'Waiting for the first second of results' : 'Charts start when the job does'}
          .options=${lineOptions({
            yLabel: 'items/s',
            series: [
              { label: 'items/s', colour: '#93c5fd', fill: '#2563eb22' },
              { label: '5 s average', colour: '#1e40af' },
            ],
          })}
          .data=${r ? throughputData(r) : undefined}
        ></sh-chart>
        <sh-chart
          class="panel"
          data-chart="contributions"
          heading="Each worker’s contribution (items so far)"
          empty=${j.startedAt ? 'Waiting for results' : 'Charts start when the job does'}
          .options=${
            contrib
              ? lineOptions({
                  yLabel: 'items',
                  series: contrib.labels.map((label, i) => ({ label, colour: colour(i) })),
                })
              : undefined
          }
          .data=${contrib?.data}
        ></sh-chart>
      </div>
      <sh-job-log .job=${j} .api=${this.api} .workers=${this.workers}></sh-job-log>
    `;
  }

  private _setPriority(): void {
    const j = this.job;
    if (!j || this.priorityDraft === undefined) return;
    const p = Number(this.priorityDraft);
    if (!Number.isInteger(p) || p < -100 || p > 100) return;
    this.priorityDraft = undefined;
    this.dispatchEvent(new JobPriorityEvent(j.id, p));
  }

  private _cancel(): void {
    const j = this.job;
    if (!j) return;
    if (!this.confirmCancel) {
      this.confirmCancel = true;
      this.confirmTimer = setTimeout(() => (this.confirmCancel = false), 4000);
      return;
    }
    this.confirmCancel = false;
    this.dispatchEvent(new JobCancelEvent(j.id));
  }

  private _download(): void {
    if (this.job) this.dispatchEvent(new ResultsDownloadEvent(this.job.id));
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-job-detail': ShJobDetail;
  }
}
