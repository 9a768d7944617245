/**
 * `npm run bench -- browser [--json] [--backends webgpu,wasm] [--seconds S] [--rounds R]`
 *
 * What the grid costs a browser worker: per backend, the same headless Chromium (Debian's, WebGPU
 * through SwiftShader) runs one model twice, in one run:
 * - **grid**: the contributor page (`?autostart=1&backend=…`) as the hub's only worker; a warm-up job
 *   (model download, session, benchmark), then measured jobs of about S seconds (default 10), each
 *   timed from its first assignment to its last result as the hub records them: items/s as the grid
 *   delivers them;
 * - **standalone**: `standalone.html`, onnxruntime-web configured identically in a module worker,
 *   running the same model on the same inputs, batch size and thread count in a tight loop for S s.
 * The two alternate for R rounds (default 2) and each keeps its best; `ratio` = grid / standalone
 * (target >= 0.9).
 *
 * Models where compute dominates, each small enough for its backend here: `mlp-small` with 256 rows
 * per item on WebGPU (SwiftShader is slow), PaddleOCR detection (`ppocr-det`) at 128x128 on WASM.
 * The hub's result checks are off (no pre-flight canaries, every worker trusted): a lone worker
 * has nobody to be cross-checked against, and checks are the scheduler's cost, not the browser's.
 * Needs `npm run build` and Chromium (`CHROMIUM_PATH`, default /usr/bin/chromium). Prints figures;
 * never fails on time.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { ModelInfo } from '../protocol/model.ts';
import { packItems, type NamedItem } from '../protocol/pack.ts';
import type { HubServer } from '../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import type { StandaloneResult } from '../client/standalone/messages.ts';
import { ROOT, benchHub, printTable, until } from './_grid.ts';

type BrowserBackend = 'webgpu' | 'wasm';

/** One backend's case: the model and the dims of one item. */
interface Case {
  backend: BrowserBackend;
  model: string;
  dims: Record<string, number[]>;
  /** Items in the warm-up job. */
  warmup: number;
}

const CASES: Record<BrowserBackend, Case> = {
  webgpu: { backend: 'webgpu', model: 'mlp-small', dims: { x: [256, 64] }, warmup: 64 },
  wasm: { backend: 'wasm', model: 'ppocr-det', dims: { x: [1, 3, 128, 128] }, warmup: 8 },
};

/** One row of the report. */
export interface BrowserBenchRow {
  backend: BrowserBackend;
  grid_items_per_s: number;
  standalone_items_per_s: number;
  ratio: number;
}

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

function parseArgs(args: string[]): {
  json: boolean;
  backends: BrowserBackend[];
  seconds: number;
  rounds: number;
} {
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const backends = (value('--backends') ?? 'webgpu,wasm').split(',').filter(Boolean);
  for (const b of backends) {
    if (b !== 'webgpu' && b !== 'wasm') throw new Error(`--backends takes webgpu and/or wasm, not "${b}"`);
  }
  const seconds = Number(value('--seconds') ?? 10);
  if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
  const rounds = Number(value('--rounds') ?? 2);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds must be an integer >= 1');
  return { json: args.includes('--json'), backends: backends as BrowserBackend[], seconds, rounds };
}

function itemsOf(model: ModelInfo, dims: Record<string, number[]>, n: number, seed: number): NamedItem[] {
  const m = { ...model, calibration: { ...model.calibration, dims } };
  return Array.from({ length: n }, (_, i) => ({
    name: `b${seed + i}`,
    tensors: calibrationInputs(m, seed + i),
  }));
}

/** Creates, fills and seals a job through the hub's REST API; returns its id. */
async function submit(hub: HubServer, model: string, items: NamedItem[]): Promise<string> {
  const call = async (method: string, path: string, body?: BodyInit, type?: string) => {
    const res = await fetch(hub.url + path, {
      method,
      headers: {
        authorization: `Bearer ${hub.tokens.operatorToken}`,
        ...(type ? { 'content-type': type } : {}),
      },
      body,
    });
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
    return (await res.json()) as { data: { id: string } };
  };
  const job = await call('POST', '/api/jobs', JSON.stringify({ model }), 'application/json');
  const id = job.data.id;
  for (let i = 0; i < items.length; i += 100) {
    const packed = packItems(items.slice(i, i + 100));
    await call('POST', `/api/jobs/${id}/items`, packed.slice().buffer, 'application/octet-stream');
  }
  await call('POST', `/api/jobs/${id}/seal`);
  return id;
}

