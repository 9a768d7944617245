/**
 * `<sh-submit-form>`: submits a job from the browser. The model is one from the hub's registry or
 * an ONNX file uploaded here (`POST /api/models?name=`); the inputs are files, one item each
 * (`.npy` arrays, or PNG/JPEG images for models that declare image preprocessing), sent one at a
 * time to `POST /api/jobs/:id/files?name=ITEM`; then the job is sealed and runs. Single-input
 * models only: multi-input items go through `shardhub submit`. If an upload fails, the half-made
 * job is cancelled and the hub's reason is shown. The third choice, OCR, hands the rest of the form to
 * `<sh-ocr-form>` (scanned pages → text, `POST /api/ocr`).
 *
 * @fires job-submitted - {@link JobSubmittedEvent} with the new job's id once it is sealed
 * @fires ocr-submitted - (from `<sh-ocr-form>`) with the OCR run's id once it has started
 */
import { Task } from '@lit/task';
import { css, html, LitElement } from 'lit';
import { customElement, property, state } from 'lit/decorators.js';
import type { ModelInfo } from '../../protocol/model.ts';
import type { JobView } from '../../protocol/operator.ts';
import type { OperatorApi } from './api.ts';
import { JobSubmittedEvent } from './events.ts';
import { FilePicker } from './file-picker.ts';
import { priorityField } from './form-fields.ts';
import { bytes as formatBytes, count } from './format.ts';
import './sh-ocr-form.ts';
import { formStyles, shared } from './styles.ts';

/** Largest input file sent (the hub's bound on one tensor, 64 MiB, plus the .npy header). */
const MAX_FILE_BYTES = 64 * 1024 * 1024 + 64 * 1024;
const MODEL_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Item names for files: the name without its extension, made unique. */
export function itemNames(files: readonly { name: string }[]): string[] {
  const seen = new Map<string, number>();
  return files.map((f) => {
    const stem = f.name.replace(/\.(npy|png|jpe?g)$/i, '').slice(0, 120) || 'item';
    const n = seen.get(stem) ?? 0;
    seen.set(stem, n + 1);
    return n ? `${stem}-${n + 1}` : stem;
  });
}

/** The submit form; see the file comment. */
@customElement('sh-submit-form')
export class ShSubmitForm extends LitElement {
  static override styles = [
    shared,
    formStyles,
    css`
      form {
        max-width: 44rem;
      }
      select,
      input[type='text'],
      input[type='number'] {
        padding: 0.3rem 0.45rem;
        border: 1px solid #9aa5b1;
        border-radius: 0.3rem;
        background: #fff;
      }
      .spec {
        font-family: ui-monospace, monospace;
        font-size: 0.8rem;
        color: #3e4c59;
        background: #f5f7fa;
        border-radius: 0.3rem;
        padding: 0.4rem 0.6rem;
      }
    `,
  ];

  /** The REST client (carries the operator token). */
  @property({ attribute: false }) api: OperatorApi | undefined;

  @state() private source: 'registry' | 'upload' | 'ocr' = 'registry';
  @state() private modelName = '';
  @state() private onnx: File | undefined;
  @state() private uploadName = '';
  /** The inputs, one file per item: each pick is the whole list. */
  private readonly picker = new FilePicker(this, { mode: 'replace' });
  @state() private priority = 0;
  @state() private cache = true;
  @state() private busy = false;
  @state() private status: { kind: 'info' | 'error'; text: string } | undefined;

  /** The hub's models, loaded (and reloaded after an upload) with the page's token. */
  private readonly modelList = new Task(this, {
    task: async ([api], { signal }) =>
      api ? (await api.get<{ models: ModelInfo[] }>('/api/models', signal)).models : [],
    args: () => [this.api, this.uploads] as const,
  });
  /** Bumped after an upload, so the model list loads again. */
  @state() private uploads = 0;

  private get files(): readonly File[] {
    return this.picker.files;
  }

