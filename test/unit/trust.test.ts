/**
 * Trust bookkeeping and result judging against a real SQLite file: canaries, replicas and quorum,
 * strikes and quarantine, reverting unconfirmed results; and the pieces around them (canary counts,
 * rate limits, fairness figures).
 */
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { ModelInfo } from '../../protocol/model.ts';
import { packTensors, unpackTensors } from '../../protocol/pack.ts';
import type { WireTensor } from '../../protocol/tensor.ts';
import { canaryCount, pickCanaries } from '../../server/preflight.ts';
import { RateLimiter } from '../../server/rate-limit.ts';
import { FairnessTracker } from '../../server/scheduler/fairness.ts';
import { TrustCache } from '../../server/hub/trust-cache.ts';
import { SqliteAsyncStore } from '../../server/store/sqlite-async-store.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { TrustStore } from '../../server/store/trust-store.ts';
import { DEFAULT_TRUST_OPTIONS, TrustBook } from '../../server/trust.ts';
import { Verifier, agreeingGroups } from '../../server/verify.ts';
import { newJob } from '../helpers/store-rows.ts';

const dir = mkdtempSync(join(tmpdir(), 'shardhub-trust-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MODEL = {
  name: 'm',
  sha256: 'a'.repeat(64),
  outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 2] }],
  tolerance: { atol: 1e-3, rtol: 0 },
} as unknown as ModelInfo;

function y(a: number, b: number): WireTensor[] {
  return [
    { name: 'y', dtype: 'float32', dims: [1, 2], data: new Uint8Array(new Float32Array([a, b]).buffer) },
  ];
}

function setup(name: string, opts = DEFAULT_TRUST_OPTIONS) {
  const file = join(dir, `${name}.sqlite`);
  const store = SqliteStore.open(file);
  const ts = TrustStore.open(file);
  const book = new TrustBook(ts, opts, () => 0.99);
  const verifier = new Verifier(ts, book);
  return { store, ts, book, verifier };
}

function judge(
  v: Verifier,
  workerId: string,
  itemId: number,
  outputs: WireTensor[],
  canAsk = true,
  redundancy = 1,
) {
  return v.judge({
    workerId,
    kind: 'browser',
    backend: 'wasm',
    jobId: 'j',
    itemId,
    redundancy,
    model: MODEL,
    outputs,
    packed: packTensors(outputs),
    ms: 1,
    canAsk: () => canAsk,
  });
}

