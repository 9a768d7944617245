/**
 * A check in progress outlives its hub (issue 21): an answer waiting for a second opinion is a
 * replica in the store, and the hub that takes over the item's chunk must judge the next answers
 * against it. Real PostgreSQL, two in-process hubs (one takes the job; the other, started after the
 * check was left waiting, runs it) and real sim nodes.
 *
 * The hub that stored the replica and died is played by the test: it writes into the store what
 * such a hub leaves (a pending item, unheld chunk, a replica of a worker that is gone), because a
 * hub cannot be killed at the moment one of its checks is waiting with any reliability. The
 * replica is a lie; the hub that claims the chunk must refute it with its own workers' answers.
 * Before, it queued the item as new and never looked at the replica: the lie went unjudged.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { packTensors } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../../server/trust.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { jobDone, Rest, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { openTestDatabase } from '../helpers/postgres.ts';

const OPERATOR = 'op_checks-test-operator-token-0123456789';
const JOIN = 'join_checks-test-join-token-0123456789';
const GHOST = 'ghost-liar-on-a-dead-hub';

describe('a check in progress when its hub died', { timeout: 180_000 }, () => {
  const tmp = tempDir('shardhub-checks-');
  let db: { url: string; close: () => Promise<void> } | undefined;
  let skip: string | undefined;
  /** The hub the job is submitted to; it has no workers, so it claims nothing of the job. */
  let front: HubServer | undefined;
  /** The hub that takes the chunk over, started after the check was left waiting. */
  let hub: HubServer | undefined;
  const nodes: Proc[] = [];
  const start = (name: string, url: string) =>
    startHub(join(tmp.dir, name), {
      store: url,
      operatorToken: OPERATOR,
      joinToken: JOIN,
      // No canaries: the checked item must not be one (a canary is judged against its answer).
      hub: { leaseMs: 3000, trust: { ...DEFAULT_TRUST_OPTIONS, minCanaries: 0, maxCanaries: 0 } },
    });

  before(async () => {
    const opened = await openTestDatabase('checks');
    if ('skip' in opened) {
      skip = opened.skip;
      return;
    }
    db = opened;
    front = await start('front', db.url);
  });
  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    await Promise.all(nodes.map((n) => n.exited));
    await hub?.close();
    await front?.close();
    await db?.close();
    tmp.cleanup();
  });

  test('the hub that takes over the chunk judges the waiting answer: the lie is refuted', async (t) => {
    if (skip || !front || !db) return t.skip(skip);
    const model = front.hub.models.byName('noop');
    assert.ok(model, 'noop is built');
    const n = 64;
    const inputs = Array.from({ length: n }, (_, i) => calibrationInputs(model, i + 1));
    const rest = new Rest(front.url, OPERATOR);
    // No worker anywhere yet: no hub claims anything of the job.
    const jobId = await rest.submit(
      'noop',
      inputs.map((tensors, i) => ({ name: `i${i}`, tensors })),
    );
    const sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    let checked: number;
    try {
      const first = await sql.query<{ id: string }>(
        'SELECT id FROM items WHERE job_id = $1 ORDER BY id LIMIT 1 OFFSET 5',
        [jobId],
      );
      checked = Number(first.rows[0]?.id);
      // The dead hub's spot check: the ghost's answer to item 5 (noop's answer is its input), off.
      const truth = inputs[5]![0]!;
      const off = new Float32Array(new Float32Array(truth.data.slice().buffer).map((v) => v * 1.05 + 0.01));
      const lie = packTensors([
        {
          name: model.outputs[0]!.name,
          dtype: truth.dtype,
          dims: truth.dims,
          data: new Uint8Array(off.buffer),
        },
      ]);
      await sql.query(
        `INSERT INTO replicas (item_id, worker_id, backend, outputs, ms, at) VALUES ($1, $2, 'sim', $3, 1, $4)`,
        [checked, GHOST, Buffer.from(lie), Date.now()],
      );
      // A hub that starts now leaves the check to whichever hub takes the chunk (here itself, once
      // it has workers), and the check stays in the store meanwhile.
      hub = await start('taker', db.url);
      await new Promise((ok) => setTimeout(ok, 2500));
      const left = await sql.query('SELECT 1 FROM replicas WHERE item_id = $1 AND worker_id = $2', [
        checked,
        GHOST,
      ]);
      assert.equal(left.rowCount, 1, 'the waiting check is still in the store');
    } finally {
      await sql.end();
    }
    // Two honest nodes join the second hub: it claims the job's chunk and runs it.
    for (const name of ['honest-1', 'honest-2']) {
      nodes.push(
        startNode(hub.url, JOIN, join(tmp.dir, name), [
          ...['--backend', 'sim', '--item-ms', '0', '--concurrency', '4', '--name', name],
        ]),
      );
    }
    await waitFor(
      'both nodes online',
      () => [...hub!.hub.workers.values()].filter((w) => w.state === 'online').length === 2,
      60_000,
    );
    const view = await jobDone(rest, jobId, 90_000);
    assert.equal(view.done, n);
    assert.equal(view.failed, 0);
    // Refuted by a quorum of the two nodes before the item is stored, or by the reference backend
    // (when the second node was slow to confirm) just after.
    await waitFor(
      "the ghost's waiting answer judged and refuted",
      () => hub!.hub.trust.record(GHOST).strikes >= 1,
      10_000,
    );
    let stored: { workerId: string; outputs: Uint8Array } | undefined;
    for await (const r of hub.hub.jobs.results(jobId)) if (r.itemId === checked) stored = r;
    assert.ok(stored, 'item 5 has a result');
    assert.notEqual(stored.workerId, GHOST, 'from an honest node');
  });
});
