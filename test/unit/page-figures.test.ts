/**
 * The pages' pure parts: the recent rate behind the dashboard's ETAs, the worker rows' device and
 * load, job events in words, and the contributor page's reading of `worker:figures`.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseFigures } from '../../client/browser/figures.ts';
import { describeEvent, listedEvents } from '../../client/dashboard/job-events.ts';
import { RecentRate } from '../../protocol/recent-rate.ts';
import { deviceLabel, loadOf } from '../../client/dashboard/worker-rows.ts';

describe('recent rate', () => {
  test('the ETA follows the last seconds, not the slow start', () => {
    const r = new RecentRate(10_000);
    // 30 s of download and benchmarks with nothing done, then 100 items/s.
    r.observe('j', 0, 0);
    r.observe('j', 30_000, 0);
    for (let t = 31_000; t <= 45_000; t += 1000) r.observe('j', t, (t - 30_000) / 10);
    assert.equal(r.rate('j'), 100);
    assert.equal(r.eta('j', 3500), 35, 'the items left at the recent rate');
    // Since the start it would have been 1500 items in 45 s: 33/s and an ETA of 105 s.
  });

  test('unknown with under 2 s of samples, and after a job is forgotten', () => {
    const r = new RecentRate();
    r.observe('j', 0, 0);
    r.observe('j', 1000, 50);
    assert.equal(r.rate('j'), undefined);
    r.observe('j', 2000, 100);
    assert.equal(r.rate('j'), 50);
    r.forget('j');
    assert.equal(r.rate('j'), undefined);
  });

  test('a counter that goes back starts over', () => {
    const r = new RecentRate();
    r.observe('j', 0, 500);
    r.observe('j', 3000, 800);
    r.observe('j', 4000, 10);
    assert.equal(r.rate('j'), undefined);
  });
});

describe('worker rows', () => {
  const caps = (gpu?: string) => ({
    cores: 8,
    memoryBytes: 0,
    hostname: 'build-box-7',
    ...(gpu ? { gpu: { name: gpu } } : {}),
  });

  test('the device is the GPU or adapter, else the processor, never the host name', () => {
    assert.equal(deviceLabel({ capabilities: caps('NVIDIA RTX 4090'), cores: 8 }), 'NVIDIA RTX 4090');
    assert.equal(deviceLabel({ capabilities: caps(), cores: 8 }), 'CPU, 8 cores');
    assert.equal(deviceLabel({ capabilities: caps(), cores: 1 }), 'CPU, 1 core');
  });

  test('load is shown where reported; browsers report none', () => {
    assert.deepEqual(loadOf({ load: { cpu: 0.5, memUsedBytes: 1, memTotalBytes: 4 } }), {
      cpu: 0.5,
      mem: 0.25,
    });
    assert.equal(loadOf({ load: { cpu: 0, memUsedBytes: 0, memTotalBytes: 0 } }), null);
    assert.equal(loadOf({ load: null }), null);
  });
});

describe('job events', () => {
  const names = (id: string) => ({ w1: 'node-a', w2: 'node-b' })[id] ?? id;

  test('events read in words, oldest first, without the stored fairness report', () => {
    const events = listedEvents([
      { id: 3, at: 30, type: 'fairness', data: {} },
      {
        id: 2,
        at: 20,
        type: 'requeue',
        data: { workerId: 'w1', items: 118, reason: 'no heartbeat for 6000 ms' },
      },
      {
        id: 1,
        at: 10,
        type: 'steal',
        data: { thief: 'w2', victim: 'w1', items: 12, reason: 'finishes 4 s later' },
      },
    ]);
    assert.deepEqual(
      events.map((e) => e.type),
      ['steal', 'requeue'],
    );
    assert.equal(describeEvent(events[0]!, names), '12 items from node-a: finishes 4 s later');
    assert.equal(describeEvent(events[1]!, names), '118 items back to the queue: no heartbeat for 6000 ms');
    assert.equal(
      describeEvent(
        {
          id: 4,
          at: 40,
          type: 'quarantine',
          data: { workerId: 'w1', reason: 'wrong canary', recomputed: 7 },
        },
        names,
      ),
      '7 of its results to compute again: wrong canary',
    );
  });
});

describe('contributor figures', () => {
  test('a share never reads above the whole job, and probation is read', () => {
    const f = parseFigures({
      jobs: [{ jobId: 'j1', model: 'm', items: 60, done: 60, doneHere: 62, queued: 0 }],
      probation: { confirmed: 3, needed: 10, awaitingCheck: 2, maxItems: 2 },
    });
    assert.ok(f);
    assert.equal(f.jobs[0]?.doneHere, 60);
    assert.equal(f.jobs[0]?.share, 1);
    assert.deepEqual(f.probation, { confirmed: 3, needed: 10, awaitingCheck: 2, maxItems: 2 });
  });

  test('an empty list (no job running) clears the shares; malformed payloads are ignored', () => {
    assert.deepEqual(parseFigures({ jobs: [] }), { jobs: [] });
    assert.equal(parseFigures({ nope: 1 }), undefined);
    assert.equal(parseFigures(null), undefined);
  });
});
