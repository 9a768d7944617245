/**
 * What the workers table shows, as data: its sortable columns, and the filtering and sorting of
 * workers (kept apart from the element so they stay plain functions).
 */
import { WORKER_STATES, type WorkerView } from '../../protocol/operator.ts';

/** Columns a table can be sorted by. */
export type WorkerSortKey =
  | 'name'
  | 'kind'
  | 'backend'
  | 'device'
  | 'state'
  | 'load'
  | 'weight'
  | 'items'
  | 'rate'
  | 'share'
  | 'heartbeat';

/**
 * The device a worker computes on: its GPU or WebGPU adapter, else its processor ("CPU, 8 cores").
 * The host name says where a worker is, not what it computes with; it stays in the row's tooltip.
 */
export function deviceLabel(w: Pick<WorkerView, 'capabilities' | 'cores'>): string {
  const gpu = w.capabilities.gpu?.name;
  if (gpu) return gpu;
  return `CPU, ${w.cores} core${w.cores === 1 ? '' : 's'}`;
}

/** A worker's load as fractions (0..1+), or null where it reports none (browsers). */
export function loadOf(w: Pick<WorkerView, 'load'>): { cpu: number; mem: number | null } | null {
  const l = w.load;
  if (!l || (l.cpu === 0 && l.memTotalBytes === 0)) return null;
  return { cpu: l.cpu, mem: l.memTotalBytes > 0 ? l.memUsedBytes / l.memTotalBytes : null };
}

/** The table's sortable columns, in order. */
export const COLUMNS: { key: WorkerSortKey; label: string; numeric?: boolean; title?: string }[] = [
  { key: 'name', label: 'Worker' },
  { key: 'kind', label: 'Kind' },
  { key: 'backend', label: 'Backend' },
  { key: 'device', label: 'Adapter / GPU' },
  { key: 'state', label: 'State', title: 'probation: not yet proven by checks; holds few items' },
  {
    key: 'load',
    label: 'Load',
    numeric: true,
    title: 'CPU: 1-minute load average per core; memory in use (native nodes report these)',
  },
  {
    key: 'weight',
    label: 'Weight',
    numeric: true,
    title: 'items/s on its current job’s model: benchmark / observed',
  },
  { key: 'items', label: 'Items', numeric: true },
  { key: 'rate', label: 'Rate', numeric: true, title: 'accepted results per second, last 5 s' },
  {
    key: 'share',
    label: 'Share / fair',
    title: 'share of its current job’s results against the share its weight entitles it to',
  },
  { key: 'heartbeat', label: 'Heartbeat', numeric: true },
];

const STATE_ORDER = new Map<string, number>(WORKER_STATES.map((s, i) => [s, i]));

function sortValue(w: WorkerView, key: WorkerSortKey): number | string {
  switch (key) {
    case 'name':
      return w.name.toLowerCase();
    case 'kind':
      return w.kind;
    case 'backend':
      return w.backend;
    case 'device':
      return deviceLabel(w).toLowerCase();
    case 'state':
      return (STATE_ORDER.get(w.state) ?? 99) + (w.probation ? 0.5 : 0);
    case 'load':
      return loadOf(w)?.cpu ?? -1;
    case 'weight':
      return w.observed ?? w.weight ?? w.benchmark ?? -1;
    case 'items':
      return w.itemsDone;
    case 'rate':
      return w.rate;
    case 'share':
      return w.share ?? -1;
    case 'heartbeat':
      return w.lastSeen;
  }
}

/** Filters and sorts workers as the table shows them. */
export function visibleWorkers(
  workers: readonly WorkerView[],
  f: { text: string; state: string; kind: string; backend: string },
  sort: { key: WorkerSortKey; dir: 1 | -1 },
): WorkerView[] {
  const text = f.text.trim().toLowerCase();
  const rows = workers.filter(
    (w) =>
      (!f.state || w.state === f.state) &&
      (!f.kind || w.kind === f.kind) &&
      (!f.backend || w.backend === f.backend) &&
      (!text ||
        w.name.toLowerCase().includes(text) ||
        w.id.toLowerCase().includes(text) ||
        w.device.toLowerCase().includes(text) ||
        deviceLabel(w).toLowerCase().includes(text) ||
        (text === 'probation' && !!w.probation) ||
        (w.pool ?? '').toLowerCase().includes(text) ||
        (w.hub ?? '').toLowerCase().includes(text)),
  );
  return rows.sort((a, b) => {
    const x = sortValue(a, sort.key);
    const y = sortValue(b, sort.key);
    const c = x < y ? -1 : x > y ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    return c * sort.dir;
  });
}
