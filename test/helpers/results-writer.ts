/**
 * A child process for the conformance races across processes: opens the store it is told, registers
 * as a hub, waits for "go", records a result for each id it was given in batches, and sends back the
 * ids its commits accepted.
 */
import { PgStore } from '../../server/store/pg-store.ts';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';

export interface WriterTask {
  kind: 'sqlite' | 'postgres';
  where: string;
  schema?: string;
  hubId: string;
  jobId: string;
  ids: number[];
  batch: number;
}

process.once('message', (task: WriterTask) => {
  void (async () => {
    const store =
      task.kind === 'postgres'
        ? await PgStore.open(task.where, { schema: task.schema })
        : await SqliteAsyncStore.open(task.where);
    const lease = await store.registerHub(task.hubId, { url: `test://${task.hubId}`, ttlMs: 60_000 });
    process.send!({ type: 'ready' });
    await new Promise<void>((resolve) => process.once('message', () => resolve()));
    const accepted: number[] = [];
    for (let i = 0; i < task.ids.length; i += task.batch) {
      const rows = task.ids.slice(i, i + task.batch).map((itemId) => ({
        itemId,
        jobId: task.jobId,
        workerId: task.hubId,
        modelSha256: 'ab'.repeat(32),
        ms: 1,
        outputs: new Uint8Array([itemId & 0xff]),
        at: 1,
      }));
      accepted.push(...(await store.recordResults(lease, rows)).accepted);
    }
    await store.close();
    process.send!({ type: 'done', accepted });
  })().catch((err: unknown) =>
    process.send!({ type: 'error', message: String((err as Error).stack ?? err) }),
  );
});
