/**
 * `<sh-fairness-view>`: how fairly one job was shared: Jain's index of share against fair share,
 * the coefficient of variation of the workers' finish times, makespan against the ideal (a live
 * estimate while the job runs, final after), steals, speculative copies and wasted runs; charts of
 * share against fair share and idle time per worker, and the timeline of steals, speculative
 * copies and requeues; then every worker's figures.
 */
import { css, html, LitElement } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type { JobView, WorkerView } from '../../protocol/operator.ts';
import { barOptions, chartWorkers, idleData, shareData, timelineData, timelineOptions } from './charts.ts';
import { count, duration, fixed, percent, rate } from './format.ts';
import './sh-chart.ts';
import { figureCard, shared, viewStyles } from './styles.ts';
import { deviceLabel } from './worker-rows.ts';

const TABLE_ROWS = 100;

/** The fairness page; see the file comment. */
@customElement('sh-fairness-view')
export class ShFairnessView extends LitElement {
  static override styles = [
    shared,
    viewStyles,
    css`
      select {
        padding: 0.25rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
        background: #fff;
      }
      .charts {
        display: grid;
        grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr));
        gap: 0.9rem;
      }
      .wide {
        grid-column: 1 / -1;
      }
      table {
        width: 100%;
        border-collapse: collapse;
        background: #fff;
      }
      th,
      td {
        padding: 0.35rem 0.6rem;
        border-bottom: 1px solid #eef2f6;
        text-align: left;
        white-space: nowrap;
      }
      th {
        background: #f5f7fa;
      }
      .makespan .bar {
        margin-top: 0.35rem;
        height: 0.5rem;
      }
      .makespan .fill {
        background: #16a34a;
      }
    `,
  ];

  /** Jobs to choose from. */
  @property({ attribute: false }) jobs: readonly JobView[] = [];
  /** The job shown. */
  @property({ attribute: false }) job: JobView | undefined;
  /** Its report (null before it starts). */
  @property({ attribute: false }) report: FairnessReport | null = null;
  /** Live workers by id: their device as the workers table names it (the report has host names). */
  @property({ attribute: false }) workers: ReadonlyMap<string, WorkerView> = new Map();

