/**
 * `<sh-worker-figures>`: what the worker is doing: model download progress (or why it failed),
 * items done and failed, current rate, its probation, and its share of each running job it works
 * on, counted in accepted results (when the hub reports it). Shares go when their job ends.
 */
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { AgentStats } from '../../worker/agent.ts';
import type { WorkerReport } from '../browser/figures.ts';

/** The worker's figures. */
@customElement('sh-worker-figures')
export class ShWorkerFigures extends LitElement {
  static override styles = css`
    :host {
      display: block;
    }
    dl {
      display: grid;
      grid-template-columns: max-content 1fr;
      gap: 0.3rem 1rem;
      margin: 0;
    }
    dt {
      color: #555;
    }
    dd {
      margin: 0;
      font-variant-numeric: tabular-nums;
    }
    progress {
      width: 12rem;
      vertical-align: middle;
    }
    .muted {
      color: #777;
    }
    .error {
      color: #82071e;
    }
  `;

  @property({ attribute: false }) stats: AgentStats | undefined;
  /** Undefined: the hub has not reported figures. */
  @property({ attribute: false }) figures: WorkerReport | undefined;

  override render() {
    const s = this.stats;
    const d = s?.download;
    return html`
      <dl>
        <dt>Model</dt>
        <dd data-field="download">
          ${
            d
              ? html`${d.model}
                ${
                  d.error
                    ? html`<span class="error" data-field="download-error"
                        >download failed: ${d.error}; it is tried again with the next work</span
                      >`
                    : d.waiting
                      ? html`<span class="muted">another tab of this browser is downloading it</span>`
                      : d.total > 0 && d.loaded < d.total
                        ? html`<progress max=${d.total} .value=${d.loaded}></progress>
                            ${Math.floor((100 * d.loaded) / d.total)}% of ${mib(d.total)}`
                        : html`<span class="muted">ready (${mib(d.loaded)})</span>`
                }`
              : html`<span class="muted">none yet</span>`
          }
        </dd>
        <dt>Items done</dt>
        <dd data-field="items-done">${s?.itemsDone ?? 0}</dd>
        ${
          s && s.itemsFailed > 0
            ? html`<dt>Items failed</dt>
                <dd data-field="items-failed">${s.itemsFailed}</dd>`
            : nothing
        }
        <dt>Rate</dt>
        <dd data-field="rate">${(s?.rate ?? 0).toFixed(1)} items/s</dd>
        <dt>Queue</dt>
        <dd data-field="queue">${s?.running ?? 0} running, ${s?.queued ?? 0} waiting</dd>
        ${
          this.figures?.probation
            ? html`<dt>Verification</dt>
                <dd data-field="probation">
                  ${Math.min(this.figures.probation.confirmed, this.figures.probation.needed)} of
                  ${this.figures.probation.needed} results confirmed; ${this.figures.probation.awaitingCheck}
                  waiting for a second opinion
                </dd>`
            : nothing
        }
        <dt>Share of the job</dt>
        <dd data-field="share">${this.renderShares()}</dd>
      </dl>
    `;
  }

  private renderShares() {
    if (this.figures === undefined) return html`<span class="muted">not reported by this hub</span>`;
    // The hub lists running jobs only: a job that ended leaves the list.
    const active = this.figures.jobs;
    if (active.length === 0) return html`<span class="muted">no job right now</span>`;
    return active.map(
      (j) =>
        html`<div data-job-id=${j.jobId}>
          ${(j.share * 100).toFixed(1)}% of ${j.model ?? 'job'} ${j.jobId} (${j.doneHere} of ${j.items} items
          accepted)
          ${
            j.weightShare !== undefined
              ? html`<span class="muted">, ${(j.weightShare * 100).toFixed(0)}% of its speed</span>`
              : nothing
          }
        </div>`,
    );
  }
}

function mib(n: number): string {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-worker-figures': ShWorkerFigures;
  }
}
