/**
 * Rows the store tests write (a job to create, items to append), and the job the benches create
 * through the hub.
 */
import type { JobSpec } from '../../server/hub/jobs.ts';
import type { NewJob } from '../../server/store/store.ts';

/** What a plain open job is: priority 0, one result per item, no deadline, no requirements. */
const OPEN = {
  priority: 0,
  redundancy: 1,
  deadline: null,
  requirements: null,
  options: {},
  state: 'open',
} as const satisfies Partial<NewJob>;

/** An open job of a model nobody runs, with `over` on top. */
export function newJob(id: string, over: Partial<NewJob> = {}): NewJob {
  return { id, modelName: 'squeezenet', modelSha256: 'ab'.repeat(32), ...OPEN, options: {}, ...over };
}

/**
 * An open job of `model` as the hub's `createJob` takes it (the benches fill theirs directly). The
 * result cache off: a bench measures the grid running its items, and its jobs reuse inputs (a
 * warm-up's, an earlier round's) that the cache would answer.
 */
export function openJob(model: string): JobSpec {
  return { model, ...OPEN, options: {}, cache: false };
}

/** `n` items named `<prefix>-<i>`, each a small input whose first byte is its index. */
export function items(n: number, prefix = 'item'): { name: string; inputs: Uint8Array }[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `${prefix}-${i}`,
    inputs: new Uint8Array([i & 0xff, 1, 2]),
  }));
}
