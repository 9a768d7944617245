/**
 * The dashboard's charts as uPlot options and data: lines over seconds since a job's start
 * (throughput, contributions), grouped bars per worker (share against fair share, idle time) and
 * the timeline of steals, speculative copies and requeues (points by time and worker).
 */
import uPlot from 'uplot';
import type { FairnessEvent, FairnessReport, WorkerFairness } from '../../protocol/fairness.ts';
import type { ChartOptions } from './sh-chart.ts';

/** Series colours, distinguishable and readable on white. */
export const PALETTE = [
  '#2563eb',
  '#16a34a',
  '#d97706',
  '#dc2626',
  '#7c3aed',
  '#0891b2',
  '#db2777',
  '#65a30d',
  '#ea580c',
  '#475569',
] as const;

/** The i-th series colour. */
export function colour(i: number): string {
  return PALETTE[i % PALETTE.length] as string;
}

const short = (s: string, n = 14) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/**
 * A legend shows the values under the cursor; with the cursor off the chart uPlot shows "--".
 * These show the latest point then (lines), or the first category (bars: the worker that did most).
 */
function lastIndex(u: uPlot, sidx: number): number | null {
  const ys = u.data[sidx] ?? [];
  for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null && ys[i] !== undefined) return i;
  return null;
}
const num3 = (v: number) => String(Number(v.toPrecision(3)));
const noDrag = { drag: { x: false, y: false } };

