/**
 * The native node's stager (native/staging.ts): items' inputs copied into batch buffers as they
 * arrive, and a buffer handed over only when a batch is exactly its items, in order.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { WireTensor } from '../../protocol/tensor.ts';
import { Stager } from '../../native/staging.ts';
import { concatItems } from '../../worker/batching.ts';
import { ManualClock } from '../helpers/clock.ts';

const model = { sha256: 'a'.repeat(64), batchable: true, batchSize: 3 };

/** An item of two inputs (float32 x[1,4], int32 k[1,2]) whose bytes depend on `seed`. */
function item(seed: number): WireTensor[] {
  const x = new Float32Array(4).map((_, i) => seed * 10 + i);
  const k = new Int32Array(2).map((_, i) => seed * 100 + i);
  return [
    { name: 'x', dtype: 'float32', dims: [1, 4], data: new Uint8Array(x.buffer) },
    { name: 'k', dtype: 'int32', dims: [1, 2], data: new Uint8Array(k.buffer) },
  ];
}

/** The bytes a claimed batch holds for each input, read through its layout. */
function claimedBytes(claim: NonNullable<ReturnType<Stager['claim']>>): Uint8Array[] {
  return claim.batch.map((t) => new Uint8Array(claim.buffer, t.offset, t.byteLength).slice());
}