  override render() {
    const choices = [...this.jobs]
      .filter((j) => j.startedAt !== null || j.id === this.job?.id)
      .sort((a, b) => b.createdAt - a.createdAt);
    const header = html`<header>
      <h2>Fairness</h2>
      <label
        >Job
        <select aria-label="job" data-test="fairness-job" @change=${this._choose}>
          ${this.job ? null : html`<option value="" selected>choose a job</option>`}
          ${choices.map(
            (j) =>
              html`<option value=${j.id} ?selected=${j.id === this.job?.id}>
                ${j.id} · ${j.model} · ${j.state}
              </option>`,
          )}
        </select>
      </label>
      ${
        this.report
          ? html`<span class="pill ${this.report.final ? 'final' : 'live'}" data-test="fairness-mode"
              >${this.report.final ? 'final' : 'live estimate'}</span
            >`
          : null
      }
      ${this.job ? html`<a href="#jobs/${this.job.id}">← job ${this.job.id}</a>` : null}
    </header>`;
    if (!this.job)
      return html`${header}
        <p class="muted">No job has started yet.</p>`;
    const r = this.report;
    if (!r)
      return html`${header}
        <p class="muted">The figures appear once the job starts running.</p>`;
    const workers = chartWorkers(r);
    const names = workers.map((w) => w.name);
    const timelineIds = [
      ...new Set([...workers.map((w) => w.workerId), ...r.timeline.map((e) => e.workerId)]),
    ];
    const nameOf = new Map(r.workers.map((w) => [w.workerId, w.name]));
    const timelineNames = timelineIds.map((id) => nameOf.get(id) ?? id.slice(0, 10));
    const shown = workers.length < r.workers.length ? ` (the ${workers.length} that did most)` : '';
    const rows = [...r.workers].sort((a, b) => b.items - a.items).slice(0, TABLE_ROWS);
    return html`
      ${header}
      <div class="cards">
        ${figureCard('Jain’s index', fixed(r.jain, 3), 'of share ÷ fair share; 1 = perfectly fair', 'jain')}
        ${figureCard('CV of finish times', fixed(r.cvFinish, 3), 'spread of when workers finished', 'cv')}
        <div class="card makespan" data-figure="makespan">
          <div class="label">Makespan vs ideal</div>
          <div class="value">${duration(r.makespanS)}</div>
          <div class="sub">
            ideal ${duration(r.idealS)} · ${percent(r.efficiency)} efficient${r.final ? '' : ' (so far)'}
          </div>
          <div class="bar"><div class="fill" style="width:${Math.min(100, r.efficiency * 100)}%"></div></div>
        </div>
        ${figureCard('Steals', count(r.steals), `${count(r.stolenItems)} items moved`, 'steals')}
        ${figureCard('Speculative copies', count(r.speculative), 'in-flight items run twice', 'speculative')}
        ${figureCard('Wasted runs', count(r.wastedItems), 'results not used', 'wasted')}
        ${figureCard('Results', count(r.done), `accepted runs, for ${count(r.items)} items`, 'done')}
      </div>
      <div class="charts">
        <sh-chart
          class="panel"
          data-chart="share"
          heading="Share of results against fair share${shown}"
          chartKey=${names.join('\u0000')}
          .options=${barOptions({
            categories: names,
            yLabel: 'share',
            yFormat: (v) => percent(v),
            series: [
              { label: 'fair share (by weight)', colour: '#94a3b8' },
              { label: 'actual share', colour: '#2563eb' },
            ],
          })}
          .data=${shareData(workers)}
        ></sh-chart>
        <sh-chart
          class="panel"
          data-chart="idle"
          heading="Idle time per worker${shown}"
          chartKey=${names.join('\u0000')}
          .options=${barOptions({
            categories: names,
            yLabel: 'seconds',
            yFormat: (v) =>
              v > 0 && v < 1 ? `${Number((v * 1000).toPrecision(3))} ms` : `${Number(v.toPrecision(3))} s`,
            series: [{ label: 'idle while the job ran', colour: '#d97706' }],
          })}
          .data=${idleData(workers)}
        ></sh-chart>
        <sh-chart
          class="panel wide"
          data-chart="timeline"
          heading="Timeline of steals, speculative copies and requeues"
          empty="No steals, speculative copies or requeues${r.final ? '' : ' yet'}"
          chartKey=${timelineNames.join('\u0000')}
          .height=${Math.min(360, 90 + 22 * timelineNames.length)}
          .options=${timelineOptions(timelineNames, Math.ceil(r.makespanS))}
          .data=${r.timeline.length ? timelineData(r, timelineIds) : undefined}
        ></sh-chart>
      </div>
      <div class="panel">
        <table aria-label="workers in this job">
          <thead>
            <tr>
              <th>Worker</th>
              <th>Device</th>
              <th class="num">Benchmark</th>
              <th class="num">Weight</th>
              <th class="num">Fair share</th>
              <th class="num">Share</th>
              <th class="num">Items</th>
              <th class="num">Idle</th>
              <th class="num">Finished at</th>
              <th class="num">Steals</th>
              <th class="num">Stolen from</th>
              <th class="num">Speculative</th>
            </tr>
          </thead>
          <tbody>
            ${rows.map(
              (w) =>
                html`<tr data-worker-id=${w.workerId}>
                  <td title=${w.workerId}>${w.name}</td>
                  <td>${this.device(w.workerId, w.device)} (${w.backend})</td>
                  <td class="num">${rate(w.benchmark)}</td>
                  <td class="num">${rate(w.weight)}</td>
                  <td class="num">${percent(w.expectedShare, 1)}</td>
                  <td class="num">${percent(w.actualShare, 1)}</td>
                  <td class="num">${count(w.items)}</td>
                  <td class="num">${duration(w.idleS)}</td>
                  <td class="num">${duration(w.finishS)}</td>
                  <td class="num">${count(w.steals)}</td>
                  <td class="num">${count(w.stolenFrom)}</td>
                  <td class="num">${count(w.speculativeRuns)}</td>
                </tr>`,
            )}
          </tbody>
        </table>
        ${
          r.workers.length > TABLE_ROWS
            ? html`<p class="muted">
                ${TABLE_ROWS} of ${r.workers.length} workers shown (most items first).
              </p>`
            : null
        }
      </div>
    `;
  }

  private device(workerId: string, reported: string): string {
    const live = this.workers.get(workerId);
    return live ? deviceLabel(live) : reported;
  }

  private _choose(e: Event): void {
    const id = (e.target as HTMLSelectElement).value;
    if (id) location.hash = `#fairness/${id}`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-fairness-view': ShFairnessView;
  }
}
