import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bytesOf, type WireTensor } from '../../protocol/tensor.ts';
import { BackendError } from '../../worker/backend.ts';
import { batchKey, concatItems, planBatches, runBatched, splitOutputs } from '../../worker/batching.ts';

function f32(name: string, dims: number[], values: number[]): WireTensor {
  return { name, dtype: 'float32', dims, data: bytesOf(new Float32Array(values)) };
}
function values(t: WireTensor): number[] {
  return [...new Float32Array(t.data.slice().buffer)];
}
/** A "model" that doubles x along whatever batch it is given, and counts its calls. */
function doubler() {
  const calls: number[][] = [];
  const runOne = async (inputs: WireTensor[]): Promise<WireTensor[]> => {
    const x = inputs[0] as WireTensor;
    calls.push([...x.dims]);
    return [
      f32(
        'y',
        x.dims,
        values(x).map((v) => v * 2),
      ),
    ];
  };
  return { calls, runOne };
}

describe('batching', () => {
  it('groups same-shaped items up to the batch size, in order', () => {
    const a = [f32('x', [1, 2], [1, 2])];
    const b = [f32('x', [1, 3], [1, 2, 3])];
    assert.deepEqual(planBatches([a, a, b, a, b, a], 3), [[0, 1, 3], [2, 4], [5]]);
    assert.deepEqual(planBatches([a, a, a], 1), [[0], [1], [2]]);
  });

  it('never batches scalar inputs', () => {
    const s = [{ name: 'x', dtype: 'float32' as const, dims: [], data: new Uint8Array(4) }];
    assert.equal(batchKey(s), undefined);
    assert.deepEqual(planBatches([s, s], 8), [[0], [1]]);
  });

  it('concatenates along dim 0 and splits outputs back per item', () => {
    const items = [[f32('x', [1, 2], [1, 2])], [f32('x', [1, 2], [3, 4])], [f32('x', [1, 2], [5, 6])]];
    const batch = concatItems(items);
    assert.equal(batch.length, 1);
    assert.deepEqual(batch[0]?.dims, [3, 2]);
    assert.deepEqual(values(batch[0] as WireTensor), [1, 2, 3, 4, 5, 6]);
    const split = splitOutputs(batch, 3);
    assert.deepEqual(
      split.map((o) => values(o[0] as WireTensor)),
      [
        [1, 2],
        [3, 4],
        [5, 6],
      ],
    );
    assert.deepEqual(split[1]?.[0]?.dims, [1, 2]);
  });

  it('refuses to concatenate items of different shapes', () => {
    assert.throws(() => concatItems([[f32('x', [1, 2], [1, 2])], [f32('x', [1, 1], [3])]]), RangeError);
  });

  it('refuses to split an output whose dim 0 is not the batch', () => {
    assert.throws(
      () => splitOutputs([f32('y', [1, 4], [1, 2, 3, 4])], 2),
      (err: unknown) => err instanceof BackendError && err.category === 'invalid_output',
    );
  });

  it('runs a batchable model in batches and a non-batchable one item by item, same results', async () => {
    const items = [1, 2, 3, 4, 5].map((i) => [f32('x', [1, 2], [i, -i])]);
    const batched = doubler();
    const one = doubler();
    const a = await runBatched({ batchable: true, batchSize: 2 }, items, batched.runOne);
    const b = await runBatched({ batchable: false, batchSize: 2 }, items, one.runOne);
    assert.deepEqual(batched.calls, [
      [2, 2],
      [2, 2],
      [1, 2],
    ]);
    assert.equal(one.calls.length, 5);
    assert.deepEqual(
      a.map((o) => values(o[0] as WireTensor)),
      b.map((o) => values(o[0] as WireTensor)),
    );
    assert.deepEqual(values(a[4]?.[0] as WireTensor), [10, -10]);
  });

  it('keeps item order when shapes interleave', async () => {
    const items = [[f32('x', [1, 1], [1])], [f32('x', [1, 2], [2, 2])], [f32('x', [1, 1], [3])]];
    const { runOne } = doubler();
    const out = await runBatched({ batchable: true, batchSize: 8 }, items, runOne);
    assert.deepEqual(
      out.map((o) => values(o[0] as WireTensor)),
      [[2], [4, 4], [6]],
    );
  });
});