/** Waits for a job to complete; returns its items/s from first assignment to last result. */
async function runJob(hub: HubServer, model: string, items: NamedItem[]): Promise<number> {
  const id = await submit(hub, model, items);
  const job = await until(
    `job ${id} completed`,
    () => {
      const j = hub.hub.store.getJob(id);
      return j?.state === 'completed' ? j : undefined;
    },
    15 * 60_000,
    20,
  );
  if (job.startedAt === null || job.finishedAt === null)
    throw new Error(`job ${id} has no start or finish time`);
  return (items.length * 1000) / Math.max(1, job.finishedAt - job.startedAt);
}

async function openContributor(browser: Browser, hub: HubServer, backend: BrowserBackend): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${hub.url}/?autostart=1&debug=1&backend=${backend}`);
  await until('the page', () => true);
  for (let t = Date.now(); ;) {
    const ready = await page.evaluate(() => window.shardhub?.stats()?.registered === true);
    if (ready) break;
    if (Date.now() - t > 60_000) throw new Error(`the ${backend} page did not register`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
  const info = await page.evaluate(() => window.shardhub?.engineInfo());
  if (info?.backend !== backend) throw new Error(`the page runs ${info?.backend}, not ${backend}`);
  return page;
}

async function benchBackend(
  browser: Browser,
  hub: HubServer,
  c: Case,
  seconds: number,
  rounds: number,
  note: (s: string) => void,
): Promise<BrowserBackendResult> {
  const model = hub.hub.models.byName(c.model);
  if (!model) throw new Error(`model ${c.model} is not in the registry (npm run models)`);

  // Grid: the contributor page as the only worker; warmed up once (download, session, benchmark).
  const page = await openContributor(browser, hub, c.backend);
  const threads = (await page.evaluate(() => window.shardhub?.engineInfo()?.numThreads)) ?? 1;
  const warmRate = await runJob(hub, c.model, itemsOf(model, c.dims, c.warmup, 1));
  const n = Math.max(c.warmup, Math.round(warmRate * seconds));
  note(`${c.backend}: warm-up ${warmRate.toFixed(1)} items/s; measuring ${n} items, ${rounds} round(s)`);

  // Standalone: the same browser, onnxruntime-web alone, same inputs, batch and threads. The
  // contributor page stays open meanwhile, idle. Rounds alternate; each side keeps its best round,
  // so a burst of load from elsewhere on the machine penalizes neither.
  const alone = await browser.newPage();
  await alone.goto(`${hub.url}/standalone.html`);
  const request = { model, backend: c.backend, numThreads: threads, dims: c.dims, minMs: seconds * 1000 };
  let grid = 0;
  let standalone = 0;
  for (let r = 0; r < rounds; r++) {
    const g = await runJob(hub, c.model, itemsOf(model, c.dims, n, 100_000 * (r + 1)));
    const result = (await alone.evaluate((req) => {
      const run = window.shardhubStandalone;
      if (!run) throw new Error('standalone.html did not load');
      return run(req);
    }, request)) as StandaloneResult;
    note(
      `${c.backend} round ${r + 1}: grid ${g.toFixed(2)}, standalone ${result.itemsPerSec.toFixed(2)} items/s`,
    );
    grid = Math.max(grid, g);
    standalone = Math.max(standalone, result.itemsPerSec);
  }
  await alone.close();
  await page.close();
  return {
    row: {
      backend: c.backend,
      grid_items_per_s: grid,
      standalone_items_per_s: standalone,
      ratio: grid / standalone,
    },
    model: c.model,
    item: Object.entries(c.dims)
      .map(([k, d]) => `${k}[${d.join(',')}]`)
      .join(' '),
    threads,
    items: n,
  };
}

interface BrowserBackendResult {
  row: BrowserBenchRow;
  model: string;
  item: string;
  threads: number;
  items: number;
}

/** Runs the benchmark; see the file comment. */
export async function main(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const dist = join(ROOT, 'dist', 'client');
  if (!existsSync(join(dist, 'standalone.html'))) throw new Error('build the pages first: npm run build');
  if (!existsSync(CHROMIUM))
    throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  const note = (s: string) => process.stderr.write(`${s}\n`);
  const { hub, done } = await benchHub({
    staticDir: dist,
    hub: { preflight: false, trust: { ...DEFAULT_TRUST_OPTIONS, trustAfter: 0, spotCheck: 0 } },
  });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  const results: BrowserBackendResult[] = [];
  try {
    for (const b of opts.backends)
      results.push(await benchBackend(browser, hub, CASES[b], opts.seconds, opts.rounds, note));
  } finally {
    await browser.close();
    await done();
  }
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(results.map((r) => r.row))}\n`);
    return;
  }
  printTable(
    results.map((r) => ({
      backend: r.row.backend,
      model: r.model,
      item: r.item,
      threads: r.threads,
      items: r.items,
      grid_items_per_s: r.row.grid_items_per_s,
      standalone_items_per_s: r.row.standalone_items_per_s,
      ratio: r.row.ratio,
    })),
  );
}
