/**
 * `<sh-sign-in>`: the only thing the dashboard shows without the operator token: a field for the
 * token, a button, and why the last try failed.
 *
 * @fires sign-in - {@link SignInEvent} with the token entered
 */
import { css, html, LitElement } from 'lit';
import { customElement, property, query } from 'lit/decorators.js';
import { SignInEvent } from './events.ts';

/** The sign-in form. */
@customElement('sh-sign-in')
export class ShSignIn extends LitElement {
  static override styles = css`
    :host {
      display: grid;
      place-items: center;
      min-height: 100vh;
      font-family: system-ui, sans-serif;
      color: #1f2933;
    }
    form {
      background: #fff;
      border: 1px solid #d5dbe1;
      border-radius: 0.6rem;
      padding: 2rem;
      width: min(26rem, 90vw);
      display: grid;
      gap: 1rem;
      box-shadow: 0 2px 12px rgb(0 0 0 / 6%);
    }
    h1 {
      margin: 0;
      font-size: 1.3rem;
    }
    p {
      margin: 0;
      color: #52606d;
      font-size: 0.9rem;
      line-height: 1.4;
    }
    label {
      display: grid;
      gap: 0.35rem;
      font-weight: 600;
      font-size: 0.9rem;
    }
    input {
      font: inherit;
      padding: 0.5rem 0.6rem;
      border: 1px solid #9aa5b1;
      border-radius: 0.35rem;
    }
    button {
      font: inherit;
      font-weight: 600;
      padding: 0.55rem 1rem;
      border: 0;
      border-radius: 0.35rem;
      background: #2563eb;
      color: #fff;
      cursor: pointer;
    }
    button[disabled] {
      opacity: 0.6;
      cursor: progress;
    }
    .problem {
      color: #b42318;
      background: #fef3f2;
      border: 1px solid #fecdca;
      border-radius: 0.35rem;
      padding: 0.5rem 0.7rem;
    }
    code {
      font-size: 0.85em;
    }
  `;

  /** Why the last sign-in failed (or the session ended). */
  @property() problem: string | undefined;
  /** A token is being checked. */
  @property({ type: Boolean }) busy = false;

  @query('input') private input!: HTMLInputElement;

  override render() {
    return html`<form @submit=${this._onSubmit} aria-labelledby="title">
      <h1 id="title">shardhub · operator sign-in</h1>
      <p>
        The dashboard needs the hub's <strong>operator token</strong>: <code>shardhub serve</code> prints it
        at start and keeps it in <code>data/tokens.json</code>. It stays in this tab only.
      </p>
      <label
        >Operator token
        <input
          name="token"
          type="password"
          autocomplete="current-password"
          required
          ?disabled=${this.busy}
          data-test="token"
        />
      </label>
      ${this.problem ? html`<p class="problem" role="alert" data-test="sign-in-problem">${this.problem}</p>` : null}
      <button type="submit" ?disabled=${this.busy} data-test="sign-in">
        ${this.busy ? 'Checking…' : 'Sign in'}
      </button>
    </form>`;
  }

  private _onSubmit(e: SubmitEvent): void {
    e.preventDefault();
    this.dispatchEvent(new SignInEvent(this.input.value));
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-sign-in': ShSignIn;
  }
}
