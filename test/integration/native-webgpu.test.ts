/**
 * Native nodes on onnxruntime-node's WebGPU provider (Dawn on Vulkan) over SwiftShader, Chromium's
 * software Vulkan driver (Debian's `chromium` and `libvulkan1`, installed by `.ci/run`): the probe and
 * the backend choice in each case (software adapter only, no Vulkan driver, no Vulkan loader, forced
 * backend), outputs against the CPU provider's within the models' tolerances (mlp-small through the
 * grid, PaddleOCR detection on the node's backend), a lost session coming back, and a node process
 * whose GPU keeps losing its device (the GPU fault rig, `native/gpu-fault.ts`) falling back to cpu
 * and registering again as a cpu worker. And the gpu bench (`npm run bench -- gpu`), reduced to one
 * model and two backends, so that it keeps working on a machine without a GPU.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { compareTensors, type WireTensor } from '../../protocol/tensor.ts';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import type { WorkerView } from '../../protocol/operator.ts';
import type { NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../../server/trust.ts';
import { decideBackend, webGpuCheck, type CudaCheck } from '../../native/backend-select.ts';
import { probeWebGpu, vulkanLoaderName } from '../../native/gpu-probe.ts';
import { asRealGpu, GPU_FAULT_ENV } from '../../native/gpu-fault.ts';
import { OrtBackend } from '../../native/ort-backend.ts';
import { MAX_LOSSES, type ThreadedSession } from '../../native/ort-threaded.ts';
import { BackendError } from '../../worker/backend.ts';
import type { GpuBenchReport } from '../../bench/gpu.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import {
  Rest,
  checkResults,
  jobDone,
  modelPath,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';
const swiftshader = existsSync(SWIFTSHADER);
const skip = swiftshader
  ? false
  : `no SwiftShader Vulkan driver at ${SWIFTSHADER} (apt-get install chromium)`;
const swiftEnv = { ...process.env, VK_ICD_FILENAMES: SWIFTSHADER };
// This process's own sessions (Dawn reads the variable when it starts) use SwiftShader too.
if (swiftshader) process.env.VK_ICD_FILENAMES = SWIFTSHADER;

/** `n` mlp-small items of 1 to 4 rows, named and drawn from `seed` on. */
function mlpItems(model: ModelInfo, n: number, seed: number): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `i${seed + i}`,
    tensors: calibrationInputs(
      { ...model, calibration: { dims: { x: [1 + (i % 4), 64] }, seed: 1 } },
      seed + i,
    ),
  }));
}

const noCuda = async (): Promise<CudaCheck> => ({ ok: false, reason: 'CUDA provider not installed' });

