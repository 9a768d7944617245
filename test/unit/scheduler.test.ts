/**
 * The scheduler's decisions, with an injected clock: weights, shard sizing, steal thresholds and
 * sizes, speculation, membership changes, requirements, priorities, failures.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Scheduler, type SchedJob, type SchedulerOptions } from '../../server/scheduler/scheduler.ts';
import {
  factoringChunk,
  isImbalanced,
  shouldSpeculate,
  speculationCap,
  stealSize,
} from '../../server/scheduler/policy.ts';
import { RateEstimate, priorWeight } from '../../server/scheduler/weights.ts';
import { schedWorker as worker } from '../helpers/sched-worker.ts';

const SHA = 'a'.repeat(64);

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

function job(id: string, extra: Partial<SchedJob> = {}): SchedJob {
  return { id, priority: 0, deadline: null, modelSha256: SHA, batchSize: 1, requirements: null, ...extra };
}

function ids(n: number, from = 1): number[] {
  return Array.from({ length: n }, (_, i) => from + i);
}

function make(opts: Partial<SchedulerOptions> = {}) {
  const c = clock();
  const s = new Scheduler({ clock: c.now, ...opts });
  return { s, c };
}

describe('policy functions', () => {
  test('weighted factoring gives a worker its weight’s share of half the remaining items', () => {
    assert.equal(factoringChunk(1000, 1, 4, 1), 125);
    assert.equal(factoringChunk(1000, 3, 4, 1), 375);
    assert.equal(factoringChunk(10, 1, 4, 4), 4, 'never below the minimum');
    assert.equal(factoringChunk(3, 1, 1, 8), 3, 'never above what is left');
  });

  test('a balanced load is not worth a steal; a significant imbalance is', () => {
    assert.equal(isImbalanced(1.0, 0.95), false);
    assert.equal(isImbalanced(0.04, 0.0), false, 'gaps under the absolute threshold are ignored');
    assert.equal(isImbalanced(2.0, 0.2), true);
  });

  test('steal size balances predicted finish times', () => {
    // victim: 100 items at 10/s (10 s); thief: 0 items at 30/s → move 75: both finish in 2.5 s.
    assert.equal(stealSize(100, 10, 0, 30), 75);
    assert.equal(stealSize(10, 10, 10, 10), 0, 'equal loads: nothing to move');
  });

  test('speculation only when the holder is predicted to finish well after the idle worker could', () => {
    assert.equal(shouldSpeculate(1.0, 10), true); // idle worker: 0.1 s per item
    assert.equal(shouldSpeculate(0.15, 10), false);
    assert.equal(speculationCap(8), 1);
    assert.equal(speculationCap(40), 4);
  });

  test('GPU priors rank known devices and default unknown ones to 1', () => {
    assert.equal(priorWeight('NVIDIA GeForce RTX 3090'), 1);
    assert.equal(priorWeight('NVIDIA GeForce RTX 4090'), 1.5);
    assert.equal(priorWeight('NVIDIA H100 80GB HBM3'), 2.5);
    assert.equal(priorWeight('Mystery Accelerator'), 1);
    assert.equal(priorWeight(undefined), 1);
  });
});

describe('rate estimate', () => {
  const OPTS = { tauS: 1, windowS: 0.25, graceS: 0.25 };
  test('a worker that slows down loses weight within seconds of busy time', () => {
    const r = new RateEstimate(OPTS);
    r.bench = 100;
    let t = 0;
    r.busy(t);
    for (let i = 0; i < 40; i++) r.done(10, (t += 100)); // 100 items/s for 4 s
    assert.ok(Math.abs((r.figure() ?? 0) - 100) < 5, `steady near 100, got ${r.figure()}`);
    for (let i = 0; i < 20; i++) r.done(1, (t += 100)); // now 10 items/s for 2 s
    assert.ok((r.figure() ?? 100) < 25, `after 2 s at 10/s the weight is near 10, got ${r.figure()}`);
  });

  test('idle time is not counted as slowness', () => {
    const r = new RateEstimate(OPTS);
    r.busy(0);
    r.done(50, 500); // 100/s
    r.idle(500);
    r.busy(10_500); // 10 s idle
    r.done(50, 11_000);
    assert.ok(Math.abs((r.figure() ?? 0) - 100) < 1, `still 100/s, got ${r.figure()}`);
  });

  test('a busy worker that has gone quiet is marked down before its items finish', () => {
    const r = new RateEstimate(OPTS);
    r.bench = 100;
    r.busy(0);
    assert.equal(r.at(10), 100);
    assert.equal(r.at(250), 100, 'its first results may take a moment (the grace)');
    const late = r.at(5000) ?? 100;
    assert.ok(late < 10, `no result for 5 s at a predicted 100/s: ${late}`);
    assert.ok((r.at(10_000) ?? 100) < late, 'and lower the longer it stays quiet');
  });

  test('a worker that reports in batches is not marked down between them', () => {
    // A native node sends 32 results at a time, about every 10.7 ms at 3,000 items/s. Between two
    // messages it has sent nothing for a while, as expected: its rate stays 3,000 all along.
    const r = new RateEstimate(OPTS);
    r.bench = 3000;
    r.busy(0);
    let lowest = Infinity;
    for (let t = 32 / 3; t < 2000; t += 32 / 3) {
      r.done(32, t);
      for (const dt of [1, 5, 10]) lowest = Math.min(lowest, r.at(t + dt) ?? 0);
    }
    assert.ok(lowest > 2900, `between messages the rate stayed near 3,000 (lowest ${lowest.toFixed(0)})`);
    // The same worker silent for a second is marked down.
    assert.ok((r.at(3000) ?? 3000) < 1000, 'silent for a second, it is marked down');
  });
});

describe('scheduler', () => {
  test('a worker is benchmarked before it gets a job’s items', () => {
    const { s } = make();
    s.addWorker(worker('w1'));
    s.addJob(job('j'), ids(10));
    const p = s.plan();
    assert.deepEqual(p.benchmark, [{ workerId: 'w1', modelSha256: SHA }]);
    assert.equal(p.assign.length, 0);
    assert.equal(s.plan().benchmark.length, 0, 'asked once');
    s.setBenchmark('w1', SHA, 10);
    assert.equal(s.plan().assign.length, 1);
  });

  test('a failed benchmark is retried later, each time after a longer wait, not skipped for good', () => {
    const { s, c } = make({ benchmarkRetryMs: 30_000 });
    s.addWorker(worker('w1'));
    s.addJob(job('j'), ids(10));
    assert.equal(s.plan().benchmark.length, 1);
    s.setUnusable('w1', SHA);
    assert.equal(s.eligible('w1', 'j'), false, 'skipped right after the failure');
    assert.equal(s.plan().benchmark.length, 0);
    c.advance(29_000);
    assert.equal(s.plan().benchmark.length, 0, 'not before the wait is over');
    c.advance(1_000);
    assert.equal(s.eligible('w1', 'j'), true);
    assert.deepEqual(s.plan().benchmark, [{ workerId: 'w1', modelSha256: SHA }], 'benchmarked again');
    s.setUnusable('w1', SHA);
    c.advance(30_000);
    assert.equal(s.plan().benchmark.length, 0, 'the second wait is twice as long');
    c.advance(30_000);
    assert.equal(s.plan().benchmark.length, 1);
    s.setBenchmark('w1', SHA, 10);
    assert.equal(s.plan().assign.length, 1, 'a benchmark that works makes the model usable again');
  });

  test('a single worker gets everything, in shards, until the job is drained', () => {
    const { s } = make();
    s.addWorker(worker('w1'));
    s.setBenchmark('w1', SHA, 100);
    s.addJob(job('j'), ids(100));
    let total = 0;
    for (let i = 0; i < 50 && s.queued('j') > 0; i++) {
      const p = s.plan();
      for (const a of p.assign) {
        total += a.itemIds.length;
        s.finished('w1', a.itemIds);
      }
    }
    assert.equal(total, 100);
    assert.equal(s.queued('j'), 0);
  });

  test('shards follow weight and shrink as the job drains', () => {
    const { s } = make({ maxShardSeconds: Infinity });
    s.addWorker(worker('fast'));
    s.addWorker(worker('slow'));
    s.setBenchmark('fast', SHA, 30);
    s.setBenchmark('slow', SHA, 10);
    s.addJob(job('j'), ids(1000));
    const first = s.plan().assign;
    const fast = first.find((a) => a.workerId === 'fast')?.itemIds.length ?? 0;
    const slow = first.find((a) => a.workerId === 'slow')?.itemIds.length ?? 0;
    assert.equal(fast, 375, 'fast: 3/4 of half of 1000');
    assert.ok(slow < fast && slow > 0);
    s.finished('fast', first.find((a) => a.workerId === 'fast')?.itemIds ?? []);
    const next = s.plan().assign.find((a) => a.workerId === 'fast')?.itemIds.length ?? 0;
    assert.ok(next < fast, `next shard ${next} smaller than the first ${fast}`);
  });

  test('a top-up brings a worker to at most maxShardSeconds of work, never below its low-water mark', () => {
    const { s } = make({ maxShardSeconds: 2 });
    s.addWorker(worker('fast'));
    s.addWorker(worker('slow'));
    s.setBenchmark('fast', SHA, 30);
    s.setBenchmark('slow', SHA, 0.5);
    s.addJob(job('j'), ids(1000));
    const first = s.plan().assign;
    assert.equal(first.find((a) => a.workerId === 'fast')?.itemIds.length, 60, '2 s at 30 items/s');
    assert.equal(first.find((a) => a.workerId === 'slow')?.itemIds.length, 2, 'its low-water mark');
  });

  test('a worker with only a benchmark is weighed in the units of the job’s items', () => {
    // The job's items cost 10 calibration items: 'a', benchmarked at 100/s, does 10/s of them.
    const { s, c } = make();
    s.addWorker(worker('a'));
    s.setBenchmark('a', SHA, 100);
    s.addJob(job('j'), ids(2000));
    const held = s.plan().assign[0]?.itemIds ?? [];
    for (let i = 0; i < 50; i++) {
      c.advance(100);
      s.finished('a', [held[i] as number]);
    }
    const a = s.weight('a', SHA) ?? 0;
    assert.ok(a > 9 && a < 13, `'a' is weighed near its 10 items/s: ${a}`);
    // 'b' joins with the same benchmark: it is as fast as 'a' on these items, not ten times faster.
    s.addWorker(worker('b'));
    s.setBenchmark('b', SHA, 100);
    const b = s.weight('b', SHA) ?? 0;
    assert.ok(Math.abs(b - a) < 0.01 * a, `'b' is weighed like 'a': ${b} against ${a}`);
    const shard = s.plan('b').assign[0]?.itemIds.length ?? 0;
    assert.ok(shard > 0 && shard <= Math.ceil(2 * a), `its first shard is about 2 s of work: ${shard} items`);
  });

  test('an idle worker steals the newest items from the worker predicted to finish last', () => {
    const { s } = make({ factoring: false, speculation: false });
    s.addWorker(worker('slow'));
    s.setBenchmark('slow', SHA, 10);
    s.addJob(job('j'), ids(100));
    s.plan(); // static split: the only worker takes all 100
    assert.equal(s.heldBy('slow').length, 100);
    s.addWorker(worker('fast'));
    s.setBenchmark('fast', SHA, 30);
    const p = s.plan();
    assert.equal(p.steal.length, 1, 'a joining worker gets work at once, by stealing');
    const st = p.steal[0];
    assert.ok(st);
    assert.equal(st.thief, 'fast');
    assert.equal(st.victim, 'slow');
    assert.equal(st.itemIds.length, 75);
    assert.deepEqual(st.itemIds, ids(75, 26), 'the newest items');
    assert.equal(s.plan().steal.length, 0, 'one steal in flight per victim and thief');
    // The victim had already started items 26..30: only the rest move.
    const revoked = ids(70, 31);
    const a = s.stealDone(st, revoked);
    assert.deepEqual(a?.itemIds, revoked);
    assert.equal(s.heldBy('slow').length, 30);
    assert.equal(s.heldBy('fast').length, 70);
    for (const id of ids(100)) assert.ok(s.holdersOf(id).length <= 1, `item ${id} held once`);
  });

  test('a thief never steals an item it must not run: one it answered, awaiting a second opinion', () => {
    // A fast liar and a slow honest worker. The liar's first answer needs a second opinion from
    // someone else; the liar drains the queue meanwhile, and the honest worker takes that item last.
    const { s } = make({ speculation: false });
    s.addWorker(worker('honest'));
    s.addWorker(worker('liar'));
    s.setBenchmark('honest', SHA, 1);
    s.setBenchmark('liar', SHA, 100);
    s.addJob(job('j'), ids(200));
    s.plan();
    const checked = s.heldBy('liar')[0] as number;
    s.finished('liar', [checked]);
    s.requeue('j', checked, ['liar']);
    while (s.queued('j') > 1) {
      s.plan();
      s.finished('liar', s.heldBy('liar'));
    }
    s.finished('honest', s.heldBy('honest').slice(0, 1));
    const p = s.plan();
    assert.equal(p.assign.find((a) => a.itemIds.includes(checked))?.workerId, 'honest');
    assert.equal(s.heldBy('honest').at(-1), checked, 'the newest item the honest worker holds');
    // The idle liar steals the honest worker's newest items, but not that one.
    const steals = [...p.steal, ...s.plan().steal];
    assert.ok(steals.length > 0, 'the idle liar steals');
    for (const st of steals) {
      assert.equal(st.thief, 'liar');
      assert.ok(!st.itemIds.includes(checked), `the liar does not steal it: ${JSON.stringify(st)}`);
      s.stealDone(st, st.itemIds);
    }
    assert.deepEqual([...s.holdersOf(checked)], ['honest']);
  });

  test('no steal when the load is balanced', () => {
    const { s } = make({ factoring: false, speculation: false });
    s.addWorker(worker('a'));
    s.addWorker(worker('b'));
    s.setBenchmark('a', SHA, 10);
    s.setBenchmark('b', SHA, 10);
    s.addJob(job('j'), ids(100));
    s.plan();
    assert.equal(s.heldBy('a').length, 50);
    s.finished('a', s.heldBy('a').slice(0, 2));
    assert.equal(s.plan().steal.length, 0);
  });

  test('speculation: an idle fast worker copies a straggler’s running item, capped, first result wins', () => {
    const { s } = make({ factoring: false });
    s.addWorker(worker('slow'));
    s.addWorker(worker('fast'));
    s.setBenchmark('slow', SHA, 10);
    s.setBenchmark('fast', SHA, 100);
    s.addJob(job('j'), ids(22));
    const split = s.plan().assign;
    // fast finishes its share; slow still holds its items, all started (revoke gave nothing back).
    for (const a of split) if (a.workerId === 'fast') s.finished('fast', a.itemIds);
    const slowHeld = s.heldBy('slow');
    assert.ok(slowHeld.length > 0);
    const p1 = s.plan();
    const st = p1.steal[0];
    assert.ok(st, 'first a steal is tried');
    s.stealDone(st, []);
    const p2 = s.plan();
    const copy = p2.assign.find((a) => a.speculative);
    assert.ok(copy, 'then a speculative copy');
    assert.equal(copy.workerId, 'fast');
    assert.equal(copy.itemIds.length, 1);
    const item = copy.itemIds[0] as number;
    assert.deepEqual([...s.holdersOf(item)], ['slow', 'fast']);
    assert.equal(s.plan().assign.filter((a) => a.speculative).length, 0, 'cap: one copy among 2 workers');
    const { mine, cancel } = s.finished('fast', [item]);
    assert.deepEqual(mine, [item]);
    assert.deepEqual(cancel.get('slow'), [item], 'the other copy is cancelled');
    assert.equal(s.holdersOf(item).length, 0);
  });

  test('a worker that leaves loses its items back to the queue at once', () => {
    const { s } = make();
    s.addWorker(worker('a'));
    s.addWorker(worker('b'));
    s.setBenchmark('a', SHA, 10);
    s.setBenchmark('b', SHA, 10);
    s.addJob(job('j'), ids(100));
    s.plan();
    const held = s.heldBy('a');
    assert.ok(held.length > 0);
    const back = s.removeWorker('a');
    assert.deepEqual(
      back.get('j')?.sort((x, y) => x - y),
      held.sort((x, y) => x - y),
    );
    s.finished('b', s.heldBy('b'));
    const b = s.plan().assign.find((x) => x.workerId === 'b');
    assert.ok(b);
    assert.ok(b.itemIds.includes(held[0] as number), 'requeued items go out first');
  });

  test('requirements: only matching workers get a job’s items', () => {
    const { s } = make();
    s.addWorker(worker('cpu', { backend: 'cpu' }));
    s.addWorker(worker('gpu', { backend: 'cuda', gpuMemoryBytes: 24e9, pool: 'gpu' }));
    s.setBenchmark('cpu', SHA, 10);
    s.setBenchmark('gpu', SHA, 10);
    s.addJob(job('j', { requirements: { backend: 'cuda', minGpuMemoryBytes: 16e9, pool: 'gpu' } }), ids(10));
    const p = s.plan();
    assert.ok(p.assign.every((a) => a.workerId === 'gpu'));
    assert.ok(p.assign.length > 0);
  });

  test('higher priority jobs are served first; a near deadline raises priority', () => {
    const { s, c } = make();
    s.addWorker(worker('w'));
    s.setBenchmark('w', SHA, 10);
    s.addJob(job('low', { priority: 0 }), ids(10, 1));
    s.addJob(job('high', { priority: 5 }), ids(10, 100));
    assert.equal(s.plan().assign[0]?.jobId, 'high');
    const { s: s2 } = make();
    s2.addWorker(worker('w'));
    s2.setBenchmark('w', SHA, 10);
    s2.addJob(job('later', { priority: 1 }), ids(10, 1));
    s2.addJob(job('urgent', { priority: 0, deadline: c.now() + 2000 }), ids(10, 100));
    assert.equal(s2.plan().assign[0]?.jobId, 'urgent');
  });

  test('a failing item is retried on another worker, then ends failed — never a loop', () => {
    const { s } = make({ maxAttempts: 3 });
    s.addWorker(worker('a'));
    s.addWorker(worker('b'));
    s.setBenchmark('a', SHA, 10);
    s.setBenchmark('b', SHA, 10);
    s.addJob(job('j'), [1]);
    const first = s.plan().assign[0];
    assert.ok(first);
    assert.equal(s.failed(first.workerId, 'j', 1), 'retry');
    const second = s.plan().assign[0];
    assert.ok(second);
    assert.notEqual(second.workerId, first.workerId, 'retried elsewhere');
    assert.equal(s.failed(second.workerId, 'j', 1), 'final', 'failed on every eligible worker');
    assert.equal(s.queued('j'), 0);
  });

  test('stranded: queued items none of the ready workers will take (requirements, or each failed them)', () => {
    const { s } = make();
    s.addJob(job('gpu', { requirements: { pool: 'gpu' } }), ids(5));
    assert.equal(s.stranded('gpu'), false, 'no worker ready: waiting, not stranded');
    s.addWorker(worker('cpu', { pool: 'cpu' }));
    assert.equal(s.stranded('gpu'), true, 'the only ready worker does not fit the job');
    s.addWorker(worker('gpu1', { pool: 'gpu' }));
    assert.equal(s.stranded('gpu'), false, 'a fitting worker takes fresh items, benchmarked or not yet');

    s.addJob(job('j'), [100]);
    s.setBenchmark('cpu', SHA, 10);
    s.setBenchmark('gpu1', SHA, 10);
    const a = s.plan().assign.find((x) => x.jobId === 'j');
    assert.ok(a);
    assert.equal(s.failed(a.workerId, 'j', 100), 'retry');
    assert.equal(s.stranded('j'), false, 'the other worker may take it');
    s.setReady(a.workerId === 'cpu' ? 'gpu1' : 'cpu', false);
    assert.equal(s.stranded('j'), true, 'only the worker that failed it is ready');
    assert.equal(s.stranded('none'), false);
  });

  test('an item waiting for a replica only a departed worker could give goes to anyone again', () => {
    const { s } = make();
    s.addWorker(worker('a'));
    s.addWorker(worker('b'));
    s.setBenchmark('a', SHA, 10);
    s.setBenchmark('b', SHA, 10);
    s.addJob(job('j'), [1, 2]);
    const plan = s.plan().assign;
    const first = plan.find((a) => a.itemIds.includes(1));
    assert.ok(first);
    const other = first.workerId === 'a' ? 'b' : 'a';
    // Item 1 needs a replica from a worker other than the first; item 2 is in nobody's way.
    s.requeue('j', 1, [first.workerId]);
    s.removeWorker(other);
    const again = s.plan().assign.flatMap((a) => a.itemIds.map((id) => [a.workerId, id]));
    assert.deepEqual(
      again.filter(([, id]) => id === 1),
      [[first.workerId, 1]],
      'with the only other worker gone, the item may go back to the first',
    );
  });

  test('paused workers get nothing new', () => {
    const { s } = make();
    s.addWorker(worker('w'));
    s.setBenchmark('w', SHA, 10);
    s.setReady('w', false);
    s.addJob(job('j'), ids(10));
    assert.equal(s.plan().assign.length, 0);
    s.setReady('w', true);
    assert.equal(s.plan().assign.length, 1);
  });
});