  private get models(): readonly ModelInfo[] {
    return this.modelList.value ?? [];
  }

  override render() {
    const modelName = this.modelName || this.models[0]?.name || '';
    const model = this.models.find((m) => m.name === modelName);
    const images = !!model?.preprocessing;
    const tooBig = this.files.filter((f) => f.size > MAX_FILE_BYTES);
    return html`<form @submit=${this._submit} aria-label="submit a job">
      <fieldset>
        <legend>Model</legend>
        ${this.modelList.render({
          error: (err) =>
            html`<p class="status error" role="alert">Cannot list the models: ${(err as Error).message}</p>`,
        })}
        <label
          ><input
            type="radio"
            name="source"
            value="registry"
            .checked=${this.source === 'registry'}
            @change=${() => (this.source = 'registry')}
          />
          From the hub’s registry
          <select
            data-test="model"
            ?disabled=${this.source !== 'registry'}
            @change=${(e: Event) => (this.modelName = (e.target as HTMLSelectElement).value)}
          >
            ${this.models.map(
              (m) => html`<option value=${m.name} ?selected=${m.name === modelName}>${m.name}</option>`,
            )}
          </select>
        </label>
        ${
          this.source === 'registry' && model
            ? html`<div class="spec" data-test="model-spec">
                ${model.inputs.map((i) => html`input ${i.name}: ${i.dtype}[${i.shape.join(', ')}]<br />`)}
                ${
                  model.preprocessing
                    ? html`takes PNG/JPEG images (resized to
                      ${model.preprocessing.width}×${model.preprocessing.height})`
                    : html`takes .npy arrays`
                }
                ${
                  model.inputs.length > 1
                    ? html`<br /><strong
                          >has ${model.inputs.length} inputs: submit it with
                          <code>shardhub submit</code></strong
                        >`
                    : null
                }
              </div>`
            : null
        }
        <label
          ><input
            type="radio"
            name="source"
            value="upload"
            .checked=${this.source === 'upload'}
            @change=${() => (this.source = 'upload')}
          />
          Upload an ONNX file
          <input
            type="file"
            accept=".onnx"
            data-test="onnx-file"
            ?disabled=${this.source !== 'upload'}
            @change=${this._onOnnx}
          />
          <input
            type="text"
            placeholder="name (a-z, 0-9, . _ -)"
            aria-label="model name"
            data-test="onnx-name"
            ?disabled=${this.source !== 'upload'}
            .value=${this.uploadName}
            @input=${(e: Event) => (this.uploadName = (e.target as HTMLInputElement).value)}
          />
        </label>
        <label
          ><input
            type="radio"
            name="source"
            value="ocr"
            data-test="source-ocr"
            .checked=${this.source === 'ocr'}
            @change=${() => (this.source = 'ocr')}
          />
          OCR (scanned pages → text)
        </label>
      </fieldset>
      ${this.source === 'ocr' ? html`<sh-ocr-form .api=${this.api}></sh-ocr-form>` : this.jobParts(images, tooBig)}
    </form>`;
  }

