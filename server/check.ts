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
      const v = toNumbers(t);
      for (let i = 0; i < v.length; i++) {
        if (!Number.isFinite(v[i] as number)) return `output "${spec.name}" has a non-finite value at ${i}`;
      }
    }
  }
  return undefined;
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