describe('Stager', () => {
  it('stages items as views of one batch buffer, and hands it over laid out as their concatenation', () => {
    const stager = new Stager();
    const originals = [1, 2, 3].map(item);
    const staged = originals.map((inputs) => stager.stage(model, inputs));
    staged.forEach((inputs, i) => {
      assert.notEqual(
        inputs[0]?.data.buffer,
        originals[i]?.[0]?.data.buffer,
        'a copy, not the message buffer',
      );
      assert.deepEqual(
        inputs.map((t) => [...t.data]),
        originals[i]?.map((t) => [...t.data]),
      );
    });
    assert.equal(staged[0]?.[0]?.data.buffer, staged[2]?.[1]?.data.buffer, 'all in one buffer');
    const claim = stager.claim(staged);
    assert.ok(claim);
    const concat = concatItems(originals);
    assert.deepEqual(
      claim.batch.map((t) => [t.name, t.dtype, t.dims]),
      concat.map((t) => [t.name, t.dtype, t.dims]),
    );
    assert.deepEqual(
      claimedBytes(claim),
      concat.map((t) => t.data),
    );
    for (const t of claim.batch) assert.equal(t.offset % 8, 0, `${t.name} starts 8-byte aligned`);
    assert.equal(stager.claim(staged), undefined, 'a buffer is claimed once');
  });

  it('reserves places in the batch buffer for the caller to fill, which claim like staged inputs', () => {
    const stager = new Stager();
    const originals = [4, 5, 6].map(item);
    const places = originals.map((inputs) =>
      stager.reserve(
        model,
        inputs.map(({ name, dtype, dims }) => ({ name, dtype, dims })),
      ),
    );
    places.forEach((inputs, i) => {
      assert.ok(inputs);
      assert.deepEqual(
        inputs.map((t) => [t.name, t.dtype, t.dims, t.data.byteLength]),
        originals[i]?.map((t) => [t.name, t.dtype, t.dims, t.data.byteLength]),
      );
      inputs.forEach((t, j) => t.data.set((originals[i]?.[j] as WireTensor).data));
    });
    assert.equal(places[0]?.[0]?.data.buffer, places[2]?.[1]?.data.buffer, 'all in one buffer');
    const claim = stager.claim(places as WireTensor[][]);
    assert.ok(claim);
    assert.deepEqual(
      claimedBytes(claim),
      concatItems(originals).map((t) => t.data),
    );
    assert.equal(
      stager.reserve(model, [{ name: 's', dtype: 'float32', dims: [] }]),
      undefined,
      'a scalar has no place in a batch',
    );
  });

  it('claims nothing but a whole buffer in staging order', () => {
    const stager = new Stager();
    const staged = [1, 2, 3, 4, 5].map((s) => stager.stage(model, item(s)));
    const [a, b, c, d, e] = staged as [WireTensor[], WireTensor[], WireTensor[], WireTensor[], WireTensor[]];
    assert.equal(stager.claim([a, b]), undefined, 'two of the first buffer three');
    assert.equal(stager.claim([b, a, c]), undefined, 'out of order');
    assert.equal(stager.claim([c, d]), undefined, 'across two buffers');
    const copyOfC = c.map((t) => ({ ...t, data: t.data.slice() }));
    assert.equal(stager.claim([a, b, copyOfC]), undefined, 'a copy of c');
    assert.ok(stager.claim([d, e]), 'the second buffer, still open, with its two items');
    // Claimed while open: the next item goes to a buffer of its own, not into the claimed one.
    const f = stager.stage(model, item(6));
    assert.notEqual(f[0]?.data.buffer, d[0]?.data.buffer);
    assert.ok(stager.claim([f]));
    assert.ok(stager.claim([a, b, c]));
  });

  it('keeps buffers given back, up to its limit, for the next items', () => {
    const stager = new Stager();
    const first = [1, 2, 3].map((s) => stager.stage(model, item(s)));
    const claim = stager.claim(first);
    assert.ok(claim);
    stager.give(claim.buffer);
    assert.equal(stager.keptBytes, claim.buffer.byteLength);
    const next = stager.stage(model, item(7));
    assert.equal(next[0]?.data.buffer, claim.buffer, 'reused');
    assert.equal(stager.keptBytes, 0);
    assert.deepEqual([...(next[0]?.data ?? [])], [...(item(7)[0]?.data ?? [])]);

    const small = new Stager(claim.buffer.byteLength);
    small.give(new ArrayBuffer(claim.buffer.byteLength));
    small.give(new ArrayBuffer(claim.buffer.byteLength));
    assert.equal(small.keptBytes, claim.buffer.byteLength, 'no more than keepBytes kept');
    small.give(new ArrayBuffer(0));
    assert.equal(small.keptBytes, claim.buffer.byteLength, 'a transferred-away (empty) buffer is not kept');
  });

  it('lets go of kept buffers once none has come back for idleMs', async () => {
    const clock = new ManualClock();
    const stager = new Stager(2 ** 20, 2 ** 20, 200, clock);
    stager.give(new ArrayBuffer(1024));
    await clock.advance(120);
    stager.give(new ArrayBuffer(1024));
    await clock.advance(199);
    assert.equal(stager.keptBytes, 2048, 'each buffer given back restarts the wait');
    await clock.advance(1);
    assert.equal(stager.keptBytes, 0, 'released when idle for idleMs');
    const next = stager.stage(model, item(1));
    assert.equal(next[0]?.data.byteLength, 16, 'a new buffer after the release');
  });

  it('gives each item of a model that does not batch a buffer of its own, and leaves scalars alone', () => {
    const stager = new Stager();
    const single = { ...model, batchable: false };
    const a = stager.stage(single, item(1));
    const b = stager.stage(single, item(2));
    assert.notEqual(a[0]?.data.buffer, b[0]?.data.buffer);
    assert.ok(stager.claim([a]));
    const scalar: WireTensor[] = [{ name: 's', dtype: 'float32', dims: [], data: new Uint8Array(4) }];
    assert.equal(stager.stage(model, scalar), scalar);
    assert.equal(stager.claim([scalar]), undefined);
  });

  it('caps a buffer at maxBufferBytes: big items get fewer per buffer, and run by copy', () => {
    // An item takes 16 + 8 = 24 bytes; 50 bytes hold two of them, not the batch size of three.
    const stager = new Stager(1024, 50);
    const staged = [1, 2, 3].map((s) => stager.stage(model, item(s)));
    assert.equal(staged[0]?.[0]?.data.buffer, staged[1]?.[0]?.data.buffer);
    assert.notEqual(
      staged[1]?.[0]?.data.buffer,
      staged[2]?.[0]?.data.buffer,
      'the third starts a new buffer',
    );
    assert.ok((staged[0]?.[0]?.data.buffer.byteLength ?? Infinity) <= 56, 'two items and alignment');
    assert.equal(stager.claim(staged), undefined, 'a batch of three spans two buffers');
    const one = new Stager(1024, 10).stage(model, item(4));
    assert.deepEqual(
      [...(one[0]?.data ?? [])],
      [...(item(4)[0]?.data ?? [])],
      'at least one item per buffer',
    );
  });

  it('keeps models and shapes apart', () => {
    const stager = new Stager();
    const other = { ...model, sha256: 'b'.repeat(64) };
    const a = stager.stage(model, item(1));
    const b = stager.stage(other, item(2));
    const wide: WireTensor[] = [
      { name: 'x', dtype: 'float32', dims: [1, 8], data: new Uint8Array(32) },
      { name: 'k', dtype: 'int32', dims: [1, 2], data: new Uint8Array(8) },
    ];
    const c = stager.stage(model, wide);
    assert.notEqual(a[0]?.data.buffer, b[0]?.data.buffer);
    assert.notEqual(a[0]?.data.buffer, c[0]?.data.buffer);
    assert.ok(stager.claim([b]));
  });
});
