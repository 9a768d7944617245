/** A worker as the scheduler sees it, for tests that drive the scheduler directly. */
import type { SchedWorker } from '../../server/scheduler/scheduler.ts';

/** A native sim worker with one slot, unless `extra` says otherwise. */
export function schedWorker(id: string, extra: Partial<SchedWorker> = {}): SchedWorker {
  return {
    id,
    name: id,
    concurrency: 1,
    kind: 'native',
    backend: 'sim',
    pool: null,
    cores: 4,
    gpuMemoryBytes: null,
    ...extra,
  };
}
