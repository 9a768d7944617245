/**
 * The live figures of workers the dashboard shows: the rate meter's sliding window, and a worker's
 * benchmark, observed weight, fair share and share per running job, highest priority first.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FairnessReport } from '../../protocol/fairness.ts';
import type { JobRecord } from '../../server/store/store.ts';
import { RateMeter, WorkerFigures, workerJson, type LiveWorker } from '../../server/workers.ts';

describe('RateMeter', () => {
  test('rate over the window, zero when idle, restarts when the count goes back', () => {
    const m = new RateMeter(5000, 200);
    assert.equal(m.observe('w', 0, 0), 0, 'no span yet');
    assert.equal(m.observe('w', 10, 1000), 10);
    assert.equal(m.observe('w', 30, 2000), 15);
    // Steady 20/s for a while: the window forgets the start.
    let n = 30;
    for (let t = 3000; t <= 10_000; t += 1000) m.observe('w', (n += 20), t);
    assert.equal(Math.round(m.observe('w', n, 10_000)), 20);
    // Idle: no new items; after a window the rate is 0.
    assert.equal(m.observe('w', n, 16_000), 0);
    // Worker restarted with a fresh count.
    assert.equal(m.observe('w', 3, 16_500), 0);
    assert.equal(m.observe('w', 13, 17_500), 10);
  });

  test('a long gap is not averaged in', () => {
    const m = new RateMeter(5000, 200);
    m.observe('w', 0, 0);
    m.observe('w', 100, 1000);
    assert.equal(m.observe('w', 100, 60_000), 0);
  });
});

describe('WorkerFigures', () => {
  const worker = (id: string): LiveWorker => ({
    id,
    name: id,
    kind: 'native',
    backend: 'cuda',
    pool: null,
    concurrency: 1,
    cores: 8,
    gpuMemoryBytes: null,
    capabilities: { cores: 8, memoryBytes: 1e9, hostname: 'h', gpu: { name: 'NVIDIA L4' } },
    state: 'online',
    socketId: null,
    address: '',
    connectedAt: 0,
    lastSeen: 0,
    load: null,
    queued: 0,
    running: 0,
    itemsDone: 0,
    itemsFailed: 0,
    reconnects: 0,
  });
  const job = (id: string, priority: number, sha: string): JobRecord =>
    ({ id, priority, modelSha256: sha, modelName: `m-${sha}`, createdAt: 0, state: 'running' }) as JobRecord;
  const report = (jobId: string, rows: { id: string; fair: number; share: number; items: number }[]) =>
    ({
      jobId,
      workers: rows.map((r) => ({
        workerId: r.id,
        expectedShare: r.fair,
        actualShare: r.share,
        items: r.items,
      })),
    }) as unknown as FairnessReport;

  test('per running job, highest priority first; flattened from the first', () => {
    const source = {
      schedule: {
        weight: (w: string, sha: string) => (w === 'a' ? (sha === 'low' ? 5 : 12) : undefined),
        benchmark: (w: string, sha: string) => (w === 'a' ? (sha === 'low' ? 4 : 10) : undefined),
      },
      jobs: {
        activeRecords: () => [job('j-low', 0, 'low'), job('j-high', 9, 'high')],
        liveFairness: (id: string) =>
          id === 'j-high'
            ? report(id, [
                { id: 'a', fair: 0.6, share: 0.5, items: 50 },
                { id: 'b', fair: 0.4, share: 0.5, items: 50 },
              ])
            : report(id, []),
      },
    };
    const figures = WorkerFigures.of(source, 1000);
    const a = workerJson(worker('a'), figures);
    assert.deepEqual(
      a.jobs.map((j) => j.jobId),
      ['j-high', 'j-low'],
    );
    assert.equal(a.benchmark, 10);
    assert.equal(a.weight, 12);
    assert.equal(a.observed, 12, 'observed once it has results in the job');
    assert.equal(a.fairShare, 0.6);
    assert.equal(a.share, 0.5);
    assert.equal(a.device, 'NVIDIA L4');
    const low = a.jobs[1];
    assert.equal(low?.observed, null, 'no results in that job: no observed rate');
    assert.equal(low?.fairShare, null);
    const b = workerJson(worker('b'), figures);
    assert.equal(b.benchmark, null);
    assert.equal(b.share, 0.5);
    const c = workerJson(worker('c'), figures);
    assert.deepEqual(c.jobs, [], 'in no running job');
    assert.equal(workerJson(worker('c')).rate, 0, 'without figures: no live part');
  });
});
