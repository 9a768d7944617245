/**
 * The standalone benchmark worker: onnxruntime-web configured exactly as the inference worker
 * (`ort-setup.ts`), running a model's batches in a tight loop. Inputs are turned into tensors and
 * outputs read back on every run, as the grid's worker does, so the two figures compare inference
 * with inference, and the difference is what the grid costs.
 */
import { toTypedArray } from '../../protocol/tensor.ts';
import { errorMessage } from '../../worker/backend.ts';
import { concatItems } from '../../worker/batching.ts';
import { benchmarkBatchSize } from '../../worker/benchmark.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { initOrt, ort, sessionOptions } from '../inference/ort-setup.ts';
import type { FromStandalone, StandaloneRequest, StandaloneResult, ToStandalone } from './messages.ts';

async function bench(req: StandaloneRequest, bytes: Uint8Array): Promise<StandaloneResult> {
  const { info } = await initOrt(req.backend, req.numThreads);
  const session = await ort.InferenceSession.create(bytes, sessionOptions(req.backend));
  const model = req.dims
    ? { ...req.model, calibration: { ...req.model.calibration, dims: req.dims } }
    : req.model;
  const batchSize = benchmarkBatchSize(model);
  const items = Array.from({ length: batchSize }, (_, i) =>
    calibrationInputs(model, model.calibration.seed + i),
  );
  const inputs = concatItems(items);
  const runOnce = async () => {
    const feeds: Record<string, ort.Tensor> = {};
    for (const t of inputs) feeds[t.name] = new ort.Tensor(t.dtype, toTypedArray(t), t.dims);
    const out = await session.run(feeds);
    for (const v of Object.values(out)) {
      if (v instanceof ort.Tensor) void v.data; // read back, as the grid does
      v.dispose();
    }
  };
  await runOnce();
  const minMs = req.minMs ?? 3000;
  const minRuns = req.minRuns ?? 5;
  const start = performance.now();
  let runs = 0;
  while (runs < minRuns || performance.now() - start < minMs) {
    await runOnce();
    runs++;
  }
  const ms = performance.now() - start;
  await session.release();
  return { info, batchSize, runs, ms, itemsPerSec: (runs * batchSize * 1000) / ms };
}

self.addEventListener('message', (event: MessageEvent<ToStandalone>) => {
  const msg = event.data;
  switch (msg.type) {
    case 'bench':
      bench(msg.request, msg.bytes).then(
        (result) => self.postMessage({ type: 'result', result } satisfies FromStandalone),
        (err: unknown) =>
          self.postMessage({ type: 'error', message: errorMessage(err) } satisfies FromStandalone),
      );
      return;
    default: {
      const never: never = msg.type;
      self.postMessage({
        type: 'error',
        message: `unknown message ${String(never)}`,
      } satisfies FromStandalone);
    }
  }
});
