/**
 * Tensor packs read with a header cache, as the hub reads a results message's packs: a header the
 * same as the last is not parsed again, and nothing else about the reading changes. And a worker's
 * packed results (which reuse a header for outputs laid out as the result before) read back as sent.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type HeaderCache, PackError, packTensors, unpackTensors } from '../../protocol/pack.ts';
import { bytesOf, type WireTensor } from '../../protocol/tensor.ts';
import type { ItemResult } from '../../protocol/events.ts';
import { packResults, unpackResults } from '../../protocol/results-pack.ts';

function y(dims: number[], values: number[]): WireTensor[] {
  return [{ name: 'y', dtype: 'float32', dims, data: bytesOf(new Float32Array(values)) }];
}

test('packs read with one cache: each keeps its own values and dims, whatever the header before it', () => {
  const cache: HeaderCache = {};
  const packs = [y([1, 2], [1, 2]), y([1, 2], [3, 4]), y([1, 3], [5, 6, 7]), y([1, 2], [8, 9])].map((t) =>
    packTensors(t),
  );
  const read = packs.map((p) => unpackTensors(p, cache));
  assert.deepEqual(
    read.map((r) => r[0]?.dims),
    [
      [1, 2],
      [1, 2],
      [1, 3],
      [1, 2],
    ],
  );
  assert.deepEqual(
    read.map((r) => [...new Float32Array((r[0] as WireTensor).data.slice().buffer)]),
    [
      [1, 2],
      [3, 4],
      [5, 6, 7],
      [8, 9],
    ],
  );
  // Dims are each tensor's own, not the cache's.
  (read[0]?.[0] as WireTensor).dims[0] = 99;
  assert.deepEqual(read[1]?.[0]?.dims, [1, 2]);
  assert.deepEqual(unpackTensors(packs[0] as Uint8Array, cache)[0]?.dims, [1, 2]);
});

test('a cached header still has its lengths checked against each pack', () => {
  const cache: HeaderCache = {};
  const whole = packTensors(y([1, 2], [1, 2]));
  unpackTensors(whole, cache);
  assert.throws(() => unpackTensors(whole.subarray(0, whole.byteLength - 1), cache), PackError);
  const longer = new Uint8Array(whole.byteLength + 4);
  longer.set(whole);
  assert.throws(() => unpackTensors(longer, cache), /trailing bytes/);
});

test('a results message of many packs of one header unpacks each result with its own outputs', () => {
  const packs = Array.from({ length: 5 }, (_, i) => packTensors(y([1, 1], [i])));
  const ends: number[] = [];
  let end = 0;
  for (const p of packs) ends.push((end += p.byteLength));
  const data = new Uint8Array(end);
  packs.reduce((off, p) => (data.set(p, off), off + p.byteLength), 0);
  const results = unpackResults([
    { jobId: 'j', modelSha256: 'a'.repeat(64), ids: [10, 11, 12, 13, 14], ms: [1, 1, 1, 1, 1], ends, data },
  ]);
  assert.ok(Array.isArray(results), String(results));
  assert.deepEqual(
    results.map((r) => [r.itemId, new Float32Array((r.outputs[0] as WireTensor).data.slice().buffer)[0]]),
    [
      [10, 0],
      [11, 1],
      [12, 2],
      [13, 3],
      [14, 4],
    ],
  );
});

test("a worker's packed results read back item by item, across jobs and changing output shapes", () => {
  const result = (itemId: number, jobId: string, dims: number[], values: number[]): ItemResult => ({
    itemId,
    jobId,
    modelSha256: 'a'.repeat(64),
    ms: itemId,
    outputs: y(dims, values),
  });
  // Runs of one header, a header that changes mid-group, and a second job.
  const sent = [
    result(1, 'j1', [1, 2], [1, 2]),
    result(2, 'j1', [1, 2], [3, 4]),
    result(3, 'j1', [1, 3], [5, 6, 7]),
    result(4, 'j1', [1, 2], [8, 9]),
    result(5, 'j2', [1, 2], [10, 11]),
  ];
  const groups = packResults(sent);
  assert.deepEqual(
    groups.map((g) => [g.jobId, g.ids]),
    [
      ['j1', [1, 2, 3, 4]],
      ['j2', [5]],
    ],
  );
  const got = unpackResults(groups);
  assert.ok(Array.isArray(got), String(got));
  const seen = (r: ItemResult) => [
    r.itemId,
    r.jobId,
    r.ms,
    r.outputs[0]?.dims,
    [...new Float32Array((r.outputs[0] as WireTensor).data.slice().buffer)],
  ];
  assert.deepEqual(got.map(seen), sent.map(seen));
});
