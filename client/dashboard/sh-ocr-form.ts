/**
 * `<sh-ocr-form>`: submits scanned pages for OCR (`POST /api/ocr`), the OCR half of the Submit
 * view. PNG/JPEG files are picked or dropped; any file is accepted and sent, because the hub judges
 * a file by its bytes and answers a page that is not an image with its own outcome
 * (`invalid_image`) rather than refusing the run. The hub's bounds (images per run, request size)
 * are checked here first, so an oversized run is refused before anything is uploaded.
 *
 * @fires ocr-submitted - {@link OcrSubmittedEvent} with the run's id once the hub has started it
 */
import { css, html, LitElement } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import { ApiError, type OperatorApi } from './api.ts';
import { OcrSubmittedEvent } from './events.ts';
import { FilePicker } from './file-picker.ts';
import { priorityField } from './form-fields.ts';
import { bytes as formatBytes, count } from './format.ts';
import { looksLikeImage, ocrFilesProblem, ocrRequest, requestBytes, type OcrRunView } from './ocr.ts';
import { formStyles, shared } from './styles.ts';

/** Files listed by name; past this the list says how many more. */
const LISTED_FILES = 30;

/** What a refused submit means, in words an operator can act on. */
export function submitError(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.status === 413)
      return 'The hub refused the request as too large (413): submit fewer or smaller images at a time.';
    if (err.status === 0) return `The hub is gone: ${err.message}. Nothing was submitted.`;
    if (err.unauthorized) return 'The hub refused the operator token (401): sign in again.';
    return `The hub refused the run (${err.status} ${err.code}): ${err.message}`;
  }
  return (err as Error).message;
}

/** The OCR form; see the file comment. */
@customElement('sh-ocr-form')
export class ShOcrForm extends LitElement {
  static override styles = [
    shared,
    formStyles,
    css`
      input[type='number'] {
        width: 5rem;
        padding: 0.3rem 0.45rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
      }
      .drop {
        border: 2px dashed #9aa5b1;
        border-radius: 0.45rem;
        padding: 1rem;
        text-align: center;
        color: #3e4c59;
        background: #f5f7fa;
      }
      .drop.over {
        border-color: #2563eb;
        background: #eef2ff;
      }
      ul {
        margin: 0;
        padding-left: 1.2rem;
        max-height: 14rem;
        overflow: auto;
      }
      .warn {
        color: #854d0e;
      }
    `,
  ];

  /** The REST client (carries the operator token). */
  @property({ attribute: false }) api: OperatorApi | undefined;

  /** The pages: picks and drops add to them. */
  private readonly picker = new FilePicker(this, { mode: 'add', onChange: () => (this.status = undefined) });
  @state() private priority = 0;
  @state() private cache = true;
  @state() private busy = false;
  @state() private status: { kind: 'info' | 'error'; text: string } | undefined;

  private get files(): readonly File[] {
    return this.picker.files;
  }

  override render() {
    const problem = this.files.length ? ocrFilesProblem(this.files) : null;
    const notImages = this.files.filter((f) => !looksLikeImage(f));
    return html`<form @submit=${this._submit} aria-label="submit pages for OCR">
      <fieldset>
        <legend>Scanned pages</legend>
        <div
          class="drop ${this.picker.over ? 'over' : ''}"
          data-test="ocr-drop"
          @dragover=${this.picker.onDragOver}
          @dragleave=${this.picker.onDragLeave}
          @drop=${this.picker.onDrop}
        >
          Drop PNG or JPEG pages here, or
          <input
            type="file"
            multiple
            accept=".png,.jpg,.jpeg,image/png,image/jpeg"
            aria-label="page images"
            data-test="ocr-files"
            @change=${this.picker.onPick}
          />
        </div>
        <span class="muted" data-test="ocr-file-summary"
          >${
            this.files.length
              ? `${this.picker.summary('page')} (request ${formatBytes(requestBytes(this.files))})`
              : 'Each file is one page; its text comes back in reading order.'
          }</span
        >
        ${
          this.files.length
            ? html`<ul data-test="ocr-file-list">
                  ${this.files.slice(0, LISTED_FILES).map(
                    (f) =>
                      html`<li>
                        ${f.name} <span class="muted">${formatBytes(f.size)}</span>
                        ${
                          looksLikeImage(f)
                            ? null
                            : html`<span class="warn"
                                >not a PNG/JPEG by its name: the hub will check its bytes</span
                              >`
                        }
                      </li>`,
                  )}
                  ${this.files.length > LISTED_FILES ? html`<li>… and ${count(this.files.length - LISTED_FILES)} more</li>` : null}
                </ul>
                <div>
                  <button type="button" data-test="ocr-clear" @click=${() => this.picker.clear()}>
                    Clear
                  </button>
                </div>`
            : null
        }
        ${
          notImages.length && !problem
            ? html`<span class="warn" data-test="ocr-not-images"
                >${count(notImages.length)} file(s) do not look like images; a page that is not a PNG or JPEG
                comes back as <code>invalid_image</code>.</span
              >`
            : null
        }
        ${problem ? html`<span class="status error" role="alert" data-test="ocr-too-big">${problem}</span>` : null}
      </fieldset>
      <fieldset>
        <legend>Options</legend>
        ${priorityField(this.priority, (p) => (this.priority = p), 'ocr-priority')}
        <label
          ><input
            type="checkbox"
            data-test="ocr-cache"
            .checked=${this.cache}
            @change=${(e: Event) => (this.cache = (e.target as HTMLInputElement).checked)}
          />
          Use cached results
          <span class="muted">what the hub read before (same bytes) is answered without running again</span>
        </label>
      </fieldset>
      <div>
        <button
          class="primary"
          type="submit"
          data-test="ocr-submit"
          ?disabled=${this.busy || !this.files.length || problem !== null}
        >
          ${this.busy ? 'Submitting…' : 'Read the pages'}
        </button>
      </div>
      ${
        this.status
          ? html`<p
              class="status ${this.status.kind}"
              data-test="ocr-status"
              role=${this.status.kind === 'error' ? 'alert' : 'status'}
            >
              ${this.status.text}
            </p>`
          : null
      }
    </form>`;
  }

  private async _submit(e: SubmitEvent): Promise<void> {
    e.preventDefault();
    const api = this.api;
    if (!api || this.busy) return;
    const say = (text: string, kind: 'info' | 'error' = 'info') => (this.status = { kind, text });
    if (!Number.isInteger(this.priority) || this.priority < -100 || this.priority > 100)
      return void say('Priority must be a whole number from −100 to 100.', 'error');
    const problem = ocrFilesProblem(this.files);
    if (problem) return void say(problem, 'error');
    this.busy = true;
    try {
      say(`Reading ${count(this.files.length)} file(s)…`);
      const body = await ocrRequest(this.files, { priority: this.priority, cache: this.cache });
      say(`Uploading ${count(this.files.length)} page(s) (${formatBytes(requestBytes(this.files))})…`);
      const run = await api.post<OcrRunView>('/api/ocr', body);
      say(`OCR run ${run.id} started: ${count(run.pages)} page(s).`);
      this.picker.clear();
      this.dispatchEvent(new OcrSubmittedEvent(run.id));
    } catch (err) {
      say(`Not submitted: ${submitError(err)}`, 'error');
    } finally {
      this.busy = false;
    }
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-ocr-form': ShOcrForm;
  }
}
