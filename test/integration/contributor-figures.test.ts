/**
 * What the hub tells contributor tabs in `worker:figures` (the contributor page's share and
 * probation): two raw browser workers over real Socket.IO, both new, so every result waits for the
 * other's second opinion. Their share counts accepted results (it never reads "62 of 60 items", as
 * runs did: replicas doubled them), probation is reported while they are unproven, and the list
 * empties when the job ends.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import type { ItemResult, ShardAssign, WorkerFigures } from '../../protocol/events.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startHub, tempDir, waitFor } from '../helpers/grid.ts';

const NOOP = {
  inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
  calibration: { dims: { x: [1, 4] }, seed: 1 },
};

interface Tab {
  id: string;
  socket: Socket;
  figures: WorkerFigures[];
}

/** A browser worker that answers every item at once with the noop model's result (y = x). */
async function browserTab(hub: HubServer, id: string): Promise<Tab> {
  const socket = connect(`${hub.url}/worker`, {
    auth: { workerId: id, workerSecret: `${id}-secret`.padEnd(32, 'x') },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  const tab: Tab = { id, socket, figures: [] };
  socket.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
    ack({ data: { itemsPerSec: 100, batchSize: 1, runs: 3, ms: 30 } }),
  );
  socket.on('worker:figures', (f: WorkerFigures) => tab.figures.push(f));
  socket.on('shard:assign', (s: ShardAssign) => {
    const results: ItemResult[] = s.items.map((it) => ({
      itemId: it.id,
      jobId: s.jobId,
      modelSha256: s.model.sha256,
      ms: 1,
      outputs: [{ ...(it.inputs[0] as ItemResult['outputs'][number]), name: 'y' }],
    }));
    socket.emit('items:done', { results }, () => undefined);
  });
  await new Promise<void>((ok, fail) => {
    socket.once('connect', () => ok());
    socket.once('connect_error', fail);
  });
  const reg = await socket.timeout(5000).emitWithAck('worker:register', {
    kind: 'browser',
    backend: 'wasm',
    name: id,
    concurrency: 1,
    capabilities: { cores: 4, memoryBytes: 0 },
  });
  assert.ok('data' in reg, JSON.stringify(reg));
  return tab;
}

describe('contributor figures', () => {
  const tmp = tempDir('shardhub-figures-');
  const sockets: Socket[] = [];
  let hub: HubServer | undefined;
  after(async () => {
    for (const s of sockets) s.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('shares count accepted results, probation is reported, and the list empties when the job ends', async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    const rest = new Rest(hub.url, hub.tokens.operatorToken);
    const tabs = [await browserTab(hub, 'tab-one-0001'), await browserTab(hub, 'tab-two-0002')];
    sockets.push(...tabs.map((t) => t.socket));
    // New and unproven: told so, with how far from proven and why it holds few items.
    for (const t of tabs) {
      const p = await waitFor(
        `${t.id} told it is on probation`,
        () => t.figures.find((f) => f.probation)?.probation,
        5000,
      );
      assert.deepEqual(p, { confirmed: 0, needed: 10, awaitingCheck: 0, maxItems: 2 });
    }
    const n = 60;
    const jobId = await rest.submit(
      'noop',
      Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(NOOP, i + 1) })),
    );
    await waitFor(
      'job completed',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      60_000,
      50,
    );
    // Each accepted result is one worker's; the store says whose.
    const stored = new Map<string, number>();
    for await (const r of hub.hub.jobs.results(jobId))
      stored.set(r.workerId, (stored.get(r.workerId) ?? 0) + 1);
    assert.equal(
      [...stored.values()].reduce((a, b) => a + b, 0),
      n,
    );

    await waitFor(
      'the ended job leaves both tabs’ figures',
      () => tabs.every((t) => t.figures.at(-1)?.jobs.length === 0),
      10_000,
    );
    let sumOfLast = 0;
    for (const t of tabs) {
      const shown = t.figures.flatMap((f) => f.jobs.filter((j) => j.jobId === jobId));
      assert.ok(shown.length > 0, `${t.id} was told its share while the job ran`);
      for (const j of shown) {
        assert.equal(j.items, n);
        assert.ok(
          j.doneHere <= (stored.get(t.id) ?? 0),
          `${t.id}: ${j.doneHere} shown, ${stored.get(t.id)} accepted`,
        );
        assert.ok(j.queued !== undefined);
      }
      sumOfLast += shown.at(-1)?.doneHere ?? 0;
    }
    assert.ok(sumOfLast <= n, `the shares add up to at most the job (${sumOfLast} of ${n})`);
    // The workers ran every item twice (each result waited for the other's opinion): runs would
    // have read about 2n.
    const runs = hub.hub.workers.get(tabs[0]!.id)!.itemsDone + hub.hub.workers.get(tabs[1]!.id)!.itemsDone;
    assert.ok(runs > n, `replicas ran (${runs} runs for ${n} items)`);
  });
});