  /** The inputs, options and submit button of a job on a model. */
  private jobParts(images: boolean, tooBig: readonly File[]) {
    return html`
      <fieldset>
        <legend>Inputs</legend>
        <label
          >One file per item
          <input
            type="file"
            multiple
            accept=".npy,.png,.jpg,.jpeg"
            data-test="input-files"
            @change=${this.picker.onPick}
          />
        </label>
        <span class="muted" data-test="file-summary"
          >${
            this.files.length
              ? this.picker.summary()
              : images
                ? 'Choose .npy arrays or PNG/JPEG images; each file is one item, named after it.'
                : 'Choose .npy arrays; each file is one item, named after it.'
          }</span
        >
        ${
          tooBig.length
            ? html`<span class="status error"
                >${tooBig[0]?.name} is larger than the hub takes (${formatBytes(MAX_FILE_BYTES)}).</span
              >`
            : null
        }
      </fieldset>
      <fieldset>
        <legend>Options</legend>
        ${priorityField(this.priority, (p) => (this.priority = p), 'submit-priority')}
        <label
          ><input
            type="checkbox"
            data-test="submit-cache"
            .checked=${this.cache}
            @change=${(e: Event) => (this.cache = (e.target as HTMLInputElement).checked)}
          />
          Use cached results
          <span class="muted"
            >items computed before (same model, same inputs) are answered without running again</span
          >
        </label>
      </fieldset>
      <div>
        <button
          class="primary"
          type="submit"
          data-test="submit"
          ?disabled=${this.busy || !this.files.length || tooBig.length > 0}
        >
          ${this.busy ? 'Submitting…' : 'Submit job'}
        </button>
      </div>
      ${
        this.status
          ? html`<p
              class="status ${this.status.kind}"
              role=${this.status.kind === 'error' ? 'alert' : 'status'}
            >
              ${this.status.text}
            </p>`
          : null
      }
    `;
  }

  private _onOnnx(e: Event): void {
    const f = (e.target as HTMLInputElement).files?.[0];
    this.onnx = f;
    if (f && !this.uploadName)
      this.uploadName = f.name
        .replace(/\.onnx$/i, '')
        .toLowerCase()
        .replace(/[^a-z0-9._-]/g, '-')
        .slice(0, 64);
  }

  private async _submit(e: SubmitEvent): Promise<void> {
    e.preventDefault();
    const api = this.api;
    if (!api || this.busy) return;
    const say = (text: string, kind: 'info' | 'error' = 'info') => (this.status = { kind, text });
    if (!Number.isInteger(this.priority) || this.priority < -100 || this.priority > 100)
      return void say('Priority must be a whole number from −100 to 100.', 'error');
    this.busy = true;
    let jobId: string | undefined;
    try {
      let model = this.modelName || this.models[0]?.name || '';
      if (this.source === 'upload') {
        if (!this.onnx) throw new Error('choose an ONNX file to upload');
        if (!MODEL_NAME_RE.test(this.uploadName))
          throw new Error('the model name must be lower-case letters, digits, ".", "_" or "-" (at most 64)');
        say(`Uploading ${this.onnx.name} (${formatBytes(this.onnx.size)})…`);
        const info = await api.upload<ModelInfo>(
          `/api/models?name=${encodeURIComponent(this.uploadName)}`,
          this.onnx,
        );
        model = info.name;
        this.modelName = model;
        this.uploads++;
      }
      if (!model) throw new Error('choose a model');
      say('Creating the job…');
      const job = await api.post<JobView>('/api/jobs', { model, priority: this.priority, cache: this.cache });
      jobId = job.id;
      const names = itemNames(this.files);
      for (let i = 0; i < this.files.length; i++) {
        say(`Uploading inputs: ${i + 1} of ${this.files.length}…`);
        try {
          await api.upload(
            `/api/jobs/${encodeURIComponent(job.id)}/files?name=${encodeURIComponent(names[i] as string)}`,
            this.files[i] as File,
          );
        } catch (err) {
          throw new Error(`${this.files[i]?.name}: ${(err as Error).message}`);
        }
      }
      say('Sealing the job…');
      await api.post(`/api/jobs/${encodeURIComponent(job.id)}/seal`);
      say(`Job ${job.id} submitted: ${count(this.files.length)} item(s) on ${model}.`);
      this.dispatchEvent(new JobSubmittedEvent(job.id));
    } catch (err) {
      let text = `Not submitted: ${(err as Error).message}`;
      if (jobId) {
        try {
          await api.post(`/api/jobs/${encodeURIComponent(jobId)}/cancel`);
          text += ` (job ${jobId} was cancelled)`;
        } catch {
          text += ` (job ${jobId} is left open)`;
        }
      }
      say(text, 'error');
    } finally {
      this.busy = false;
    }
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-submit-form': ShSubmitForm;
  }
}
