/**
 * The worker's checks of a run's outputs before they are sent (worker/wire.ts): what a broken run
 * looks like is reported by the worker as `invalid_output`, not refused later by the hub.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { WireTensor } from '../../protocol/tensor.ts';
import { checkOutputs, firstNonFinite, vouchFinite } from '../../worker/wire.ts';

function f32(values: number[], offset = 0): WireTensor {
  // `offset` spare bytes before the data: an output that is a view into a larger buffer.
  const buf = new ArrayBuffer(offset + values.length * 4);
  new Uint8Array(buf, offset).set(new Uint8Array(new Float32Array(values).buffer));
  return {
    name: 'y',
    dtype: 'float32',
    dims: [1, values.length],
    data: new Uint8Array(buf, offset, values.length * 4),
  };
}

describe('firstNonFinite', () => {
  it('finds the first NaN or infinity, and nothing in finite values', () => {
    assert.equal(firstNonFinite([1, 2, 3]), -1);
    assert.equal(firstNonFinite([]), -1);
    assert.equal(firstNonFinite([1, Number.NaN, 3, Number.NaN]), 1);
    assert.equal(firstNonFinite(new Float32Array([0, 0, Infinity])), 2);
    assert.equal(firstNonFinite([5, -Infinity, Infinity]), 1, '-inf and +inf: the sum is NaN');
  });

  it('does not take a sum that overflows for a non-finite value', () => {
    assert.equal(firstNonFinite(new Float64Array([1.7e308, 1.7e308, -1])), -1);
    assert.equal(firstNonFinite(new Float64Array([1.7e308, 1.7e308, Number.NaN])), 2);
  });
});

describe('checkOutputs', () => {
  const model = {};
  it('passes finite outputs, in their own buffer or a view at any offset', () => {
    assert.equal(checkOutputs(model, [f32([0.5, 1, -2])]), undefined);
    assert.equal(checkOutputs(model, [f32([0.5, 1, -2], 2)]), undefined, 'unaligned: checked through a copy');
    assert.equal(checkOutputs(model, [f32([0.5, 1, -2], 8)]), undefined);
  });

  it('says where a non-finite value is, for float32, float64 and float16', () => {
    assert.match(
      checkOutputs(model, [f32([1, 2, Number.NaN])]) ?? '',
      /"y" has a non-finite value \(NaN\) at 2/,
    );
    assert.match(checkOutputs(model, [f32([Infinity], 2)]) ?? '', /non-finite value \(Infinity\) at 0/);
    const f64: WireTensor = {
      name: 'z',
      dtype: 'float64',
      dims: [2],
      data: new Uint8Array(new Float64Array([1, -Infinity]).buffer),
    };
    assert.match(checkOutputs(model, [f64]) ?? '', /"z" has a non-finite value \(-Infinity\) at 1/);
    const f16: WireTensor = {
      name: 'h',
      dtype: 'float16',
      dims: [2],
      data: new Uint8Array(new Uint16Array([0x3c00, 0x7e00]).buffer),
    };
    assert.match(checkOutputs(model, [f16]) ?? '', /"h" has a non-finite value \(NaN\) at 1/);
  });

  it('trusts bytes a backend vouched for, and only those bytes', () => {
    const t = f32([1, Number.NaN]);
    const sameBytesOtherView = { ...t, data: new Uint8Array(t.data.buffer) };
    vouchFinite(t.data);
    assert.equal(checkOutputs(model, [t]), undefined, 'vouched: not read again');
    assert.match(checkOutputs(model, [sameBytesOtherView]) ?? '', /non-finite/, 'another view is checked');
    const short = { ...t, dims: [1, 3] };
    assert.match(checkOutputs(model, [short]) ?? '', /needs 12/, 'sizes are still checked');
  });

  it('lets non-finite values through for a model that allows them, and checks the rest', () => {
    assert.equal(checkOutputs({ allowNonFinite: true }, [f32([Number.NaN])]), undefined);
    assert.match(checkOutputs(model, []) ?? '', /no outputs/);
    const short = { ...f32([1, 2]), dims: [1, 3] };
    assert.match(checkOutputs(model, [short]) ?? '', /has 8 bytes, but float32\[1,3\] needs 12/);
    const odd = { ...f32([1]), dtype: 'complex64' } as unknown as WireTensor;
    assert.match(checkOutputs(model, [odd]) ?? '', /unsupported dtype complex64/);
  });
});
