/** IdRuns: a job's fresh ids as runs, taken from the front in order. */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { IdRuns } from '../../server/scheduler/id-runs.ts';
import { pickCanaries } from '../../server/preflight.ts';

describe('IdRuns', () => {
  test('runs that follow on merge; ids come out in order across runs; size counts down', () => {
    const q = IdRuns.of([
      { first: 10, last: 12 },
      { first: 13, last: 14 },
      { first: 40, last: 41 },
    ]);
    assert.equal(q.size, 7);
    const out: number[] = [];
    q.takeInto(4, out);
    assert.deepEqual(out, [10, 11, 12, 13]);
    assert.equal(q.size, 3);
    q.takeInto(10, out);
    assert.deepEqual(out, [10, 11, 12, 13, 14, 40, 41]);
    assert.equal(q.size, 0);
    q.takeInto(5, out);
    assert.equal(out.length, 7, 'nothing more to take');
  });

  test('fromIds keeps the list order, and at() reads without taking', () => {
    const q = IdRuns.fromIds([5, 6, 7, 2, 3, 9]);
    assert.deepEqual(
      Array.from({ length: q.size }, (_, i) => q.at(i)),
      [5, 6, 7, 2, 3, 9],
    );
    const out: number[] = [];
    q.takeInto(2, out);
    assert.equal(q.at(0), 7);
    assert.throws(() => q.at(4), RangeError);
    assert.throws(() => q.pushRun(3, 2), RangeError);
  });

  test('a long queue of single ids taken a few at a time stays correct after compaction', () => {
    const ids = Array.from({ length: 1000 }, (_, i) => i * 2);
    const q = IdRuns.fromIds(ids);
    const out: number[] = [];
    while (q.size > 0) q.takeInto(3, out);
    assert.deepEqual(out, ids);
  });

  test('pickCanaries picks the same ids from runs as from the list they stand for', () => {
    const ids = [1, 2, 3, 7, 8, 20];
    const seq = () => {
      let k = 0;
      return () => [0.1, 0.9, 0.5, 0.3][k++ % 4] as number;
    };
    assert.deepEqual(pickCanaries(IdRuns.fromIds(ids), 4, seq()), pickCanaries(ids, 4, seq()));
  });
});
