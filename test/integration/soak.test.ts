/**
 * A bounded soak in `npm test`: 15 s of node kills, evictions, stalls, hub kill -9 restarts,
 * concurrent submissions, hostile bursts and a lying node, then an audit of every item
 * (`npm run bench -- soak` runs the longer one).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runSoak } from '../../bench/soak.ts';

test('after chaos every item has exactly one accepted result, equal to the reference', async () => {
  const r = await runSoak({ seconds: 15, nodes: 5, seed: 7, quiet: true });
  assert.ok(r.items > 0);
  assert.ok(r.worker_kills + r.worker_evictions + r.worker_stalls + r.hub_restarts > 0, JSON.stringify(r));
  assert.equal(r.lost, 0, 'no item lost');
  assert.equal(r.duplicated, 0, 'no item stored twice');
  assert.equal(r.corrupted_accepted, 0, 'no corrupted result accepted');
});