describe('result judging', () => {
  test('agreeing groups cluster outputs within the tolerance', () => {
    const r = (w: string, a: number) => ({
      itemId: 1,
      workerId: w,
      backend: 'cpu',
      outputs: packTensors(y(a, 0)),
      ms: 1,
      at: 0,
    });
    const groups = agreeingGroups([r('a', 1), r('b', 1.0005), r('c', 5)], MODEL.tolerance);
    assert.deepEqual(
      groups.map((g) => g.map((x) => x.workerId)),
      [['a', 'b'], ['c']],
    );
  });

  test('two unproven workers who agree, with no one else to ask, are accepted as an unproven quorum', () => {
    const { verifier } = setup('unproven-quorum');
    assert.equal(judge(verifier, 'n1', 1, y(1, 2)).kind, 'replicate');
    const second = judge(verifier, 'n2', 1, y(1, 2), false);
    // Two new workers that lie alike agree too: the store takes such a result back with its
    // worker's unconfirmed ones if that worker is quarantined (`revertible`).
    assert.ok(second.kind === 'accept' && second.verified === 'quorum-2-unproven', JSON.stringify(second));
  });

  test('an unproven worker’s result waits for a second opinion; agreement accepts and confirms both', () => {
    const { verifier, book } = setup('quorum');
    book.confirmed('w2', DEFAULT_TRUST_OPTIONS.trustAfter); // a proven worker confirms
    const first = judge(verifier, 'w1', 1, y(1, 2));
    assert.equal(first.kind, 'replicate');
    assert.deepEqual(first.kind === 'replicate' && first.avoid, ['w1']);
    assert.equal(verifier.pendingChecks('w1'), 1);
    const second = judge(verifier, 'w2', 1, y(1, 2));
    assert.equal(second.kind, 'accept');
    assert.ok(second.kind === 'accept' && second.verified === 'quorum-2' && second.confirm.length === 2);
    assert.equal(verifier.pendingChecks('w1'), 0);
    void book;
  });

  test('a disagreement asks a tie-breaker; the outvoted worker is refuted', () => {
    const { verifier, book } = setup('tie');
    book.confirmed('honest2', DEFAULT_TRUST_OPTIONS.trustAfter);
    judge(verifier, 'honest1', 7, y(1, 2));
    const clash = judge(verifier, 'liar', 7, y(9, 9));
    assert.equal(clash.kind, 'replicate');
    const decided = judge(verifier, 'honest2', 7, y(1, 2));
    assert.equal(decided.kind, 'accept');
    assert.ok(decided.kind === 'accept');
    assert.deepEqual(decided.refute, ['liar']);
    assert.deepEqual(decided.confirm.sort(), ['honest1', 'honest2']);
  });

  test('like with like: across backends a tie-breaker comes from the first backend; a dissenter on any backend is judged within the model’s tolerance', () => {
    const { verifier, book } = setup('like');
    book.confirmed('cpu2', DEFAULT_TRUST_OPTIONS.trustAfter);
    const args = (workerId: string, backend: string, outputs: WireTensor[]) => ({
      workerId,
      kind: 'browser' as const,
      backend,
      itemId: 9,
      redundancy: 1,
      model: MODEL,
      outputs,
      packed: packTensors(outputs),
      ms: 1,
      canAsk: () => true,
      otherBackends: (b: string) => (b === 'wasm' ? ['gpu1', 'gpu2'] : ['cpu1']),
    });
    verifier.judge(args('cpu1', 'wasm', y(1, 2)));
    const clash = verifier.judge(args('gpu1', 'webgpu', y(1.5, 2)));
    assert.equal(clash.kind, 'replicate');
    assert.ok(
      clash.kind === 'replicate' && clash.avoid.includes('gpu2'),
      'the tie-breaker must not be another webgpu worker',
    );
    const decided = verifier.judge(args('cpu2', 'wasm', y(1, 2)));
    assert.ok(decided.kind === 'accept');
    assert.deepEqual(
      decided.refute,
      ['gpu1'],
      'a webgpu result beyond the model’s cross-backend tolerance of the wasm ones is judged (finding 5)',
    );
  });

  test('no quorum after the tie-breakers: the item fails rather than loops', () => {
    const { verifier } = setup('noquorum');
    assert.equal(judge(verifier, 'a', 3, y(1, 1)).kind, 'replicate');
    assert.equal(judge(verifier, 'b', 3, y(2, 2)).kind, 'replicate');
    assert.equal(judge(verifier, 'c', 3, y(3, 3)).kind, 'replicate');
    assert.equal(judge(verifier, 'd', 3, y(4, 4)).kind, 'replicate');
    assert.equal(judge(verifier, 'e', 3, y(5, 5)).kind, 'fail');
  });

  test('two unproven workers that agree are not enough: identical liars cannot confirm each other', () => {
    const { verifier } = setup('collude');
    assert.equal(judge(verifier, 'liar1', 4, y(9, 9)).kind, 'replicate');
    assert.equal(judge(verifier, 'liar2', 4, y(9, 9)).kind, 'replicate', 'a third opinion is asked');
    const v = judge(verifier, 'honest', 4, y(1, 1));
    assert.equal(v.kind, 'replicate', 'still no group of three, nor a proven member');
  });

  test('a lone result no other worker can check goes to the reference backend, never accepted unverified', () => {
    const { verifier } = setup('lone');
    const v = judge(verifier, 'only', 5, y(1, 1), false);
    assert.equal(v.kind, 'reference');
    assert.ok(v.kind === 'reference' && v.replicas.length === 1 && v.replicas[0]?.workerId === 'only');
    assert.equal(verifier.isWaiting(5), false, 'its replica left the verifier with it');
  });

  test('replicas waiting for a confirmer are found stale, oldest first, and taken out', () => {
    const { verifier } = setup('stale');
    assert.equal(judge(verifier, 'new', 6, y(1, 1)).kind, 'replicate');
    assert.deepEqual(verifier.stale(Date.now(), 60_000), [], 'not stale yet');
    const stale = verifier.stale(Date.now() + 2000, 1000);
    assert.equal(stale.length, 1);
    assert.equal(stale[0]?.itemId, 6);
    assert.equal(verifier.take(6).length, 1);
    assert.equal(verifier.isWaiting(6), false);
    assert.equal(verifier.pendingChecks('new'), 0);
  });

  test('a worker given an item again answers once: its two answers are no quorum against an honest worker', async () => {
    // As the hub has it: the verifier reads and writes the in-memory trust cache.
    const store = await SqliteAsyncStore.open(join(dir, 'again.sqlite'));
    try {
      const cache = await TrustCache.load(store, { later: () => undefined, laterRows: () => undefined });
      let roll = 0.01; // every proven result is spot-checked
      const book = new TrustBook(cache, DEFAULT_TRUST_OPTIONS, () => roll);
      const verifier = new Verifier(cache, book);
      book.confirmed('liar', DEFAULT_TRUST_OPTIONS.trustAfter);
      book.confirmed('honest', DEFAULT_TRUST_OPTIONS.trustAfter);
      const lie = y(1.06, 2);
      assert.equal(judge(verifier, 'liar', 9, lie).kind, 'replicate', 'a spot check');
      roll = 0.99;
      // Given the item again (a re-run), it tells the same lie: its answer replaces its first, and
      // waits for the check with it rather than being accepted on its record.
      assert.equal(judge(verifier, 'liar', 9, lie).kind, 'replicate');
      assert.equal(cache.replicasOf(9).length, 1);
      assert.equal(verifier.pendingChecks('liar'), 1);
      const honest = judge(verifier, 'honest', 9, y(1, 2));
      assert.equal(honest.kind, 'replicate', 'one against one: a tie-breaker is asked, nobody outvoted');
      const decided = judge(verifier, 'honest2', 9, y(1, 2));
      assert.ok(decided.kind === 'accept', JSON.stringify(decided));
      assert.deepEqual([...unpackTensors(decided.outputs)[0]!.data], [...y(1, 2)[0]!.data]);
      assert.deepEqual(decided.refute, ['liar']);
      assert.equal(verifier.pendingChecks('liar'), 0);
    } finally {
      await store.close();
    }
  });

  test('a replica another hub left waiting is adopted: the next answer is judged against it', async () => {
    const store = await SqliteAsyncStore.open(join(dir, 'adopt.sqlite'));
    try {
      const cache = await TrustCache.load(store, { later: () => undefined, laterRows: () => undefined });
      const book = new TrustBook(cache, DEFAULT_TRUST_OPTIONS, () => 0.99); // no spot checks of its own
      const verifier = new Verifier(cache, book);
      book.confirmed('liar', DEFAULT_TRUST_OPTIONS.trustAfter);
      book.confirmed('honest', DEFAULT_TRUST_OPTIONS.trustAfter);
      // The liar's spot-checked answer, stored by a hub that died before anyone confirmed it.
      const lie = {
        itemId: 21,
        workerId: 'liar',
        backend: 'sim',
        outputs: packTensors(y(1.06, 2)),
        ms: 1,
        at: 1,
      };
      verifier.adopt('j', [lie]);
      verifier.adopt('j', [lie]); // found again (the chunk taken a second time): counted once
      assert.equal(verifier.isWaiting(21), true);
      assert.equal(verifier.pendingChecks('liar'), 1);
      // A proven honest worker's answer is not taken at its word: it disagrees with the waiting one.
      assert.equal(judge(verifier, 'honest', 21, y(1, 2)).kind, 'replicate');
      const decided = judge(verifier, 'honest2', 21, y(1, 2));
      assert.ok(decided.kind === 'accept', JSON.stringify(decided));
      assert.deepEqual(decided.refute, ['liar']);
      assert.equal(verifier.pendingChecks('liar'), 0);
      // Without the adoption, the same proven worker's answer is accepted directly.
      assert.equal(judge(verifier, 'honest', 22, y(1, 2)).kind, 'accept');
    } finally {
      await store.close();
    }
  });

  test('a worker quarantined while its answer waited has no vote in that check', () => {
    const { book, verifier } = setup('quarantined-vote');
    const lie = y(1.06, 2);
    assert.equal(judge(verifier, 'liar-1', 31, lie).kind, 'replicate', 'a new worker is checked');
    book.refuted('liar-1', 'caught elsewhere', true);
    assert.equal(book.isQuarantined('liar-1'), true);
    // Its accomplice tells the same lie and nobody else can be asked: with the quarantined worker's
    // answer counted, the two would be a quorum and the lie accepted.
    const v = judge(verifier, 'liar-2', 31, lie, false);
    assert.notEqual(v.kind, 'accept', `the lie is not accepted: ${JSON.stringify(v)}`);
    assert.ok(v.kind === 'reference', 'the reference backend decides it');
    assert.deepEqual(
      v.replicas.map((r) => r.workerId),
      ['liar-2'],
      'with the accomplice as the only answer',
    );
  });

  test('a canary is checked against its known answer', () => {
    const { verifier } = setup('canary');
    verifier.addCanaries('j', [{ itemId: 11, outputs: packTensors(y(4, 2)) }]);
    assert.equal(judge(verifier, 'w', 11, y(4, 2)).kind, 'accept');
    const wrong = judge(verifier, 'w', 11, y(4, 3));
    assert.equal(wrong.kind, 'refuse');
  });

  test('a proven worker is accepted directly, except for spot checks', () => {
    const file = join(dir, 'proven.sqlite');
    SqliteStore.open(file);
    const ts = TrustStore.open(file);
    let roll = 0.99;
    const book = new TrustBook(ts, DEFAULT_TRUST_OPTIONS, () => roll);
    book.confirmed('p', DEFAULT_TRUST_OPTIONS.trustAfter);
    assert.equal(book.needsReplica('p', 'browser', 1), false);
    roll = 0.01;
    assert.equal(book.needsReplica('p', 'browser', 1), true, 'spot check');
    assert.equal(book.needsReplica('p', 'native', 1), true, 'proven native nodes are spot-checked too');
    assert.equal(book.needsReplica('p', 'browser', 3), true, 'explicit redundancy always');
  });

  test('spot checks follow the record: every result after a doubt, fewer after long agreement, never none', () => {
    const file = join(dir, 'adaptive.sqlite');
    SqliteStore.open(file);
    const ts = TrustStore.open(file);
    const book = new TrustBook(ts, DEFAULT_TRUST_OPTIONS, () => 0.5);
    book.confirmed('p', DEFAULT_TRUST_OPTIONS.trustAfter);
    const fresh = book.spotRate('p');
    assert.ok(Math.abs(fresh - DEFAULT_TRUST_OPTIONS.spotCheck) < 0.005, `${fresh}`);
    book.confirmed('p', 5000);
    const long = book.spotRate('p');
    assert.ok(long < fresh, `fewer checks after long agreement (${long})`);
    book.confirmed('p', 1_000_000);
    assert.equal(book.spotRate('p'), DEFAULT_TRUST_OPTIONS.minSpotCheck, 'never below the floor');
    assert.ok(book.spotRate('p') > 0);
    book.refuted('p', 'outvoted', false);
    book.confirmed('p', DEFAULT_TRUST_OPTIONS.trustAfter);
    assert.equal(book.isProven('p', 'native'), true);
    assert.equal(book.spotRate('p'), 1, 'every result is checked after a doubt');
    assert.equal(book.needsReplica('p', 'native', 1), true);
    // The doubt fades with the clean record that follows it, never back below the base rate.
    book.confirmed('p', 90); // 100 in a row
    assert.equal(book.spotRate('p'), 0.5, 'half of the results after 100 confirmed in a row');
    book.confirmed('p', 400); // 500 in a row
    assert.equal(book.spotRate('p'), 0.1);
    book.confirmed('p', 1_000_000);
    assert.equal(book.spotRate('p'), DEFAULT_TRUST_OPTIONS.minSpotCheck, 'the floor, in the end');
    const trusting = new TrustBook(ts, { ...DEFAULT_TRUST_OPTIONS, trustNative: true }, () => 0);
    assert.equal(
      trusting.needsReplica('t', 'native', 1),
      false,
      'a worker the operator trusts is not checked',
    );
    assert.equal(trusting.isTrusted('t', 'browser'), false);
  });
});

