/**
 * A job no worker on the hub holding its items will run (issue 21): two hubs on one real
 * PostgreSQL, a sim node in pool `cpu` on hub a, a job that requires pool `gpu` submitted there.
 * Hub a claims the job's chunks for its worker, which does not fit it. A node in pool `gpu` then
 * joins hub b: hub a gives the job's chunks to the other hubs (`claims.ts` hand-over), hub b's
 * node runs every item, and the job completes — where before, the items hub a held waited there
 * for good.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { jobDone, Rest, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { openTestDatabase } from '../helpers/postgres.ts';

const OPERATOR = 'op_handover-test-operator-token-0123456789';
const JOIN = 'join_handover-test-join-token-0123456789';

describe('a job no worker on its hub will run', { timeout: 180_000 }, () => {
  const tmp = tempDir('shardhub-handover-');
  let db: { url: string; close: () => Promise<void> } | undefined;
  let skip: string | undefined;
  const hubs: HubServer[] = [];
  const nodes: Proc[] = [];

  before(async () => {
    const opened = await openTestDatabase('handover');
    if ('skip' in opened) {
      skip = opened.skip;
      return;
    }
    db = opened;
    for (const name of ['a', 'b']) {
      hubs.push(
        await startHub(join(tmp.dir, name), {
          store: db.url,
          operatorToken: OPERATOR,
          joinToken: JOIN,
          hub: { leaseMs: 3000 },
        }),
      );
    }
  });
  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    await Promise.all(nodes.map((n) => n.exited));
    for (const h of hubs) await h.close();
    await db?.close();
    tmp.cleanup();
  });

  test('its hub gives its chunks to the other hubs, whose workers run it to the end', async (t) => {
    if (skip) return t.skip(skip);
    const [a, b] = hubs as [HubServer, HubServer];
    const node = (hub: HubServer, pool: string) => {
      const p = startNode(hub.url, JOIN, join(tmp.dir, pool), [
        ...['--backend', 'sim', '--item-ms', '0', '--concurrency', '4'],
        ...['--pool', pool, '--name', pool],
      ]);
      nodes.push(p);
      return waitFor(
        `the ${pool} node online`,
        () => [...hub.hub.workers.values()].some((w) => w.name === pool && w.state === 'online'),
        60_000,
      );
    };
    await node(a, 'cpu');
    const model = a.hub.models.byName('noop');
    assert.ok(model, 'noop is built');
    const n = 3000;
    const items = Array.from({ length: n }, (_, i) => ({
      name: `i${i}`,
      tensors: calibrationInputs(model, i + 1),
    }));
    const rest = new Rest(a.url, OPERATOR);
    const jobId = await rest.submit('noop', items, { requirements: { pool: 'gpu' } });
    // Hub a, whose only worker does not fit the job, claims its chunks all the same.
    const sql = new pg.Client({ connectionString: db?.url });
    await sql.connect();
    try {
      await waitFor(
        'hub a holding chunks of the job',
        async () =>
          (await sql.query('SELECT 1 FROM chunks WHERE job_id = $1 AND hub_id = $2', [jobId, a.hub.hubId]))
            .rowCount! > 0,
        30_000,
      );
    } finally {
      await sql.end();
    }
    await node(b, 'gpu');
    const view = await jobDone(rest, jobId, 90_000);
    assert.equal(view.done, n);
    assert.equal(view.failed, 0);
    const byWorker = new Map<string, number>();
    for await (const r of b.hub.jobs.results(jobId))
      byWorker.set(r.workerId, (byWorker.get(r.workerId) ?? 0) + 1);
    // Run by the node that fits the job (and the hubs' reference backend, which checks some).
    const gpu = [...b.hub.workers.values()].find((w) => w.name === 'gpu');
    const cpu = [...a.hub.workers.values()].find((w) => w.name === 'cpu');
    assert.ok(gpu && cpu);
    assert.equal(byWorker.get(cpu.id), undefined, 'none from the node that does not fit it');
    assert.ok(
      (byWorker.get(gpu.id) ?? 0) > n / 2,
      `most from the node that fits it: ${JSON.stringify([...byWorker])}`,
    );
    assert.equal(
      [...byWorker.values()].reduce((x, y) => x + y, 0),
      n,
    );
  });
});
