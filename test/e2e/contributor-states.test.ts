/**
 * The contributor page's states end to end (issue 19): a real hub (in-process) serving the built
 * pages, two tabs of one Chromium profile (one origin: one Cache Storage, one Web Lock manager),
 * real models on onnxruntime-web (WASM). It proves that two tabs asked for the same model at once
 * download it once, and that a download cut off is tried again instead of freezing the page; that a
 * new tab says "benchmarking" and "being verified" rather than "waiting for work" while its job has
 * items queued; that its share counts accepted results and clears when the job ends; that a model
 * that cannot be downloaded shows its error on the page; and that its failed benchmark is tried
 * again later, so the tab takes part once the model can be had. Screenshots go to `test-results/`.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, BrowserContext } from 'playwright-core';
import type { NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, jobDone, tempDir, waitFor } from '../helpers/grid.ts';
import { RESULTS, launchChromium, openWorkerTab, startPageHub, type Tab } from '../helpers/browser.ts';

function items(model: Parameters<typeof calibrationInputs>[0], n: number, seed = 11): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({
    name: `item-${i}`,
    tensors: calibrationInputs(model, seed + i),
  }));
}

/** A WASM contributor tab named `name`, recording every status its page shows. */
async function openTab(context: BrowserContext, hubUrl: string, name: string): Promise<Tab> {
  const tab = await openWorkerTab(context, hubUrl, `backend=wasm&name=${name}`);
  // Every status the page shows, sampled every 20 ms, in the page (`window.seenStatus`).
  await tab.page.evaluate(`(() => {
    window.seenStatus = [];
    setInterval(() => {
      const st = window.shardhub && window.shardhub.status();
      const k = st && (st.text.startsWith('Waiting for another tab') ? 'waiting-for-tab' : st.key);
      if (k && window.seenStatus[window.seenStatus.length - 1] !== k) window.seenStatus.push(k);
    }, 20);
  })()`);
  return tab;
}

const seen = (tab: Tab) => tab.page.evaluate('window.seenStatus') as Promise<string[]>;
const statusKey = (tab: Tab) =>
  tab.page.evaluate(() => window.shardhub?.status().key ?? '') as Promise<string>;

