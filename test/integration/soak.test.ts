/**
 * A bounded soak in `npm test`: 15 s of node kills, evictions, stalls, hub kill -9 restarts,
 * concurrent submissions, hostile bursts, a blatant and a subtle lying node, then an audit of every
 * item (`npm run bench -- soak` runs the longer one). Once on one hub on SQLite, once on two hubs
 * sharing a real PostgreSQL (started by the soak), where at least one hub is killed and a live hub
 * must reap it before its chunks run again; jobs are a quarter of the size there (a Postgres hub
 * commits fewer items per second).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runSoak, type SoakOptions, type SoakResult } from '../../bench/soak.ts';
import { postgresBin } from '../helpers/postgres.ts';

function audit(r: SoakResult): void {
  const why = JSON.stringify(r);
  assert.ok(r.items > 0);
  assert.ok(r.worker_kills + r.worker_evictions + r.worker_stalls + r.hub_restarts > 0, why);
  assert.equal(r.lost, 0, `no item lost or left pending: ${why}`);
  assert.equal(r.done_without_result, 0, `no item done without its result: ${why}`);
  assert.equal(r.result_not_done, 0, `no result stored for an item not done: ${why}`);
  assert.equal(r.counters_off, 0, `job counters agree with item states: ${why}`);
  assert.equal(r.corrupted_accepted, 0, `no corrupted result accepted: ${why}`);
}

const base: SoakOptions = { seconds: 15, nodes: 5, seed: 7, quiet: true };

test('after chaos every item is done with its one result, equal to the reference, or failed', async () => {
  audit(await runSoak(base));
});

test(
  'on two hubs sharing PostgreSQL, with hub kills: every item is done with its one result, equal to the reference, or failed',
  {
    skip: postgresBin() || process.env.SHARDHUB_TEST_PG_URL ? false : 'PostgreSQL binaries not found',
  },
  async () => {
    const r = await runSoak({
      ...base,
      store: process.env.SHARDHUB_TEST_PG_URL ?? 'postgres',
      hubs: 2,
      scale: 0.25,
    });
    assert.equal(r.store, 'postgres');
    assert.ok(r.hub_restarts > 0, `a hub was killed: ${JSON.stringify(r)}`);
    audit(r);
  },
);
