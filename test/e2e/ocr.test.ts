/**
 * OCR shared by a native node and a WASM browser tab: a real hub serving the built pages, Debian's
 * Chromium (onnxruntime-web, WASM), a native node (onnxruntime-node), the real PaddleOCR models.
 * Steps run in both kinds of worker (one implementation, `pipeline/`); the run's text is compared
 * with the standalone pipeline's.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import type { HubServer } from '../../server/app.ts';
import { decodeImage } from '../../server/io/images.ts';
import { OcrService, type OcrPageResult, type OcrRunView } from '../../server/pipeline.ts';
import { StandaloneOcr } from '../../pipeline/standalone.ts';
import { scoreOcr } from '../../pipeline/metrics.ts';
import { ROOT, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { launchChromium, openWorkerTab, startPageHub } from '../helpers/browser.ts';

const SAMPLES = join(ROOT, 'models/samples/ocr');

describe('OCR on a native node and a WASM tab', () => {
  const tmp = tempDir('shardhub-e2e-ocr-');
  let hub: HubServer;
  let browser: Browser;
  let tab: Page;
  let node: Proc;

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'), {
      hub: { heartbeatMs: 500, offlineAfterMs: 2000, benchmarkTimeoutMs: 60_000 },
    });
    browser = await launchChromium();
    tab = (await openWorkerTab(await browser.newContext(), hub.url, 'backend=wasm')).page;
    node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), ['--name', 'native-1']);
    await waitFor(
      'tab and node online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 2,
      60_000,
    );
  });

  after(async () => {
    node?.child.kill('SIGKILL');
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('both workers run OCR items; the text equals the standalone pipeline’s, CER no worse', async () => {
    const files = ['page-000', 'page-001', 'page-002'];
    const pages = [...files, ...files].map((f, i) => ({
      name: `${i}-${f}.png`,
      bytes: new Uint8Array(readFileSync(join(SAMPLES, `${f}.png`))),
    }));
    const svc = await OcrService.of(hub.hub);
    // The native node is much faster than a WASM tab that must first benchmark three models and
    // pass probation, so one run may end before the tab takes an item. Runs go on (cache off, the
    // same pages read again) until the tab has run items; the last run's text is checked below.
    const workers = new Set<string>();
    let done: OcrRunView | undefined;
    let tabDone = 0;
    for (let attempt = 0; attempt < 6 && tabDone === 0; attempt++) {
      const run = await svc.submit(pages, { cache: false });
      done = await svc.wait(run.id);
      for (const jobId of Object.values(done.jobs)) {
        for await (const r of hub.hub.jobs.results(jobId)) workers.add(r.workerId);
      }
      tabDone = await tab.evaluate(() => window.shardhub?.stats()?.itemsDone ?? 0);
    }
    assert.ok(done);
    // A new tab is on probation: its results are replicas until another worker (or the hub's
    // reference backend) confirms them, so the stored row may name the confirmer. What the tab
    // ran, it counts itself.
    assert.ok(tabDone > 0, `the WASM tab ran items (${tabDone})`);
    const nodeId = [...hub.hub.workers.values()].find((w) => w.name === 'native-1')?.id;
    assert.ok(nodeId && workers.has(nodeId), 'the native node ran items');
    const ocr = await StandaloneOcr.create({ threads: 1 });
    const grid = [];
    const standalone = [];
    try {
      for (const [i, p] of pages.entries()) {
        const want = await ocr.recognize(decodeImage(p.bytes));
        const got: OcrPageResult = (done as OcrRunView).results![i]!;
        assert.equal(got.outcome, 'ok');
        assert.deepEqual(
          got.lines.map((l) => l.text),
          want.lines.map((l) => l.text),
          `${p.name}: the grid's text equals the standalone pipeline's`,
        );
        const truth = JSON.parse(
          readFileSync(join(SAMPLES, p.name.replace(/^\d+-/, '').replace('.png', '.json')), 'utf8'),
        ).lines;
        grid.push({ truth, got: got.lines.map((l) => l.text) });
        standalone.push({ truth, got: want.lines.map((l) => l.text) });
      }
    } finally {
      await ocr.dispose();
    }
    assert.ok(scoreOcr(grid).cer <= scoreOcr(standalone).cer);
  });
});
