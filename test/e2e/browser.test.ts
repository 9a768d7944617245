/**
 * Browser workers end to end: a real hub (in-process) serving the built pages (`npm run build`),
 * Debian's Chromium driven by Playwright (headless; WebGPU through SwiftShader), a real native
 * node, real models. Every result is compared with a standalone onnxruntime-node session within
 * the model's tolerance.
 *
 * Headless Chromium reports every page as visible (a tab in front, a minimized window: still
 * `visible`), so "hiding a tab" is emulated: `document.visibilityState` is overridden and a
 * `visibilitychange` event dispatched, which is exactly what the page listens to.
 */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, BrowserContext } from 'playwright-core';
import type { NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import type { AgentStats } from '../../worker/agent.ts';
import { calibrationInputs, withRows } from '../../worker/calibration.ts';
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
import { RESULTS, launchChromium, openWorkerTab, startPageHub, type Tab } from '../helpers/browser.ts';

/**
 * The hub under test serves the built pages. A benchmark still awaited when the hub closes keeps
 * its ack timer running (and this process alive) until it times out: keep that short.
 */
/**
 * Quick heartbeats, and a tab is given 6 s without a ping (Socket.IO's ping interval, 1 s, plus its
 * timeout, 5 s) before its own Socket.IO client drops the connection: on 2 cores, with SwiftShader
 * rendering WebGPU on the CPU beside WASM threads, a tab's main thread can stall for seconds; with
 * 3 s in all, a tab now and then dropped its connection in the middle of a test (the hub logged
 * "transport close", and the page said "Connecting to the hub…").
 */
const HUB_CONFIG = {
  hub: { heartbeatMs: 500, offlineAfterMs: 5000, benchmarkTimeoutMs: 30_000 },
};

/**
 * `n` items of a model, from seed `seed` on. `rows` > 1 makes each item that many rows (dim 0) of
 * the model's calibration input: heavier items keep a job running long enough for every worker to
 * take part, without thousands of tiny items.
 */
function items(model: Parameters<typeof calibrationInputs>[0], n: number, seed = 7, rows = 1): NamedItem[] {
  const m = withRows(model, rows);
  return Array.from({ length: n }, (_, i) => ({
    name: `item-${String(i).padStart(5, '0')}`,
    tensors: calibrationInputs(m, seed + i),
  }));
}

/** `n` items of a model with the given input dims. */
function itemsOfDims(
  model: Parameters<typeof calibrationInputs>[0],
  n: number,
  seed: number,
  dims: Record<string, number[]>,
): NamedItem[] {
  const m = { ...model, calibration: { ...model.calibration, dims } };
  return Array.from({ length: n }, (_, i) => ({
    name: `item-${String(i).padStart(5, '0')}`,
    tensors: calibrationInputs(m, seed + i),
  }));
}

/** Rows per item in the mixed jobs (see {@link items}). */
const ROWS = 64;

function stats(tab: Tab): Promise<AgentStats> {
  return tab.page.evaluate(() => {
    const s = window.shardhub?.stats();
    if (!s) throw new Error('no worker on this page');
    return s;
  });
}

/** Emulates the tab being hidden or shown (see the file comment). */
async function setHidden(tab: Tab, hidden: boolean): Promise<void> {
  await tab.page.evaluate(`(() => { ${visibilityScript(hidden)} })()`);
}

/**
 * Waits, inside the page, until the worker's figures satisfy `when` (a JS expression over `s`),
 * then runs `then` in the same task, so nothing can change in between (a queue seen non-empty is
 * still non-empty when the tab hides). Resolves with the figures at that moment. Strings, not
 * functions: tsx would wrap a function's inner arrows in a helper the page lacks.
 */
async function whenInPage(tab: Tab, when: string, then: string, timeoutMs = 60_000): Promise<AgentStats> {
  return tab.page.evaluate(`new Promise((resolve, reject) => {
    const end = Date.now() + ${timeoutMs};
    const tick = () => {
      const s = window.shardhub && window.shardhub.stats();
      if (s && (${when})) {
        Promise.resolve((() => { ${then} })()).then(() => resolve(s), reject);
      } else if (Date.now() > end) {
        reject(new Error('timed out waiting in the page for: ${when.replace(/'/g, '')}'));
      } else {
        setTimeout(tick, 1);
      }
    };
    tick();
  })`);
}

/** The page script that emulates hiding or showing the tab (see the file comment). */
function visibilityScript(hidden: boolean): string {
  return `
    Object.defineProperty(document, 'visibilityState', { configurable: true, value: '${hidden ? 'hidden' : 'visible'}' });
    Object.defineProperty(document, 'hidden', { configurable: true, value: ${hidden} });
    document.dispatchEvent(new Event('visibilitychange'));`;
}

/** Moves the tab's throttle slider (percent of time it may compute) and waits for the worker to take it. */
async function setThrottle(tab: Tab, percent: number): Promise<void> {
  await tab.page.locator('[data-control=throttle]').fill(String(percent));
  await waitFor(`throttle ${percent}%`, async () => (await stats(tab)).throttle === percent / 100, 5000);
}

describe('browser workers', () => {
  const tmp = tempDir('shardhub-e2e-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  let context: BrowserContext;
  let gpuTab: Tab;
  let wasmTab: Tab;
  let node: Proc;

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'), HUB_CONFIG);
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    browser = await launchChromium({ webgpu: true });
    context = await browser.newContext({ viewport: { width: 1100, height: 1200 } });
    node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), ['--name', 'native-1']);
    [gpuTab, wasmTab] = await Promise.all([
      openWorkerTab(context, hub.url, 'backend=webgpu'),
      openWorkerTab(context, hub.url, 'backend=wasm'),
    ]);
    await waitFor(
      'two tabs and a node online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 3,
      60_000,
    );
  });

  after(async () => {
    node?.child.kill('SIGKILL');
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('the pages are cross-origin isolated and say which backend runs and why', async () => {
    assert.equal(
      await gpuTab.page.evaluate(() => crossOriginIsolated),
      true,
      'COOP/COEP make the page isolated',
    );
    const backend = (tab: Tab) => tab.page.locator('[data-field=backend]').textContent();
    const reason = (tab: Tab) => tab.page.locator('[data-field=backend-reason]').textContent();
    assert.equal((await backend(gpuTab))?.trim(), 'webgpu');
    assert.match((await reason(gpuTab)) ?? '', /WebGPU requested .* swiftshader/i);
    assert.equal((await backend(wasmTab))?.trim(), 'wasm');
    assert.match((await reason(wasmTab)) ?? '', /WASM requested/);
    assert.match(
      (await wasmTab.page.locator('[data-field=threads]').textContent()) ?? '',
      /cross-origin isolated/,
    );
    const workers = [...hub.hub.workers.values()];
    const gpu = workers.find((w) => w.id === gpuTab.workerId);
    assert.equal(gpu?.kind, 'browser');
    assert.equal(gpu?.backend, 'webgpu');
    assert.equal(gpu?.capabilities.gpu?.architecture, 'swiftshader', 'the adapter is registered');
    assert.ok(gpu?.capabilities.gpu?.limits?.maxBufferSize, 'adapter limits are registered');
    assert.equal(workers.find((w) => w.id === wasmTab.workerId)?.backend, 'wasm');
  });

  test('a WebGPU tab, a WASM tab and a native node complete a job; every result equals the reference', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is built (npm run models)');
    // Every worker benchmarks the model first (a small job of it asks them to): the native node
    // alone could finish the job below before a tab had finished its benchmark (1 clean-clone run).
    await jobDone(rest, await rest.submit('mlp-small', items(model, 20, 9000, ROWS)));
    const sha = model.sha256;
    await waitFor(
      'every worker benchmarked mlp-small',
      () =>
        [...hub.hub.workers.values()]
          .filter((w) => w.state === 'online')
          .every((w) => hub.hub.schedule.benchmark(w.id, sha) !== undefined),
      60_000,
    );
    const sent = items(model, 3000, 7, ROWS);
    const jobId = await rest.submit('mlp-small', sent);
    const status = await jobDone(rest, jobId);
    assert.equal(status.done, sent.length);
    assert.equal(status.failed, 0);
    await checkResults(hub, jobId, sent);
    const done = (id: string) => hub.hub.workers.get(id)?.itemsDone ?? 0;
    assert.ok(done(gpuTab.workerId) > 0, `the WebGPU tab did items (${done(gpuTab.workerId)})`);
    assert.ok(done(wasmTab.workerId) > 0, `the WASM tab did items (${done(wasmTab.workerId)})`);
    assert.ok((await stats(gpuTab)).itemsDone > 0, 'the WebGPU tab counts its items');
  });

  test('a screenshot shows the tab working on WebGPU, with its figures', async () => {
    const page = gpuTab.page;
    const path = join(RESULTS, 'browser-worker-webgpu.png');
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    // A job only this tab may run. In the shared job above SwiftShader's share is about 1%, and the
    // others may finish (or re-run) all of it before its first batch is back: this tab did none of
    // that job in 3 of 12 runs here, and in one CI run, which then showed "no job right now".
    const jobId = await rest.submit('mlp-small', items(model, 40, 300_000, ROWS), {
      requirements: { backend: 'webgpu' },
    });
    // While it runs, its share is shown in accepted results (never more than the job); it goes
    // when the job ends.
    const running = await waitFor(
      'the share of the running job',
      async () => {
        const t = await page.locator('[data-field=share]').textContent();
        return t?.includes(jobId) ? t : undefined;
      },
      60_000,
      100,
    );
    const accepted = /\((\d+) of 40 items\s+accepted\)/.exec(running ?? '');
    assert.ok(accepted && Number(accepted[1]) <= 40, `its share of the job is shown (${running})`);
    await jobDone(rest, jobId);
    // The batches it had already handed its inference worker (two at a time) may still run.
    await waitFor(
      'the tab to go idle',
      async () => (await page.locator('.status').textContent())?.trim() === 'Waiting for work',
      10_000,
    );
    await waitFor(
      'the ended job’s share to go',
      async () => !(await page.locator('[data-field=share]').textContent())?.includes(jobId),
      10_000,
    );
    // Read what the page says at the moment of the screenshot.
    const [status, backend, done, share] = await Promise.all([
      page.locator('.status').textContent(),
      page.locator('[data-field=backend]').textContent(),
      page.locator('[data-field=items-done]').textContent(),
      page.locator('[data-field=share]').textContent(),
    ]);
    await page.screenshot({ path, fullPage: true });
    assert.ok(statSync(path).size > 10_000, 'the screenshot was written');
    assert.equal(status?.trim(), 'Waiting for work', 'connected, registered, idle between jobs');
    assert.equal(backend?.trim(), 'webgpu');
    assert.ok(Number(done) > 0, `items done is shown (${done})`);
    assert.ok(!share?.includes(jobId), `the share of a job that ended is gone (${share})`);
  });

  test('hiding a tab pauses it; its unstarted items go to the others', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    // Throttled, the tab holds a queue long enough to be caught holding it. The native node sits
    // this job out: alone it could finish the job before the tab held a queue (1 run in 7).
    await setThrottle(wasmTab, 10);
    const native = [...hub.hub.workers.values()].find((w) => w.kind === 'native');
    assert.ok(native);
    hub.hub.controlWorker(native.id, 'pause');
    const sent = items(model, 3000, 100_000, ROWS);
    const jobId = await rest.submit('mlp-small', sent);
    // Hidden the moment it holds unstarted items.
    const atHide = await whenInPage(wasmTab, 's.queued > 0', visibilityScript(true));
    await waitFor('the tab pauses', async () => (await stats(wasmTab)).paused, 5000);
    assert.equal((await stats(wasmTab)).queued, 0, 'nothing stays queued in a paused tab');
    await waitFor(
      'the hub sees it paused',
      () => hub.hub.workers.get(wasmTab.workerId)?.state === 'paused',
      5000,
    );
    // Back to work: a tab's results need a second opinion, and the hidden tab gives none.
    hub.hub.controlWorker(native.id, 'resume');
    const path = join(RESULTS, 'browser-worker-paused.png');
    const shown = await wasmTab.page.locator('.status').textContent();
    await wasmTab.page.screenshot({ path, fullPage: true });
    assert.equal(shown?.trim(), 'Paused while this tab is hidden');

    await jobDone(rest, jobId);
    await checkResults(hub, jobId, sent);
    const after = await stats(wasmTab);
    // Only what was already running when the tab was hidden may have finished since.
    assert.ok(
      after.itemsDone - atHide.itemsDone <= atHide.running + model.batchSize,
      `a hidden tab starts nothing (done ${atHide.itemsDone} → ${after.itemsDone}, held ${atHide.queued})`,
    );
    // What the tab handed back when it paused (the page's log); the job completed with every
    // result (above), so the others ran them.
    const released = wasmTab.logs
      .map((l) => /releasing unstarted items (\{.*\})/.exec(l)?.[1])
      .filter((x): x is string => !!x)
      .map((x) => JSON.parse(x) as { items: number; why: string });
    assert.ok(
      released.some((r) => r.why === 'paused' && r.items > 0),
      `the paused tab handed its unstarted items back: ${JSON.stringify(released)}`,
    );

    await setHidden(wasmTab, false);
    await setThrottle(wasmTab, 100);
    await waitFor('the tab resumes when shown', async () => !(await stats(wasmTab)).paused, 5000);
    await waitFor(
      'the hub sees it online',
      () => hub.hub.workers.get(wasmTab.workerId)?.state === 'online',
      5000,
    );
  });

  test('a lost WebGPU device: running items fail as device_lost, a new device carries on, repeated losses fall back to WASM', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    // Only the WebGPU tab may run this job: nobody else completes (or speculates on) its items, so
    // the batch it runs when the device is lost is surely reported failed.
    const sent = items(model, 300, 200_000, ROWS);
    const jobId = await rest.submit('mlp-small', sent, { requirements: { backend: 'webgpu' } });
    await whenInPage(gpuTab, 's.running > 0', 'return window.shardhub.loseDevice();');
    const status = await jobDone(rest, jobId);
    // The hub retries a failed item on another worker, and there is none here: those items may end
    // failed. Everything else completes on the new device.
    assert.equal(status.done + status.failed, sent.length);
    await checkResults(hub, jobId, sent, status.failed);
    const failures = await hub.hub.jobs.failures(jobId);
    assert.ok(
      failures.length > 0,
      `the items running when the device was lost went back to the hub\n${gpuTab.logs.slice(-30).join('\n')}`,
    );
    assert.ok(
      failures.every((f) => f.category === 'device_lost'),
      `with the reason device_lost: ${JSON.stringify(failures.map((f) => [f.category, f.message]))}`,
    );
    assert.equal((await gpuTab.page.locator('[data-field=backend]').textContent())?.trim(), 'webgpu');
    assert.match(
      (await gpuTab.page.locator('[data-field=backend-reason]').textContent()) ?? '',
      /device lost 1×/,
    );

    // Two more losses within the window: WebGPU is given up for WASM, and the tab registers again.
    const reason = async () => (await gpuTab.page.locator('[data-field=backend-reason]').textContent()) ?? '';
    await gpuTab.page.evaluate(() => window.shardhub?.loseDevice());
    await waitFor('the second device is replaced', async () => /device lost 2×/.test(await reason()), 30_000);
    await gpuTab.page.evaluate(() => window.shardhub?.loseDevice());
    await waitFor(
      'the page falls back to WASM',
      async () => (await gpuTab.page.locator('[data-field=backend]').textContent())?.trim() === 'wasm',
      30_000,
    );
    assert.match(await reason(), /WebGPU device lost 3×.*fell back to WASM/);
    await waitFor(
      'the hub has the tab as a WASM worker',
      () => {
        const w = hub.hub.workers.get(gpuTab.workerId);
        return w?.backend === 'wasm' && w.state === 'online';
      },
      30_000,
    );
  });

  test('a reload keeps the tab’s identity and its cached model (no second download)', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const downloads: string[] = [];
    wasmTab.page.on('request', (r) => {
      if (r.url().includes(`/api/models/${model.sha256}`)) downloads.push(r.url());
    });
    const before = wasmTab.workerId;
    await wasmTab.page.reload();
    const after = await waitFor(
      'the reloaded tab registered',
      () =>
        wasmTab.page.evaluate(() =>
          window.shardhub?.stats()?.registered ? window.shardhub.workerId() : undefined,
        ),
      60_000,
      100,
    );
    assert.equal(after, before, 'same worker id after a reload (sessionStorage)');
    // The other tab runs WASM too since its device losses: paused, so that the reloaded tab is the
    // only one that may take this job.
    await gpuTab.page.locator('[data-control=pause]').click();
    await waitFor(
      'the other tab is paused',
      () => hub.hub.workers.get(gpuTab.workerId)?.state === 'paused',
      5000,
    );
    const sent = items(model, 200, 300_000);
    const jobId = await rest.submit('mlp-small', sent, { requirements: { backend: 'wasm' } });
    await jobDone(rest, jobId);
    await checkResults(hub, jobId, sent);
    assert.ok((await stats(wasmTab)).itemsDone > 0, 'the reloaded tab ran the job');
    await gpuTab.page.locator('[data-control=pause]').click();
    await waitFor('the other tab resumes', async () => !(await stats(gpuTab)).paused, 5000);
    assert.deepEqual(downloads, [], 'the model came from Cache Storage');
  });

  test('closing a tab mid-shard: its items are reassigned; one result per item', async () => {
    // PaddleOCR detection at 480x480: a run takes about a second on one WASM thread, long enough to
    // close the tab during it.
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model);
    const victim = await openWorkerTab(context, hub.url, 'backend=wasm');
    await waitFor(
      'the new tab is online',
      () => hub.hub.workers.get(victim.workerId)?.state === 'online',
      10_000,
    );
    // The victim alone may take the job at first: the job asks for WASM and the other tabs (the
    // first one runs WASM too since its device losses) pause with their Pause buttons.
    const others = [wasmTab, gpuTab];
    for (const tab of others) {
      await tab.page.locator('[data-control=pause]').click();
      await waitFor(
        'the other tabs are paused',
        () => hub.hub.workers.get(tab.workerId)?.state === 'paused',
        5000,
      );
    }
    const sent = itemsOfDims(model, 4, 400_000, { x: [1, 3, 480, 480] });
    const jobId = await rest.submit('ppocr-det', sent, { requirements: { backend: 'wasm' } });
    const holding = await waitFor(
      'the tab runs items',
      async () => {
        const s = await stats(victim);
        return s.running > 0 && hub.hub.schedule.heldBy(victim.workerId).length > 0 ? s : undefined;
      },
      90_000,
      5,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${victim.logs.join('\n')}`);
    });
    await victim.page.close();
    await waitFor(
      'the closed tab is offline',
      () => hub.hub.workers.get(victim.workerId)?.state === 'offline',
      10_000,
    );
    for (const tab of others) await tab.page.locator('[data-control=pause]').click();
    const status = await jobDone(rest, jobId);
    assert.equal(status.done, sent.length);
    await checkResults(hub, jobId, sent);
    const events = (await rest.data('GET', `/api/jobs/${jobId}/events`)).events as {
      type: string;
      data: { workerId?: string; items?: number };
    }[];
    const requeued = events.filter((e) => e.type === 'requeue' && e.data.workerId === victim.workerId);
    assert.ok(
      requeued.some((e) => (e.data.items ?? 0) > 0),
      `the closed tab’s items (it held ${holding.queued + holding.running}) were requeued: ${JSON.stringify(requeued)}`,
    );
    for (const tab of others)
      await waitFor('the other tabs resume', async () => !(await stats(tab)).paused, 5000);
  });

  test('after a hub restart the tabs reconnect, with backoff, as the same workers', async () => {
    const port = hub.port;
    const ids = [gpuTab.workerId, wasmTab.workerId];
    await hub.close();
    await waitFor('the tabs see the hub gone', async () => !(await stats(wasmTab)).connected, 10_000);
    // Down for a moment, as a restart is; then up again on the same port and data.
    await new Promise((ok) => setTimeout(ok, 1000));
    hub = await startHub(join(tmp.dir, 'hub'), { ...HUB_CONFIG, port });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    await waitFor(
      'both tabs registered again',
      () => ids.every((id) => hub.hub.workers.get(id)?.state === 'online'),
      30_000,
      100,
    );
    for (const tab of [gpuTab, wasmTab]) {
      assert.equal(
        await tab.page.evaluate(() => window.shardhub?.workerId()),
        tab.workerId,
        'same worker id',
      );
      // The hub lists the worker online when it registers it; the tab knows when the answer
      // reaches it, a moment later.
      await waitFor('the tab knows it is registered', async () => (await stats(tab)).registered, 5000);
    }
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const sent = items(model, 100, 500_000);
    const jobId = await rest.submit('mlp-small', sent, { requirements: { backend: 'wasm' } });
    await jobDone(rest, jobId);
    await checkResults(hub, jobId, sent);
  });
});
