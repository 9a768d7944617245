/**
 * The operator dashboard end to end: a real hub (in-process) serving the built pages
 * (`npm run build`), three sim native nodes (real node processes that sleep per item), Debian's
 * Chromium driven by Playwright. It proves the page signs in with the operator token and shows
 * nothing without it (and that the hub refuses what it would do), that its figures move live and
 * agree with the REST API, that cancel, drain and evict from the page reach the hub, and that 500
 * workers (real registrations of raw worker connections) are virtualized rows. Screenshots of the views go to `test-results/`.
 *
 * Playwright's CSS locators pierce open shadow roots, so `[data-test=...]` finds elements inside
 * the Lit components.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import type { Browser, Page } from 'playwright-core';
import { io, type Socket } from 'socket.io-client';
import type { WorkerView } from '../../protocol/operator.ts';
import type { NamedItem } from '../../protocol/pack.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { ROOT, Rest, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { RESULTS, launchChromium, signInDashboard, startPageHub } from '../helpers/browser.ts';
import { rawWorker } from '../helpers/raw-worker.ts';

const { onnx } = onnxProto;
const NOOP = {
  inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
  calibration: { dims: { x: [1, 4] }, seed: 1 },
};

function items(n: number, seed = 1): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(NOOP, seed + i) }));
}

/** Opens the dashboard, signs in through the form, waits for the live connection. */
async function signIn(browser: Browser, hub: HubServer, hash = '#workers'): Promise<Page> {
  const errors: string[] = [];
  const page = await signInDashboard(browser, hub, { hash, errors });
  assert.deepEqual(errors, [], 'no page errors');
  return page;
}

const text = async (page: Page, selector: string) =>
  (await page.locator(selector).first().innerText()).trim();
const num = (s: string) => Number(s.replace(/[^0-9.]/g, ''));