/** Lines over seconds since the job's start. */
export function lineOptions(o: {
  series: { label: string; colour: string; fill?: string }[];
  yLabel: string;
}): ChartOptions {
  return {
    scales: { x: { time: false }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [
      { label: 'seconds since start', labelSize: 20 },
      { label: o.yLabel, labelSize: 20 },
    ],
    cursor: noDrag,
    series: [
      {
        label: 't',
        value: (u, v, _s, idx) => {
          if (idx !== null) return v === null ? '–' : `${v} s`;
          const at = lastIndex(u, 0);
          return at === null ? '–' : `${u.data[0][at]} s (latest)`;
        },
      },
      ...o.series.map((s) => ({
        label: s.label,
        stroke: s.colour,
        fill: s.fill,
        width: 2,
        points: { show: false },
        value: (u: uPlot, v: number | null, sidx: number, idx: number | null) => {
          const at = idx ?? lastIndex(u, sidx);
          const x = at === null ? null : idx === null ? u.data[sidx]?.[at] : v;
          return x === null || x === undefined ? '–' : num3(x);
        },
      })),
    ],
  };
}

/** The whole seconds of a report: while the job runs, the current second is not over yet. */
function seconds(r: FairnessReport): number {
  return r.final ? r.throughput.length : Math.max(0, r.throughput.length - 1);
}

/** The job's throughput, items per second, with a 5-second moving average. */
export function throughputData(r: FairnessReport): uPlot.AlignedData {
  const whole = r.throughput.slice(0, seconds(r));
  const xs = whole.map((p) => p.t);
  const ys = whole.map((p) => p.items);
  const avg = ys.map((_, i) => {
    const from = Math.max(0, i - 4);
    const w = ys.slice(from, i + 1);
    return w.reduce((a, b) => a + b, 0) / w.length;
  });
  return [xs, ys, avg];
}

/**
 * Each worker's items so far over time (cumulative), for the workers that did the most; the rest
 * are summed as "others" so 500 workers still make a readable chart.
 */
export function contributionSeries(
  r: FairnessReport,
  top = 8,
): { labels: string[]; data: uPlot.AlignedData } {
  const rows = [...r.workers].sort((a, b) => b.items - a.items);
  const shown = rows.slice(0, top);
  const rest = rows.slice(top);
  const xs = r.throughput.slice(0, seconds(r)).map((p) => p.t);
  const cumulative = (ids: string[]) => {
    let sum = 0;
    return xs.map((_, i) => {
      for (const id of ids) sum += r.contributions[id]?.[i]?.items ?? 0;
      return sum;
    });
  };
  const labels = shown.map((w) => w.name);
  const data: (number | null)[][] = shown.map((w) => cumulative([w.workerId]));
  if (rest.length) {
    labels.push(`${rest.length} others`);
    data.push(cumulative(rest.map((w) => w.workerId)));
  }
  return { labels, data: [xs, ...data] };
}

/** Grouped bars, one group per category (worker). */
export function barOptions(o: {
  categories: string[];
  series: { label: string; colour: string }[];
  yLabel: string;
  yFormat: (v: number) => string;
}): ChartOptions {
  const bars = uPlot.paths.bars;
  const n = o.series.length;
  const many = o.categories.length > 12;
  return {
    scales: {
      x: { time: false, range: () => [-0.5, Math.max(0.5, o.categories.length - 0.5)] },
      y: { range: (_u, _min, max) => [0, Math.max(max * 1.1, 1e-9)] },
    },
    axes: [
      {
        splits: () => o.categories.map((_, i) => i),
        values: (_u, splits) => splits.map((i) => short(o.categories[i] ?? '')),
        rotate: many ? -45 : 0,
        size: many ? 80 : 40,
        gap: 4,
      },
      {
        label: o.yLabel,
        labelSize: 20,
        size: 72,
        values: (_u, vals) => vals.map((v) => o.yFormat(v)),
      },
    ],
    cursor: noDrag,
    series: [
      {
        label: 'worker',
        value: (_u, i, _s, idx) =>
          idx === null ? (o.categories[0] ?? '–') : i === null ? '–' : (o.categories[i] ?? ''),
      },
      ...o.series.map((s, k) => ({
        label: s.label,
        stroke: s.colour,
        fill: `${s.colour}cc`,
        width: 0,
        points: { show: false },
        value: (u: uPlot, v: number | null, sidx: number, idx: number | null) => {
          const x = idx === null ? u.data[sidx]?.[0] : v;
          return x === null || x === undefined ? '–' : o.yFormat(x);
        },
        paths: bars?.({
          size: [n > 1 ? 0.4 : 0.6, 48],
          align: n === 1 ? 0 : k === 0 ? -1 : 1,
        }),
      })),
    ],
  };
}

/** The workers a per-worker chart shows: those that did the most, at most `max`. */
export function chartWorkers(r: FairnessReport, max = 40): WorkerFairness[] {
  return [...r.workers]
    .filter((w) => w.items > 0 || w.expectedShare > 0 || w.steals > 0)
    .sort((a, b) => b.items - a.items)
    .slice(0, max);
}

/** Share against fair share, per worker. */
export function shareData(workers: readonly WorkerFairness[]): uPlot.AlignedData {
  return [workers.map((_, i) => i), workers.map((w) => w.expectedShare), workers.map((w) => w.actualShare)];
}

/** Idle seconds per worker. */
export function idleData(workers: readonly WorkerFairness[]): uPlot.AlignedData {
  return [workers.map((_, i) => i), workers.map((w) => w.idleS)];
}

const EVENT_TYPES: { type: FairnessEvent['type']; label: string; colour: string }[] = [
  { type: 'steal', label: 'steal (items moved to this worker)', colour: '#2563eb' },
  { type: 'speculate', label: 'speculative copy (run here too)', colour: '#d97706' },
  { type: 'requeue', label: 'requeue (worker lost)', colour: '#dc2626' },
];

/** Points by time (x, from the job's start to `spanS`) and worker (y), one series per kind of event. */
export function timelineOptions(workers: string[], spanS: number): ChartOptions {
  return {
    scales: {
      x: { time: false, range: (_u, _min, max) => [0, Math.max(1, spanS, max)] },
      y: { range: () => [-0.5, Math.max(0.5, workers.length - 0.5)] },
    },
    axes: [
      { label: 'seconds since start', labelSize: 20 },
      {
        splits: () => workers.map((_, i) => i),
        values: (_u, splits) => splits.map((i) => short(workers[i] ?? '')),
        size: 110,
        gap: 4,
      },
    ],
    cursor: noDrag,
    series: [
      {
        label: 't',
        value: (u, v, _s, idx) =>
          idx === null
            ? `${u.data[0].length} event${u.data[0].length === 1 ? '' : 's'}`
            : v === null
              ? '–'
              : `${v.toFixed(2)} s`,
      },
      ...EVENT_TYPES.map((e) => ({
        label: e.label,
        stroke: e.colour,
        fill: e.colour,
        width: 0,
        paths: () => null,
        points: { show: true, size: 9, fill: e.colour, stroke: e.colour },
        // Off the chart: how many of this kind; on a point: whose it is.
        value: (u: uPlot, v: number | null, sidx: number, idx: number | null) =>
          idx === null
            ? String(Array.from(u.data[sidx] ?? [], (y) => y ?? null).filter((y) => y !== null).length)
            : v === null
              ? '–'
              : short(workers[v] ?? '', 20),
      })),
    ],
  };
}

/** The timeline's data: events sorted by time; each worker is a row (its index in `workers`). */
export function timelineData(r: FairnessReport, workers: readonly string[]): uPlot.AlignedData {
  const row = new Map(workers.map((id, i) => [id, i]));
  const events = r.timeline.filter((e) => row.has(e.workerId)).sort((a, b) => a.t - b.t);
  return [
    events.map((e) => e.t),
    ...EVENT_TYPES.map(({ type }) =>
      events.map((e) => (e.type === type ? (row.get(e.workerId) ?? null) : null)),
    ),
  ];
}
