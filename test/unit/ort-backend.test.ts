/**
 * The onnxruntime-node backend with real sessions: `models/generated/mlp-small.onnx` when it has
 * been built (`npm run models`), else an equivalent small MLP built here with onnx-proto.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import onnxProto from 'onnx-proto';
import type { ModelInfo } from '../../protocol/model.ts';
import { bytesOf, compareTensors, type WireTensor } from '../../protocol/tensor.ts';
import { detectNvidiaGpu, OrtBackend, parseNvidiaSmi } from '../../native/ort-backend.ts';
import {
  adapterCapabilities,
  adapterFromDrivers,
  adapterFromVulkaninfo,
  parseVulkaninfoSummary,
  pciGpus,
  PROBE_MODEL_BASE64,
  vulkanDrivers,
} from '../../native/gpu-probe.ts';
import { webGpuCheck } from '../../native/backend-select.ts';
import { CapabilitiesSchema } from '../../protocol/schemas.ts';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackendError, classifyError } from '../../worker/backend.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { checkOutputs } from '../../worker/wire.ts';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;

function valueInfo(name: string, elemType: number, dim: number) {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: [{ dimParam: 'N' }, { dimValue: dim }] } } },
  };
}

function encode(graph: object): Uint8Array {
  return onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 13 }],
    producerName: 'ort-backend.test',
    graph,
  }).finish();
}

/** x[N,8] → MatMul+Add+Relu → y[N,4], fixed weights. */
function tinyMlp(): Uint8Array {
  const w = new Float32Array(32).map((_, i) => ((i * 7) % 11) / 11 - 0.4);
  const b = new Float32Array(4).map((_, i) => i / 10);
  return encode({
    name: 'tiny',
    initializer: [
      { name: 'W', dims: [8, 4], dataType: FLOAT, rawData: bytesOf(w) },
      { name: 'B', dims: [4], dataType: FLOAT, rawData: bytesOf(b) },
    ],
    node: [
      { opType: 'MatMul', input: ['x', 'W'], output: ['h'] },
      { opType: 'Add', input: ['h', 'B'], output: ['a'] },
      { opType: 'Relu', input: ['a'], output: ['y'] },
    ],
    input: [valueInfo('x', FLOAT, 8)],
    output: [valueInfo('y', FLOAT, 4)],
  });
}

function info(bytes: Uint8Array, over: Partial<ModelInfo>): ModelInfo {
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  return {
    name: 'm',
    description: '',
    inputs: [],
    outputs: [],
    batchable: true,
    batchSize: 8,
    tolerance: { atol: 1e-5, rtol: 1e-5 },
    calibration: { dims: {}, seed: 7 },
    sha256,
    bytes: bytes.byteLength,
    url: `/api/models/${sha256}`,
    ...over,
  };
}

/** mlp-small from `npm run models` when present, else the tiny MLP. */
function mlpUnderTest(): { model: ModelInfo; bytes: Uint8Array; source: string } {
  const file = new URL('../../models/generated/mlp-small.onnx', import.meta.url);
  const manifest = new URL('../../models/mlp-small.json', import.meta.url);
  if (existsSync(file) && existsSync(manifest)) {
    const bytes = new Uint8Array(readFileSync(file));
    const m = JSON.parse(readFileSync(manifest, 'utf8')) as ModelInfo & { file?: string };
    delete m.file;
    return { model: info(bytes, { ...m, batchSize: 8 }), bytes, source: 'mlp-small.onnx' };
  }
  const bytes = tinyMlp();
  return {
    model: info(bytes, {
      name: 'tiny-mlp',
      inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 8] }],
      outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 4] }],
      calibration: { dims: { x: [1, 8] }, seed: 7 },
    }),
    bytes,
    source: 'built in test',
  };
}

