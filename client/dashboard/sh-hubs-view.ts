/**
 * `<sh-hubs-view>`: the hubs of the grid (`#hubs`) and their leases, from `GET /api/hubs`, read
 * again every two seconds while the view is shown. Several hubs share a PostgreSQL store: each row
 * is one hub (the one this page talks to is marked), whether it is live, how long its lease has
 * left by the store's clock, when it last renewed it, the chunks of items it holds, and how many
 * workers are connected to it (from the workers the page already has, each of which names its
 * hub). A hub that stopped renewing shows its lease lapsed until another hub reaps it (then
 * `dead`). A hub on SQLite is the only one, and its lease never lapses.
 */
import { Task } from '@lit/task';
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { WorkerView } from '../../protocol/operator.ts';
import { ApiError, type OperatorApi } from './api.ts';
import { Poll } from './poll.ts';
import { ago, count } from './format.ts';
import { shared, viewStyles } from './styles.ts';

/** One hub as `GET /api/hubs` lists it. */
export interface HubRow {
  id: string;
  epoch: number;
  url: string;
  state: 'live' | 'dead';
  startedAt: number;
  renewedAt: number;
  /** When the lease runs out (the store's clock); null where leases never lapse (SQLite). */
  expiresAt: number | null;
  leaseHeld: boolean;
  chunks: number;
  /** The hub this page talks to. */
  self: boolean;
}

/** `GET /api/hubs`'s answer. */
export interface HubsView {
  hubs: HubRow[];
  store: string;
  /** The answering hub's clock when it answered (epoch ms): leases are read against it. */
  now: number;
}

/** How a hub's lease reads: time left, lapsed, or never lapsing. */
export function leaseText(h: Pick<HubRow, 'state' | 'expiresAt' | 'leaseHeld'>, now: number): string {
  if (h.state === 'dead') return 'released (reaped)';
  if (h.expiresAt === null) return 'never lapses (one hub)';
  if (!h.leaseHeld) return `lapsed ${ago(h.expiresAt, now)}`;
  return `${Math.max(0, (h.expiresAt - now) / 1000).toFixed(1)} s left`;
}

/** The hubs view; see the file comment. */
@customElement('sh-hubs-view')
export class ShHubsView extends LitElement {
  static override styles = [
    shared,
    viewStyles,
    css`
      table {
        border-collapse: collapse;
        width: 100%;
        background: #fff;
      }
      th,
      td {
        text-align: left;
        padding: 0.35rem 0.6rem;
        border-bottom: 1px solid #e4e7eb;
      }
      th {
        color: #616e7c;
        font-weight: 600;
        font-size: 0.8rem;
      }
      code {
        font-size: 0.82rem;
      }
      .lapsed {
        color: #b42318;
        font-weight: 600;
      }
    `,
  ];

  /** The REST client (carries the operator token). */
  @property({ attribute: false }) api: OperatorApi | undefined;
  /** Every worker the page knows (each names its hub when hubs share a store). */
  @property({ attribute: false }) workers: readonly WorkerView[] = [];

  /** Reloads the view after a while. */
  private readonly poll = new Poll(this);
  /** The last answer, with the local time it came (leases count down from it between reads). */
  @state() private last: { view: HubsView; at: number } | undefined;

  private readonly load = new Task(this, {
    task: async ([api], { signal }) => {
      if (!api) return undefined;
      const view = await api.get<HubsView>('/api/hubs', signal);
      this.last = { view, at: Date.now() };
      return view;
    },
    args: () => [this.api, this.poll.tick] as const,
    onComplete: () => this.poll.after(2000),
    onError: (err) => {
      // A lost hub may come back: keep asking. A refused token will not change.
      if (!(err instanceof ApiError && err.unauthorized)) this.poll.after(3000);
    },
  });

  override connectedCallback(): void {
    super.connectedCallback();
    if (this.last) this.poll.after(0);
  }

  override render() {
    const view = this.last?.view;
    return html`
      <header>
        <h2>Hubs</h2>
        ${
          view
            ? html`<span class="muted" data-test="hubs-store"
                >${
                  view.store === 'postgres'
                    ? `${count(view.hubs.filter((h) => h.state === 'live').length)} live, sharing one PostgreSQL store`
                    : 'one hub on its SQLite file'
                }</span
              >`
            : nothing
        }
      </header>
      ${this.load.render({
        pending: () => (view ? nothing : html`<p class="muted">Loading the hubs…</p>`),
        error: (err) =>
          html`<p class="problem" role="alert" data-test="hubs-problem">
            ${err instanceof ApiError ? err.message : String(err)}
          </p>`,
      })}
      ${view ? this.table(view) : nothing}
    `;
  }

  private table(view: HubsView) {
    // By the hub's clock (this page's may be off), counted on from the answer between reads.
    const now = view.now + (Date.now() - (this.last?.at ?? Date.now()));
    const perHub = new Map<string, number>();
    for (const w of this.workers) {
      if (w.state === 'offline' || !w.hub) continue;
      perHub.set(w.hub, (perHub.get(w.hub) ?? 0) + 1);
    }
    return html`<table aria-label="hubs">
      <thead>
        <tr>
          <th>Hub</th>
          <th>Address</th>
          <th>State</th>
          <th title="a hub that stops renewing its lease is reaped by another; its chunks go back">Lease</th>
          <th>Renewed</th>
          <th>Started</th>
          <th class="num" title="runs of consecutive items of a job this hub runs">Chunks</th>
          <th class="num">Workers</th>
        </tr>
      </thead>
      <tbody>
        ${view.hubs.map((h) => {
          const lease = leaseText(h, now);
          // One hub alone: every worker is its own (workers name their hub only when hubs share a store).
          const workers = view.store === 'postgres' ? (perHub.get(h.id) ?? 0) : this.online();
          return html`<tr data-hub-id=${h.id} data-state=${h.state}>
            <td>
              <code>${h.id}</code
              >${h.epoch > 1 ? html` <span class="muted">(epoch ${h.epoch})</span>` : nothing}
              ${h.self ? html` <span class="pill live" data-test="hub-self">this hub</span>` : nothing}
            </td>
            <td>${h.url}</td>
            <td><span class="pill ${h.state === 'live' ? 'live' : 'offline'}">${h.state}</span></td>
            <td class=${h.state === 'live' && !h.leaseHeld ? 'lapsed' : ''} data-test="hub-lease">
              ${lease}
            </td>
            <td>${ago(h.renewedAt, now)}</td>
            <td>${ago(h.startedAt, now)}</td>
            <td class="num">${count(h.chunks)}</td>
            <td class="num" data-test="hub-workers">${count(workers)}</td>
          </tr>`;
        })}
      </tbody>
    </table>`;
  }

  private online(): number {
    return this.workers.filter((w) => w.state !== 'offline').length;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-hubs-view': ShHubsView;
  }
}
