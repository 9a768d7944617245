/**
 * What the workers table shows, as data: its sortable columns, and the filtering and sorting of
 * workers (kept apart from the element so they stay plain functions).
 */
import { WORKER_STATES, type WorkerView } from '../../protocol/operator.ts';

/** Columns a table can be sorted by. */
export type WorkerSortKey =
  'name' | 'kind' | 'backend' | 'device' | 'state' | 'weight' | 'items' | 'rate' | 'share' | 'heartbeat';

/** The table's sortable columns, in order. */
export const COLUMNS: { key: WorkerSortKey; label: string; numeric?: boolean; title?: string }[] = [
  { key: 'name', label: 'Worker' },
  { key: 'kind', label: 'Kind' },
  { key: 'backend', label: 'Backend' },
  { key: 'device', label: 'Adapter / GPU' },
  { key: 'state', label: 'State' },
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
      return w.device.toLowerCase();
    case 'state':
      return STATE_ORDER.get(w.state) ?? 99;
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
        (w.pool ?? '').toLowerCase().includes(text)),
  );
  return rows.sort((a, b) => {
    const x = sortValue(a, sort.key);
    const y = sortValue(b, sort.key);
    const c = x < y ? -1 : x > y ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    return c * sort.dir;
  });
}