describe('OrtBackend', () => {
  it('runs on cpu here and says why not cuda', async () => {
    const auto = await OrtBackend.create({ prefer: 'auto', concurrency: 1 });
    assert.equal(auto.name, 'cpu');
    assert.match(auto.reason, /CUDA/);
    assert.match(auto.reason, /; webgpu: .*; using cpu$/);
    const asked = await OrtBackend.create({ prefer: 'cuda', concurrency: 1, gpu: null });
    assert.equal(asked.name, 'cpu', 'an unusable CUDA falls back to cpu');
    const cpu = await OrtBackend.create({ prefer: 'cpu' });
    assert.equal(cpu.name, 'cpu');
    assert.equal(cpu.reason, 'cpu requested (--backend cpu)');
  });

  it('divides cores between sessions', async () => {
    const threads = async (cores: number, concurrency: number) =>
      (await OrtBackend.create({ prefer: 'cpu', cores, concurrency })).intraOpNumThreads;
    assert.equal(await threads(2, 1), 2);
    assert.equal(await threads(2, 2), 1);
    assert.equal(await threads(8, 3), 2);
    assert.equal(await threads(1, 4), 1);
    await assert.rejects(OrtBackend.create({ concurrency: 0 }), /concurrency must be an integer >= 1/);
  });

  for (const threads of [true, false]) {
    it(`gives the same outputs batched and one by one (${threads ? 'session threads' : 'main thread'})`, async (t) => {
      const { model, bytes, source } = mlpUnderTest();
      t.diagnostic(`model: ${source}`);
      const backend = await OrtBackend.create({ prefer: 'cpu', concurrency: 1, threads });
      const batched = await backend.load(model, bytes);
      const single = await backend.load({ ...model, batchable: false, batchSize: 1 }, bytes);
      const items = Array.from({ length: 11 }, (_, i) => calibrationInputs(model, 100 + i));
      const [a, b] = await Promise.all([batched.run(items), single.run(items)]);
      assert.equal(a.length, 11);
      const outName = model.outputs[0]?.name as string;
      for (let i = 0; i < items.length; i++) {
        const x = a[i]?.[0] as WireTensor;
        const y = b[i]?.[0] as WireTensor;
        assert.equal(x.name, outName);
        assert.equal(x.dims[0], 1);
        assert.equal(compareTensors(x, y, { atol: 1e-5, rtol: 1e-5 }), undefined, `item ${i}`);
      }
      // Different items give different outputs: the split did not hand one item's output to all.
      assert.notEqual(
        compareTensors(a[0]?.[0] as WireTensor, a[1]?.[0] as WireTensor, { atol: 0, rtol: 0 }),
        undefined,
      );
      // Outputs are not copied out of onnxruntime-node a second time: they must own their bytes, so
      // that a later run leaves them alone.
      const before = a.map((out) => out.map((t) => ({ ...t, data: t.data.slice() })));
      await batched.run(items.map((_, i) => calibrationInputs(model, 900 + i)));
      a.forEach((out, i) =>
        assert.equal(
          compareTensors(out[0] as WireTensor, before[i]?.[0] as WireTensor, { atol: 0, rtol: 0 }),
          undefined,
        ),
      );
      // A session thread checks float outputs for NaN itself, and vouches for them: spoiled after
      // the run, they still pass checkOutputs (the main thread does not read them again). Outputs
      // of a session on the main thread are not vouched for.
      const spoiled = a[0]?.[0] as WireTensor;
      new Float32Array(spoiled.data.buffer, spoiled.data.byteOffset, 1)[0] = Number.NaN;
      assert.equal(checkOutputs({}, [spoiled]) === undefined, threads, 'vouched by the thread');
      // The caller's inputs are left intact (threads get copies).
      assert.equal(
        items[0]?.[0]?.data.byteLength,
        4 * (model.calibration.dims.x ?? []).reduce((p, d) => p * d, 1),
      );
      await batched.dispose();
      await batched.dispose(); // idempotent
      await single.dispose();
      await assert.rejects(batched.run(items), /disposed/);
    });

    it(`reports bytes that are not a model as model_load (${threads ? 'session threads' : 'main thread'})`, async () => {
      const backend = await OrtBackend.create({ prefer: 'cpu', threads });
      const garbage = new Uint8Array([1, 2, 3, 4, 5]);
      await assert.rejects(
        backend.load(info(garbage, {}), garbage),
        (err: unknown) => err instanceof BackendError && err.category === 'model_load',
      );
    });
  }

  it('keeps runs in flight at once on a session thread apart (each in an input buffer of its own)', async () => {
    const { model, bytes } = mlpUnderTest();
    const threaded = await (await OrtBackend.create({ prefer: 'cpu', threads: true })).load(model, bytes);
    const inline = await (await OrtBackend.create({ prefer: 'cpu', threads: false })).load(model, bytes);
    try {
      const runs = [3, 5, 1, 4].map((n, r) =>
        Array.from({ length: n }, (_, i) => calibrationInputs(model, 1000 + 10 * r + i)),
      );
      const together = await Promise.all(runs.map((items) => threaded.run(items)));
      for (const [r, items] of runs.entries()) {
        const alone = await inline.run(items);
        for (let i = 0; i < items.length; i++) {
          const diff = compareTensors(together[r]?.[i]?.[0] as WireTensor, alone[i]?.[0] as WireTensor, {
            atol: 1e-5,
            rtol: 1e-5,
          });
          assert.equal(diff, undefined, `run ${r}, item ${i}`);
        }
      }
    } finally {
      await threaded.dispose();
      await inline.dispose();
    }
  });

  it('runs a staged batch from its staging buffer, other batches by copy, with the same outputs', async () => {
    const { model, bytes } = mlpUnderTest();
    const backend = await OrtBackend.create({ prefer: 'cpu', threads: true });
    const threaded = await backend.load(model, bytes);
    const inline = await (await OrtBackend.create({ prefer: 'cpu', threads: false })).load(model, bytes);
    try {
      const n = model.batchSize;
      const originals = Array.from({ length: 3 * n }, (_, i) => calibrationInputs(model, 2000 + i));
      const staged = originals.map((inputs) => backend.stage(model, inputs));
      const expected = await inline.run(originals);
      const check = (outputs: WireTensor[][], indices: number[]) =>
        indices.forEach((k, i) =>
          assert.equal(
            compareTensors(outputs[i]?.[0] as WireTensor, expected[k]?.[0] as WireTensor, {
              atol: 1e-5,
              rtol: 1e-5,
            }),
            undefined,
            `item ${k}`,
          ),
        );
      const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

      // The first buffer's items, in order: the staging buffer itself goes to the thread (its views
      // here are emptied by the transfer).
      check(await threaded.run(range(0, n).map((k) => staged[k] as WireTensor[])), range(0, n));
      assert.equal(staged[0]?.[0]?.data.byteLength, 0, 'the staging buffer was transferred');

      // The second buffer's items, one revoked out of the middle: copied as before, views intact.
      const some = [...range(n, n + 2), ...range(n + 3, 2 * n)];
      check(await threaded.run(some.map((k) => staged[k] as WireTensor[])), some);
      assert.equal(
        staged[n]?.[0]?.data.byteLength,
        originals[n]?.[0]?.data.byteLength,
        'copied, not transferred',
      );

      // The third buffer, staged before the first came back, runs from its own buffer too.
      check(
        await threaded.run(range(2 * n, 3 * n).map((k) => staged[k] as WireTensor[])),
        range(2 * n, 3 * n),
      );
      assert.equal(staged[2 * n]?.[0]?.data.byteLength, 0);

      // The first buffer is back and is reused for the next items staged.
      const again = Array.from({ length: n }, (_, i) => calibrationInputs(model, 3000 + i));
      const restaged = again.map((inputs) => backend.stage(model, inputs));
      const reference = await inline.run(again);
      const outputs = await threaded.run(restaged);
      outputs.forEach((out, i) =>
        assert.equal(
          compareTensors(out[0] as WireTensor, reference[i]?.[0] as WireTensor, { atol: 1e-5, rtol: 1e-5 }),
          undefined,
          `restaged item ${i}`,
        ),
      );
    } finally {
      await threaded.dispose();
      await inline.dispose();
    }
  });

  it('carries int64 tensors as BigInt64Array both ways', async () => {
    const bytes = encode({
      name: 'int64',
      node: [{ opType: 'Add', input: ['x', 'x'], output: ['y'] }],
      input: [valueInfo('x', INT64, 2)],
      output: [valueInfo('y', INT64, 2)],
    });
    const model = info(bytes, {
      inputs: [{ name: 'x', dtype: 'int64', shape: ['N', 2] }],
      outputs: [{ name: 'y', dtype: 'int64', shape: ['N', 2] }],
    });
    const session = await (await OrtBackend.create({ prefer: 'cpu' })).load(model, bytes);
    const big = 2n ** 40n + 3n;
    const x = (a: bigint, b: bigint): WireTensor[] => [
      { name: 'x', dtype: 'int64', dims: [1, 2], data: bytesOf(new BigInt64Array([a, b])) },
    ];
    const out = await session.run([x(big, -5n), x(1n, 2n)]);
    const values = out.map((o) => [...new BigInt64Array((o[0] as WireTensor).data.slice().buffer)]);
    assert.deepEqual(values, [
      [2n * big, -10n],
      [2n, 4n],
    ]);
    assert.equal(out[0]?.[0]?.dtype, 'int64');
    await session.dispose();
  });

  it('classifies runtime errors', () => {
    assert.equal(classifyError(new Error('std::bad_alloc'), 'run'), 'out_of_memory');
    assert.equal(classifyError(new Error('CUDA failure 2: out of memory'), 'load'), 'out_of_memory');
    assert.equal(classifyError(new Error('GPU device lost'), 'run'), 'device_lost');
    assert.equal(classifyError(new Error('run timed out'), 'run'), 'timeout');
    assert.equal(classifyError(new Error('protobuf parsing failed'), 'load'), 'model_load');
    assert.equal(classifyError(new Error('shape mismatch'), 'run'), 'other');
  });

  it('reads nvidia-smi output, and finds no GPU here without complaint', async () => {
    assert.deepEqual(parseNvidiaSmi('NVIDIA A100-SXM4-40GB, 40960, 1024\nTesla T4, 15360, 0\n'), [
      { name: 'NVIDIA A100-SXM4-40GB', memoryTotalBytes: 40960 * 2 ** 20, memoryUsedBytes: 1024 * 2 ** 20 },
      { name: 'Tesla T4', memoryTotalBytes: 15360 * 2 ** 20, memoryUsedBytes: 0 },
    ]);
    assert.deepEqual(parseNvidiaSmi('garbage\n'), []);
    const gpu = await detectNvidiaGpu();
    if (gpu === undefined) return; // no nvidia-smi: silently nothing
    assert.equal(typeof gpu.name, 'string');
  });
});