describe('strikes and quarantine', () => {
  test('two strikes, or one wrong canary, quarantine a worker; the record survives a restart', () => {
    const { book, ts } = setup('strikes');
    assert.equal(book.refuted('w', 'outvoted', false).quarantined, false);
    assert.equal(book.refuted('w', 'outvoted', false).quarantined, true);
    assert.equal(book.refuted('x', 'wrong canary', true).quarantined, true);
    // Once quarantined, a failed check changes nothing: the record stays as the quarantine left it.
    const caught = book.record('w');
    const later = book.refuted('w', 'outvoted', false);
    assert.equal(later.quarantined, false, 'not quarantined anew');
    assert.deepEqual(book.record('w'), caught);
    const again = new TrustBook(ts);
    assert.equal(again.isQuarantined('w'), true);
    assert.equal(again.isQuarantined('x'), true);
  });

  test('a quarantined worker’s unconfirmed results are taken back; confirmed ones stay', () => {
    const { store, ts } = setup('revert');
    store.createJob(newJob('j', { modelName: 'm', modelSha256: 'a'.repeat(64) }));
    const ids = store.appendItems(
      'j',
      [1, 2, 3].map((i) => ({ name: `i${i}`, inputs: new Uint8Array([i]) })),
    );
    store.updateJob('j', { state: 'running' });
    store.recordResults(
      ids.map((itemId) => ({
        itemId,
        jobId: 'j',
        workerId: 'bad',
        modelSha256: 'a'.repeat(64),
        ms: 1,
        outputs: new Uint8Array([9]),
        at: 1,
      })),
    );
    store.updateJob('j', { state: 'completed', finishedAt: 5 });
    ts.markVerified([ids[0] as number], 'canary');
    const back = ts.revertUnverified('bad');
    assert.deepEqual(back.get('j')?.sort(), ids.slice(1).sort());
    const job = store.getJob('j');
    assert.equal(job?.doneCount, 1);
    assert.equal(job?.state, 'running', 'a completed job runs again');
    assert.deepEqual(
      store
        .pendingItemRuns('j')
        .flatMap((r) => Array.from({ length: r.last - r.first + 1 }, (_, i) => r.first + i)),
      ids.slice(1),
    );
    assert.ok(store.getResult(ids[0] as number), 'the confirmed result stays');
  });
});

