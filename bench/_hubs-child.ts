/**
 * One "hub" of `bench/hubs.ts`, in a process of its own: it opens the store, registers, then on
 * "go" runs the store traffic a hub makes per chunk until no chunk is left — claim one, advance
 * its cursor, read its pending ids, record the assignments, read the inputs, record the results in
 * batches, finish it — and reports its items, wall time and CPU time.
 */
import type { AsyncStore } from '../server/store/async-store.ts';
import { PgStore } from '../server/store/pg-store.ts';
import { SqliteAsyncStore } from '../server/store/sqlite-async-store.ts';

export interface ChildTask {
  kind: 'sqlite' | 'postgres';
  /** A file for SQLite, a URL for Postgres. */
  where: string;
  schema?: string;
  hubId: string;
  jobId: string;
  batch: number;
}

export interface ChildReport {
  hubId: string;
  items: number;
  chunks: number;
  wallMs: number;
  cpuUs: number;
}

const OUTPUTS = new Uint8Array(64);

async function run(task: ChildTask): Promise<void> {
  const store: AsyncStore =
    task.kind === 'postgres'
      ? await PgStore.open(task.where, { schema: task.schema })
      : await SqliteAsyncStore.open(task.where);
  const lease = await store.registerHub(task.hubId, { url: `bench://${task.hubId}`, ttlMs: 60_000 });
  process.send!({ type: 'ready' });
  await new Promise<void>((resolve) => process.once('message', () => resolve()));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let items = 0;
  let chunks = 0;
  for (;;) {
    const [c] = await store.claimChunks(lease, { maxChunks: 1 });
    if (!c) break;
    chunks++;
    const held = (await store.advanceChunk(lease, c.id, c.last))!;
    const ids: number[] = [];
    for (const r of await store.pendingItemRuns(task.jobId, { first: held.first, last: held.cursor })) {
      for (let id = r.first; id <= r.last; id++) ids.push(id);
    }
    const at = Date.now();
    await store.recordAssignments(
      lease,
      ids.map((itemId) => ({ itemId, workerId: 'w', shardId: `s${c.id}`, at })),
    );
    await store.itemInputs(ids);
    for (let i = 0; i < ids.length; i += task.batch) {
      const rows = ids.slice(i, i + task.batch).map((itemId) => ({
        itemId,
        jobId: task.jobId,
        workerId: 'w',
        modelSha256: 'ab'.repeat(32),
        ms: 1,
        outputs: OUTPUTS,
        at,
      }));
      items += (await store.recordResults(lease, rows)).accepted.length;
    }
    await store.finishChunk(lease, c.id);
  }
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await store.close();
  const report: ChildReport = { hubId: task.hubId, items, chunks, wallMs, cpuUs: cpu.user + cpu.system };
  process.send!({ type: 'done', report });
}

process.once('message', (task: ChildTask) => {
  run(task).catch((err: unknown) => {
    process.send!({ type: 'error', message: String((err as Error).stack ?? err) });
  });
});