/** `vulkaninfo --summary` (1.3) on a machine with an NVIDIA GPU and lavapipe. */
const VULKANINFO = `==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.239

Devices:
========
GPU0:
	apiVersion         = 1.3.242
	driverVersion      = 535.104.5.0
	vendorID           = 0x10de
	deviceID           = 0x2204
	deviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName         = NVIDIA GeForce RTX 3090
	driverID           = DRIVER_ID_NVIDIA_PROPRIETARY
	driverName         = NVIDIA
	driverInfo         = 535.104.05
	conformanceVersion = 1.3.5.0
GPU1:
	apiVersion         = 1.3.230
	driverVersion      = 0.0.1
	vendorID           = 0x10005
	deviceID           = 0x0000
	deviceType         = PHYSICAL_DEVICE_TYPE_CPU
	deviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
	driverID           = DRIVER_ID_MESA_LLVMPIPE
	driverName         = llvmpipe
	driverInfo         = Mesa 22.3.6 (LLVM 15.0.6)
`;

describe('GPU probe: reading what the machine says', () => {
  it('names the adapter from vulkaninfo, discrete before CPU, memory from nvidia-smi', () => {
    const devices = parseVulkaninfoSummary(VULKANINFO);
    assert.equal(devices.length, 2);
    assert.equal(devices[1]?.deviceType, 'PHYSICAL_DEVICE_TYPE_CPU');
    const nvidia = { name: 'NVIDIA GeForce RTX 3090', memoryTotalBytes: 24576 * 2 ** 20, memoryUsedBytes: 0 };
    const a = adapterFromVulkaninfo([...devices].reverse(), [], nvidia);
    assert.deepEqual(a, {
      name: 'NVIDIA GeForce RTX 3090',
      vendor: 'NVIDIA',
      architecture: '',
      device: '0x2204',
      driver: 'NVIDIA 535.104.05',
      memoryBytes: 24576 * 2 ** 20,
      software: false,
      source: 'vulkaninfo',
    });
    const soft = adapterFromVulkaninfo(devices.slice(1));
    assert.equal(soft?.software, true);
    assert.equal(soft?.architecture, 'llvmpipe');
  });

  it('reads Vulkan driver manifests and PCI display devices, and matches them', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gpu-probe-'));
    try {
      const icd = join(dir, 'icd.d');
      mkdirSync(icd);
      const manifest = (lib: string) =>
        JSON.stringify({ file_format_version: '1.0.0', ICD: { library_path: lib } });
      writeFileSync(join(icd, 'nvidia_icd.json'), manifest('libGLX_nvidia.so.0'));
      writeFileSync(join(icd, 'lvp_icd.x86_64.json'), manifest('/usr/lib/libvulkan_lvp.so'));
      writeFileSync(join(icd, 'broken.json'), '{');
      const drivers = vulkanDrivers({ VK_ICD_FILENAMES: icd });
      assert.deepEqual(
        drivers.map((d) => [d.library, d.software, d.vendorId]),
        [
          ['/usr/lib/libvulkan_lvp.so', true, undefined],
          ['libGLX_nvidia.so.0', false, '10de'],
        ],
      );
      // A PCI tree: a network card, and an AMD GPU with amdgpu's VRAM figure.
      const pci = join(dir, 'pci');
      const dev = (id: string, cls: string, vendor: string, device: string) => {
        mkdirSync(join(pci, id), { recursive: true });
        writeFileSync(join(pci, id, 'class'), `${cls}\n`);
        writeFileSync(join(pci, id, 'vendor'), `0x${vendor}\n`);
        writeFileSync(join(pci, id, 'device'), `0x${device}\n`);
        return join(pci, id);
      };
      dev('0000:00:03.0', '0x020000', '8086', '100e');
      const amd = dev('0000:01:00.0', '0x030000', '1002', '73bf');
      writeFileSync(join(amd, 'mem_info_vram_total'), '17163091968\n');
      mkdirSync(join(dir, 'drivers', 'amdgpu'), { recursive: true });
      symlinkSync(join(dir, 'drivers', 'amdgpu'), join(amd, 'driver'));
      const gpus = pciGpus(pci);
      assert.deepEqual(gpus, [
        { vendorId: '1002', deviceId: '73bf', kernelDriver: 'amdgpu', memoryBytes: 17163091968 },
      ]);

      // The NVIDIA driver with no NVIDIA GPU present does not count; lavapipe is what is left.
      const soft = adapterFromDrivers(drivers, gpus);
      assert.equal(soft?.software, true);
      assert.equal(soft?.vendor, 'mesa');
      // The AMD driver with the AMD GPU present: a real adapter with its memory.
      const radv = [
        ...drivers,
        { file: 'radeon_icd.json', library: 'libvulkan_radeon.so', software: false, vendorId: '1002' },
      ];
      const real = adapterFromDrivers(radv, gpus);
      assert.equal(real?.software, false);
      assert.equal(real?.vendor, 'AMD');
      assert.equal(real?.memoryBytes, 17163091968);
      assert.equal(real?.driver, 'amdgpu, libvulkan_radeon.so');
      assert.equal(adapterFromDrivers([], gpus), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("registers an adapter in the hub's schema, and the probe model is onnx-proto's encoding", () => {
    const caps = {
      cores: 2,
      memoryBytes: 1,
      gpu: adapterCapabilities({
        name: 'SwiftShader Device (Subzero)',
        vendor: 'google',
        architecture: 'swiftshader',
        device: '',
        driver: 'libvk_swiftshader.so',
        software: true,
        source: 'drivers',
      }),
    };
    assert.deepEqual(CapabilitiesSchema.parse(caps).gpu, {
      name: 'SwiftShader Device (Subzero)',
      vendor: 'google',
      architecture: 'swiftshader',
      driver: 'libvk_swiftshader.so',
      software: true,
    });
    const vi = (name: string) => ({
      name,
      type: { tensorType: { elemType: FLOAT, shape: { dim: [{ dimValue: 1 }, { dimValue: 4 }] } } },
    });
    const fresh = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      producerName: 'shardhub-gpu-probe',
      graph: {
        name: 'gpu-probe',
        node: [{ opType: 'Relu', input: ['x'], output: ['y'] }],
        input: [vi('x')],
        output: [vi('y')],
      },
    }).finish();
    assert.equal(Buffer.from(fresh).toString('base64'), PROBE_MODEL_BASE64);
  });

  it('says what is missing: no provider, no loader, no driver, an unnamed adapter', () => {
    const base = { provider: true, loader: { found: true }, drivers: [], ms: 1 };
    assert.equal(
      webGpuCheck({ ...base, provider: false, adapter: { ok: false, error: 'x' } }).reason,
      'this onnxruntime-node build has no WebGPU provider',
    );
    assert.equal(
      webGpuCheck({
        ...base,
        loader: { found: false, error: 'libvulkan.so.1: cannot open' },
        adapter: { ok: false, error: 'not tried' },
      }).reason,
      'No Vulkan loader (install libvulkan1)',
    );
    const noAdapter = webGpuCheck({
      ...base,
      drivers: [{ file: 'f', library: 'libvulkan_lvp.so', software: true }],
      adapter: {
        ok: false,
        error: '/src/webgpu_context.cc:136 ... Failed to get a WebGPU adapter: No supported adapters\n',
      },
    });
    assert.equal(noAdapter.ok, false);
    assert.match(
      noAdapter.reason,
      /Dawn found no Vulkan device it supports \(No supported adapters; install/,
    );
    const unnamed = webGpuCheck({ ...base, adapter: { ok: true } });
    assert.equal(unnamed.ok && unnamed.adapter.software, false);
  });
});
