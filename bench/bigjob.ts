/**
 * `npm run bench -- bigjob [--json] [--sizes 10000,100000,1000000] [--workers 32] [--procs 2]
 *  [--concurrency 4] [--chunk 10000]`
 *
 * Jobs of 10k, 100k and 1M small items (the `noop` model, x[1,4] float32) through one hub, each size
 * on a fresh hub process so its memory is its own:
 *
 * 1. upload: the job is created open with `POST /api/jobs`, and its inputs streamed in with
 *    `POST /api/jobs/:id/items`, `--chunk` items per request (`protocol/pack.ts` `packItems`), one
 *    request after the other, as a client with a large input set does; then sealed with
 *    `POST /api/jobs/:id/seal`;
 * 2. run: 32 sim workers with no compute (as in `dispatch`) do the items; items/s is the job's
 *    items over the time from the seal request to the hub's `job:completed`;
 * 3. download: `GET /api/jobs/:id/results.tar` is read as a stream, its entries counted (every item
 *    must be there) without keeping it.
 *
 * The hub's RSS is sampled every 250 ms through all three phases; `rss_mb` is the peak. Memory that
 * grew with the item count would show as a peak rising from 10k to 1M items.
 */
import { packItems, type NamedItem } from '../protocol/pack.ts';
import { readTar } from '../server/io/tar.ts';
import { printTable } from './_grid.ts';
import {
  flag,
  numFlag,
  startHubProcess,
  startWorkerProcesses,
  stopAll,
  trustedNodes,
  warmUp,
  type HubProc,
} from './_scale.ts';
import type { RpcChild } from './_rpc.ts';

interface Row {
  items: number;
  upload_s: number;
  run_s: number;
  download_s: number;
  items_per_s: number;
  upload_items_per_s: number;
  download_items_per_s: number;
  tar_mb: number;
  rss_mb: number;
  rss_upload_mb: number;
  rss_run_mb: number;
  rss_download_mb: number;
  rss_start_mb: number;
  heap_mb: number;
  retained_mid_mb: number;
  retained_mb: number;
}

