/**
 * A bounded soak in `npm test`: 15 s of node kills, evictions, stalls, hub kill -9 restarts,
 * concurrent submissions, hostile bursts, a blatant and a subtle lying node, then an audit of every
 * item (`npm run bench -- soak` runs the longer one).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runSoak } from '../../bench/soak.ts';

test('after chaos every item is done with its one result, equal to the reference, or failed', async () => {
  const r = await runSoak({ seconds: 15, nodes: 5, seed: 7, quiet: true });
  const why = JSON.stringify(r);
  assert.ok(r.items > 0);
  assert.ok(r.worker_kills + r.worker_evictions + r.worker_stalls + r.hub_restarts > 0, why);
  assert.equal(r.lost, 0, `no item lost or left pending: ${why}`);
  assert.equal(r.done_without_result, 0, `no item done without its result: ${why}`);
  assert.equal(r.result_not_done, 0, `no result stored for an item not done: ${why}`);
  assert.equal(r.counters_off, 0, `job counters agree with item states: ${why}`);
  assert.equal(r.corrupted_accepted, 0, `no corrupted result accepted: ${why}`);
});
