/**
 * Batching for loaded models: items whose inputs have the same names, dtypes and dims are
 * concatenated along dim 0 and run as one batch (up to the model's `batchSize`), and the batch's
 * outputs are split back per item along dim 0. Models that are not batchable run item by item.
 *
 * Pure functions over {@link WireTensor}s, shared by every backend; nothing here touches a session.
 */
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { BackendError } from './backend.ts';

/** Runs one set of inputs (one item, or a concatenated batch) through a session. */
export type RunOne = (inputs: WireTensor[]) => Promise<WireTensor[]>;

/**
 * The key under which an item may join a batch: every input's name, dtype and dims, in order.
 * Undefined when the item cannot be concatenated (an input with no dims, i.e. a scalar).
 */
export function batchKey(inputs: readonly Omit<WireTensor, 'data'>[]): string | undefined {
  if (inputs.length === 0) return undefined;
  const parts: string[] = [];
  for (const t of inputs) {
    if (t.dims.length === 0) return undefined;
    parts.push(`${t.name}:${t.dtype}[${t.dims.join(',')}]`);
  }
  return parts.join('|');
}

/**
 * Groups item indices into batches of at most `maxBatch` same-shaped items, keeping the items'
 * order within each group; groups come in the order of their first item.
 */
export function planBatches(items: readonly (readonly WireTensor[])[], maxBatch: number): number[][] {
  const limit = Math.max(1, Math.floor(maxBatch));
  const groups: number[][] = [];
  const open = new Map<string, number[]>();
  items.forEach((inputs, i) => {
    const key = batchKey(inputs);
    if (key === undefined || limit === 1) {
      groups.push([i]);
      return;
    }
    let group = open.get(key);
    if (!group || group.length >= limit) {
      group = [];
      open.set(key, group);
      groups.push(group);
    }
    group.push(i);
  });
  return groups;
}

/**
 * Concatenates same-shaped items along dim 0 into one set of inputs. Each input's bytes go into a
 * new buffer, or into what `into(byteLength)` gives (a view of a buffer the caller owns); without
 * `into`, a single item is returned as is.
 */
export function concatItems(
  items: readonly (readonly WireTensor[])[],
  into?: (byteLength: number) => Uint8Array,
): WireTensor[] {
  const first = items[0];
  if (!first) throw new RangeError('concatItems needs at least one item');
  if (items.length === 1 && !into) return [...first];
  if (items.length > 1) {
    const key = batchKey(first);
    if (key === undefined) throw new RangeError('items with scalar inputs cannot be concatenated');
    for (const inputs of items) {
      if (batchKey(inputs) !== key)
        throw new RangeError('items to concatenate must have the same input shapes');
    }
  }
  return first.map((t, j) => {
    const size = t.data.byteLength;
    const data = into ? into(size * items.length) : new Uint8Array(size * items.length);
    items.forEach((inputs, i) => data.set((inputs[j] as WireTensor).data, i * size));
    const dims =
      items.length === 1 ? [...t.dims] : [(t.dims[0] as number) * items.length, ...t.dims.slice(1)];
    return { name: t.name, dtype: t.dtype, dims, data };
  });
}

/**
 * Splits a batch's outputs back into `count` items along dim 0. Each item's bytes are copied, so it
 * owns them, unless `copy` is false: then they are views of the batch's buffers (a caller that
 * holds the batch anyway saves a copy of every output). Throws a {@link BackendError}
 * (`invalid_output`) when an output's dim 0 does not divide evenly: the model's outputs are then not
 * batched along dim 0, and it should not be marked batchable.
 */
export function splitOutputs(outputs: readonly WireTensor[], count: number, copy = true): WireTensor[][] {
  if (count === 1) return [[...outputs]];
  const perItem: WireTensor[][] = Array.from({ length: count }, () => []);
  for (const t of outputs) {
    const d0 = t.dims[0];
    if (d0 === undefined || d0 % count !== 0) {
      throw new BackendError(
        'invalid_output',
        `output "${t.name}" has dims [${t.dims.join(',')}]: cannot split a batch of ${count} items along dim 0`,
      );
    }
    const size = t.data.byteLength / count;
    const dims = [d0 / count, ...t.dims.slice(1)];
    for (let i = 0; i < count; i++) {
      const [from, to] = [i * size, (i + 1) * size];
      (perItem[i] as WireTensor[]).push({
        name: t.name,
        dtype: t.dtype,
        dims: [...dims],
        data: copy ? t.data.slice(from, to) : t.data.subarray(from, to),
      });
    }
  }
  return perItem;
}

export async function runBatched(
  model: Pick<ModelInfo, 'batchable' | 'batchSize'>,
  items: readonly WireTensor[][],
  runOne: RunOne,
): Promise<WireTensor[][]> {
  const maxBatch = model.batchable ? model.batchSize : 1;
  const results: WireTensor[][] = new Array<WireTensor[]>(items.length);
  for (const group of planBatches(items, maxBatch)) {
    const batch = group.map((i) => items[i] as WireTensor[]);
    const outputs = await runOne(concatItems(batch));
    splitOutputs(outputs, group.length).forEach((out, k) => {
      results[group[k] as number] = out;
    });
  }
  return results;
}
