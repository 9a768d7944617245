/**
 * A job's events (`GET /api/jobs/:id/events`) as the job page lists them: what happened, to which
 * worker, in words. The stored fairness report is an event too; it is shown as charts, not here.
 */

/** An event as the REST API returns it. */
export interface JobEventView {
  id: number;
  at: number;
  type: string;
  data: Record<string, unknown>;
}

/** A failed item as `GET /api/jobs/:id` lists it. */
export interface FailedItemView {
  itemId: number;
  name: string;
  attempts: number;
  reasons: { workerId: string; category: string; message: string }[];
}

/** Event types the list shows, with their labels. */
export const EVENT_LABELS: Record<string, string> = {
  steal: 'steal',
  speculate: 'speculative copy',
  requeue: 'requeue',
  release: 'release',
  quarantine: 'quarantine',
  check_failed: 'check failed',
  disagreement: 'disagreement',
  preflight_failed: 'pre-flight failed',
};

const str = (v: unknown): string | undefined => (typeof v === 'string' && v ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const items = (v: unknown): number | undefined => (Array.isArray(v) ? v.length : num(v));

/** The worker an event is about (thief, holder, quarantined worker...). */
export function eventWorker(e: JobEventView): string | undefined {
  const d = e.data;
  return str(d.workerId) ?? str(d.thief) ?? str(d.worker);
}

/** An event's details in words, names of workers resolved by `name`. */
export function describeEvent(e: JobEventView, name: (id: string) => string): string {
  const d = e.data;
  const n = items(d.items) ?? items(d.itemIds);
  const who = (id: unknown) => (typeof id === 'string' ? name(id) : '?');
  const reason = str(d.reason);
  const parts: string[] = [];
  switch (e.type) {
    case 'steal':
      parts.push(`${n ?? '?'} items from ${who(d.victim)}`);
      break;
    case 'speculate':
      parts.push(`${n ?? '?'} running items of ${who(d.from)} copied`);
      break;
    case 'requeue':
    case 'release':
      parts.push(`${n ?? '?'} items back to the queue`);
      break;
    case 'quarantine':
      parts.push(`${num(d.recomputed) ?? 0} of its results to compute again`);
      break;
    case 'check_failed':
      parts.push(`item ${num(d.itemId) ?? '?'}, strike ${num(d.strikes) ?? '?'}`);
      break;
    case 'disagreement':
      parts.push(`item ${num(d.itemId) ?? '?'}`);
      break;
    default:
      if (n !== undefined) parts.push(`${n} items`);
  }
  if (reason) parts.push(reason);
  return parts.join(': ');
}

/** The events the list shows, oldest first. */
export function listedEvents(events: readonly JobEventView[]): JobEventView[] {
  return events.filter((e) => e.type !== 'fairness').sort((a, b) => a.at - b.at || a.id - b.id);
}
