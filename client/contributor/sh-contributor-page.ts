/**
 * `<sh-contributor-page>`: the page anyone opens to lend their device to the grid. It says what it
 * does, waits for Start (unless `?autostart=1`), then shows the status, the backend and why, the
 * worker's figures and the controls. The connection lives in {@link ContributorController}.
 */
import { css, html, LitElement, nothing } from 'lit';
import { customElement } from 'lit/decorators.js';
import { ContributorController } from './contributor-controller.ts';
import { AutoPauseChangeEvent, PauseToggleEvent, StartRequestEvent, ThrottleChangeEvent } from './events.ts';
import { readParams } from './settings.ts';
import './sh-backend-panel.ts';
import './sh-worker-controls.ts';
import './sh-worker-figures.ts';

/** The contributor page. */
@customElement('sh-contributor-page')
export class ShContributorPage extends LitElement {
  static override styles = css`
    :host {
      display: block;
      max-width: 46rem;
      margin: 0 auto;
      padding: 1.5rem 1rem 3rem;
      font-family: system-ui, sans-serif;
      line-height: 1.45;
      color: #1f2328;
    }
    h1 {
      font-size: 1.6rem;
      margin: 0 0 0.5rem;
    }
    section {
      border: 1px solid #d0d7de;
      border-radius: 0.5rem;
      padding: 1rem;
      margin-top: 1rem;
    }
    h2 {
      font-size: 1rem;
      margin: 0 0 0.6rem;
    }
    .status {
      font-size: 1.15rem;
      font-weight: 600;
      padding: 0.6rem 1rem;
      border-radius: 0.5rem;
      background: #eef2f6;
    }
    .status[data-status='working'] {
      background: #dafbe1;
    }
    .status[data-status='benchmarking'],
    .status[data-status='verifying'],
    .status[data-status='downloading'] {
      background: #ddf4ff;
    }
    .alert {
      display: flex;
      gap: 0.75rem;
      align-items: flex-start;
      margin-top: 0.75rem;
      padding: 0.6rem 1rem;
      border-radius: 0.5rem;
      border: 1px solid #ff8182;
      background: #ffebe9;
      color: #82071e;
    }
    .alert span {
      flex: 1;
      overflow-wrap: anywhere;
    }
    .alert button {
      font: inherit;
      border: 1px solid #d0d7de;
      border-radius: 0.35rem;
      background: #fff;
      cursor: pointer;
    }
    .status[data-status='paused'],
    .status[data-status='connecting'] {
      background: #fff8c5;
    }
    .status[data-status='stopped'],
    .status[data-status='unsupported'] {
      background: #ffebe9;
    }
    .start {
      font: inherit;
      font-size: 1.1rem;
      padding: 0.6rem 1.6rem;
      border-radius: 0.5rem;
      border: none;
      background: #1f6feb;
      color: #fff;
      cursor: pointer;
    }
    .start:disabled {
      background: #8c959f;
    }
    .fine {
      color: #57606a;
      font-size: 0.9rem;
    }
    details {
      margin-top: 1rem;
    }
    ol.log {
      font-family: ui-monospace, monospace;
      font-size: 0.8rem;
      padding-left: 1.2rem;
      max-height: 14rem;
      overflow: auto;
    }
  `;

  private readonly grid = new ContributorController(this, readParams(location.search));

  constructor() {
    super();
    this.addEventListener(StartRequestEvent.eventName, () => void this.grid.start());
    this.addEventListener(PauseToggleEvent.eventName, (e) => this.grid.setPaused(e.paused));
    this.addEventListener(ThrottleChangeEvent.eventName, (e) => this.grid.setThrottle(e.fraction));
    this.addEventListener(AutoPauseChangeEvent.eventName, (e) => this.grid.setAutoPause(e.enabled));
  }

  override render() {
    const g = this.grid;
    const status = g.status;
    const worker = g.worker;
    return html`
      <h1>Lend this device to the shardhub grid</h1>
      <p>
        This page runs pieces of machine-learning inference jobs (ONNX models) for the grid at
        <strong>${location.host}</strong>, on your GPU through WebGPU, or on your processor through
        WebAssembly. It downloads the models it needs, computes in a background worker (the page stays
        responsive) and sends the results back. Nothing on your device is read or sent beyond those results
        and what the grid needs to schedule work: your browser, core count and graphics adapter.
      </p>
      <p class="fine">
        You decide how busy it gets: pause it, limit how much of the time it computes, and let it pause itself
        while this tab is hidden. Close the tab to stop; unfinished work goes to other devices.
      </p>

      <p class="status" data-status=${status.key} role="status" aria-live="polite">${status.text}</p>
      ${
        g.alert
          ? html`<div class="alert" role="alert" data-field="alert">
              <span
                ><strong>Problem at ${new Date(g.alert.at).toLocaleTimeString()}:</strong>
                ${g.alert.text}</span
              >
              <button data-control="dismiss-alert" @click=${() => g.dismissAlert()}>Dismiss</button>
            </div>`
          : nothing
      }
      ${
        g.phase === 'ready' || g.phase === 'unsupported'
          ? html`<button
              class="start"
              data-control="start"
              ?disabled=${g.phase !== 'ready'}
              @click=${this._onStart}
            >
              Start contributing
            </button>`
          : nothing
      }
      ${
        worker
          ? html`
              <section>
                <h2>Your part</h2>
                <sh-worker-figures .stats=${g.stats} .figures=${g.figures}></sh-worker-figures>
              </section>
              <section>
                <h2>Controls</h2>
                <sh-worker-controls
                  ?paused=${g.stats?.paused ?? false}
                  .throttle=${g.prefs.throttle}
                  ?autoPause=${g.prefs.autoPause}
                  ?disabled=${g.phase !== 'running'}
                ></sh-worker-controls>
              </section>
              <section>
                <h2>Backend</h2>
                <sh-backend-panel
                  .backend=${worker.backend.name}
                  .reason=${worker.backend.reason}
                  .gpu=${worker.gpu}
                  .engine=${worker.backend.info}
                ></sh-backend-panel>
                <p class="fine">
                  Worker <code data-field="worker-id">${worker.workerId}</code>; models cached
                  ${worker.store === 'cache' ? 'in this browser (a reload does not download them again)' : 'in memory only'}.
                </p>
              </section>
            `
          : nothing
      }
      <details>
        <summary>Log</summary>
        <ol class="log">
          ${g.log.recent.slice(-50).map((e) => html`<li>${new Date(e.at).toLocaleTimeString()} ${e.level} ${e.msg}</li>`)}
        </ol>
      </details>
    `;
  }

  private _onStart(): void {
    this.dispatchEvent(new StartRequestEvent());
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-contributor-page': ShContributorPage;
  }
}
