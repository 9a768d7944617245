/**
 * `<sh-workers-table>`: every worker the hub knows, one row each: kind, backend, device (GPU or
 * adapter, else processor), state and probation, CPU and memory load, weight (benchmark and
 * observed), items done, current rate, share against fair share and the last heartbeat, with
 * pause / resume, drain and evict, and remove for offline workers. With several hubs, each worker's
 * hub is named under its id (and matched by the text filter). Sortable by any column, filterable by text,
 * state, kind and backend. Rows are virtualized (`@lit-labs/virtualizer`): only the rows in view
 * exist in the DOM, so 500 workers scroll as smoothly as 5.
 *
 * Weight, fair share and share are on the worker's first running job (highest priority); a worker
 * in no running job shows "–".
 *
 * @fires worker-action - {@link WorkerActionEvent} when an action button is pressed (evict and remove ask twice)
 */
import '@lit-labs/virtualizer';
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import { WORKER_STATES, type WorkerView } from '../../protocol/operator.ts';
import { COLUMNS, deviceLabel, loadOf, visibleWorkers, type WorkerSortKey } from './worker-rows.ts';
import { WorkerActionEvent, type WorkerAction } from './events.ts';
import { ago, bytes, count, percent, rate } from './format.ts';
import { shared } from './styles.ts';

/** The workers table; see the file comment. */
@customElement('sh-workers-table')
export class ShWorkersTable extends LitElement {
  static override styles = [
    shared,
    css`
      :host {
        display: grid;
        gap: 0.5rem;
      }
      .filters {
        display: flex;
        flex-wrap: wrap;
        gap: 0.5rem;
        align-items: center;
      }
      .filters input[type='search'] {
        min-width: 16rem;
        padding: 0.3rem 0.5rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
      }
      .filters select {
        padding: 0.25rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
        background: #fff;
      }
      .table {
        overflow-x: auto;
        background: #fff;
        border: 1px solid #d5dbe1;
        border-radius: 0.45rem;
        overflow: hidden;
      }
      .row {
        display: grid;
        grid-template-columns:
          minmax(9rem, 1.3fr) 4.6rem 4.6rem minmax(8rem, 1.2fr) 6.6rem 6.4rem 7.6rem 5rem 4.6rem
          9.5rem 6rem 13rem;
        align-items: center;
        gap: 0 0.5rem;
        padding: 0 0.75rem;
        height: 2.6rem;
        width: 100%;
        box-sizing: border-box;
        border-bottom: 1px solid #eef2f6;
      }
      .head {
        background: #f5f7fa;
        font-weight: 600;
        border-bottom: 1px solid #d5dbe1;
      }
      .head button {
        border: 0;
        background: none;
        padding: 0;
        font-weight: 600;
        text-align: left;
        width: 100%;
        overflow: hidden;
        text-overflow: ellipsis;
      }
      .head .numeric button {
        text-align: right;
      }
      .cell {
        overflow: hidden;
        text-overflow: ellipsis;
        white-space: nowrap;
        min-width: 0;
      }
      .name small {
        display: block;
        color: #7b8794;
        font-size: 0.72rem;
        overflow: hidden;
        text-overflow: ellipsis;
      }
      .name,
      .stacked {
        line-height: 1.15;
      }
      .stacked small {
        display: block;
        color: #7b8794;
        font-size: 0.72rem;
        overflow: hidden;
        text-overflow: ellipsis;
      }
      .pill.probation {
        background: #fff7ed;
        color: #9a3412;
      }
      /* The wrapper's height is the rows' (bound per render) up to a screenful; the virtualizer
         fills it. Its own inline styles are its business, so nothing is bound on it. */
      .rows {
        max-height: calc(100vh - 14rem);
        min-height: 2.6rem;
      }
      lit-virtualizer {
        height: 100%;
        width: 100%;
      }
      .share {
        display: grid;
        grid-template-columns: 1fr auto;
        align-items: center;
        gap: 0.4rem;
      }
      .share .bar {
        height: 0.55rem;
      }
      .share .fair {
        position: absolute;
        left: 50%;
        top: -2px;
        bottom: -2px;
        width: 2px;
        background: #1f2933;
      }
      .share .fill.over {
        background: #16a34a;
      }
      .share .fill.under {
        background: #d97706;
      }
      .actions {
        display: flex;
        gap: 0.3rem;
        justify-content: flex-end;
      }
      .note {
        margin: 0;
        padding: 0.45rem 0.75rem;
        border-radius: 0.35rem;
        background: #fff7ed;
        border: 1px solid #fed7aa;
        color: #7c2d12;
      }
      .empty {
        padding: 2rem;
        text-align: center;
        color: #616e7c;
      }
    `,
  ];

  /** The workers (any order). */
  @property({ attribute: false }) workers: readonly WorkerView[] = [];
  /** Now, by the hub's clock (for heartbeat ages). */
  @property({ type: Number }) now = Date.now();