describe('operator dashboard', () => {
  const tmp = tempDir('shardhub-dash-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  const nodes: Proc[] = [];
  let ids: string[] = [];

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    for (let i = 0; i < 3; i++) {
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `node-${i}`), [
          '--backend',
          'sim',
          '--speed',
          '2',
          '--item-ms',
          '20',
          '--name',
          `sim-${i}`,
        ]),
      );
    }
    browser = await launchChromium();
    await waitFor(
      'three sim nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 3,
      60_000,
    );
    ids = [0, 1, 2].map(
      (i) => [...hub.hub.workers.values()].find((w) => w.name === `sim-${i}`)?.id as string,
    );
  });

  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('without the token only the sign-in is shown, and the hub refuses actions and the socket', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${hub.url}/dashboard#workers`);
    await page.locator('[data-test=token]').waitFor();
    assert.equal(await page.locator('sh-workers-table').count(), 0, 'no workers table');
    assert.equal(await page.locator('nav').count(), 0, 'no navigation');
    const body = await page.locator('sh-dashboard').innerText();
    for (const name of ['sim-0', 'sim-1', 'sim-2']) assert.ok(!body.includes(name), `${name} not shown`);

    await page.locator('[data-test=token]').fill('op_not-the-token');
    await page.locator('[data-test=sign-in]').click();
    const problem = await text(page, '[data-test=sign-in-problem]');
    assert.match(problem, /refused/i);
    assert.equal(await page.locator('sh-workers-table').count(), 0, 'still nothing but the sign-in');
    assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
    await page.screenshot({ path: join(RESULTS, 'dashboard-sign-in.png') });
    await context.close();

    // (The hub rate-limits requests with a bad token after a burst of 20: stay under it.)
    const anon = new Rest(hub.url, undefined);
    const wrong = new Rest(hub.url, 'op_wrong');
    const refusals: [Rest, string, string, unknown?][] = [
      [anon, 'POST', `/api/workers/${ids[0]}/pause`],
      [anon, 'POST', `/api/workers/${ids[0]}/drain`],
      [anon, 'POST', `/api/workers/${ids[0]}/evict`],
      [anon, 'POST', '/api/jobs', { model: 'noop' }],
      [anon, 'POST', '/api/jobs/j_x/cancel'],
      [anon, 'PATCH', '/api/jobs/j_x', { priority: 5 }],
      [anon, 'POST', '/api/jobs/j_x/files?name=a'],
      [anon, 'GET', '/api/workers'],
      [anon, 'GET', '/metrics'],
      [wrong, 'POST', `/api/workers/${ids[0]}/evict`],
      [wrong, 'POST', '/api/jobs/j_x/cancel'],
      [wrong, 'GET', '/metrics'],
    ];
    for (const [client, method, path, body] of refusals) {
      const r = await client.req(method, path, body);
      assert.equal(
        r.status,
        401,
        `${method} ${path} with ${client.token ? 'a wrong' : 'no'} token is refused`,
      );
    }
    assert.equal(hub.hub.workers.get(ids[0] as string)?.state, 'online', 'nothing happened to the worker');

    for (const auth of [{}, { token: 'op_wrong' }]) {
      const socket = io(`${hub.url}/operator`, { auth, parser: shardhubParser, reconnection: false });
      const outcome = await new Promise<string>((ok) => {
        socket.on('connect', () => ok('connected'));
        socket.on('connect_error', (err) => ok(err.message));
      });
      socket.close();
      assert.match(outcome, /unauthorized/, 'the operator socket refuses a connection without the token');
    }
  });

  test('with a job on three workers, the figures move without a reload and agree with the REST API', async () => {
    const page = await signIn(browser, hub);
    let loads = 0;
    page.on('load', () => loads++);
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));

    // All three workers listed, live.
    await waitFor(
      'three worker rows',
      async () => (await page.locator('[data-worker-id]').count()) === 3,
      10_000,
    );
    const jobId = await rest.submit('noop', items(3000), { priority: 3 });
    await page.evaluate((id) => (location.hash = `#jobs/${id}`), jobId);
    await page.locator('[data-test=job-id]', { hasText: jobId }).waitFor();

    // The done count moves by itself.
    const first = num(await text(page, '[data-test=job-done]'));
    const moved = await waitFor(
      'done count to move',
      async () => {
        const v = num(await text(page, '[data-test=job-done]'));
        return v > first && v > 0 ? v : undefined;
      },
      20_000,
      100,
    );
    assert.ok(moved > first);

    // While running: what the page shows is at most a push behind the REST API.
    const shown = num(await text(page, '[data-test=job-done]'));
    const status = await rest.data('GET', `/api/jobs/${jobId}`);
    assert.equal(num(await text(page, '[data-test=job-items]')), status.items);
    assert.ok(shown <= status.done, `page ${shown} <= REST ${status.done}`);
    assert.ok(
      status.done - shown <= Math.max(50, status.itemsPerSec * 2),
      `page ${shown} near REST ${status.done}`,
    );
    await page.locator('[data-chart=throughput] canvas').first().waitFor({ timeout: 10_000 });
    // A few seconds in, so the charts have a shape.
    await waitFor(
      'a third done',
      async () => num(await text(page, '[data-test=job-done]')) >= 1000,
      30_000,
      100,
    );
    await page.waitForTimeout(300);
    await page.screenshot({ path: join(RESULTS, 'dashboard-job.png'), fullPage: true });

    // The workers view, mid-job: rates and shares.
    await page.evaluate(() => (location.hash = '#workers'));
    await waitFor(
      'worker rates shown',
      async () => {
        const rates = await page.locator('[data-col=rate]').allInnerTexts();
        return rates.length === 3 && rates.every((r) => num(r) > 0);
      },
      10_000,
      100,
    );
    await page.screenshot({ path: join(RESULTS, 'dashboard-workers.png'), fullPage: true });

    // The fairness view, live then final.
    await page.evaluate((id) => (location.hash = `#fairness/${id}`), jobId);
    await page.locator('[data-test=fairness-mode]').waitFor();
    await page.locator('[data-chart=share] canvas').first().waitFor({ timeout: 10_000 });

    await waitFor(
      'job completed',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
      60_000,
      100,
    );
    await page.locator('[data-test=fairness-mode]', { hasText: 'final' }).waitFor({ timeout: 10_000 });
    const fairness = await rest.data('GET', `/api/jobs/${jobId}/fairness`);
    assert.equal(
      await text(page, '[data-figure=jain] .value'),
      fairness.jain.toFixed(3),
      'Jain’s index as REST has it',
    );
    assert.equal(num(await text(page, '[data-figure=steals] .value')), fairness.steals);
    assert.equal(num(await text(page, '[data-figure=wasted] .value')), fairness.wastedItems);
    await page.waitForTimeout(500);
    await page.screenshot({ path: join(RESULTS, 'dashboard-fairness.png'), fullPage: true });

    // Finished: the job page and the workers' items agree exactly with REST.
    await page.evaluate((id) => (location.hash = `#jobs/${id}`), jobId);
    await page.locator('[data-test=job-state]', { hasText: 'completed' }).waitFor({ timeout: 10_000 });
    const final = await rest.data('GET', `/api/jobs/${jobId}`);
    assert.equal(num(await text(page, '[data-test=job-done]')), final.done);
    assert.equal(final.done, 3000);
    await page.evaluate(() => (location.hash = '#workers'));
    const workers = (await rest.data('GET', '/api/workers')).workers as { id: string; itemsDone: number }[];
    await waitFor(
      'worker items as REST has them',
      async () => {
        for (const w of workers) {
          const cell = page.locator(`[data-worker-id="${w.id}"] [data-col=items]`);
          if (num(await cell.innerText()) !== w.itemsDone) return false;
        }
        return true;
      },
      5000,
      100,
    );

    // Results download through fetch + Bearer: a tar with every result.
    await page.evaluate((id) => (location.hash = `#jobs/${id}`), jobId);
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.locator('[data-action=results]').click(),
    ]);
    assert.equal(download.suggestedFilename(), `${jobId}-results.tar`);

    assert.equal(loads, 0, 'the page never reloaded');
    assert.equal(await page.evaluate(() => (window as unknown as { marker: number }).marker), 42);
    await page.context().close();
  });

  test('jobs submitted from the form (registry model, then an uploaded ONNX file) run', async () => {
    const page = await signIn(browser, hub, '#submit');
    await page.locator('[data-test=model]').selectOption('noop');
    const npy = (i: number) => {
      const header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
      const pad = 64 - ((10 + header.length + 1) % 64);
      const h = Buffer.from(header + ' '.repeat(pad) + '\n', 'latin1');
      const pre = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, h.length & 0xff, h.length >> 8]);
      return Buffer.concat([pre, h, Buffer.from(new Float32Array([i, i + 1, i + 2, i + 3]).buffer)]);
    };
    await page.locator('[data-test=input-files]').setInputFiles(
      [0, 1, 2, 3, 4].map((i) => ({
        name: `x${i}.npy`,
        mimeType: 'application/octet-stream',
        buffer: npy(i),
      })),
    );
    await page.locator('[data-test=model-spec]').waitFor();
    await page.screenshot({ path: join(RESULTS, 'dashboard-submit.png') });
    await page.locator('[data-test=submit]').click();
    await page.locator('[data-test=job-state]', { hasText: 'completed' }).waitFor({ timeout: 30_000 });
    const jobId = await text(page, '[data-test=job-id]');
    const status = await rest.data('GET', `/api/jobs/${jobId}`);
    assert.equal(status.state, 'completed');
    assert.equal(status.done, 5);
    const list = await rest.data('GET', `/api/jobs/${jobId}/items`);
    assert.deepEqual(list.items.map((it: { name: string }) => it.name).sort(), [
      'x0',
      'x1',
      'x2',
      'x3',
      'x4',
    ]);

    // An uploaded ONNX file, then two inputs.
    await page.evaluate(() => (location.hash = '#submit'));
    await page.locator('input[name=source][value=upload]').check();
    // The registry refuses bytes it already has: the noop graph with a doc string of its own.
    const model = onnx.ModelProto.decode(readFileSync(join(ROOT, 'models', 'generated', 'noop.onnx')));
    model.docString = `uploaded from the dashboard test ${Date.now()}`;
    await page.locator('[data-test=onnx-file]').setInputFiles({
      name: 'my-noop.onnx',
      mimeType: 'application/octet-stream',
      buffer: Buffer.from(onnx.ModelProto.encode(model).finish()),
    });
    await page.locator('[data-test=onnx-name]').fill('noop-uploaded');
    await page
      .locator('[data-test=input-files]')
      .setInputFiles(
        [7, 8].map((i) => ({ name: `u${i}.npy`, mimeType: 'application/octet-stream', buffer: npy(i) })),
      );
    await page.locator('[data-test=submit]').click();
    await page.locator('[data-test=job-id]', { hasNotText: jobId }).waitFor({ timeout: 30_000 });
    await page.locator('[data-test=job-state]', { hasText: 'completed' }).waitFor({ timeout: 30_000 });
    const uploaded = await rest.data('GET', `/api/jobs/${await text(page, '[data-test=job-id]')}`);
    assert.equal(uploaded.model, 'noop-uploaded');
    assert.equal(uploaded.done, 2);
    await page.context().close();
  });

  test('cancel, priority, pause, drain and evict from the page take effect on the hub', async () => {
    const seen = new Map<string, Set<string>>();
    const onWorker = (id: string) => {
      const w = hub.hub.workers.get(id);
      if (w) seen.set(id, (seen.get(id) ?? new Set()).add(w.state));
    };
    hub.hub.on('worker:updated', onWorker);
    const page = await signIn(browser, hub);
    try {
      const jobId = await rest.submit('noop', items(20_000, 5));
      await page.evaluate((id) => (location.hash = `#jobs/${id}`), jobId);
      await page.locator('[data-test=job-state]', { hasText: 'running' }).waitFor({ timeout: 15_000 });

      await page.locator('[data-test=priority-input]').fill('7');
      await page.locator('[data-action=set-priority]').click();
      await waitFor(
        'priority 7 on the hub',
        async () => (await hub.hub.jobs.get(jobId))?.priority === 7,
        5000,
      );

      await page.locator('[data-action=cancel]').click();
      assert.equal((await hub.hub.jobs.get(jobId))?.state, 'running', 'one press only asks');
      await page.locator('[data-action=cancel]').click();
      await waitFor(
        'job cancelled on the hub',
        async () => (await hub.hub.jobs.get(jobId))?.state === 'cancelled',
        5000,
      );
      await page.locator('[data-test=job-state]', { hasText: 'cancelled' }).waitFor({ timeout: 5000 });

      await page.evaluate(() => (location.hash = '#workers'));
      const row = (id: string) => page.locator(`[data-worker-id="${id}"]`);
      const [a, b, c] = ids as [string, string, string];

      await row(c).locator('[data-action=pause]').click();
      await waitFor('worker paused on the hub', () => hub.hub.workers.get(c)?.state === 'paused', 5000);
      await row(c).locator('[data-col=state]', { hasText: 'paused' }).waitFor({ timeout: 5000 });
      await row(c).locator('[data-action=resume]').click();
      await waitFor('worker resumed on the hub', () => hub.hub.workers.get(c)?.state === 'online', 5000);

      await row(a).locator('[data-action=drain]').click();
      await waitFor('worker draining on the hub', () => seen.get(a)?.has('draining'), 5000);
      // A drained node hands back its items, finishes, and leaves.
      await waitFor('drained worker gone', () => hub.hub.workers.get(a)?.state === 'offline', 30_000);
      await row(a).locator('[data-col=state]', { hasText: 'offline' }).waitFor({ timeout: 5000 });

      await row(b).locator('[data-action=evict]').click();
      assert.equal(hub.hub.workers.get(b)?.state, 'online', 'one press only asks');
      await row(b).locator('[data-action=evict]').click();
      await waitFor('evicted worker offline on the hub', () => seen.get(b)?.has('offline'), 5000);
      assert.ok(hub.hub.workers.get(b)?.reconnects !== undefined);
    } finally {
      hub.hub.off('worker:updated', onWorker);
      await page.context().close();
    }
  });
});

