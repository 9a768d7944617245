/**
 * Fields that more than one dashboard form shows, written once so they look and behave the same.
 */
import { html, type TemplateResult } from 'lit';

/** A job's priority input (−100…100, higher runs first); `onChange` gets each new value. */
export function priorityField(
  value: number,
  onChange: (priority: number) => void,
  testId: string,
): TemplateResult {
  return html`<label
    >Priority
    <input
      type="number"
      min="-100"
      max="100"
      step="1"
      data-test=${testId}
      .value=${String(value)}
      @input=${(e: Event) => onChange(Number((e.target as HTMLInputElement).value))}
    />
    <span class="muted">higher runs first (−100…100)</span>
  </label>`;
}
