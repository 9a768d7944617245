/**
 * Chunk claims' quiet passes (`server/hub/claims.ts`) on a real store (SQLite, which keeps chunks as
 * the Postgres store does) and the real scheduler: a hub whose passes find nothing to claim or
 * split passes less and less often on its tick, and `wake` (a job sealed here or on another hub,
 * chunks given back or reaped, a worker changing state) brings a pass at once, which claims what
 * is new. And a chunk taken over with answers waiting for a second opinion on its items: those
 * items wait for other workers, and the waiting replicas go to the verifier. The hub's job
 * lifecycle is reduced to what claims ask of it (which jobs run here).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ChunkClaims, type ChunkClaimsDeps } from '../../server/hub/claims.ts';
import type { JobLifecycle } from '../../server/hub/jobs.ts';
import { createLogger } from '../../server/logger.ts';
import { Scheduler } from '../../server/scheduler/scheduler.ts';
import type { Lease } from '../../server/store/async-store.ts';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';
import { schedWorker } from '../helpers/sched-worker.ts';
import { items, newJob } from '../helpers/store-rows.ts';

/**
 * Claims over `store` for a hub whose job lifecycle is reduced to what claims ask of it (which jobs
 * run here): a job becomes active, and is scheduled, when a chunk of it is taken (`activated` then
 * sees its model). The hub's workers always want 64 items and are idle.
 */
function claimsOn(
  store: SqliteAsyncStore,
  lease: Lease,
  scheduler: Scheduler,
  over: Partial<ChunkClaimsDeps> & { activated?: (modelSha256: string) => void } = {},
): ChunkClaims {
  const active = new Map<string, { record: { id: string } }>();
  const jobs = {
    activeJobs: () => active.values(),
    activeJob: (id: string) => active.get(id),
    ensureActive: async (id: string) => {
      if (active.has(id)) return true;
      const job = await store.getJob(id);
      if (!job) return false;
      scheduler.addJob({ ...job, batchSize: 1 }, []);
      over.activated?.(job.modelSha256);
      active.set(id, { record: { id } });
      return true;
    },
    letGo: (id: string) => active.delete(id),
  } as unknown as JobLifecycle;
  return new ChunkClaims({
    store,
    lease: () => lease,
    scheduler,
    jobs,
    log: createLogger('test-hub', 'silent'),
    want: () => 64,
    idle: () => true,
    settling: () => false,
    pump: () => {},
    freed: () => {},
    adopt: () => {},
    ...over,
  });
}