describe('operator dashboard with 500 workers', () => {
  const tmp = tempDir('shardhub-dash500-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  const sockets: Socket[] = [];
  const pad = (i: number) => String(i).padStart(3, '0');

  before(async () => {
    // Liveness slow enough that workers which heartbeat once stay online through the test.
    hub = await startPageHub(join(tmp.dir, 'hub'), { hub: { heartbeatMs: 60_000, offlineAfterMs: 600_000 } });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    browser = await launchChromium();
    // 500 real registrations: raw worker connections (test/helpers/raw-worker.ts) of every kind,
    // backend and device the table shows, 50 at a time. They run nothing: no job is submitted.
    const gpus = ['NVIDIA GeForce RTX 4090', 'NVIDIA A100-SXM4-40GB', 'Apple M2', 'swiftshader', undefined];
    for (let off = 0; off < 500; off += 50) {
      const batch = Array.from({ length: 50 }, (_, k) => {
        const i = off + k;
        const gpu = gpus[i % gpus.length];
        const native = i % 3 !== 0;
        return rawWorker(hub.url, `fake-${pad(i)}`, {
          token: hub.tokens.joinToken,
          register: {
            kind: native ? 'native' : 'browser',
            backend: gpu ? (native ? 'cuda' : 'webgpu') : native ? 'cpu' : 'wasm',
            name: `worker-${pad(i)}`,
            capabilities: {
              cores: 8,
              memoryBytes: 16e9,
              hostname: `host-${i}`,
              ...(gpu ? { gpu: { name: gpu } } : {}),
            },
          },
        });
      });
      sockets.push(...(await Promise.all(batch)));
    }
    // One heartbeat each, with loads that differ (the table sorts by load below).
    sockets.forEach((s, i) =>
      s.emit('worker:heartbeat', {
        load: { cpu: ((i * 37) % 1000) / 1000, memUsedBytes: 2 ** 30, memTotalBytes: 2 ** 34 },
        queued: 0,
        running: 0,
        paused: false,
      }),
    );
    await waitFor(
      'every heartbeat on the hub',
      async () => {
        const listed = (await rest.data('GET', '/api/workers?limit=1000')).workers as WorkerView[];
        return listed.filter((w) => w.load !== null).length === 500;
      },
      20_000,
      100,
    );
    // The other states, as operators and networks make them: paused, draining, gone.
    for (let i = 0; i < 500; i++) {
      if (i % 7 === 3) await rest.data('POST', `/api/workers/fake-${pad(i)}/pause`);
      if (i % 7 === 4) await rest.data('POST', `/api/workers/fake-${pad(i)}/drain`);
      if (i % 7 === 5) sockets[i]?.close();
    }
    await waitFor(
      'the closed connections offline',
      async () => {
        const listed = (await rest.data('GET', '/api/workers?limit=1000')).workers as WorkerView[];
        return (
          listed.filter((w) => w.state === 'offline').length === sockets.filter((_, i) => i % 7 === 5).length
        );
      },
      20_000,
      100,
    );
  });

  after(async () => {
    for (const s of sockets) s.close();
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('rows are virtualized: 500 workers, a few dozen rows in the DOM, sorting and filtering stay fast', async () => {
    const listed = (await rest.data('GET', '/api/workers?limit=1000')).workers as WorkerView[];
    assert.equal(listed.length, 500);
    const page = await signIn(browser, hub);
    await page.locator('[data-test=worker-count]', { hasText: '500 of 500' }).waitFor({ timeout: 10_000 });
    await page.locator('[data-worker-id]').first().waitFor();
    const inDom = await page.locator('[data-worker-id]').count();
    assert.ok(inDom > 5 && inDom < 80, `${inDom} rows in the DOM for 500 workers`);

    // Sort by load (numbers sort largest first): the top row is the worker with the highest load.
    const t0 = Date.now();
    await page.locator('[data-sort=load]').click();
    const busiest = listed.reduce((a, b) => ((b.load?.cpu ?? -1) > (a.load?.cpu ?? -1) ? b : a));
    await page.locator(`[data-worker-id="${busiest.id}"]`).waitFor({ timeout: 5000 });
    const sortMs = Date.now() - t0;

    // Scrolling to the end renders the last rows.
    await page.locator('[data-sort=name]').click();
    await page.locator('lit-virtualizer').evaluate((el) => el.scrollTo(0, el.scrollHeight));
    await page.locator('[data-worker-id="fake-499"]').waitFor({ timeout: 5000 });

    await page.locator('[data-test=state-filter]').selectOption('paused');
    await page.locator('[data-test=worker-count]', { hasText: /^\d+ of 500/ }).waitFor();
    const paused = listed.filter((w) => w.state === 'paused').length;
    assert.ok(paused > 0);
    assert.match(await text(page, '[data-test=worker-count]'), new RegExp(`^${paused} of 500`));
    await page.locator('[data-test=state-filter]').selectOption('');
    // The virtualizer re-anchors once after the list changes: scroll to the top again after it.
    for (let i = 0; i < 2; i++) {
      await page.locator('lit-virtualizer').evaluate((el) => el.scrollTo(0, 0));
      await page.waitForTimeout(300);
    }
    await page.screenshot({ path: join(RESULTS, 'dashboard-workers-500.png') });
    process.stdout.write(`# 500 workers: ${inDom} rows in the DOM; sort round trip ${sortMs} ms\n`);
    await page.context().close();
  });
});
