/**
 * The result cache on a real hub with real native nodes (onnxruntime-node, the mlp-small model):
 * a job whose items were computed before is answered from the store without any worker running
 * it, with the same results; `cache: false` runs them again; a liar's results, taken back by its
 * quarantine, answer no later job (the store conformance suite covers copies made before it).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { NamedItem } from '../../protocol/pack.ts';
import { DEFAULT_TRUST_OPTIONS } from '../../server/trust.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import {
  Rest,
  checkResults,
  jobDone,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';
import type { HubServer } from '../../server/app.ts';

/** The job option these tests submit with (the helper's default is off). */
const ON = { cache: true };

/** Each result's outputs by item name. */
async function resultsOf(hub: HubServer, jobId: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const r of hub.hub.jobs.results(jobId)) out.set(r.name, Buffer.from(r.outputs).toString('hex'));
  return out;
}

/** Items the hub's workers have done (their results, and replicas, accepted). */
function itemsRun(hub: HubServer): number {
  let n = 0;
  for (const w of hub.hub.workers.values()) n += w.itemsDone;
  return n;
}

describe('result cache', () => {
  const tmp = tempDir();
  const nodes: Proc[] = [];
  after(() => {
    for (const n of nodes) n.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('a second identical job is answered from the cache, results equal, nothing run; cache: false runs it again', async () => {
    // A trusted node: results stored as they come, not held for a second opinion.
    const hub = await startHub(join(tmp.dir, 'hub1'), {
      hub: { trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true } },
    });
    try {
      nodes.push(startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'n1'), ['--name', 'n1']));
      await waitFor(
        'node online',
        () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
        90_000,
      );
      const model = hub.hub.models.byName('mlp-small');
      assert.ok(model);
      const sent: NamedItem[] = Array.from({ length: 300 }, (_, i) => ({
        name: `i${i}`,
        tensors: calibrationInputs(model, 1 + i),
      }));
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      const first = await rest.submit('mlp-small', sent, ON);
      const one = await jobDone(rest, first);
      assert.equal(one.done, 300);
      assert.equal(one.verification.cached, 0);
      const ran = itemsRun(hub);
      assert.ok(ran >= 300, `the node ran the first job (${ran} items)`);

      const second = await rest.submit('mlp-small', sent, ON);
      const two = await jobDone(rest, second, 30_000);
      assert.equal(two.done, 300);
      assert.equal(two.verification.cached, 300, 'every item answered from the cache');
      assert.equal(two.startedAt, null, 'no item of it was sent to a worker');
      assert.equal(itemsRun(hub), ran, 'no worker ran anything for it');
      assert.deepEqual(await resultsOf(hub, second), await resultsOf(hub, first));
      await checkResults(hub, second, sent);

      // Half old, half new: the new half runs, the old half is answered.
      const mixed = [
        ...sent.slice(0, 50),
        ...sent.slice(0, 50).map((_, i) => ({
          name: `new${i}`,
          tensors: calibrationInputs(model, 10_000 + i),
        })),
      ];
      const third = await jobDone(rest, await rest.submit('mlp-small', mixed, ON));
      assert.equal(third.verification.cached, 50);
      await checkResults(hub, third.id, mixed);

      const uncached = await rest.submit('mlp-small', sent, { cache: false });
      const four = await jobDone(rest, uncached);
      assert.equal(four.verification.cached, 0, 'cache: false runs every item');
      assert.notEqual(four.startedAt, null);
      assert.ok(itemsRun(hub) >= ran + 350, 'the new half of the third job and all of the fourth ran');
      await checkResults(hub, uncached, sent);
    } finally {
      await hub.close();
    }
  });

  test("a quarantined liar's results answer no later job: the honest results computed again do", async () => {
    // Trusted native nodes: their results are stored on their record, unchecked but for canaries
    // and spot checks; the one kind of stored result a quarantine takes back.
    const hub = await startHub(join(tmp.dir, 'hub2'), {
      hub: { trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true } },
    });
    try {
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'liar'), [
          '--name',
          'liar',
          '--corrupt-rate',
          '1',
        ]),
      );
      await waitFor(
        'liar online',
        () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
        90_000,
      );
      const liar = [...hub.hub.workers.values()].find((w) => w.name === 'liar');
      assert.ok(liar);
      const model = hub.hub.models.byName('mlp-small');
      assert.ok(model);
      const sent: NamedItem[] = Array.from({ length: 2000 }, (_, i) => ({
        name: `i${i}`,
        tensors: calibrationInputs(model, 50 + i),
      }));
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      const first = await rest.submit('mlp-small', sent, ON);
      await waitFor('liar quarantined', () => hub.hub.trust.isQuarantined(liar.id), 60_000);
      nodes.push(startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'honest'), ['--name', 'honest']));
      await jobDone(rest, first);
      // The quarantine's take-back is written after the commits in flight: wait for the job to be
      // complete with none of the liar's results left.
      await waitFor(
        "the liar's results taken back",
        async () => {
          const j = await rest.data('GET', `/api/jobs/${first}`);
          if (j.state !== 'completed') return false;
          for await (const r of hub.hub.jobs.results(first)) if (r.workerId === liar.id) return false;
          return true;
        },
        60_000,
      );
      await checkResults(hub, first, sent);

      const second = await rest.submit('mlp-small', sent, ON);
      const two = await jobDone(rest, second);
      assert.equal(two.done, 2000);
      assert.equal(two.verification.cached, 2000, 'answered from the results computed again');
      for await (const r of hub.hub.jobs.results(second)) {
        assert.notEqual(r.workerId, liar.id, `item ${r.name} was answered from the liar's result`);
      }
      await checkResults(hub, second, sent);
    } finally {
      await hub.close();
    }
  });
});
