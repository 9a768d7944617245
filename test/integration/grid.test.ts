/**
 * The grid end to end: a real hub on loopback, real native nodes (child processes running
 * onnxruntime-node) over real sockets, real models. Every result is compared with a standalone
 * onnxruntime-node session within the model's tolerance.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import type { NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, checkResults, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';

function items(
  model: Parameters<typeof calibrationInputs>[0],
  n: number,
  dims?: Record<string, number[]>,
): NamedItem[] {
  const m = dims ? { ...model, calibration: { ...model.calibration, dims } } : model;
  return Array.from({ length: n }, (_, i) => ({
    name: `item-${String(i).padStart(5, '0')}`,
    tensors: calibrationInputs(m, 7 + i),
  }));
}

describe('grid with native nodes', () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  const nodes: Proc[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    for (const [i, c] of [1, 2, 1].entries()) {
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `node${i}`), [
          '--concurrency',
          String(c),
          '--name',
          `n${i}`,
        ]),
      );
    }
    await waitFor(
      '3 nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 3,
      60_000,
    );
  });

  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    await hub.close();
    tmp.cleanup();
  });

  test('3 nodes with different concurrency complete a 500-item job; every result equals the reference', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is built (npm run models)');
    const sent = items(model, 500);
    const jobId = await rest.submit('mlp-small', sent);
    const status = await waitFor(
      'job done',
      async () => {
        const s = await rest.data('GET', `/api/jobs/${jobId}`);
        return s.state === 'completed' ? s : undefined;
      },
      120_000,
    );
    assert.equal(status.done, 500);
    assert.equal(status.failed, 0);
    await checkResults(hub, jobId, sent);
  });

  test('the real PaddleOCR detection model runs on small images and matches the reference', async () => {
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model);
    const sent = items(model, 12, { x: [1, 3, 96, 96] });
    const before = hub.hub.data.stats.items;
    const jobId = await rest.submit('ppocr-det', sent);
    await waitFor(
      'det job done',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      180_000,
      200,
    );
    await checkResults(hub, jobId, sent);
    // 110 KB per item: large enough that they went down the nodes' data channels, not Socket.IO.
    assert.equal(hub.hub.data.stats.open, 3, 'each node has its data channel open');
    assert.ok(hub.hub.data.stats.items - before >= sent.length, 'every item went down a data channel');
  });

  test('a data channel cut mid-job: its node’s items are requeued, it comes back with a new channel, and every result is right', async () => {
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model);
    const sent = items(model, 120, { x: [1, 3, 160, 160] });
    const victim = [...hub.hub.workers.values()].find((w) => w.name === 'n0');
    assert.ok(victim?.socketId);
    const { id, reconnects } = victim;
    const jobId = await rest.submit('ppocr-det', sent);
    await waitFor(
      'the victim holds items mid-job',
      async () =>
        hub.hub.schedule.heldBy(id).length > 0 && ((await hub.hub.jobs.get(jobId))?.doneCount ?? 0) > 0,
      60_000,
      1,
    );
    const channel = hub.hub.data.of(id, victim.socketId);
    assert.ok(channel, 'the victim has its data channel open');
    channel.destroy();
    await waitFor(
      'job done',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      120_000,
      100,
    );
    // Both ends see the loss: the hub ('data channel lost') and the node, which disconnects its
    // socket, and either may reach the hub first. Whichever did, the victim's items went back.
    // (That the hub disconnects on its own is data-channel.test.ts's, with a node that does not.)
    const events = (await rest.data('GET', `/api/jobs/${jobId}/events`)).events as {
      type: string;
      data: { workerId?: string; items?: number };
    }[];
    assert.ok(
      events.some((e) => e.type === 'requeue' && e.data.workerId === id && (e.data.items ?? 0) > 0),
      'the victim’s items were requeued when its channel was lost',
    );
    await waitFor(
      'the victim reconnected with a new data channel',
      () => (hub.hub.workers.get(id)?.reconnects ?? 0) > reconnects && hub.hub.data.stats.open === 3,
      30_000,
    );
    await checkResults(hub, jobId, sent);
  });

  test('a node SIGKILLed mid-job loses its items to the others; the job completes with one result per item', async () => {
    // Real compute slow enough (PaddleOCR det at 160x160) that the victim surely holds items.
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model);
    const n = 400;
    const sent = items(model, n, { x: [1, 3, 160, 160] });
    const victim = nodes[1] as Proc;
    const victimId = [...hub.hub.workers.values()].find((w) => w.name === 'n1')?.id as string;
    const jobId = await rest.submit('ppocr-det', sent);
    await waitFor(
      'the victim holds items mid-job',
      async () =>
        hub.hub.schedule.heldBy(victimId).length > 0 && ((await hub.hub.jobs.get(jobId))?.doneCount ?? 0) > 0,
      60_000,
      1,
    );
    victim.child.kill('SIGKILL');
    await victim.exited;
    const status = await waitFor(
      'job done after kill',
      async () => {
        const s = await rest.data('GET', `/api/jobs/${jobId}`);
        return s.state === 'completed' ? s : undefined;
      },
      120_000,
    );
    assert.equal(status.done, n);
    const events = (await rest.data('GET', `/api/jobs/${jobId}/events`)).events as { type: string }[];
    assert.ok(
      events.some((e) => e.type === 'requeue'),
      'the lost node’s items were requeued',
    );
    await checkResults(hub, jobId, sent);
  });
});
