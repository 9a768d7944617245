/**
 * The dashboard's states end to end (issue 19): a real hub (in-process) serving the built pages,
 * two sim native nodes (real processes), raw Socket.IO workers that fail every item they get (as a
 * broken GPU would report; the second is proven by checks first, since the hub fails an item for
 * good only on two workers' word, one proven), and Debian's Chromium through Playwright. It proves
 * the operator sees probation (and why a new worker holds few items), CPU and memory load and the
 * device rather than the host name; that the job page lists failed items with their reasons and
 * the job's events, with an ETA at the recent rate and chart legends that show values; and that an
 * offline worker can be removed (with the operator token only). Screenshots go to `test-results/`.
 */
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { io, type Socket } from 'socket.io-client';
import type { ShardAssign } from '../../protocol/events.ts';
import type { NamedItem } from '../../protocol/pack.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { RESULTS, launchChromium, signInDashboard, startPageHub } from '../helpers/browser.ts';

const NOOP = {
  inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
  calibration: { dims: { x: [1, 4] }, seed: 1 },
};

function items(n: number, seed = 1): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(NOOP, seed + i) }));
}

const OOM = 'CUDA out of memory: tried to allocate 2.00 GiB (test worker)';

/**
 * A worker of our own over the real protocol, in pool `flaky`: it benchmarks, then reports every
 * item it is given as failed (`out_of_memory`), as a node with a broken GPU would. With `mode.fail`
 * off it runs the noop model honestly instead (y = x), so that checks can prove it first; the test
 * turns its GPU "broken" later by setting `mode.fail`.
 */