describe('chunk claims on an idle hub', () => {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-claims-'));
  let store: SqliteAsyncStore;
  let lease: Lease;
  /** Store calls a pass makes to look for work. */
  const looks = { claim: 0, split: 0 };
  const scheduler = new Scheduler();
  let claims: ChunkClaims;
  /** The claims' clock, which the tests move. */
  let now = Date.now();

  before(async () => {
    store = await SqliteAsyncStore.open(join(dir, 'store.sqlite'), { chunkItems: 16 });
    lease = await store.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
    const claimChunks = store.claimChunks.bind(store);
    store.claimChunks = (...args) => {
      looks.claim++;
      return claimChunks(...args);
    };
    const splitTail = store.splitTail.bind(store);
    store.splitTail = (...args) => {
      looks.split++;
      return splitTail(...args);
    };
    claims = claimsOn(store, lease, scheduler, { clock: () => now });
  });
  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('passes finding nothing come further and further apart, up to a bound', async () => {
    const gaps: number[] = [];
    let last = now;
    // Ticks every 50 ms for 8 s of the hub's clock: which of them pass.
    for (let i = 0; i < 160; i++, now += 50) {
      const before = looks.claim;
      claims.tick();
      await claims.settled();
      if (looks.claim > before) {
        gaps.push(now - last);
        last = now;
      }
    }
    assert.ok(claims.quiet, 'the tick holds passes back');
    assert.ok(looks.split >= gaps.length, 'each pass looked for a tail to split too');
    assert.ok(gaps.length >= 5 && gaps.length <= 12, `passes in 8 s of 50 ms ticks: ${gaps.length}`);
    const later = gaps.slice(2);
    for (let k = 1; k < later.length; k++) assert.ok(later[k]! >= later[k - 1]!, `gaps grow: ${gaps}`);
    assert.ok(Math.max(...gaps) <= 2050, `a pass at least every ~2 s: ${gaps}`);
  });

  test('a wake passes at once and claims what is new; a hub with work passes every tick', async () => {
    await store.createJob(newJob('j'));
    await store.appendItems('j', items(100));
    await store.updateJob('j', { state: 'queued' });
    claims.tick(); // within the quiet wait: no pass
    await claims.settled();
    assert.equal(claims.count, 0, 'the quiet tick did not look');
    claims.wake();
    await claims.settled();
    assert.ok(claims.count > 0, 'the woken pass claimed chunks of the new job');
    assert.equal(claims.quiet, false);
    assert.ok(scheduler.queued('j') > 0, "the chunks' items are queued here");
    const before = looks.claim + looks.split;
    now += 50;
    claims.tick();
    await claims.settled();
    assert.equal(claims.quiet, false, 'holding chunks, the tick passes every time');
    assert.ok(looks.claim + looks.split > before, 'and the pass looked at the store');
  });
});

describe('a chunk taken over with checks waiting on its items (its previous hub died, or gave it back)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-claims-adopt-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the items wait for another worker than the ones that answered, and their replicas are adopted', async () => {
    const store = await SqliteAsyncStore.open(join(dir, 'store.sqlite'), { chunkItems: 16 });
    try {
      const lease = await store.registerHub('h', { url: 'http://h', ttlMs: 60_000 });
      await store.createJob(newJob('k'));
      await store.appendItems('k', items(16));
      await store.updateJob('k', { state: 'queued' });
      const ids = (await store.pendingItemRuns('k')).flatMap((r) =>
        Array.from({ length: r.last - r.first + 1 }, (_, i) => r.first + i),
      );
      const checked = ids[5] as number;
      // The hub before this one stored the liar's answer as a replica, awaiting a second opinion.
      const replica = {
        itemId: checked,
        workerId: 'liar',
        backend: 'sim',
        outputs: new Uint8Array([1]),
        ms: 1,
        at: 1,
      };
      await store.addReplicas([replica]);
      const scheduler = new Scheduler();
      for (const id of ['liar', 'honest']) scheduler.addWorker(schedWorker(id));
      const adopted: unknown[] = [];
      const claims = claimsOn(store, lease, scheduler, {
        activated: (sha) => {
          for (const w of ['liar', 'honest']) scheduler.setBenchmark(w, sha, 10);
        },
        adopt: (jobId, replicas) => adopted.push([jobId, replicas.map((r) => [r.itemId, r.workerId])]),
      });
      claims.poke();
      await claims.settled();
      assert.equal(scheduler.queued('k'), 16, "the chunk's items are queued here");
      assert.deepEqual(
        adopted,
        [['k', [[checked, 'liar']]]],
        'the waiting replica is handed to the verifier',
      );
      // Everything runs; the checked item never goes to the worker whose answer waits on it.
      const ran = new Map<number, string>();
      for (let round = 0; round < 50 && scheduler.queued('k') > 0; round++) {
        for (const a of scheduler.plan().assign) for (const id of a.itemIds) ran.set(id, a.workerId);
        for (const w of ['liar', 'honest']) scheduler.finished(w, scheduler.heldBy(w));
      }
      assert.equal(ran.size, 16, 'every item ran');
      assert.equal(ran.get(checked), 'honest');
      assert.ok([...ran.values()].includes('liar'), 'the liar ran the others');
    } finally {
      await store.close();
    }
  });
});
