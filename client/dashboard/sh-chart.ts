/**
 * `<sh-chart>`: one uPlot chart, made for data that changes several times a second. New data is
 * drawn with `setData` on the same chart; the chart is rebuilt only when its series change (a
 * worker joined), and resized with its box. uPlot's stylesheet is adopted into the shadow root.
 */
import { css, html, LitElement, unsafeCSS, type PropertyValues } from 'lit';
import { customElement, property } from 'lit/decorators.js';
import uPlot from 'uplot';
import uplotCss from 'uplot/dist/uPlot.min.css?inline';

/** A chart's options without its size (the element sizes it). */
export type ChartOptions = Omit<uPlot.Options, 'width' | 'height'>;

/** The uPlot chart; see the file comment. */
@customElement('sh-chart')
export class ShChart extends LitElement {
  static override styles = [
    unsafeCSS(uplotCss),
    css`
      :host {
        display: block;
        min-width: 0;
      }
      .title {
        font-weight: 600;
        font-size: 0.9rem;
        margin: 0 0 0.25rem;
      }
      .empty {
        color: #667;
        font-size: 0.85rem;
        padding: 2rem 0;
        text-align: center;
      }
      .uplot {
        font-family: inherit;
      }
      .u-legend {
        font-size: 0.75rem;
        text-align: left;
      }
    `,
  ];

  /** Heading above the chart. */
  @property() heading = '';
  /**
   * Anything else the options depend on that the series do not show (e.g. the category names an
   * axis prints): when it changes, the chart is rebuilt.
   */
  @property() chartKey = '';
  /** The chart's options (series, scales, axes). */
  @property({ attribute: false }) options: ChartOptions | undefined;
  /** The data, aligned on the x values. */
  @property({ attribute: false }) data: uPlot.AlignedData | undefined;
  /** Height of the plotting area and axes, in CSS pixels. */
  @property({ type: Number }) height = 200;
  /** Shown instead of the chart when there is no data. */
  @property() empty = 'No data yet';

  private plot: uPlot | undefined;
  private key = '';
  private resize: ResizeObserver | undefined;

  override connectedCallback(): void {
    super.connectedCallback();
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this);
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    this.resize?.disconnect();
    this.plot?.destroy();
    this.plot = undefined;
    this.key = '';
  }

  override render() {
    const has = !!this.data && (this.data[0]?.length ?? 0) > 0;
    return html`${this.heading ? html`<p class="title">${this.heading}</p>` : null}
      <div class="plot" ?hidden=${!has}></div>
      ${has ? null : html`<div class="empty">${this.empty}</div>`}`;
  }

  protected override updated(changed: PropertyValues<this>): void {
    super.updated(changed);
    const target = this.renderRoot.querySelector<HTMLElement>('.plot');
    const data = this.data;
    if (!target || !this.options || !data || (data[0]?.length ?? 0) === 0) return;
    const key = `${this.chartKey}|${seriesKey(this.options, this.height)}`;
    if (!this.plot || key !== this.key) {
      this.plot?.destroy();
      this.key = key;
      this.plot = new uPlot({ ...this.options, width: this.width(), height: this.height }, data, target);
    } else if (changed.has('data')) {
      this.plot.setData(data);
    }
  }

  private width(): number {
    return Math.max(200, Math.floor(this.getBoundingClientRect().width));
  }

  private fit(): void {
    if (this.plot && Math.abs(this.plot.width - this.width()) > 2)
      this.plot.setSize({ width: this.width(), height: this.height });
  }
}

/** What makes a chart need rebuilding rather than new data: its series and axes. */
function seriesKey(o: ChartOptions, height: number): string {
  const axes = (o.axes ?? []).map((a) => `${a.label ?? ''}`).join(',');
  return `${height}|${o.series.map((s) => `${s.label ?? ''}:${String(s.stroke ?? '')}`).join(',')}|${axes}|${JSON.stringify(o.scales ?? {}, (_k, v: unknown) => (typeof v === 'function' ? 'fn' : v))}`;
}

declare global {
  interface HTMLElementTagNameMap {
    'sh-chart': ShChart;
  }
}
