/**
 * `<sh-job-log>`: what went wrong or moved in one job: its failed items with every reason they
 * failed (which worker, what category, the message), and its events: steals, speculative copies,
 * requeues, releases, quarantines and failed checks, oldest first, times from the job's start.
 * Loaded over REST with `@lit/task` (`GET /api/jobs/:id` and `/events`), again when the job's
 * failed count or state changes, and every few seconds while it runs.
 */
import { Task } from '@lit/task';
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import type { JobView, WorkerView } from '../../protocol/operator.ts';
import type { OperatorApi } from './api.ts';
import { count, duration } from './format.ts';
import {
  describeEvent,
  EVENT_LABELS,
  eventWorker,
  listedEvents,
  type FailedItemView,
  type JobEventView,
} from './job-events.ts';
import { shared } from './styles.ts';

/** How often a running job's lists are loaded again (ms). */
const RELOAD_MS = 5000;
/** Rows shown per list (the API returns at most 1,000 of each). */
const SHOWN = 200;

/** The failed items and events of a job; see the file comment. */
@customElement('sh-job-log')
export class ShJobLog extends LitElement {
  static override styles = [
    shared,
    css`
      :host {
        display: grid;
        grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr));
        gap: 0.9rem;
      }
      h3 {
        margin: 0 0 0.5rem;
        font-size: 0.95rem;
      }
      .scroll {
        max-height: 22rem;
        overflow: auto;
      }
      table {
        width: 100%;
        border-collapse: collapse;
      }
      th,
      td {
        padding: 0.3rem 0.5rem;
        border-bottom: 1px solid #eef2f6;
        text-align: left;
        vertical-align: top;
      }
      th {
        background: #f5f7fa;
        position: sticky;
        top: 0;
      }
      td.reason {
        overflow-wrap: anywhere;
      }
      .category {
        font-family: ui-monospace, monospace;
        font-size: 0.8rem;
        color: #b42318;
      }
      .error {
        color: #b42318;
      }
    `,
  ];

  /** The job. */
  @property({ attribute: false }) job: JobView | undefined;
  /** The REST client (with the operator token). */
  @property({ attribute: false }) api: OperatorApi | undefined;
  /** Workers by id, for names. */
  @property({ attribute: false }) workers: ReadonlyMap<string, WorkerView> = new Map();

  private readonly lists = new Task(this, {
    task: async ([api, jobId], { signal }) => {
      if (!api || !jobId) return undefined;
      const path = `/api/jobs/${encodeURIComponent(jobId)}`;
      const [status, events] = await Promise.all([
        api.get<{ failedItems: FailedItemView[] }>(path, signal),
        api.get<{ events: JobEventView[] }>(`${path}/events`, signal),
      ]);
      return { failed: status.failedItems, events: listedEvents(events.events) };
    },
    args: () => {
      const j = this.job;
      const running = j?.state === 'running';
      // A running job reloads every RELOAD_MS (renders come with every push, about once a second).
      return [
        this.api,
        j?.id,
        j?.failed,
        j?.state,
        running ? Math.floor(Date.now() / RELOAD_MS) : 0,
      ] as const;
    },
  });

  override render() {
    const last = this.lists.value;
    const error = this.lists.error;
    const problem = error ? html`<p class="error">Could not load: ${(error as Error).message}</p>` : nothing;
    if (!last)
      return html`<div class="panel">
        ${problem || html`<p class="muted">Loading failed items and events…</p>`}
      </div>`;
    return html`${this.failedPanel(last.failed, problem)}${this.eventsPanel(last.events)}`;
  }

  private name = (id: string): string => this.workers.get(id)?.name ?? id.slice(0, 12);

  private failedPanel(failed: readonly FailedItemView[], problem: unknown) {
    return html`<section class="panel" data-section="failed-items">
      <h3>Failed items (${count(this.job?.failed ?? failed.length)})</h3>
      ${problem}
      ${
        failed.length === 0
          ? html`<p class="muted">No item has failed.</p>`
          : html`<div class="scroll">
              <table aria-label="failed items">
                <thead>
                  <tr>
                    <th>Item</th>
                    <th class="num">Tries</th>
                    <th>Why (worker: category, message)</th>
                  </tr>
                </thead>
                <tbody>
                  ${failed.slice(0, SHOWN).map(
                    (f) =>
                      html`<tr data-item-id=${f.itemId}>
                        <td title="item ${f.itemId}">${f.name}</td>
                        <td class="num">${f.attempts}</td>
                        <td class="reason">
                          ${
                            f.reasons.length
                              ? f.reasons.map(
                                  (r) =>
                                    html`<div>
                                      ${this.name(r.workerId)}: <span class="category">${r.category}</span>
                                      ${r.message}
                                    </div>`,
                                )
                              : html`<span class="muted">no reason recorded</span>`
                          }
                        </td>
                      </tr>`,
                  )}
                </tbody>
              </table>
            </div>`
      }
      ${failed.length > SHOWN ? html`<p class="muted">${SHOWN} of ${count(failed.length)} shown.</p>` : nothing}
    </section>`;
  }

  private eventsPanel(events: readonly JobEventView[]) {
    const start = this.job?.startedAt ?? this.job?.createdAt ?? 0;
    const shown = events.slice(-SHOWN);
    return html`<section class="panel" data-section="events">
      <h3>Events (${count(events.length)})</h3>
      ${
        events.length === 0
          ? html`<p class="muted">
              No steals, requeues or quarantines${this.job?.state === 'running' ? ' yet' : ''}.
            </p>`
          : html`<div class="scroll">
              <table aria-label="job events">
                <thead>
                  <tr>
                    <th class="num">At</th>
                    <th>Event</th>
                    <th>Worker</th>
                    <th>Details</th>
                  </tr>
                </thead>
                <tbody>
                  ${shown.map((e) => {
                    const w = eventWorker(e);
                    return html`<tr data-event=${e.type}>
                      <td class="num" title=${new Date(e.at).toISOString()}>
                        ${start ? duration(Math.max(0, (e.at - start) / 1000)) : ''}
                      </td>
                      <td>${EVENT_LABELS[e.type] ?? e.type}</td>
                      <td>${w ? this.name(w) : '–'}</td>
                      <td class="reason">${describeEvent(e, this.name)}</td>
                    </tr>`;
                  })}
                </tbody>
              </table>
            </div>`
      }
      ${events.length > SHOWN ? html`<p class="muted">The last ${SHOWN} of ${count(events.length)} shown.</p>` : nothing}
    </section>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-job-log': ShJobLog;
  }
}
