/**
 * `<sh-ocr-run>`: one OCR run (`#ocr/<id>`). While it runs: pages done, and each stage's job
 * (detection, direction, recognition) with its progress, live from the operator pushes. Then, per
 * page in submission order, its text in reading order with each line's confidence, or its outcome
 * (`no_text`, `invalid_image`, `failed` with the stage and reason), a "cached" marker for pages
 * answered from the result cache, and the whole run's text as one `.txt` or `.json` download.
 *
 * The run is read with `GET /api/ocr/:id?results=1` (a `@lit/task`, aborted when the route
 * changes), again every second or so until it completes. A lost hub keeps the last picture on
 * screen and says so while it retries; a run the hub does not know (a wrong address, or a run older
 * than the newest the hub keeps) stops the polling with that explanation.
 */
import { Task } from '@lit/task';
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { JobView } from '../../protocol/operator.ts';
import { ApiError, type OperatorApi } from './api.ts';
import { Poll } from './poll.ts';
import { count, duration, percent } from './format.ts';
import { pageOutcomeText, runJson, runText, saveFile, type OcrPageResult, type OcrRunView } from './ocr.ts';
import { figureCard, shared, viewStyles } from './styles.ts';

/** Stages in pipeline order, with what the operator reads for each. */
const STAGES = [
  ['det', 'Detection', 'finds the text lines'],
  ['cls', 'Direction', 'turns upside-down lines'],
  ['rec', 'Recognition', 'reads each line'],
] as const;

/** The OCR run page; see the file comment. */
@customElement('sh-ocr-run')
export class ShOcrRun extends LitElement {
  static override styles = [
    shared,
    viewStyles,
    css`
      .grow {
        flex: 1;
      }
      .stages {
        display: grid;
        grid-template-columns: repeat(auto-fit, minmax(14rem, 1fr));
        gap: 0.6rem;
      }
      .stage {
        display: grid;
        gap: 0.3rem;
      }
      .pages {
        display: grid;
        gap: 0.6rem;
      }
      .page header {
        margin-bottom: 0.4rem;
      }
      .page h3 {
        margin: 0;
        font-size: 1rem;
        overflow-wrap: anywhere;
      }
      ol {
        margin: 0;
        padding-left: 0;
        list-style: none;
        display: grid;
        gap: 0.15rem;
      }
      li {
        display: flex;
        gap: 0.75rem;
        align-items: baseline;
      }
      .n {
        min-width: 1.6rem;
        text-align: right;
        color: #9aa5b1;
        font-size: 0.78rem;
        font-variant-numeric: tabular-nums;
      }
      .line {
        font-family: ui-monospace, monospace;
        white-space: pre-wrap;
        overflow-wrap: anywhere;
        flex: 1;
      }
      .conf {
        font-variant-numeric: tabular-nums;
        font-size: 0.78rem;
        color: #616e7c;
        min-width: 3.5rem;
        text-align: right;
      }
      .conf.low {
        color: #b45309;
        font-weight: 600;
      }
      .pill.ok {
        background: #dcfce7;
        color: #166534;
      }
      .pill.no_text,
      .pill.pending {
        background: #fef9c3;
        color: #854d0e;
      }
      .pill.invalid_image,
      .pill.failed {
        background: #fee2e2;
        color: #991b1b;
      }
      .pill.cached {
        background: #e0e7ff;
        color: #3730a3;
      }
      .reason {
        color: #b42318;
      }
    `,
  ];

  /** The REST client (carries the operator token). */
  @property({ attribute: false }) api: OperatorApi | undefined;
  /** The run's id. */
  @property() runId = '';
  /** The hub's jobs, live from the operator pushes: the run's stage jobs are among them. */
  @property({ attribute: false }) jobs: ReadonlyMap<string, JobView> = new Map();
  /** The hub's clock (epoch ms), for the time a running run has taken. */
  @property({ attribute: false }) now: number | undefined;

  /** Reloads the view after a while. */
  private readonly poll = new Poll(this);
  /** The last picture of the run, kept on screen while a reload fails. */
  @state() private last: OcrRunView | undefined;

  private readonly run = new Task(this, {
    task: async ([api, id], { signal }) => {
      if (!api || !id) return undefined;
      const view = await api.get<OcrRunView>(`/api/ocr/${encodeURIComponent(id)}?results=1`, signal);
      this.last = view;
      return view;
    },
    args: () => [this.api, this.runId, this.poll.tick] as const,
    onComplete: (view) => {
      if (view?.state === 'running') this.poll.after(view.pages > 200 ? 3000 : 1000);
    },
    onError: (err) => {
      // A lost hub may come back: keep asking. A run it does not know, or a refused token, will not change.
      if (err instanceof ApiError && err.status === 0) this.poll.after(3000);
    },
  });

  override willUpdate(changed: Map<string, unknown>): void {
    if (changed.has('runId') && changed.get('runId') !== undefined) this.last = undefined;
  }

  override connectedCallback(): void {
    super.connectedCallback();
    // Back on the page after leaving it: pick up where the polling stopped.
    if (this.last?.state === 'running') this.poll.after(0);
  }

