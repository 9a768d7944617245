/** Rows the store tests write: a job to create, items to append. */
import type { NewJob } from '../../server/store/store.ts';

/** An open job of a model nobody runs, with `over` on top. */
export function newJob(id: string, over: Partial<NewJob> = {}): NewJob {
  return {
    id,
    modelName: 'squeezenet',
    modelSha256: 'ab'.repeat(32),
    priority: 0,
    redundancy: 1,
    deadline: null,
    requirements: null,
    options: {},
    state: 'open',
    ...over,
  };
}

/** `n` items named `<prefix>-<i>`, each a small input whose first byte is its index. */
export function items(n: number, prefix = 'item'): { name: string; inputs: Uint8Array }[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `${prefix}-${i}`,
    inputs: new Uint8Array([i & 0xff, 1, 2]),
  }));
}
