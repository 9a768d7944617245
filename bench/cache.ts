/**
 * `npm run bench -- cache [--json] [--items 100000] [--reps 3]`
 *
 * What the result cache costs where it works: when items are added. An in-process hub (SQLite store,
 * no workers) gets `--items` no-op items (x[1,4] float32, the dispatch bench's) added through its
 * own `appendItems`, in batches of 4,096 as `POST /api/jobs/:id/items` adds them, to three jobs per
 * repetition, alternated in one process:
 *
 * - `off`: a job with `cache: false` (the items are only stored);
 * - `miss`: a job with the cache on and inputs the hub has not seen (each input hashed, looked up,
 *   and made an entry);
 * - `hit`: the same inputs again once the `miss` job's results are stored: every item answered from
 *   the cache (a copy of its result), done when sealed.
 *
 * Items/s and the hub process's CPU per item, from the first batch to the last. Results for the
 * `miss` job are stored through the store's exactly-once gate (untimed) so that `hit` has sources.
 */
import { join } from 'node:path';
import { packTensors } from '../protocol/pack.ts';
import { startHub, tempDir } from '../test/helpers/grid.ts';
import { openJob } from '../test/helpers/store-rows.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { SqliteAsyncStore } from '../server/store/sqlite-async-store.ts';
import { printTable } from './_grid.ts';
import { numFlag } from './_scale.ts';

const BATCH = 4096;

interface Row {
  rep: number;
  kind: 'off' | 'miss' | 'hit';
  items: number;
  cached: number;
  items_per_s: number;
  hub_cpu_us_per_item: number;
}

/** The no-op model's input for item `n`: x[1,4] = [n, n, n, n]. */
function inputs(n: number): Uint8Array {
  const data = new Float32Array(4).fill(n);
  return packTensors([{ name: 'x', dtype: 'float32', dims: [1, 4], data: new Uint8Array(data.buffer) }]);
}

export async function main(args: string[]): Promise<void> {
  const items = numFlag(args, 'items', 100_000);
  const reps = numFlag(args, 'reps', 3);
  const json = args.includes('--json');
  const tmp = tempDir('shardhub-bench-cache-');
  // No pre-flight: nothing runs here, and a sealed `miss` job would otherwise run canaries.
  const server = await startHub(join(tmp.dir, 'hub'), {
    hub: { preflight: false, trust: DEFAULT_TRUST_OPTIONS },
  });
  const hub = server.hub;
  const rows: Row[] = [];
  try {
    const model = hub.models.byName('noop');
    if (!model) throw new Error('model noop missing: run `npm run models`');
    const add = async (kind: Row['kind'], rep: number, base: number): Promise<string> => {
      const job = await hub.createJob({ ...openJob('noop'), cache: kind !== 'off' });
      const batches: { name: string; inputs: Uint8Array }[][] = [];
      for (let i = 0; i < items; i += BATCH) {
        batches.push(
          Array.from({ length: Math.min(BATCH, items - i) }, (_, k) => ({
            name: `i${i + k}`,
            inputs: inputs(base + i + k),
          })),
        );
      }
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      for (const b of batches) await hub.appendItems(job.id, b);
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const rec = await hub.jobs.require(job.id);
      rows.push({
        rep,
        kind,
        items,
        cached: rec.doneCount,
        items_per_s: items / seconds,
        hub_cpu_us_per_item: (cpu.user + cpu.system) / items,
      });
      return job.id;
    };
    // The results go in through a second connection to the hub's file, as a second hub would.
    const store = await SqliteAsyncStore.open(join(tmp.dir, 'hub', 'hub.sqlite'));
    const lease = await store.registerHub('bench', { url: 'http://bench', ttlMs: 60_000 });
    for (let rep = 1; rep <= reps; rep++) {
      const base = rep * 10 * items; // inputs no earlier repetition used
      await add('off', rep, base);
      const miss = await add('miss', rep, base + items);
      // Results for the `miss` job's items (untimed), so that `hit` finds them.
      const ids: number[] = [];
      for (let off = 0; off < items; off += 10_000) {
        for (const it of await hub.jobs.items(miss, { offset: off, limit: 10_000 })) ids.push(it.id);
      }
      for (let i = 0; i < ids.length; i += BATCH) {
        await store.recordResults(
          lease,
          ids.slice(i, i + BATCH).map((itemId) => ({
            itemId,
            jobId: miss,
            workerId: 'bench',
            modelSha256: model.sha256,
            ms: 0,
            outputs: inputs(itemId),
            at: Date.now(),
          })),
        );
      }
      await add('hit', rep, base + items);
    }
    await store.close();
  } finally {
    await server.close();
    tmp.cleanup();
  }
  if (json) process.stdout.write(`${JSON.stringify({ bench: 'cache', rows })}\n`);
  else printTable(rows as unknown as Record<string, unknown>[]);
}
