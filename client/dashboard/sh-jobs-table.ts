/**
 * `<sh-jobs-table>`: the hub's jobs, newest first: state, priority, a progress bar, items done of
 * all, rate and ETA. A job's id links to its page (`#jobs/<id>`).
 */
import { css, html, LitElement } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { JobView } from '../../protocol/operator.ts';
import { ago, count, duration, percent, rate } from './format.ts';
import { shared } from './styles.ts';

/** The jobs list; see the file comment. */
@customElement('sh-jobs-table')
export class ShJobsTable extends LitElement {
  static override styles = [
    shared,
    css`
      table {
        width: 100%;
        border-collapse: collapse;
        background: #fff;
        border: 1px solid #d5dbe1;
        border-radius: 0.45rem;
        overflow: hidden;
      }
      th,
      td {
        padding: 0.45rem 0.75rem;
        border-bottom: 1px solid #eef2f6;
        text-align: left;
        white-space: nowrap;
      }
      th {
        background: #f5f7fa;
      }
      td.progress {
        width: 30%;
        min-width: 12rem;
      }
      td.progress .bar {
        margin-bottom: 0.15rem;
      }
      .empty {
        padding: 2rem;
        text-align: center;
        color: #616e7c;
        background: #fff;
        border: 1px solid #d5dbe1;
        border-radius: 0.45rem;
      }
    `,
  ];

  /** The jobs (any order). */
  @property({ attribute: false }) jobs: readonly JobView[] = [];
  /** Now, by the hub's clock. */
  @property({ type: Number }) now = Date.now();

  override render() {
    if (!this.jobs.length)
      return html`<div class="empty">No jobs yet. <a href="#submit">Submit one</a>.</div>`;
    const rows = [...this.jobs].sort((a, b) => b.createdAt - a.createdAt);
    return html`<table aria-label="jobs">
      <thead>
        <tr>
          <th>Job</th>
          <th>Model</th>
          <th>State</th>
          <th class="num">Priority</th>
          <th>Progress</th>
          <th class="num">Rate</th>
          <th class="num">ETA</th>
          <th class="num">Created</th>
        </tr>
      </thead>
      <tbody>
        ${rows.map(
          (j) =>
            html`<tr data-job-id=${j.id}>
              <td><a href="#jobs/${j.id}">${j.id}</a></td>
              <td>${j.model}</td>
              <td><span class="pill ${j.state}">${j.state}</span></td>
              <td class="num">${j.priority}</td>
              <td class="progress">
                <div class="bar" role="progressbar" aria-valuenow=${Math.round(j.progress * 100)}>
                  <div class="fill" style="width:${(100 * j.done) / Math.max(1, j.items)}%"></div>
                </div>
                <span class="muted"
                  >${count(j.done)} / ${count(j.items)}
                  (${percent(j.progress)})${
                    j.failed ? html`, <span style="color:#b42318">${count(j.failed)} failed</span>` : null
                  }</span
                >
              </td>
              <td class="num">${j.state === 'running' ? `${rate(j.itemsPerSec)}/s` : '–'}</td>
              <td class="num">${duration(j.etaS)}</td>
              <td class="num">${ago(j.createdAt, this.now)}</td>
            </tr>`,
        )}
      </tbody>
    </table>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-jobs-table': ShJobsTable;
  }
}