/** `fetch` against the hub's REST API with the operator token; throws on an error status. */
async function api(hub: HubProc, method: string, path: string, body?: Uint8Array | object): Promise<unknown> {
  const binary = body instanceof Uint8Array;
  const res = await fetch(`${hub.url}/api${path}`, {
    method,
    headers: {
      authorization: `Bearer ${hub.operatorToken}`,
      ...(body === undefined
        ? {}
        : { 'content-type': binary ? 'application/octet-stream' : 'application/json' }),
    },
    body: body === undefined ? undefined : binary ? (body as Uint8Array<ArrayBuffer>) : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 300)}`);
  return text ? JSON.parse(text) : undefined;
}

/** Items `from..from+n` of the upload: x[1,4] = [k, k, k, k] for item number k. */
function chunkOf(from: number, n: number): Uint8Array {
  const items: NamedItem[] = [];
  for (let k = from; k < from + n; k++) {
    const data = new Uint8Array(new Float32Array([k, k, k, k]).buffer);
    items.push({ name: `i${k}`, tensors: [{ name: 'x', dtype: 'float32', dims: [1, 4], data }] });
  }
  return packItems(items);
}

/** Reads a tar stream to its end, counting regular-file entries (checksums verified) and bytes. */
async function countTar(body: ReadableStream<Uint8Array>): Promise<{ entries: number; bytes: number }> {
  let bytes = 0;
  const chunks = (async function* () {
    for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
      bytes += chunk.byteLength;
      yield chunk;
    }
  })();
  let entries = 0;
  for await (const _ of readTar(chunks)) entries++;
  for await (const _ of chunks); // what follows the end marker: counted, not parsed
  return { entries, bytes };
}

/** Samples the hub's RSS every 250 ms until stopped; returns the peak of each labelled phase. */
function rssSampler(hub: HubProc) {
  const peaks = new Map<string, number>();
  let phase = 'start';
  const take = async () => {
    const m = await hub.rpc.call<{ rssMb: number; heapMb: number }>('mem').catch(() => undefined);
    if (!m) return;
    peaks.set(phase, Math.max(peaks.get(phase) ?? 0, m.rssMb));
    peaks.set('heap', Math.max(peaks.get('heap') ?? 0, m.heapMb));
  };
  const timer = setInterval(() => void take(), 250);
  return {
    phase: async (p: string) => {
      await take();
      phase = p;
      await take();
    },
    stop: async () => {
      clearInterval(timer);
      await take();
      return peaks;
    },
  };
}

/**
 * The heap the hub keeps halfway through the job (after a full collection, taken once when half the
 * items are done): what the running job holds, without the garbage that `heap_mb` includes.
 */
async function heapMidway(hub: HubProc, jobId: string, items: number): Promise<number> {
  for (;;) {
    const job = await hub.rpc.call<{ done: number; state: string }>('job', { jobId });
    if (job.state !== 'running' && job.state !== 'queued') return Number.NaN; // finished first
    if (job.done >= items / 2) return (await hub.rpc.call<{ heapMb: number }>('retained')).heapMb;
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

async function runSize(
  items: number,
  o: { workers: number; procs: number; concurrency: number; chunk: number },
  log: (s: string) => void,
): Promise<Row> {
  const hub = await startHubProcess(trustedNodes());
  let children: RpcChild[] = [];
  try {
    children = await startWorkerProcesses(hub, {
      count: o.workers,
      procs: o.procs,
      concurrency: o.concurrency,
      itemMs: 0,
    });
    await warmUp(hub, 'noop', o.workers, o.workers * 8);
    const rss = rssSampler(hub);
    await rss.phase('upload');

    const t0 = performance.now();
    const created = (await api(hub, 'POST', '/jobs', { model: 'noop' })) as { data: { id: string } };
    const jobId = created.data.id;
    for (let off = 0; off < items; off += o.chunk) {
      await api(hub, 'POST', `/jobs/${jobId}/items`, chunkOf(off, Math.min(o.chunk, items - off)));
    }
    const t1 = performance.now();
    log(`${items}: uploaded in ${((t1 - t0) / 1000).toFixed(1)} s`);

    await rss.phase('run');
    const sealAt = performance.timeOrigin + performance.now();
    await api(hub, 'POST', `/jobs/${jobId}/seal`);
    const midway = heapMidway(hub, jobId, items);
    const end = await hub.rpc.call<{ t: number; job: { done: number } }>('waitJob', { jobId });
    const retainedMidway = await midway;
    const runS = (end.t - sealAt) / 1000;
    log(`${items}: ran in ${runS.toFixed(1)} s`);

    await rss.phase('download');
    const t2 = performance.now();
    const res = await fetch(`${hub.url}/api/jobs/${jobId}/results.tar`, {
      headers: { authorization: `Bearer ${hub.operatorToken}` },
    });
    if (!res.ok || !res.body) throw new Error(`results.tar: ${res.status}`);
    const tar = await countTar(res.body);
    const t3 = performance.now();
    const peaks = await rss.stop();
    // What the hub keeps once the job is done and its results are out, after a full collection.
    const retained = await hub.rpc.call<{ heapMb: number }>('retained');
    if (tar.entries !== items || end.job.done !== items) {
      throw new Error(`results.tar has ${tar.entries} entries, job ${end.job.done} done, of ${items} items`);
    }
    log(`${items}: downloaded ${(tar.bytes / 2 ** 20).toFixed(0)} MB in ${((t3 - t2) / 1000).toFixed(1)} s`);
    const uploadS = (t1 - t0) / 1000;
    const downloadS = (t3 - t2) / 1000;
    return {
      items,
      upload_s: uploadS,
      run_s: runS,
      download_s: downloadS,
      items_per_s: items / runS,
      upload_items_per_s: items / uploadS,
      download_items_per_s: items / downloadS,
      tar_mb: tar.bytes / 2 ** 20,
      rss_mb: Math.max(...[...peaks].filter(([k]) => k !== 'heap').map(([, v]) => v)),
      rss_upload_mb: peaks.get('upload') ?? Number.NaN,
      rss_run_mb: peaks.get('run') ?? Number.NaN,
      rss_download_mb: peaks.get('download') ?? Number.NaN,
      rss_start_mb: peaks.get('start') ?? Number.NaN,
      heap_mb: peaks.get('heap') ?? Number.NaN,
      retained_mid_mb: retainedMidway,
      retained_mb: retained.heapMb,
    };
  } finally {
    await stopAll(children);
    await hub.stop();
  }
}

/** Runs the big-job benchmark and prints its table (or JSON). */
export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const sizes = (flag(args, 'sizes') ?? '10000,100000,1000000').split(',').map(Number);
  const o = {
    workers: numFlag(args, 'workers', 32),
    procs: numFlag(args, 'procs', 4),
    concurrency: numFlag(args, 'concurrency', 4),
    chunk: numFlag(args, 'chunk', 10_000),
  };
  const log = (s: string) => !json && process.stderr.write(`${s}\n`);
  const rows: Row[] = [];
  for (const n of sizes) rows.push(await runSize(n, o, log));
  if (json) {
    process.stdout.write(
      `${JSON.stringify(
        rows.map((r) => ({
          items: r.items,
          rss_mb: Math.round(r.rss_mb),
          items_per_s: Math.round(r.items_per_s),
        })),
      )}\n`,
    );
    return;
  }
  process.stdout.write(
    `bigjob: noop items uploaded over REST (POST /api/jobs/:id/items, ${o.chunk} per request), run by` +
      ` ${o.workers} sim workers (no compute) in ${o.procs} processes, results streamed out of` +
      ` GET /api/jobs/:id/results.tar; a fresh hub process per size\n\n`,
  );
  printTable(rows as unknown as Record<string, unknown>[]);
  process.stdout.write(
    `\nitems_per_s: items / (seal request -> job:completed). rss_*: hub peak RSS in each phase (start:` +
      ` after the workers' warm-up); heap_mb: peak V8 heap in use (garbage included); retained_mid_mb: V8 heap` +
      ` after a full collection with half the items done; retained_mb: the same once the results are downloaded.\n`,
  );
}