describe('the trust connection', () => {
  test('its writes leave WAL checkpoints to the store: a write past 1,000 WAL pages does not copy them into the file', () => {
    const file = join(dir, 'wal.sqlite');
    SqliteStore.open(file).close(); // the hub's tables, which the trust store's queries name
    // A connection that never checkpoints, and 4,000 pages in the WAL, none yet in the file.
    const raw = new Database(file);
    raw.pragma('journal_mode = WAL');
    raw.pragma('wal_autocheckpoint = 0');
    raw.exec('CREATE TABLE filler (b BLOB)');
    const insert = raw.prepare('INSERT INTO filler VALUES (?)');
    raw.transaction(() => {
      for (let i = 0; i < 4000; i++) insert.run(Buffer.alloc(4000));
    })();
    const before = statSync(file).size;
    assert.ok(statSync(`${file}-wal`).size > 1000 * 4096, 'the WAL holds more than 1,000 pages');
    // Opening (which creates the tables) and a write, each a commit of the trust connection.
    const ts = TrustStore.open(file);
    new TrustBook(ts).confirmed('w');
    // A checkpoint on its commit would have copied the 4,000 pages into the file (16 MB).
    assert.ok(statSync(file).size < before + 1024 * 1024, `file ${before} -> ${statSync(file).size} bytes`);
    raw.close();
  });
});