describe('contributor page states', () => {
  const tmp = tempDir('shardhub-contrib-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  let context: BrowserContext;
  let tabs: Tab[] = [];
  /** Model downloads the tabs asked for, by model sha256. */
  const requests = new Map<string, number>();

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'), {
      hub: {
        heartbeatMs: 500,
        offlineAfterMs: 2000,
        benchmarkTimeoutMs: 60_000,
        scheduler: { benchmarkRetryMs: 3000 },
      },
    });
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1000, height: 1300 } });
    context.on('request', (r) => {
      const m = /\/api\/models\/([0-9a-f]{64})/.exec(r.url());
      if (m) requests.set(m[1] as string, (requests.get(m[1] as string) ?? 0) + 1);
    });
    tabs = await Promise.all([openTab(context, hub.url, 'tab-a'), openTab(context, hub.url, 'tab-b')]);
  });

  after(async () => {
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('two tabs download a model once, a cut-off download is retried, and the tabs benchmark, are verified and finish the job', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model, 'mlp-small is built (npm run models)');
    // The first download of the model breaks off, as net::ERR_CACHE_WRITE_FAILURE did.
    let cut = 0;
    await context.route(`**/api/models/${model.sha256}`, (route) =>
      cut++ === 0 ? route.abort('failed') : route.continue(),
    );
    const jobId = await rest.submit('mlp-small', items(model, 600));
    // While it runs: a tab on probation says so; its share never exceeds the job.
    let verifyingShot = false;
    let shares: string[] = [];
    await waitFor(
      'the job to complete',
      async () => {
        for (const tab of tabs) {
          if (!verifyingShot && (await statusKey(tab)) === 'verifying') {
            verifyingShot = true;
            await tab.page.screenshot({ path: join(RESULTS, 'contributor-verifying.png'), fullPage: true });
          }
          const share = await tab.page.locator('[data-field=share]').innerText();
          if (share.includes(jobId)) shares.push(share);
        }
        return (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed';
      },
      180_000,
      100,
    );
    assert.equal(requests.get(model.sha256), 2, 'one cut-off download and its retry, for both tabs');
    // The hub says how long the model is (the page's progress bar needs it).
    const res = await fetch(`${hub.url}/api/models/${model.sha256}`);
    assert.equal(res.headers.get('content-length'), String(model.bytes));
    await res.arrayBuffer();
    for (const tab of tabs) {
      const s = await seen(tab);
      assert.ok(!s.includes('stopped'), `tab never stopped: ${s.join(' → ')}`);
      assert.ok(
        s.includes('benchmarking') || s.includes('downloading'),
        `the tab said what it did before its first items: ${s.join(' → ')}`,
      );
    }
    const all = [...(await seen(tabs[0] as Tab)), ...(await seen(tabs[1] as Tab))];
    assert.ok(all.includes('benchmarking'), `a tab showed "benchmarking": ${all.join(' ')}`);
    assert.ok(all.includes('verifying'), `a tab showed "being verified": ${all.join(' ')}`);
    assert.ok(all.includes('waiting-for-tab'), `a tab waited for the other's download: ${all.join(' ')}`);
    // Shares in accepted results: "k of 600 items accepted", k never above 600.
    assert.ok(shares.length > 0, 'a share was shown while the job ran');
    for (const s of shares) {
      const m = /\((\d+) of 600 items\s+accepted\)/.exec(s);
      assert.ok(m, `share reads in accepted results: ${s}`);
      assert.ok(Number(m[1]) <= 600);
    }
    shares = [];
    // The job ended: its share goes.
    for (const tab of tabs) {
      await tab.page
        .locator('[data-field=share]', { hasText: 'no job right now' })
        .waitFor({ timeout: 10_000 });
      assert.equal(await tab.page.locator('[data-field=download-error]').count(), 0);
    }
    await tabs[0]?.page.screenshot({ path: join(RESULTS, 'contributor-after-job.png'), fullPage: true });
    await context.unroute(`**/api/models/${model.sha256}`);
  });

  test('a model that cannot be downloaded shows its error on the page; the benchmark is tried again later and the job completes', async () => {
    const model = hub.hub.models.byName('mlp-tiny');
    assert.ok(model, 'mlp-tiny is built (npm run models)');
    await context.route(`**/api/models/${model.sha256}`, (route) =>
      route.fulfill({ status: 500, body: 'disk on fire' }),
    );
    for (const tab of tabs) await tab.page.evaluate('window.seenStatus = []');
    const jobId = await rest.submit('mlp-tiny', items(model, 50));
    // Each tab tries 5 times (0.5 + 1 + 2 + 4 s apart), one tab at a time (the Web Lock).
    await Promise.all(
      tabs.map(async (tab) => {
        const alert = tab.page.locator('[data-field=alert]');
        await alert.waitFor({ timeout: 60_000 });
        const text = await alert.innerText();
        assert.match(text, /mlp-tiny/);
        assert.match(text, /HTTP 500/);
        assert.match(text, /5 tries/);
        // Not frozen on the download that failed: the page moved on (until the hub asks again).
        const s = await waitFor(
          'the page to leave the failed download',
          async () => {
            const s = await seen(tab);
            const after = s.slice(s.indexOf('downloading'));
            return after.some((k) => ['waiting', 'between', 'verifying'].includes(k)) ? s : undefined;
          },
          10_000,
        );
        assert.ok(s.includes('downloading'), s.join(' → '));
      }),
    );
    await tabs[1]?.page.screenshot({ path: join(RESULTS, 'contributor-error.png'), fullPage: true });
    // The model can be had again: the hub benchmarks the tabs again after its wait, and they run the job.
    await context.unroute(`**/api/models/${model.sha256}`);
    const status = await jobDone(rest, jobId, 120_000);
    assert.equal(status.done, 50);
    for (const tab of tabs) {
      await tab.page.locator('[data-control=dismiss-alert]').click();
      assert.equal(await tab.page.locator('[data-field=alert]').count(), 0, 'the alert can be dismissed');
    }
  });
});