describe('WebGPU probe and backend choice', { skip }, () => {
  test('SwiftShader alone: a software adapter, which auto leaves for cpu and --backend webgpu takes', async () => {
    const probe = await probeWebGpu({ env: swiftEnv, nvidia: null });
    assert.equal(probe.loader.found, true);
    assert.deepEqual(probe.adapter, { ok: true });
    assert.equal(probe.info?.software, true);
    assert.equal(probe.info?.architecture, 'swiftshader');
    assert.match(probe.info?.name ?? '', /SwiftShader/);
    const check = webGpuCheck(probe);
    const auto = await decideBackend('auto', noCuda, async () => check);
    assert.equal(auto.name, 'cpu');
    assert.match(auto.reason, /SwiftShader.*software.*slower than cpu.*--backend webgpu forces it/);
    const forced = await decideBackend('webgpu', noCuda, async () => check);
    assert.equal(forced.name, 'webgpu');
    assert.equal(forced.adapter?.software, true);
    assert.match(forced.reason, /webgpu requested.*SwiftShader.*software adapter/);
  });

  test('no Vulkan driver: no adapter, and the reason says to install the vendor driver', async () => {
    const probe = await probeWebGpu({ env: { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json' } });
    assert.equal(probe.loader.found, true);
    assert.equal(probe.adapter.ok, false);
    assert.deepEqual(probe.drivers, []);
    const check = webGpuCheck(probe);
    assert.equal(check.ok, false);
    assert.match(check.reason, /no WebGPU adapter: no Vulkan driver installed/);
    const forced = await decideBackend('webgpu', noCuda, async () => check);
    assert.equal(forced.name, 'cpu');
    assert.match(
      forced.reason,
      /^webgpu requested \(--backend webgpu\), but no WebGPU adapter.*; using cpu$/,
    );
  });

  test('no Vulkan loader: "No Vulkan loader (install libvulkan1)"', async (t) => {
    // The loader is hidden from one process tree in a mount namespace of its own (root only).
    const loader = vulkanLoaderName();
    const path = spawnSync('sh', ['-c', `ldconfig -p | grep -m1 '${loader} ' | sed 's/.*=> //'`], {
      encoding: 'utf8',
    }).stdout.trim();
    const script =
      "import { probeWebGpu } from './native/gpu-probe.ts'; import { webGpuCheck, decideBackend } from './native/backend-select.ts';" +
      'const check = webGpuCheck(await probeWebGpu({ nvidia: null }));' +
      "const choice = await decideBackend('auto', async () => ({ ok: false, reason: 'no cuda' }), async () => check);" +
      'process.stdout.write(JSON.stringify({ check, choice }));';
    const r = spawnSync(
      'unshare',
      [
        '-m',
        'sh',
        '-c',
        `mount --bind /dev/null "$1" && exec "$2" --import tsx --input-type=module -e "$3"`,
        'sh',
        path,
        process.execPath,
        script,
      ],
      { encoding: 'utf8', env: swiftEnv, timeout: 120_000 },
    );
    if (!path || r.status !== 0 || !r.stdout.startsWith('{')) {
      t.skip(
        `cannot hide the Vulkan loader here (needs root and unshare): ${(r.stderr || path).slice(0, 200)}`,
      );
      return;
    }
    const { check, choice } = JSON.parse(r.stdout) as {
      check: { ok: boolean; reason: string };
      choice: { name: string; reason: string };
    };
    assert.equal(check.ok, false);
    assert.equal(check.reason, 'No Vulkan loader (install libvulkan1)');
    assert.equal(choice.name, 'cpu');
    assert.equal(choice.reason, 'cuda: no cuda; webgpu: No Vulkan loader (install libvulkan1); using cpu');
  });

  test('a real GPU adapter is taken by auto; cuda, when it works, before it; cpu when asked', async () => {
    const gpu = {
      ok: true as const,
      reason: 'WebGPU adapter NVIDIA GeForce RTX 3090',
      adapter: {
        name: 'NVIDIA GeForce RTX 3090',
        vendor: 'NVIDIA',
        architecture: '',
        device: '0x2204',
        driver: 'NVIDIA 535.104.05',
        memoryBytes: 24 * 2 ** 30,
        software: false,
        source: 'vulkaninfo' as const,
      },
    };
    const auto = await decideBackend('auto', noCuda, async () => gpu);
    assert.equal(auto.name, 'webgpu');
    assert.match(auto.reason, /WebGPU adapter NVIDIA GeForce RTX 3090 \(cuda: CUDA provider not installed\)/);
    let probed = false;
    const cuda = await decideBackend(
      'auto',
      async () => ({ ok: true, reason: 'CUDA provider on RTX 3090' }),
      async () => {
        probed = true;
        return gpu;
      },
    );
    assert.equal(cuda.name, 'cuda');
    assert.equal(probed, false, 'a working CUDA node never starts Dawn');
    const cpu = await decideBackend('cpu', noCuda, async () => gpu);
    assert.deepEqual(cpu, { name: 'cpu', reason: 'cpu requested (--backend cpu)' });
    const cudaForced = await decideBackend('cuda', noCuda, async () => gpu);
    assert.equal(cudaForced.name, 'cpu');
    assert.match(cudaForced.reason, /cuda requested.*but CUDA provider not installed; using cpu/);
  });
});

describe('a native node on webgpu over SwiftShader', { skip }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  let node: Proc;

  before(async () => {
    // One worker: no canaries or cross-checks to wait for; results are compared with cpu below.
    hub = await startHub(join(tmp.dir, 'hub'), {
      hub: { preflight: false, trust: { ...DEFAULT_TRUST_OPTIONS, trustAfter: 0, spotCheck: 0 } },
    });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    const state = join(tmp.dir, 'node');
    node = startNode(hub.url, hub.tokens.joinToken, state, ['--backend', 'webgpu', '--name', 'gpu-node'], {
      VK_ICD_FILENAMES: SWIFTSHADER,
    });
    await waitFor(
      'the webgpu node online',
      () => [...hub.hub.workers.values()].find((w) => w.state === 'online'),
      120_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${node.output()}`);
    });
  });

  after(async () => {
    node?.child.kill('SIGKILL');
    await hub?.close();
    tmp.cleanup();
  });

  test('registers as webgpu with its adapter and the reason', () => {
    const w = [...hub.hub.workers.values()][0];
    assert.ok(w);
    assert.equal(w.backend, 'webgpu');
    assert.match(w.capabilities.gpu?.name ?? '', /SwiftShader/);
    assert.equal(w.capabilities.gpu?.architecture, 'swiftshader');
    assert.equal(w.capabilities.gpu?.vendor, 'google');
    assert.equal(w.capabilities.gpu?.software, true);
    assert.match(w.capabilities.backendReason ?? '', /webgpu requested \(--backend webgpu\) on SwiftShader/);
    // No memory figure for a software adapter: a job asking for GPU memory does not go to it.
    assert.equal(w.gpuMemoryBytes, null);
  });

  test('mlp-small through the grid: every result within the manifest tolerance of cpu', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is built (npm run models)');
    const sent = mlpItems(model, 40, 100);
    const jobId = await rest.submit('mlp-small', sent);
    const status = await jobDone(rest, jobId);
    assert.equal(status.done, 40);
    assert.equal(status.failed, 0);
    await checkResults(hub, jobId, sent); // against a standalone cpu session, within the tolerance
  });

  test("ppocr-det on the node's webgpu backend matches cpu within the manifest tolerance; a lost session comes back", async () => {
    // Through the grid, the hub would first benchmark the model at its calibration size (4 images of
    // 320x320), minutes on SwiftShader; the node's backend runs the same sessions without it.
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model, 'ppocr-det is in the registry');
    const bytes = new Uint8Array(readFileSync(modelPath(hub, model)));
    const webgpu = await OrtBackend.create({
      prefer: 'webgpu',
      gpu: null,
      webgpu: async () => webGpuCheck(await probeWebGpu({ env: swiftEnv, nvidia: null })),
    });
    assert.equal(webgpu.name, 'webgpu');
    const cpu = await OrtBackend.create({ prefer: 'cpu' });
    const items = [0, 1].map((i) =>
      calibrationInputs({ ...model, calibration: { dims: { x: [1, 3, 64, 96] }, seed: 1 } }, 7 + i),
    );
    const g = await webgpu.load(model, bytes);
    const c = await cpu.load(model, bytes);
    try {
      const [got, want] = await Promise.all([g.run(items), c.run(items)]);
      assert.equal(got.length, 2);
      for (let i = 0; i < 2; i++) {
        const out = (got[i] as WireTensor[])[0] as WireTensor;
        assert.deepEqual(out.dims, [1, 1, 64, 96]);
        assert.equal(
          compareTensors(out, (want[i] as WireTensor[])[0] as WireTensor, model.tolerance),
          undefined,
        );
      }

      // A lost device: the run fails as device_lost, so its items go back to the hub; the session
      // thread is ended and the next run starts a new one, with a new session and device.
      const session = g as ThreadedSession;
      session.loseDeviceForTest();
      await assert.rejects(
        session.run(items.slice(0, 1)),
        (err: unknown) => err instanceof BackendError && err.category === 'device_lost',
      );
      const again = await session.run(items.slice(0, 1));
      assert.equal(session.restarts, 1);
      const first = (got[0] as WireTensor[])[0] as WireTensor;
      assert.equal(
        compareTensors((again[0] as WireTensor[])[0] as WireTensor, first, model.tolerance),
        undefined,
      );
    } finally {
      await g.dispose();
      await c.dispose();
    }
  });

  test('a GPU lost again and again is given up for the CPU when chosen automatically, kept when forced', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is in the registry');
    const bytes = new Uint8Array(readFileSync(modelPath(hub, model)));
    const probed = webGpuCheck(await probeWebGpu({ env: swiftEnv, nvidia: null }));
    assert.ok(probed.ok, probed.reason);
    // The boundary this machine lacks: SwiftShader is a software adapter, which `auto` never takes.
    // Presented as a real GPU, so that `auto` chooses it; the sessions themselves run on SwiftShader.
    const asReal = async () => asRealGpu(probed);
    const changes: string[] = [];
    const auto = await OrtBackend.create({
      prefer: 'auto',
      gpu: null,
      webgpu: asReal,
      onChange: (b) => changes.push(b.name),
    });
    assert.equal(auto.name, 'webgpu', auto.reason);
    const forced = await OrtBackend.create({ prefer: 'webgpu', gpu: null, webgpu: asReal });
    const cpu = await OrtBackend.create({ prefer: 'cpu' });
    const items = [0, 1, 2].map((i) => calibrationInputs(model, 30 + i));
    const a = (await auto.load(model, bytes)) as ThreadedSession;
    const b = (await auto.load(model, bytes)) as ThreadedSession;
    const f = (await forced.load(model, bytes)) as ThreadedSession;
    const c = await cpu.load(model, bytes);
    const lostRun = (s: ThreadedSession) => {
      s.loseDeviceForTest();
      return assert.rejects(
        s.run(items),
        (err: unknown) => err instanceof BackendError && err.category === 'device_lost',
      );
    };
    try {
      const want = await c.run(items);
      const same = (got: WireTensor[][]) => {
        for (let i = 0; i < items.length; i++)
          assert.equal(
            compareTensors(
              (got[i] as WireTensor[])[0] as WireTensor,
              (want[i] as WireTensor[])[0] as WireTensor,
              model.tolerance,
            ),
            undefined,
          );
      };
      // Three losses are recovered on the GPU; the fourth within the window gives the GPU up.
      for (let i = 0; i < MAX_LOSSES; i++) {
        await lostRun(a);
        same(await a.run(items));
      }
      assert.equal(auto.name, 'webgpu');
      await lostRun(a);
      same(await a.run(items));
      assert.equal(auto.name, 'cpu');
      assert.match(auto.reason, /webgpu given up: mlp-small: lost 4 times/);
      assert.equal(auto.adapter, undefined);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(changes, ['cpu'], 'the node is told once, to register again');
      // The other session of the backend follows on its next run, without a loss of its own.
      same(await b.run(items));
      assert.equal(b.restarts, 0);
      assert.deepEqual(auto.sessionOptions.executionProviders, ['cpu']);

      // Forced with --backend webgpu: the owner's choice is kept; the session gives up instead.
      for (let i = 0; i <= MAX_LOSSES; i++) {
        await lostRun(f);
        if (i < MAX_LOSSES) same(await f.run(items));
      }
      await assert.rejects(f.run(items), /lost 4 times in 10 min.*giving up/);
      assert.equal(forced.name, 'webgpu');
    } finally {
      await Promise.all([a.dispose(), b.dispose(), f.dispose(), c.dispose()]);
    }
  });
});

describe('a native node whose GPU keeps losing its device', { skip }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  let node: Proc;
  let workerId: string;

  /** The node as the hub's worker list shows it. */
  const listed = async (): Promise<WorkerView | undefined> =>
    ((await rest.data('GET', '/api/workers')).workers as WorkerView[]).find((w) => w.id === workerId);
  /** The node's own log lines (JSON), in order. */
  const nodeLog = () =>
    node
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; backend?: string; model?: string; itemsPerSec?: number });
  const items = (n: number, seed: number): NamedItem[] => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is built (npm run models)');
    return mlpItems(model, n, seed);
  };

  before(async () => {
    // One worker, trusted at once (no canaries or replicas to wait for), and attempts enough for an
    // item to fail on each of the GPU's losses: every item must end done, none failed.
    hub = await startHub(join(tmp.dir, 'hub'), {
      hub: {
        preflight: false,
        maxAttempts: MAX_LOSSES + 4,
        trust: { ...DEFAULT_TRUST_OPTIONS, trustAfter: 0, spotCheck: 0 },
      },
    });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    const state = join(tmp.dir, 'node');
    // `--backend auto`, as a GPU server runs; the GPU fault rig (native/gpu-fault.ts) presents
    // SwiftShader as a real GPU, so that auto takes it and may give it up.
    node = startNode(hub.url, hub.tokens.joinToken, state, ['--name', 'flaky-gpu'], {
      VK_ICD_FILENAMES: SWIFTSHADER,
      [GPU_FAULT_ENV]: '1',
      SHARDHUB_LOG_LEVEL: 'info',
      SHARDHUB_LOG_FORMAT: 'json',
    });
    const online = await waitFor(
      'the node online on the hub',
      async () =>
        ((await rest.data('GET', '/api/workers')).workers as WorkerView[]).find(
          (w) => w.name === 'flaky-gpu' && w.state === 'online',
        ),
      120_000,
      200,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${node.output()}`);
    });
    workerId = online.id;
  });

  after(async () => {
    node?.child.kill('SIGKILL');
    await hub?.close();
    tmp.cleanup();
  });

  test('gives the GPU up for cpu, registers again as a cpu worker, is benchmarked anew and keeps completing items', async () => {
    const gpuView = await listed();
    assert.equal(gpuView?.backend, 'webgpu', gpuView?.capabilities.backendReason);
    assert.match(gpuView?.capabilities.gpu?.name ?? '', /SwiftShader/);
    assert.match(gpuView?.capabilities.backendReason ?? '', /taken as a real GPU/);

    // On the GPU: benchmarked there, and a job done.
    const first = items(40, 100);
    const jobA = await rest.submit('mlp-small', first);
    assert.equal((await jobDone(rest, jobA)).done, first.length);
    const onGpu = (await rest.data('GET', `/api/jobs/${jobA}/fairness`)) as FairnessReport;
    const gpuFigures = onGpu.workers.find((w) => w.workerId === workerId);
    assert.equal(gpuFigures?.backend, 'webgpu');
    assert.ok((gpuFigures?.benchmark ?? 0) > 0, 'benchmarked on the GPU');
    const reconnects = (await listed())?.reconnects ?? 0;

    // From now on every run on the GPU loses its device. The fourth loss within 10 minutes gives
    // the GPU up: the node goes on on its CPU and registers again.
    node.child.kill('SIGUSR2');
    const second = items(200, 1000);
    const jobB = await rest.submit('mlp-small', second);
    const cpuView = await waitFor(
      'the node registered again as cpu',
      async () => {
        const w = await listed();
        return w?.backend === 'cpu' && w.state === 'online' ? w : undefined;
      },
      120_000,
      200,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${node.output()}`);
    });
    assert.equal(cpuView.capabilities.gpu, undefined, 'no GPU in its capabilities');
    assert.equal(cpuView.gpuMemoryBytes, null);
    assert.match(
      cpuView.capabilities.backendReason ?? '',
      /^webgpu given up: mlp-small: lost 4 times in 10 min/,
    );
    assert.ok(cpuView.reconnects > reconnects, 'it registered again');

    // Items keep completing, on the CPU, each result the standalone reference's within the tolerance.
    const status = await jobDone(rest, jobB);
    assert.equal(status.done, second.length);
    assert.equal(status.failed, 0);
    await checkResults(hub, jobB, second);
    const onCpu = (await rest.data('GET', `/api/jobs/${jobB}/fairness`)) as FairnessReport;
    const cpuFigures = onCpu.workers.find((w) => w.workerId === workerId);
    assert.equal(cpuFigures?.backend, 'cpu');
    assert.ok((cpuFigures?.benchmark ?? 0) > 0, 'benchmarked on the CPU');
    assert.notEqual(cpuFigures?.benchmark, gpuFigures?.benchmark);
    assert.ok((cpuFigures?.items ?? 0) > 0, 'the node did items of the job on the CPU');

    // The node's own account: GPU runs failed as lost devices, the GPU was given up, and the model
    // was benchmarked again after the new registration.
    const log = nodeLog();
    const changed = log.findIndex((l) => l.msg === 'backend changed; registering again');
    assert.ok(changed > 0, `the node says it changed backend\n${node.output()}`);
    assert.equal(log[changed]?.backend, 'cpu');
    const benchmarks = log.map((l, i) => ({ ...l, i })).filter((l) => l.msg === 'benchmark done');
    assert.ok(
      benchmarks.some((b) => b.i < changed && b.model === 'mlp-small'),
      'benchmarked on the GPU',
    );
    assert.ok(
      benchmarks.some((b) => b.i > changed && b.model === 'mlp-small'),
      'benchmarked again on the CPU',
    );
  });
});

describe('the gpu bench, reduced (mlp-small, cpu and webgpu, half-second slices)', { skip }, () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  test('measures both backends standalone and through the grid, matches cpu, says what it skipped, writes its JSON', () => {
    const out = join(tmp.dir, 'gpu-bench.json');
    // mlp-small: PaddleOCR's first run on SwiftShader compiles for half a minute or more (the bench
    // runs it; `ppocr-det` on a webgpu node is tested above).
    const args = ['--models', 'mlp-small', '--backends', 'cpu,cuda,webgpu', '--seconds', '0.5'];
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'bench/run.ts', 'gpu', '--json', '--out', out, ...args],
      { encoding: 'utf8', timeout: 290_000, env: { ...process.env, SHARDHUB_LOG_LEVEL: 'error' } },
    );
    assert.equal(r.status, 0, `exit ${r.status}\n${r.stderr}`);
    const report = JSON.parse(r.stdout) as GpuBenchReport;
    assert.deepEqual(JSON.parse(readFileSync(out, 'utf8')), report, 'the same JSON in the file');

    // No GPU here: the webgpu rows run on SwiftShader; cuda is skipped with its reason.
    assert.equal(report.small, true);
    assert.match(report.gpu.vulkanSoftwareFallback ?? '', /SwiftShader/);
    const cuda = report.skipped.find((s) => s.what === 'cuda');
    assert.match(cuda?.why ?? '', /CUDA provider/);
    assert.match(r.stderr, /skipped cuda: /);

    for (const backend of ['cpu', 'webgpu'] as const) {
      const row = report.rows.find((x) => x.backend === backend && x.model === 'mlp-small');
      assert.ok(row, `a ${backend} row\n${r.stderr}`);
      assert.ok(
        (row.standalone_items ?? 0) >= 1 && (row.standalone_items_per_s ?? 0) > 0,
        `${backend} standalone`,
      );
      assert.ok(
        (row.grid_items ?? 0) >= 2 && (row.grid_items_per_s ?? 0) > 0,
        `${backend} grid\n${r.stderr}`,
      );
      assert.ok((row.ratio ?? 0) > 0);
      assert.equal(row.within_tolerance, true, `${backend} outputs within mlp-small's tolerance of cpu`);
      assert.ok(row.max_abs_diff !== null && Number.isFinite(row.max_abs_diff));
    }
  });
});