describe('around trust', () => {
  test('canary counts: none for tiny jobs, a fraction within bounds otherwise', () => {
    const o = { fraction: 0.01, min: 2, max: 20 };
    assert.equal(canaryCount(5, o), 0);
    assert.equal(canaryCount(100, o), 2);
    assert.equal(canaryCount(1000, o), 10);
    assert.equal(canaryCount(1_000_000, o), 20);
    const picked = pickCanaries([1, 2, 3, 4, 5], 3, () => 0.5);
    assert.equal(new Set(picked).size, 3);
  });

  test('rate limiter: a burst, then the rate; keys are bounded', () => {
    let now = 0;
    const rl = new RateLimiter(2, 3, 2, () => now);
    assert.deepEqual([rl.take('a'), rl.take('a'), rl.take('a'), rl.take('a')], [true, true, true, false]);
    now += 500;
    assert.equal(rl.take('a'), true, 'one token back after half a second at 2/s');
    rl.take('b');
    rl.take('c'); // evicts the least recently used key
    now += 0;
    assert.equal(rl.take('a'), true, 'an evicted key starts with a full bucket');
  });

  test('fairness figures: Jain’s index, idle time, shares', () => {
    const f = new FairnessTracker('j');
    f.present('a', 0);
    f.present('b', 0);
    f.start(0);
    f.held('a', 10, 0);
    f.held('b', 10, 500); // b idle for the first 0.5 s
    f.done('a', 30, 1000);
    f.done('b', 10, 1000);
    f.finish(1000);
    const r = f.report({
      items: 40,
      final: true,
      now: 1000,
      lookup: (id) => ({
        name: id,
        backend: 'sim',
        device: 'sim',
        benchmark: null,
        weight: id === 'a' ? 3 : 1,
      }),
    });
    assert.equal(r.done, 40);
    assert.ok(Math.abs(r.jain - 1) < 1e-9, `shares match weights exactly: ${r.jain}`);
    const b = r.workers.find((w) => w.workerId === 'b');
    assert.ok(b && Math.abs(b.idleS - 0.5) < 1e-9);
    assert.equal(r.idealS, 10, '40 items at 4 items/s');
  });
});
