/**
 * `<sh-worker-controls>`: the contributor's say over their machine: a pause button, a throttle
 * (share of time the worker may compute) and "pause while this tab is hidden".
 *
 * @fires pause-toggle - {@link PauseToggleEvent} when the button is pressed
 * @fires throttle-change - {@link ThrottleChangeEvent} when the slider is released
 * @fires auto-pause-change - {@link AutoPauseChangeEvent} when the checkbox changes
 */
import { css, html, LitElement } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import { AutoPauseChangeEvent, PauseToggleEvent, ThrottleChangeEvent } from './events.ts';

/** The pause button, throttle slider and auto-pause setting. */
@customElement('sh-worker-controls')
export class ShWorkerControls extends LitElement {
  static override styles = css`
    :host {
      display: grid;
      gap: 0.75rem;
    }
    .row {
      display: flex;
      align-items: center;
      gap: 0.75rem;
      flex-wrap: wrap;
    }
    input[type='range'] {
      flex: 1;
      min-width: 10rem;
    }
    button {
      font: inherit;
      padding: 0.4rem 1rem;
      border-radius: 0.4rem;
      border: 1px solid #888;
      background: #fff;
      cursor: pointer;
    }
    button[aria-pressed='true'] {
      background: #ffe9b3;
    }
    .value {
      min-width: 3.5rem;
      text-align: right;
      font-variant-numeric: tabular-nums;
    }
  `;

  /** Whether the worker is paused (by anyone). */
  @property({ type: Boolean }) paused = false;
  /** Share of time the worker may compute (0.05..1). */
  @property({ type: Number }) throttle = 1;
  @property({ type: Boolean }) autoPause = true;
  @property({ type: Boolean }) disabled = false;

  override render() {
    const percent = Math.round(this.throttle * 100);
    return html`
      <div class="row">
        <button
          data-control="pause"
          aria-pressed=${this.paused ? 'true' : 'false'}
          ?disabled=${this.disabled}
          @click=${this._onPause}
        >
          ${this.paused ? 'Resume' : 'Pause'}
        </button>
      </div>
      <label class="row">
        <span>Busy at most</span>
        <input
          type="range"
          min="5"
          max="100"
          step="5"
          .value=${String(percent)}
          ?disabled=${this.disabled}
          data-control="throttle"
          aria-label="share of time the worker may compute"
          @change=${this._onThrottle}
          @input=${this._onThrottleInput}
        />
        <span class="value">${percent}%</span>
      </label>
      <label class="row">
        <input
          type="checkbox"
          data-control="auto-pause"
          .checked=${this.autoPause}
          @change=${this._onAutoPause}
        />
        <span>Pause while this tab is hidden</span>
      </label>
    `;
  }

  private _onPause(): void {
    this.dispatchEvent(new PauseToggleEvent(!this.paused));
  }

  private _onThrottleInput(e: Event): void {
    this.throttle = Number((e.target as HTMLInputElement).value) / 100;
  }

  private _onThrottle(e: Event): void {
    this.dispatchEvent(new ThrottleChangeEvent(Number((e.target as HTMLInputElement).value) / 100));
  }

  private _onAutoPause(e: Event): void {
    this.dispatchEvent(new AutoPauseChangeEvent((e.target as HTMLInputElement).checked));
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-worker-controls': ShWorkerControls;
  }
}
