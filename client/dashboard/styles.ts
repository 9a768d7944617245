/** Styles the dashboard's elements share (buttons, state pills, figure cards, progress bars, forms), and the figure card itself. */
import { css, html, type TemplateResult } from 'lit';

/** The dashboard's forms (submit, OCR): fieldsets in a grid, inline labels, a status line. */
export const formStyles = css`
  form {
    display: grid;
    gap: 1rem;
  }
  fieldset {
    border: 1px solid #d5dbe1;
    border-radius: 0.45rem;
    background: #fff;
    display: grid;
    gap: 0.6rem;
    padding: 0.75rem 1rem 1rem;
  }
  legend {
    font-weight: 650;
    padding: 0 0.3rem;
  }
  label {
    display: flex;
    gap: 0.5rem;
    align-items: center;
    flex-wrap: wrap;
  }
  .status {
    padding: 0.5rem 0.7rem;
    border-radius: 0.35rem;
    background: #eef2ff;
  }
  .status.error {
    color: #b42318;
    background: #fef3f2;
    border: 1px solid #fecdca;
  }
`;

/** Shared styles; add to an element's `static styles`. */
export const shared = css`
  :host {
    font-family: system-ui, sans-serif;
    color: #1f2933;
    font-size: 0.9rem;
  }
  button,
  select,
  input {
    font: inherit;
  }
  button {
    padding: 0.25rem 0.6rem;
    border: 1px solid #9aa5b1;
    border-radius: 0.3rem;
    background: #fff;
    cursor: pointer;
    white-space: nowrap;
  }
  button:hover:not([disabled]) {
    background: #eef2f6;
  }
  button[disabled] {
    opacity: 0.45;
    cursor: default;
  }
  button.danger {
    border-color: #d92d20;
    color: #b42318;
  }
  button.confirm {
    background: #d92d20;
    border-color: #d92d20;
    color: #fff;
  }
  button.primary {
    background: #2563eb;
    border-color: #2563eb;
    color: #fff;
    font-weight: 600;
  }
  button.primary:hover:not([disabled]) {
    background: #1d4ed8;
  }
  button.confirm:hover:not([disabled]) {
    background: #b42318;
  }
  .pill {
    display: inline-block;
    padding: 0.05rem 0.5rem;
    border-radius: 1rem;
    font-size: 0.78rem;
    font-weight: 600;
    background: #e4e7eb;
    color: #323f4b;
  }
  .pill.online,
  .pill.running,
  .pill.live {
    background: #dcfce7;
    color: #166534;
  }
  .pill.paused,
  .pill.queued,
  .pill.open,
  .pill.connecting {
    background: #fef9c3;
    color: #854d0e;
  }
  .pill.draining {
    background: #e0e7ff;
    color: #3730a3;
  }
  .pill.quarantined,
  .pill.cancelled,
  .pill.reconnecting {
    background: #fee2e2;
    color: #991b1b;
  }
  .pill.completed,
  .pill.final {
    background: #dbeafe;
    color: #1e40af;
  }
  .pill.offline {
    background: #e4e7eb;
    color: #616e7c;
  }
  .cards {
    display: grid;
    grid-template-columns: repeat(auto-fill, minmax(9.5rem, 1fr));
    gap: 0.6rem;
  }
  .card {
    background: #fff;
    border: 1px solid #d5dbe1;
    border-radius: 0.45rem;
    padding: 0.55rem 0.75rem;
  }
  .card .label {
    color: #616e7c;
    font-size: 0.75rem;
    text-transform: uppercase;
    letter-spacing: 0.03em;
  }
  .card .value {
    font-size: 1.35rem;
    font-weight: 650;
    font-variant-numeric: tabular-nums;
  }
  .card .sub {
    color: #616e7c;
    font-size: 0.78rem;
  }
  .panel {
    background: #fff;
    border: 1px solid #d5dbe1;
    border-radius: 0.45rem;
    padding: 0.75rem 1rem;
  }
  .bar {
    position: relative;
    height: 0.7rem;
    background: #e4e7eb;
    border-radius: 0.35rem;
    overflow: hidden;
  }
  .bar > .fill {
    position: absolute;
    inset: 0 auto 0 0;
    background: #2563eb;
    transition: width 0.3s ease;
  }
  .bar > .fill.failed {
    background: #dc2626;
  }
  .num {
    font-variant-numeric: tabular-nums;
    text-align: right;
  }
  /* What went wrong, in a view (a failed read, an unknown run). */
  .problem {
    padding: 0.5rem 0.75rem;
    border-radius: 0.35rem;
    background: #fef3f2;
    color: #b42318;
    border: 1px solid #fecdca;
    margin: 0;
  }
  .muted {
    color: #616e7c;
  }
  a {
    color: #1d4ed8;
  }
`;

/** A detail view (a job, its fairness): a grid of sections under a header with its title. */
export const viewStyles = css`
  :host {
    display: grid;
    gap: 0.9rem;
  }
  header {
    display: flex;
    flex-wrap: wrap;
    align-items: center;
    gap: 0.6rem 1rem;
  }
  h2 {
    margin: 0;
    font-size: 1.2rem;
  }
`;

/** A figure card (styled by `shared`): a label, the figure, a line under it; `test` names it for tests. */
export function figureCard(label: string, value: string, sub: string, test: string): TemplateResult {
  return html`<div class="card" data-figure=${test}>
    <div class="label">${label}</div>
    <div class="value">${value}</div>
    <div class="sub">${sub}</div>
  </div>`;
}