async function failingWorker(
  hub: HubServer,
  { id = 'flaky-gpu-1', backend = 'cuda', mode = { fail: true } } = {},
): Promise<Socket> {
  const socket = io(`${hub.url}/worker`, {
    auth: { workerId: id, workerSecret: `${id}-secret`.padEnd(32, 'x'), token: hub.tokens.joinToken },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  socket.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
    ack({ data: { itemsPerSec: 50, batchSize: 1, runs: 3, ms: 60 } }),
  );
  socket.on('shard:assign', (shard: ShardAssign) => {
    if (!mode.fail) {
      // Honest: the noop model is the identity (registered unpacked, so the inputs come per item).
      const results = shard.items.map((it) => ({
        itemId: it.id,
        jobId: shard.jobId,
        modelSha256: shard.model.sha256,
        ms: 1,
        outputs: it.inputs.map((x) => ({ ...x, name: 'y' })),
      }));
      socket.emit('items:done', { results }, () => undefined);
      return;
    }
    const ids = shard.packed ? shard.packed.ids : shard.items.map((i) => i.id);
    const failures = ids.map((itemId) => ({
      itemId,
      jobId: shard.jobId,
      category: 'out_of_memory',
      message: OOM,
    }));
    socket.emit('items:failed', { failures }, () => undefined);
  });
  await new Promise<void>((ok, fail) => {
    socket.once('connect', () => ok());
    socket.once('connect_error', fail);
  });
  const reg = await socket.timeout(5000).emitWithAck('worker:register', {
    kind: 'native',
    backend,
    name: id === 'flaky-gpu-1' ? 'flaky-gpu' : id,
    pool: 'flaky',
    concurrency: 1,
    packed: mode.fail,
    capabilities: {
      hostname: 'flaky-host',
      cores: 8,
      memoryBytes: 2 ** 34,
      gpu: { name: 'NVIDIA GeForce RTX 4090', vendor: 'NVIDIA', memoryBytes: 24 * 2 ** 30 },
    },
  });
  assert.ok('data' in reg, JSON.stringify(reg));
  // Heartbeats with load figures, as a node sends them.
  const beat = () =>
    socket.emit('worker:heartbeat', {
      load: { cpu: 0.42, memUsedBytes: 6 * 2 ** 30, memTotalBytes: 16 * 2 ** 30 },
      queued: 0,
      running: 0,
      paused: false,
    });
  beat();
  const timer = setInterval(beat, 500);
  socket.on('disconnect', () => clearInterval(timer));
  return socket;
}

async function signIn(browser: Browser, hub: HubServer, hash: string): Promise<Page> {
  const errors: string[] = [];
  const page = await signInDashboard(browser, hub, { hash, viewport: { width: 1500, height: 1100 }, errors });
  assert.deepEqual(errors, [], 'no page errors');
  return page;
}

const row = (page: Page, workerId: string) => page.locator(`[data-worker-id="${workerId}"]`);

describe('dashboard states', () => {
  const tmp = tempDir('shardhub-dash-states-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  const nodes: Proc[] = [];
  let flaky: Socket;
  let flaky2: Socket | undefined;
  let simIds: string[] = [];

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'), {
      hub: { heartbeatMs: 500, offlineAfterMs: 2000 },
    });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    for (let i = 0; i < 2; i++) {
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `node-${i}`), [
          '--backend',
          'sim',
          '--item-ms',
          '8',
          '--name',
          `sim-${i}`,
        ]),
      );
    }
    flaky = await failingWorker(hub);
    browser = await launchChromium();
    await waitFor(
      'two sim nodes and the flaky worker online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 3,
      60_000,
    );
    simIds = [0, 1].map(
      (i) => [...hub.hub.workers.values()].find((w) => w.name === `sim-${i}`)?.id as string,
    );
  });

  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    flaky?.close();
    flaky2?.close();
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('worker rows show probation and why, CPU and memory load, and the device instead of the host name', async () => {
    const page = await signIn(browser, hub, '#workers');
    const flakyRow = row(page, 'flaky-gpu-1');
    await flakyRow.waitFor();
    // The GPU's name, not the host's.
    const device = (await flakyRow.locator('[data-col=device]').innerText()).trim();
    assert.equal(device, 'NVIDIA GeForce RTX 4090');
    for (const id of simIds) {
      const d = (await row(page, id).locator('[data-col=device]').innerText()).trim();
      assert.match(d, /^CPU, \d+ cores?$/, 'a CPU node shows its processor');
      assert.ok(!d.includes(hostname()), 'not the host name');
    }
    // Load from the heartbeats.
    await waitFor(
      'load shown',
      async () => /cpu 42%\s*mem 38%/.test(await flakyRow.locator('[data-col=load]').innerText()),
      10_000,
    );
    // Every new worker is on probation (native nodes are not trusted by default): the row says how
    // far it is from proven, and the tooltip why it holds few items.
    const probation = flakyRow.locator('[data-col=probation]');
    assert.match(await probation.innerText(), /probation 0\/10/);
    assert.match((await probation.getAttribute('title')) ?? '', /holds at most 2 items/);
    // And once above the table, in words.
    assert.match(
      await page.locator('[data-test=probation-note]').innerText(),
      /3 workers are on probation: until checks confirm 10 of its results, a new worker holds at most two items/,
    );
    const api = await rest.data('GET', '/api/workers');
    const view = api.workers.find((w: { id: string }) => w.id === 'flaky-gpu-1');
    assert.deepEqual(view.probation, { confirmed: 0, needed: 10, awaitingCheck: 0, maxItems: 2 });
    await page.screenshot({ path: join(RESULTS, 'dashboard-states-workers-probation.png'), fullPage: true });

    // A job on the sim nodes: the probation counts move as their results are confirmed.
    const jobId = await rest.submit('noop', items(400), { requirements: { backend: 'sim' } });
    await waitFor(
      'a sim node proven',
      async () => {
        const t = await row(page, simIds[0] as string)
          .locator('[data-col=state]')
          .count();
        const p = await row(page, simIds[0] as string)
          .locator('[data-col=probation]')
          .count();
        return t === 1 && p === 0;
      },
      60_000,
      100,
    );
    await waitFor(
      'job completed',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      60_000,
      100,
    );
    await page.context().close();
  });

  test('the job page lists failed items with their reasons and the job’s events; ETA and legends show figures', async () => {
    // Failed items. The hub fails an item for good only on evidence from two workers, one of them
    // proven (or its own reference backend's): one unproven worker's word alone requeues the item
    // and then the reference backend runs it. So a second worker joins pool `flaky`, earns its
    // record honestly on a job only it may run (its results confirmed by the hub's checks), and
    // then its GPU breaks too: a job only the pool may run fails on both.
    const mode = { fail: false };
    flaky2 = await failingWorker(hub, { id: 'flaky-gpu-2', backend: 'cpu', mode });
    const warmUp = await rest.submit('noop', items(40, 50), { requirements: { backend: 'cpu' } });
    await waitFor(
      'flaky-gpu-2 proven by checks',
      async () => {
        const w = (await rest.data('GET', '/api/workers')).workers.find(
          (v: { id: string }) => v.id === 'flaky-gpu-2',
        );
        return w?.probation === null && (await rest.data('GET', `/api/jobs/${warmUp}`)).state === 'completed';
      },
      60_000,
      100,
    );
    mode.fail = true;
    const failing = await rest.submit('noop', items(4, 100), { requirements: { pool: 'flaky' } });
    await waitFor(
      'the flaky job to end with its items failed',
      async () => {
        const s = await rest.data('GET', `/api/jobs/${failing}`);
        return s.state === 'completed' && s.failed === 4;
      },
      30_000,
      100,
    );
    const page = await signIn(browser, hub, `#jobs/${failing}`);
    const failed = page.locator('[data-section=failed-items]');
    await failed.locator('tr[data-item-id]').first().waitFor({ timeout: 10_000 });
    assert.equal(await failed.locator('tr[data-item-id]').count(), 4);
    const reasons = await failed.innerText();
    assert.ok(reasons.includes(OOM), 'the worker’s message is shown');
    assert.match(reasons, /out_of_memory/);
    assert.match(reasons, /flaky-gpu/, 'the worker’s name');
    await page.screenshot({ path: join(RESULTS, 'dashboard-states-failed-items.png'), fullPage: true });

    // Events: a node lost mid-job requeues its items.
    const jobId = await rest.submit('noop', items(3000, 500), { requirements: { backend: 'sim' } });
    await page.evaluate((id) => (location.hash = `#jobs/${id}`), jobId);
    await page.locator('[data-test=job-id]', { hasText: jobId }).waitFor();
    await waitFor(
      'a few hundred done',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).done >= 300,
      30_000,
      100,
    );
    // The recent rate: after a few seconds the ETA card is the items left at the last 10 s' rate.
    await page.locator('[data-figure=rate] .sub', { hasText: 'last 10 s' }).waitFor({ timeout: 15_000 });
    const eta = (await page.locator('[data-figure=eta] .value').innerText()).trim();
    assert.notEqual(eta, '–');
    // Legends: with the cursor off the chart, the latest values, never uPlot's "--".
    await page.locator('[data-chart=throughput] canvas').first().waitFor({ timeout: 10_000 });
    await page.mouse.move(5, 5);
    const legend = await page.locator('[data-chart=throughput] .u-legend').innerText();
    assert.ok(!legend.includes('--'), `legend shows values: ${legend}`);
    assert.match(legend, /\d+ s \(latest\)/);

    nodes[1]?.child.kill('SIGKILL');
    const events = page.locator('[data-section=events]');
    await events.locator('tr[data-event=requeue]').first().waitFor({ timeout: 20_000 });
    assert.match(await events.locator('tr[data-event=requeue]').first().innerText(), /sim-1/);
    await page.screenshot({ path: join(RESULTS, 'dashboard-states-job-events.png'), fullPage: true });
    await waitFor(
      'job completed on the other node',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      90_000,
      200,
    );
    await page.context().close();
  });

  test('an offline worker can be removed by the operator, and only by the operator', async () => {
    const gone = simIds[1] as string;
    await waitFor('sim-1 offline', () => hub.hub.workers.get(gone)?.state === 'offline', 20_000);
    // Not without the token; not while online.
    const anon = new Rest(hub.url, undefined);
    assert.equal((await anon.req('DELETE', `/api/workers/${gone}`)).status, 401);
    const online = await rest.req('DELETE', `/api/workers/${simIds[0]}`);
    assert.equal(online.status, 409);
    assert.match(online.json.error.message, /evict it first/);

    const page = await signIn(browser, hub, '#workers');
    const r = row(page, gone);
    await r.waitFor();
    assert.equal(await r.locator('[data-action=evict]').count(), 0, 'an offline row has no Evict');
    // A second dashboard sees the row go too. Signed in first: the question below stands for 4 s,
    // which a sign-in on a loaded machine can outlast.
    const other = await signIn(browser, hub, '#workers');
    await row(other, gone).waitFor();
    const remove = r.locator('[data-action=remove]');
    await remove.click();
    assert.equal((await remove.innerText()).trim(), 'Sure?', 'asks twice');
    await remove.click();
    await r.waitFor({ state: 'detached', timeout: 5000 });
    await row(other, gone).waitFor({ state: 'detached', timeout: 5000 });
    assert.equal(hub.hub.workers.has(gone), false);
    const listed = await rest.data('GET', '/api/workers');
    assert.ok(!listed.workers.some((w: { id: string }) => w.id === gone));
    await page.screenshot({ path: join(RESULTS, 'dashboard-states-removed.png'), fullPage: true });
    await page.context().close();
    await other.context().close();
  });
});
