/** Checks tensors against a model's declared inputs and outputs before the hub stores them. */
import type { ModelInfo } from '../protocol/model.ts';
import { tensorSizeError, toNumbers, type WireTensor } from '../protocol/tensor.ts';

/** Returns why outputs are invalid for this model, or undefined when they are acceptable. */
export function outputProblem(model: ModelInfo, outputs: readonly WireTensor[]): string | undefined {
  if (outputs.length !== model.outputs.length) {
    return `expected ${model.outputs.length} output(s), got ${outputs.length}`;
  }
  for (const spec of model.outputs) {
    const t = outputs.find((o) => o.name === spec.name);
    if (!t) return `output "${spec.name}" missing`;
    if (t.dtype !== spec.dtype) return `output "${spec.name}" is ${t.dtype}, model declares ${spec.dtype}`;
    if (t.dims.length !== spec.shape.length) {
      return `output "${spec.name}" has rank ${t.dims.length}, model declares ${spec.shape.length}`;
    }
    for (let i = 0; i < spec.shape.length; i++) {
      const want = spec.shape[i];
      if (typeof want === 'number' && want >= 0 && t.dims[i] !== want) {
        return `output "${spec.name}" dim ${i} is ${t.dims[i]}, model declares ${want}`;
      }
    }
    const size = tensorSizeError(t);
    if (size) return size;
    if (!model.allowNonFinite && (t.dtype === 'float32' || t.dtype === 'float16' || t.dtype === 'float64')) {
      const i = firstNonFinite(t);
      if (i >= 0) return `output "${spec.name}" has a non-finite value at ${i}`;
    }
  }
  return undefined;
}

/**
 * Index of a float tensor's first NaN or infinity, or -1. Reads the bytes where they are: a copy
 * and a float64 array per output (what `toNumbers` makes) cost the hub 0.7 ms per 400 KB output.
 */
function firstNonFinite(t: WireTensor): number {
  if (t.dtype === 'float16') {
    const v = toNumbers(t);
    for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i] as number)) return i;
    return -1;
  }
  const size = t.dtype === 'float64' ? 8 : 4;
  const n = Math.floor(t.data.byteLength / size);
  const { buffer, byteOffset } = t.data;
  if (byteOffset % size === 0) {
    // Wire tensors are little-endian, like every platform Node runs on (see toTypedArray).
    const a = size === 4 ? new Float32Array(buffer, byteOffset, n) : new Float64Array(buffer, byteOffset, n);
    // x - x is 0 for every finite x, NaN for NaN and the infinities.
    for (let i = 0; i < n; i++) if ((a[i] as number) - (a[i] as number) !== 0) return i;
    return -1;
  }
  const dv = new DataView(buffer, byteOffset, n * size);
  for (let i = 0; i < n; i++) {
    const x = size === 4 ? dv.getFloat32(i * 4, true) : dv.getFloat64(i * 8, true);
    if (x - x !== 0) return i;
  }
  return -1;
}

/** Returns why an item's input tensors don't fit the model's declared inputs, or undefined. */
export function inputProblem(
  model: Pick<ModelInfo, 'inputs'>,
  inputs: readonly WireTensor[],
): string | undefined {
  if (inputs.length !== model.inputs.length) {
    return `expected input(s) ${model.inputs.map((i) => `"${i.name}"`).join(', ')}, got ${inputs.length} tensor(s)`;
  }
  for (const spec of model.inputs) {
    const t = inputs.find((x) => x.name === spec.name);
    if (!t) return `input "${spec.name}" missing (got ${inputs.map((x) => `"${x.name}"`).join(', ')})`;
    if (t.dtype !== spec.dtype) return `input "${spec.name}" is ${t.dtype}, model wants ${spec.dtype}`;
    if (t.dims.length !== spec.shape.length) {
      return `input "${spec.name}" has rank ${t.dims.length}, model wants [${spec.shape.join(',')}]`;
    }
    for (let i = 0; i < spec.shape.length; i++) {
      const want = spec.shape[i];
      if (typeof want === 'number' && want >= 0 && t.dims[i] !== want) {
        return `input "${spec.name}" dim ${i} is ${t.dims[i]}, model wants ${want}`;
      }
    }
    const size = tensorSizeError(t);
    if (size) return size;
  }
  return undefined;
}