  override render() {
    const view = this.last;
    return html`
      <header>
        <h2>OCR run <code data-test="ocr-run-id">${this.runId}</code></h2>
        ${view ? html`<span class="pill ${view.state}" data-test="ocr-run-state">${view.state}</span>` : nothing}
        <span class="grow"></span>
        <button
          data-test="ocr-download-txt"
          ?disabled=${view?.state !== 'completed'}
          title=${view?.state === 'completed' ? 'every page’s text in one file' : 'once every page is read'}
          @click=${() => view && saveFile(runText(view), `${view.id}.txt`, 'text/plain')}
        >
          Download .txt
        </button>
        <button
          data-test="ocr-download-json"
          ?disabled=${view?.state !== 'completed'}
          @click=${() => view && saveFile(runJson(view), `${view.id}.json`, 'application/json')}
        >
          Download .json
        </button>
      </header>
      ${this.run.render({
        pending: () => (view ? nothing : html`<p class="muted">Loading the run…</p>`),
        error: (err) =>
          html`<p class="problem" role="alert" data-test="ocr-run-problem">${this.problem(err)}</p>`,
      })}
      ${view ? this.body(view) : nothing}
    `;
  }

  private problem(err: unknown): string {
    if (err instanceof ApiError) {
      if (err.status === 404)
        return (
          `The hub has no OCR run "${this.runId}": check the address. A hub keeps only its newest ` +
          "runs (an older run's stage jobs and their results stay under Jobs)."
        );
      if (err.status === 0)
        return this.last
          ? `The hub is gone (${err.message}); still trying. What is shown is the last the hub said.`
          : `The hub is gone (${err.message}); still trying: the run shows when the hub answers.`;
      if (err.unauthorized) return 'The hub refused the operator token: sign in again.';
      return `The hub refused (${err.status} ${err.code}): ${err.message}`;
    }
    return `Cannot load the run: ${(err as Error).message}`;
  }

  private body(view: OcrRunView) {
    const pages = view.results ?? [];
    const by = (o: OcrPageResult['outcome']) => pages.filter((p) => p.outcome === o).length;
    const cached = pages.filter((p) => p.cached).length;
    const lines = pages.reduce((s, p) => s + p.lines.length, 0);
    const elapsed = ((view.finishedAt ?? this.now ?? Date.now()) - view.createdAt) / 1000;
    return html`
      <div class="cards">
        ${figureCard('Pages read', `${count(view.pagesDone)} / ${count(view.pages)}`, percent(view.pages ? view.pagesDone / view.pages : 0), 'ocr-pages')}
        ${figureCard('Lines', count(lines), `on ${count(by('ok'))} page(s) with text`, 'ocr-lines')}
        ${figureCard('Not read', count(by('invalid_image') + by('failed')), `${count(by('no_text'))} without text`, 'ocr-bad')}
        ${figureCard('Cached', count(cached), 'answered from the cache', 'ocr-cached')}
        ${figureCard(view.state === 'completed' ? 'Took' : 'Running for', duration(elapsed), '', 'ocr-elapsed')}
      </div>
      ${view.state === 'running' || Object.keys(view.jobs).length ? this.stages(view) : nothing}
      <section class="pages" aria-label="pages">${pages.map((p, i) => this.page(p, i))}</section>
    `;
  }

  private stages(view: OcrRunView) {
    return html`<section class="panel" aria-label="stages">
      <div class="stages">
        ${STAGES.map(([key, label, what]) => {
          const id = view.jobs[key];
          const job = id ? this.jobs.get(id) : undefined;
          const done = job ? job.done + job.failed : 0;
          return html`<div class="stage" data-test="ocr-stage" data-stage=${key}>
            <strong>${label} <span class="muted">· ${what}</span></strong>
            <div
              class="bar"
              role="progressbar"
              aria-label="${label} progress"
              aria-valuenow=${job ? Math.round(job.progress * 100) : 0}
            >
              <div class="fill" style="width:${job ? (100 * job.progress).toFixed(1) : 0}%"></div>
            </div>
            <span class="muted"
              >${
                !id
                  ? view.state === 'running'
                    ? 'not started yet'
                    : 'not needed (every page from the cache or without text)'
                  : job
                    ? html`<a href="#jobs/${encodeURIComponent(id)}">${job.state}</a>: ${count(done)} of
                        ${count(job.items)}
                        item(s)${job.failed ? html`, <span class="reason">${count(job.failed)} failed</span>` : nothing}`
                    : html`<a href="#jobs/${encodeURIComponent(id)}">${id}</a>: starting`
              }</span
            >
          </div>`;
        })}
      </div>
    </section>`;
  }

  private page(p: OcrPageResult, i: number) {
    const note = pageOutcomeText(p);
    return html`<article class="panel page" data-test="ocr-page" data-index=${i} data-outcome=${p.outcome}>
      <header>
        <h3 data-test="ocr-page-name">${p.name}</h3>
        <span class="pill ${p.outcome}" data-test="ocr-page-outcome">${p.outcome}</span>
        ${p.cached ? html`<span class="pill cached" data-test="ocr-page-cached">cached</span>` : nothing}
        ${p.width ? html`<span class="muted">${p.width}×${p.height}</span>` : nothing}
      </header>
      ${
        p.outcome === 'ok'
          ? html`<ol aria-label="lines of ${p.name}">
              ${p.lines.map(
                (l, n) =>
                  html`<li>
                    <span class="n">${n + 1}</span>
                    <span class="line" data-test="ocr-line">${l.text}</span>
                    <span
                      class="conf ${l.confidence < 0.8 ? 'low' : ''}"
                      title="confidence"
                      data-test="ocr-conf"
                      >${percent(l.confidence, 1)}</span
                    >
                  </li>`,
              )}
            </ol>`
          : html`<p
              class=${p.outcome === 'invalid_image' || p.outcome === 'failed' ? 'reason' : 'muted'}
              data-test="ocr-page-note"
            >
              ${note}
            </p>`
      }
    </article>`;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-ocr-run': ShOcrRun;
  }
}