  @state() private text = '';
  @state() private stateFilter = '';
  @state() private kind = '';
  @state() private backend = '';
  @state() private sort: { key: WorkerSortKey; dir: 1 | -1 } = { key: 'name', dir: 1 };
  /** `${action}:${workerId}` waiting for its second click. */
  @state() private confirming: string | undefined;
  private confirmTimer: ReturnType<typeof setTimeout> | undefined;

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    if (this.confirmTimer !== undefined) clearTimeout(this.confirmTimer);
  }

  override render() {
    const rows = visibleWorkers(
      this.workers,
      { text: this.text, state: this.stateFilter, kind: this.kind, backend: this.backend },
      this.sort,
    );
    const backends = [...new Set(this.workers.map((w) => w.backend))].sort();
    return html`
      <div class="filters" role="search">
        <input
          type="search"
          placeholder="Filter by name, id, device or pool"
          aria-label="filter workers"
          data-test="worker-filter"
          .value=${this.text}
          @input=${(e: Event) => (this.text = (e.target as HTMLInputElement).value)}
        />
        <select
          aria-label="state"
          data-test="state-filter"
          @change=${(e: Event) => (this.stateFilter = (e.target as HTMLSelectElement).value)}
        >
          <option value="">all states</option>
          ${WORKER_STATES.map((s) => html`<option value=${s} ?selected=${this.stateFilter === s}>${s}</option>`)}
        </select>
        <select
          aria-label="kind"
          @change=${(e: Event) => (this.kind = (e.target as HTMLSelectElement).value)}
        >
          <option value="">all kinds</option>
          <option value="native">native</option>
          <option value="browser">browser</option>
        </select>
        <select
          aria-label="backend"
          @change=${(e: Event) => (this.backend = (e.target as HTMLSelectElement).value)}
        >
          <option value="">all backends</option>
          ${backends.map((b) => html`<option value=${b} ?selected=${this.backend === b}>${b}</option>`)}
        </select>
        <span class="muted" data-test="worker-count"
          >${count(rows.length)} of ${count(this.workers.length)} workers</span
        >
      </div>
      ${this.probationNote()}
      <div class="table" role="table" aria-label="workers" aria-rowcount=${rows.length + 1}>
        <div class="row head" role="row">
          ${COLUMNS.map((c) => this.headCell(c))}
          <div class="cell" role="columnheader" style="text-align:right">Actions</div>
        </div>
        ${
          rows.length
            ? html`<div class="rows" style="height:calc(${rows.length} * 2.6rem)">
                <lit-virtualizer
                  scroller
                  role="rowgroup"
                  .items=${rows}
                  .keyFunction=${(w: WorkerView) => w.id}
                  .renderItem=${(w: WorkerView) => this.row(w)}
                ></lit-virtualizer>
              </div>`
            : html`<div class="empty">
                ${this.workers.length ? 'No worker matches the filters.' : 'No worker has joined yet.'}
              </div>`
        }
      </div>
    `;
  }

  private headCell(c: (typeof COLUMNS)[number]) {
    const active = this.sort.key === c.key;
    const sort = active ? (this.sort.dir === 1 ? 'ascending' : 'descending') : 'none';
    return html`<div
      class="cell ${c.numeric ? 'numeric' : ''}"
      role="columnheader"
      aria-sort=${sort}
      title=${c.title ?? nothing}
    >
      <button data-sort=${c.key} @click=${() => this._sortBy(c.key)}>
        ${c.label}${active ? (this.sort.dir === 1 ? ' ▲' : ' ▼') : ''}
      </button>
    </div>`;
  }

  private row(w: WorkerView) {
    const offline = w.state === 'offline';
    const paused = w.state === 'paused' || w.state === 'draining';
    const ratio = w.share !== null && w.fairShare ? w.share / w.fairShare : null;
    const evictKey = `evict:${w.id}`;
    return html`<div class="row" role="row" data-worker-id=${w.id} data-state=${w.state}>
      <div class="cell name" role="cell" title=${w.hub ? `${w.id} on hub ${w.hub}` : w.id}>
        ${w.name}<small>${w.id}${w.hub ? html` · hub <span data-col="hub">${w.hub}</span>` : nothing}</small>
      </div>
      <div class="cell" role="cell">${w.kind}</div>
      <div class="cell" role="cell">${w.backend}</div>
      <div
        class="cell"
        role="cell"
        data-col="device"
        title=${
          [
            w.capabilities.hostname ? `host ${w.capabilities.hostname}` : '',
            w.capabilities.backendReason ?? '',
          ]
            .filter(Boolean)
            .join('; ') || deviceLabel(w)
        }
      >
        ${deviceLabel(w)}
      </div>
      <div class="cell stacked" role="cell">
        <span class="pill ${w.state}" data-col="state">${w.state}</span>${this.probation(w)}
      </div>
      ${this.load(w)}
      <div
        class="cell num"
        role="cell"
        data-col="weight"
        title="benchmark ${rate(w.benchmark)} / observed ${rate(w.observed)} items/s"
      >
        ${rate(w.benchmark)} / ${rate(w.observed)}
      </div>
      <div class="cell num" role="cell" data-col="items">${count(w.itemsDone)}</div>
      <div class="cell num" role="cell" data-col="rate">${rate(w.rate)}</div>
      <div class="cell share" role="cell" data-col="share">
        ${
          ratio === null
            ? html`<span class="muted">–</span><span></span>`
            : html`<div
                  class="bar"
                  title="share ${percent(w.share, 1)} of results, fair share ${percent(w.fairShare, 1)}"
                >
                  <div
                    class="fill ${ratio >= 0.9 ? 'over' : 'under'}"
                    style="width:${Math.min(100, ratio * 50)}%"
                  ></div>
                  <div class="fair"></div>
                </div>
                <span class="num">${percent(w.share)} / ${percent(w.fairShare)}</span>`
        }
      </div>
      <div class="cell num" role="cell" data-col="heartbeat" title=${new Date(w.lastSeen).toISOString()}>
        ${offline ? html`<span class="muted">${ago(w.lastSeen, this.now)}</span>` : ago(w.lastSeen, this.now)}
      </div>
      <div class="cell actions" role="cell">
        ${
          paused
            ? html`<button data-action="resume" ?disabled=${offline} @click=${() => this._act(w, 'resume')}>
                Resume
              </button>`
            : html`<button data-action="pause" ?disabled=${offline} @click=${() => this._act(w, 'pause')}>
                Pause
              </button>`
        }
        <button
          data-action="drain"
          ?disabled=${offline || w.state === 'draining'}
          title="finish running items, hand back the rest, take no more"
          @click=${() => this._act(w, 'drain')}
        >
          Drain
        </button>
        ${
          offline
            ? html`<button
                data-action="remove"
                class=${this.confirming === `remove:${w.id}` ? 'confirm' : 'danger'}
                title="remove this offline worker from the list; it is listed again if it reconnects"
                @click=${() => this._twice(w, 'remove')}
              >
                ${this.confirming === `remove:${w.id}` ? 'Sure?' : 'Remove'}
              </button>`
            : html`<button
                data-action="evict"
                class=${this.confirming === evictKey ? 'confirm' : 'danger'}
                title="disconnect it now; its items go to other workers"
                @click=${() => this._twice(w, 'evict')}
              >
                ${this.confirming === evictKey ? 'Sure?' : 'Evict'}
              </button>`
        }
      </div>
    </div>`;
  }

  /** Why new workers hold few items, once, above the table, while any is on probation. */
  private probationNote() {
    const on = this.workers.filter((w) => w.probation && w.state !== 'offline');
    const p = on[0]?.probation;
    if (!p) return nothing;
    return html`<p class="note" data-test="probation-note">
      <strong>${count(on.length)}</strong> worker${on.length === 1 ? ' is' : 's are'} on probation: until
      checks confirm ${p.needed} of its results, a new worker holds at most two items per session, and each of
      its results waits for another worker’s second opinion. That is why a new worker holds few items.
    </p>`;
  }

  /** A probation line under the state: how far from proven, and why it holds few items. */
  private probation(w: WorkerView) {
    const p = w.probation;
    if (!p || w.state === 'offline') return nothing;
    const why =
      `on probation: ${p.confirmed} of ${p.needed} results confirmed by checks; until then it holds at ` +
      `most ${p.maxItems} items, and ${p.awaitingCheck} of its results wait for a second opinion`;
    return html`<small data-col="probation" title=${why}
      >probation
      ${Math.min(p.confirmed, p.needed)}/${p.needed}${p.awaitingCheck ? ` · ${p.awaitingCheck} to check` : ''}</small
    >`;
  }

  private load(w: WorkerView) {
    const l = loadOf(w);
    if (!l || w.state === 'offline')
      return html`<div class="cell num" role="cell" data-col="load"><span class="muted">–</span></div>`;
    const title = `CPU load ${percent(l.cpu)} of its cores (1-minute average)${
      w.load && l.mem !== null
        ? `; memory ${bytes(w.load.memUsedBytes)} of ${bytes(w.load.memTotalBytes)}`
        : ''
    }`;
    return html`<div class="cell num stacked" role="cell" data-col="load" title=${title}>
      cpu ${percent(l.cpu)}<small>mem ${percent(l.mem)}</small>
    </div>`;
  }

  private _sortBy(key: WorkerSortKey): void {
    this.sort =
      this.sort.key === key
        ? { key, dir: this.sort.dir === 1 ? -1 : 1 }
        : { key, dir: key === 'name' || key === 'kind' || key === 'backend' || key === 'device' ? 1 : -1 };
  }

  private _act(w: WorkerView, action: WorkerAction): void {
    this.dispatchEvent(new WorkerActionEvent(w.id, action));
  }

  /** Evict and remove ask twice: the first press arms the button for 4 s. */
  private _twice(w: WorkerView, action: 'evict' | 'remove'): void {
    const key = `${action}:${w.id}`;
    if (this.confirming !== key) {
      this.confirming = key;
      if (this.confirmTimer !== undefined) clearTimeout(this.confirmTimer);
      this.confirmTimer = setTimeout(() => (this.confirming = undefined), 4000);
      return;
    }
    this.confirming = undefined;
    this._act(w, action);
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-workers-table': ShWorkersTable;
  }
}
