/**
 * `<sh-backend-panel>`: which provider runs inference and why, what the WebGPU adapter offers
 * (vendor, architecture, notable features, limits) and how WASM runs (threads, isolation).
 */
import { css, html, LitElement, nothing } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import { NOTABLE_FEATURES, type GpuReport } from '../browser/gpu.ts';
import type { EngineInfo } from '../inference/messages.ts';

function bytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(n % 2 ** 30 ? 1 : 0)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(0)} MiB`;
  return `${n} B`;
}

const SHOWN_LIMITS = ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeInvocationsPerWorkgroup'];

function limitsText(limits: Record<string, number>): string {
  return SHOWN_LIMITS.filter((k) => limits[k] !== undefined)
    .map((k) => `${k} ${k.endsWith('Size') ? bytes(limits[k] as number) : limits[k]}`)
    .join(', ');
}

/** Backend and adapter facts. */
@customElement('sh-backend-panel')
export class ShBackendPanel extends LitElement {
  static override styles = css`
    :host {
      display: block;
    }
    dl {
      display: grid;
      grid-template-columns: max-content 1fr;
      gap: 0.3rem 1rem;
      margin: 0;
    }
    dt {
      color: #555;
    }
    dd {
      margin: 0;
      overflow-wrap: anywhere;
    }
    .backend {
      font-weight: 600;
      text-transform: uppercase;
    }
    .yes {
      color: #1a7f37;
    }
    .no {
      color: #8a6d00;
    }
  `;

  /** The provider in use (`webgpu` or `wasm`), once known. */
  @property() backend: string | undefined;
  /** Why that provider. */
  @property() reason: string | undefined;
  @property({ attribute: false }) gpu: GpuReport | undefined;
  @property({ attribute: false }) engine: EngineInfo | undefined;

  override render() {
    const gpu = this.gpu;
    return html`
      <dl>
        <dt>Backend</dt>
        <dd><span class="backend" data-field="backend">${this.backend ?? '—'}</span></dd>
        <dt>Why</dt>
        <dd data-field="backend-reason">${this.reason ?? '—'}</dd>
        ${gpu ? this.renderGpu(gpu) : nothing}
        ${
          this.engine
            ? html`
                <dt>WASM threads</dt>
                <dd data-field="threads">
                  ${this.engine.numThreads}
                  ${
                    this.engine.crossOriginIsolated
                      ? html`<span class="yes">(cross-origin isolated: multi-threading available)</span>`
                      : html`<span class="no">(not cross-origin isolated: single-threaded)</span>`
                  }
                </dd>
                <dt>onnxruntime-web</dt>
                <dd>${this.engine.ortVersion}</dd>
              `
            : nothing
        }
      </dl>
    `;
  }

  private renderGpu(gpu: GpuReport) {
    if (!gpu.available) {
      return html`<dt>WebGPU</dt>
        <dd data-field="webgpu">not available: ${gpu.reason}</dd>`;
    }
    const notable = NOTABLE_FEATURES.map((f) => `${f} ${gpu.features.includes(f) ? 'yes' : 'no'}`).join(', ');
    return html`
      <dt>WebGPU adapter</dt>
      <dd data-field="webgpu">
        ${[gpu.vendor, gpu.architecture, gpu.device, gpu.description].filter(Boolean).join(' · ') || 'unnamed'}
        ${gpu.fallback ? html`<span class="no">(software fallback)</span>` : nothing}
      </dd>
      <dt>Features</dt>
      <dd data-field="features" title=${gpu.features.join(', ')}>
        ${notable}; ${gpu.features.length} in all
      </dd>
      <dt>Limits</dt>
      <dd data-field="limits">${limitsText(gpu.limits)}</dd>
    `;
  }
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-backend-panel': ShBackendPanel;
  }
}
