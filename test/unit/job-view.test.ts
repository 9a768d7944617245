/**
 * The ETA of a job as `GET /api/jobs` and `jobs:updated` show it (`server/job-view.ts`): the items
 * left at the recent rate (`protocol/recent-rate.ts`, the computation the dashboard and the CLI
 * use), not at the rate since the job started.
 */
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { RecentRate } from '../../protocol/recent-rate.ts';
import type { Hub } from '../../server/hub.ts';
import { jobJson, jobRatesOf, jobStatus, sampleJobRate } from '../../server/job-view.ts';
import type { JobRecord } from '../../server/store/store.ts';

/** When the jobs here started (epoch ms); times below are offsets from it. */
const T0 = 1_000_000;

/** The parts of a hub a job view reads. */
const fakeHub = () =>
  ({
    jobs: { queued: () => 0, inFlight: () => 0, verification: () => [] },
    opts: { trust: { trustNative: false } },
  }) as unknown as Pick<Hub, 'jobs' | 'opts'>;

const job = (done: number, o: Partial<JobRecord> = {}): JobRecord => ({
  id: 'j_1',
  modelName: 'm',
  modelSha256: 'a'.repeat(64),
  state: 'running',
  priority: 0,
  redundancy: 1,
  deadline: null,
  requirements: null,
  options: {},
  createdAt: T0,
  startedAt: T0,
  finishedAt: null,
  itemCount: 5000,
  doneCount: done,
  failedCount: 0,
  ...o,
});

test("a listed job's ETA is the items left at the recent rate, as the dashboard and the CLI compute it", async () => {
  const hub = fakeHub();
  // 30 s of model download and benchmarks with nothing done, then 100 items/s, sampled each second
  // (the operator namespace's tick does this on a running hub).
  sampleJobRate(hub, job(0), T0);
  sampleJobRate(hub, job(0), T0 + 30_000);
  for (let t = 31_000; t < 45_000; t += 1000) sampleJobRate(hub, job((t - 30_000) / 10), T0 + t);
  const view = await jobJson(hub, job(1500), T0 + 45_000);
  assert.equal(view.etaS, 35, '3500 items left at 100/s');
  assert.ok(Math.abs(view.itemsPerSec - 1500 / 45) < 1e-9, 'the rate since the start is still reported');

  // The same samples in the dashboard's and the CLI's class give the same figure.
  const same = new RecentRate();
  same.observe('j_1', 0, 0);
  same.observe('j_1', 30_000, 0);
  for (let t = 31_000; t <= 45_000; t += 1000) same.observe('j_1', t, (t - 30_000) / 10);
  assert.equal(same.eta('j_1', 3500), view.etaS);
});

test('until 2 s of samples are in, the ETA is at the rate since the start; an ended job has none', async () => {
  const hub = fakeHub();
  const first = await jobJson(hub, job(1000), T0 + 10_000);
  assert.equal(first.etaS, 40, '4000 items left at 100/s since the start');
  const done = await jobJson(hub, job(5000, { state: 'completed', finishedAt: T0 + 50_000 }), T0 + 50_000);
  assert.equal(done.etaS, null);
  assert.equal(jobRatesOf(hub).rate('j_1'), undefined, 'the ended job is forgotten');
});

/** A hub whose jobs have no failures, counting their verification with `verification`. */
const statusHub = (verification: () => Promise<{ how: string; n: number }[]>) =>
  ({
    jobs: {
      queued: () => 0,
      inFlight: () => 0,
      failures: async () => [],
      items: async () => [],
      verification,
    },
    opts: { trust: { trustNative: false } },
  }) as unknown as Hub;

test("a job's status counts its verification once a second while it runs, and anew once it completes", async () => {
  let passes = 0;
  const hub = statusHub(async () => {
    passes++;
    return [{ how: 'canary', n: passes }];
  });
  const running = job(10, { id: 'j_poll' });
  const first = await jobStatus(hub, running);
  const again = await jobStatus(hub, running);
  assert.equal(passes, 1, 'a poll within the second reuses the count');
  assert.deepEqual(again.verification, first.verification);
  const completed = await jobStatus(hub, {
    ...running,
    state: 'completed',
    doneCount: 5000,
    finishedAt: Date.now(),
  });
  assert.equal(passes, 2, 'a completed job is counted anew, once');
  assert.equal((completed.verification as { canary: number }).canary, 2);
});

test("a running job's verification count that takes long is kept twenty times as long as it took", async () => {
  mock.timers.enable({ apis: ['Date'], now: T0 });
  try {
    let passes = 0;
    const hub = statusHub(async () => {
      passes++;
      mock.timers.tick(150); // a big job: the pass over its results takes 150 ms
      return [];
    });
    const running = job(10, { id: 'j_big' });
    await jobStatus(hub, running);
    mock.timers.tick(2500);
    await jobStatus(hub, running);
    assert.equal(passes, 1, '2.5 s later the count is reused (kept 3 s)');
    mock.timers.tick(600);
    await jobStatus(hub, running);
    assert.equal(passes, 2, 'past 3 s it is counted again');
  } finally {
    mock.timers.reset();
  }
});

test("a job's status lists its failed items with their reasons, and does not look for them in a job with none", async () => {
  const asked: string[] = [];
  const hub = {
    jobs: {
      queued: () => 0,
      inFlight: () => 0,
      failures: async () => [{ itemId: 7, workerId: 'w1', category: 'runtime', message: 'bad shape' }],
      items: async (_id: string, o: { state?: string }) => {
        asked.push(o.state ?? 'all');
        return [{ id: 7, jobId: 'j_f', seq: 6, name: 'x7', state: 'failed', attempts: 3 }];
      },
      verification: async () => [],
    },
    opts: { trust: { trustNative: false } },
  } as unknown as Hub;
  const none = await jobStatus(hub, job(10, { id: 'j_none' }));
  assert.deepEqual(none.failedItems, []);
  assert.deepEqual(asked, [], 'no pass over the items of a job without failed items');
  const some = await jobStatus(hub, job(10, { id: 'j_f', failedCount: 1 }));
  assert.deepEqual(some.failedItems, [
    {
      itemId: 7,
      name: 'x7',
      attempts: 3,
      reasons: [{ workerId: 'w1', category: 'runtime', message: 'bad shape' }],
    },
  ]);
  assert.deepEqual(asked, ['failed']);
});
