/**
 * Fault injection (`native/fault.ts`): the blatant liar and the subtle one that turns after N
 * honest items, on the sim backend (whose outputs copy its inputs, so the truth is known).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { corrupting } from '../../native/fault.ts';
import { SimBackend } from '../../native/sim-backend.ts';
import { toNumbers, type WireTensor } from '../../protocol/tensor.ts';
import { simModel } from './fake-hub.ts';

const model = simModel({
  inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 4] }],
  outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 4] }],
});
const item = (k: number): WireTensor[] => [
  {
    name: 'x',
    dtype: 'float32',
    dims: [1, 4],
    data: new Uint8Array(new Float32Array([k, -3 * k, 2, 0.5]).buffer),
  },
];
const values = (out: WireTensor[][]) => out.map((o) => [...toNumbers(o[0] as WireTensor)]);

describe('corrupting', () => {
  it('blatant: every element of a corrupted item is off by one', async () => {
    const backend = corrupting(await SimBackend.create({ itemMs: 0 }), { rate: 1 });
    const session = await backend.load(model, new Uint8Array());
    assert.deepEqual(values(await session.run([item(1)])), [[2, -2, 3, 1.5]]);
  });

  it('subtle: honest for the first N items, then the largest element scaled on a share of items', async () => {
    let draws = 0;
    // Every other draw is under the rate: items after the first 3 are corrupted in turn.
    const random = () => (draws++ % 2 === 0 ? 0.01 : 0.99);
    const backend = corrupting(await SimBackend.create({ itemMs: 0 }), {
      rate: 0.05,
      after: 3,
      scale: 1.05,
      random,
    });
    const session = await backend.load(model, new Uint8Array());
    const first = values(await session.run([item(1), item(2)]));
    const next = values(await session.run([item(3), item(4), item(5)]));
    const truth = [1, 2, 3, 4, 5].map((k) => [k, -3 * k, 2, 0.5]);
    assert.deepEqual([...first, next[0]], truth.slice(0, 3), 'the first 3 items are honest, across runs');
    assert.equal(draws, 2, 'no draw while honest');
    const f32 = (v: number) => Math.fround(v);
    assert.deepEqual(next[1], [4, f32(-12 * 1.05), 2, 0.5], 'item 4: its largest element x 1.05');
    assert.deepEqual(next[2], truth[4], 'item 5: drawn above the rate, honest');
  });

  it('a benchmark’s batch, run again and again, is answered honestly and spends none of the honest items', async () => {
    const backend = corrupting(await SimBackend.create({ itemMs: 0 }), { rate: 1, after: 2 });
    const session = await backend.load(model, new Uint8Array());
    const calibration = [item(1)];
    for (let run = 0; run < 5; run++)
      assert.deepEqual(values(await session.run(calibration)), [[1, -3, 2, 0.5]], `benchmark run ${run}`);
    assert.deepEqual(
      values(await session.run([item(2)])),
      [[2, -6, 2, 0.5]],
      'the second item counted: honest',
    );
    assert.deepEqual(
      values(await session.run([item(3)])),
      [[4, -8, 3, 1.5]],
      'the third: a lie (every element off by one)',
    );
  });

  it('refuses options that make no liar', async () => {
    const sim = await SimBackend.create({ itemMs: 0 });
    assert.throws(() => corrupting(sim, { rate: 2 }), /rate must be between 0 and 1/);
    assert.throws(() => corrupting(sim, { rate: 1, after: -1 }), /after must be an integer >= 0/);
    assert.throws(() => corrupting(sim, { rate: 1, scale: 1 }), /scale must be a finite number other than 1/);
  });
});
