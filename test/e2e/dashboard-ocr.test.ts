/**
 * OCR from the operator dashboard end to end: a real hub (in-process) serving the built pages
 * (`npm run build`), one real native node (onnxruntime-node on the PP-OCRv4 models), Debian's
 * Chromium driven by Playwright. The bundled sample pages (models/samples/ocr/) are picked and a
 * text file is dropped into the Submit view's OCR form; the run's page must show, per page, the
 * same text and confidences as `GET /api/ocr/:id?results=1`, `invalid_image` for the text file,
 * each stage job completed, a download of all the text, the cached marker on a second run, the
 * request bound before upload, and a clear message when the hub goes away. Screenshots go to
 * `test-results/`.
 */
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import type { HubServer } from '../../server/app.ts';
import type { OcrRunView } from '../../server/pipeline.ts';
import { ROOT, Rest, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { RESULTS, launchChromium, signInDashboard, startPageHub } from '../helpers/browser.ts';

const SAMPLES = join(ROOT, 'models/samples/ocr');
const PNGS = ['page-000.png', 'page-001.png', 'page-002.png'].map((f) => join(SAMPLES, f));

/** Opens the dashboard, signs in through the form, waits for the live connection. */
function signIn(browser: Browser, hub: HubServer, errors: string[]): Promise<Page> {
  return signInDashboard(browser, hub, { hash: '#submit', viewport: { width: 1280, height: 1000 }, errors });
}

/** Drops files on the OCR form's drop zone, as a drag from the desktop would. */
async function drop(page: Page, files: { name: string; type: string; text: string }[]): Promise<void> {
  const dt = await page.evaluateHandle((fs) => {
    const t = new DataTransfer();
    for (const f of fs) t.items.add(new File([f.text], f.name, { type: f.type }));
    return t;
  }, files);
  await page.locator('[data-test=ocr-drop]').dispatchEvent('drop', { dataTransfer: dt });
}

/** The run id from the page's hash once the form has handed over to the run's view. */
async function runIdOf(page: Page): Promise<string> {
  await page.waitForURL(/#ocr\//, { timeout: 60_000 });
  return decodeURIComponent(new URL(page.url()).hash.replace('#ocr/', ''));
}

describe('OCR from the operator dashboard', () => {
  const tmp = tempDir('shardhub-dash-ocr-');
  let hub: HubServer;
  let rest: Rest;
  let browser: Browser;
  let node: Proc;
  const errors: string[] = [];

  before(async () => {
    hub = await startPageHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), ['--name', 'native-1']);
    browser = await launchChromium();
    await waitFor(
      'the native node online',
      () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
  });

  after(async () => {
    node?.child.kill('SIGKILL');
    await browser?.close();
    await hub?.close();
    tmp.cleanup();
  });

  test('pages picked and a text file dropped: each page shows the REST result’s text; the text file shows invalid_image', async () => {
    const page = await signIn(browser, hub, errors);
    await page.locator('[data-test=source-ocr]').check();
    await page.locator('[data-test=ocr-files]').setInputFiles(PNGS);
    await drop(page, [{ name: 'notes.txt', type: 'text/plain', text: 'these are notes, not a scan' }]);
    await page.locator('[data-test=ocr-not-images]').waitFor();
    assert.match(await page.locator('[data-test=ocr-file-summary]').innerText(), /^4 page\(s\)/);
    await page.locator('[data-test=ocr-cache]').uncheck();
    await page.screenshot({ path: join(RESULTS, 'dashboard-ocr-form.png'), fullPage: true });
    await page.locator('[data-test=ocr-submit]').click();
    const id = await runIdOf(page);
    assert.match(id, /^ocr_/);

    // While it runs, each stage is listed with its progress (the run takes seconds on one node).
    await page.locator('[data-test=ocr-stage][data-stage=det]').waitFor({ timeout: 30_000 });
    await page.screenshot({ path: join(RESULTS, 'dashboard-ocr-running.png'), fullPage: true });
    await page.locator('[data-test=ocr-run-state]', { hasText: 'completed' }).waitFor({ timeout: 300_000 });

    const { status, json } = await rest.req('GET', `/api/ocr/${encodeURIComponent(id)}?results=1`);
    assert.equal(status, 200);
    const run = json.data as OcrRunView;
    const results = run.results ?? [];
    assert.equal(results.length, 4);
    assert.deepEqual(
      results.map((r) => r.name),
      ['page-000.png', 'page-001.png', 'page-002.png', 'notes.txt'],
    );
    const shown = page.locator('[data-test=ocr-page]');
    assert.equal(await shown.count(), 4);
    for (const [i, r] of results.entries()) {
      const card = page.locator(`[data-test=ocr-page][data-index="${i}"]`);
      assert.equal(await card.locator('[data-test=ocr-page-name]').innerText(), r.name);
      assert.equal((await card.locator('[data-test=ocr-page-outcome]').innerText()).trim(), r.outcome);
      if (i < 3) {
        assert.equal(r.outcome, 'ok', `${r.name} is read`);
        assert.ok(r.lines.length > 0);
        const lines = await card.locator('[data-test=ocr-line]').allInnerTexts();
        assert.equal(lines.join('\n'), r.text, `${r.name}: the page shows the REST result's text`);
        const conf = await card.locator('[data-test=ocr-conf]').allInnerTexts();
        assert.deepEqual(
          conf.map((c) => c.trim()),
          r.lines.map((l) => `${(l.confidence * 100).toFixed(1)}%`),
          `${r.name}: each line's confidence`,
        );
        assert.equal(await card.locator('[data-test=ocr-page-cached]').count(), 0, 'not from the cache');
      } else {
        assert.equal(r.outcome, 'invalid_image');
        assert.equal(r.error?.stage, 'decode');
        const note = await card.locator('[data-test=ocr-page-note]').innerText();
        assert.ok(note.includes(`decode: ${r.error?.reason}`), `the reason is shown: ${note}`);
      }
    }
    // The three sample pages' truth (rendered text) is what was read, bar the spaces the model drops.
    for (const [i, f] of ['page-000', 'page-001', 'page-002'].entries()) {
      const truth = JSON.parse(readFileSync(join(SAMPLES, `${f}.json`), 'utf8')).lines as string[];
      const flat = (s: string) => s.replace(/\s+/g, '');
      assert.equal(flat(results[i]!.text), flat(truth.join('\n')), `${f}: the text of the page`);
    }
    // Every stage ran as a job and shows it completed.
    for (const stage of ['det', 'cls', 'rec'] as const) {
      const el = page.locator(`[data-test=ocr-stage][data-stage=${stage}]`);
      assert.match(await el.innerText(), /completed/, `${stage} completed`);
      assert.ok(run.jobs[stage], `${stage} job`);
    }

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.locator('[data-test=ocr-download-txt]').click(),
    ]);
    assert.equal(download.suggestedFilename(), `${id}.txt`);
    const txt = readFileSync(await download.path(), 'utf8');
    for (const r of results.slice(0, 3)) assert.ok(txt.includes(`== ${r.name} ==\n${r.text}\n`), r.name);
    assert.ok(txt.includes('== notes.txt (invalid_image) =='));
    const [djson] = await Promise.all([
      page.waitForEvent('download'),
      page.locator('[data-test=ocr-download-json]').click(),
    ]);
    const saved = JSON.parse(readFileSync(await djson.path(), 'utf8'));
    assert.deepEqual(saved.pages, results, 'the .json holds the REST results');

    await page.screenshot({ path: join(RESULTS, 'dashboard-ocr-run.png'), fullPage: true });
    assert.deepEqual(errors, [], 'no page errors');
    await page.context().close();
  });

  test('with the cache on, a page met before is marked cached (the unchecked box kept the first run out of it)', async () => {
    const page = await signIn(browser, hub, errors);
    await page.locator('[data-test=source-ocr]').check();
    assert.ok(await page.locator('[data-test=ocr-cache]').isChecked(), 'the cache is on by default');
    // The same bytes under another name: read once, the second answered from the first.
    const copy = join(tmp.dir, 'page-001-copy.png');
    writeFileSync(copy, readFileSync(PNGS[1]!));
    await page.locator('[data-test=ocr-files]').setInputFiles([PNGS[1]!, copy]);
    await page.locator('[data-test=ocr-submit]').click();
    const id = await runIdOf(page);
    await page.locator('[data-test=ocr-run-state]', { hasText: 'completed' }).waitFor({ timeout: 300_000 });
    const { json } = await rest.req('GET', `/api/ocr/${encodeURIComponent(id)}?results=1`);
    const [first, second] = (json.data as OcrRunView).results!;
    assert.ok(first && second);
    assert.ok(!first.cached, 'the first run (cache box unchecked) left nothing in the cache');
    assert.equal(second.cached, true);
    const cards = page.locator('[data-test=ocr-page]');
    assert.equal(await cards.nth(0).locator('[data-test=ocr-page-cached]').count(), 0);
    await cards.nth(1).locator('[data-test=ocr-page-cached]').waitFor();
    assert.equal(
      (await cards.nth(1).locator('[data-test=ocr-line]').allInnerTexts()).join('\n'),
      second.text,
    );
    assert.equal(second.text, first.text);
    assert.deepEqual(errors, [], 'no page errors');
    await page.context().close();
  });

  test('a run larger than the hub takes is refused before upload; a lost hub is said so', async () => {
    const page = await signIn(browser, hub, errors);
    await page.locator('[data-test=source-ocr]').check();
    // 51 MB becomes 68 MB of base64: over the hub's 64 MiB (67.1 MB) request bound.
    const big = join(tmp.dir, 'big.png');
    writeFileSync(big, '');
    truncateSync(big, 51_000_000);
    await page.locator('[data-test=ocr-files]').setInputFiles([big]);
    assert.match(await page.locator('[data-test=ocr-too-big]').innerText(), /at most 67 MB per run/);
    assert.ok(await page.locator('[data-test=ocr-submit]').isDisabled(), 'submit is off');
    await page.locator('[data-test=ocr-clear]').click();

    // A run in view and still running (cache off: three pages take the node seconds), then the hub
    // goes away: the page keeps what it showed and says the hub is gone while it retries.
    await page.locator('[data-test=ocr-files]').setInputFiles(PNGS);
    await page.locator('[data-test=ocr-cache]').uncheck();
    await page.locator('[data-test=ocr-submit]').click();
    await runIdOf(page);
    await page.locator('[data-test=ocr-run-state]', { hasText: 'running' }).waitFor();
    assert.equal(await page.locator('[data-test=ocr-page]').count(), 3);
    await hub.close();
    const problem = page.locator('[data-test=ocr-run-problem]');
    await problem.waitFor({ timeout: 30_000 });
    assert.match(await problem.innerText(), /hub is gone.*still trying.*last the hub said/i);
    assert.equal(await page.locator('[data-test=ocr-page]').count(), 3, 'the last picture is kept');
    await page.screenshot({ path: join(RESULTS, 'dashboard-ocr-hub-gone.png') });
    await page.context().close();
  });
});
