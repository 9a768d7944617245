/**
 * The README's two commands on a fresh clone: `npm ci && npm start` gives a working grid with
 * nothing else asked of the user. The clone is of this checkout's last commit (`git clone`, then
 * that commit checked out), so it has no built pages and no generated models. `npm ci` is replaced
 * by a symlink to this checkout's node_modules, to keep the test to seconds (what `npm ci` itself
 * must do is in package.json: `allowScripts`); `npm start` runs as a user runs it, with `--port`
 * and `--data` only so that the test does not collide with anything. Then Chromium opens `/` and
 * `/dashboard`: both pages are there, the dashboard signs in, the contributor page joins the grid
 * as a browser worker, and no content security policy violation or page error shows up.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser, ConsoleMessage } from 'playwright-core';
import { ROOT, Rest, freePort, tempDir, waitFor } from '../helpers/grid.ts';
import { CHROMIUM, launchChromium } from '../helpers/browser.ts';

const ARTIFACTS = join(ROOT, 'test-results', 'first-run');

describe('a fresh clone: npm ci && npm start', { timeout: 300_000 }, () => {
  const tmp = tempDir('shardhub-clone-');
  const clone = join(tmp.dir, 'shardhub');
  let port = 0;
  let out = '';
  let start: ReturnType<typeof spawn> | undefined;
  let exited: Promise<number | string | null> | undefined;
  let browser: Browser | undefined;

  before(async () => {
    assert.ok(
      existsSync(CHROMIUM),
      `Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`,
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    const head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    execFileSync('git', ['clone', '--quiet', '--no-checkout', ROOT, clone]);
    execFileSync('git', ['checkout', '--quiet', '--detach', head], { cwd: clone });
    assert.ok(
      !existsSync(join(clone, 'dist')) && !existsSync(join(clone, 'models', 'generated')),
      'nothing built yet',
    );
    symlinkSync(join(ROOT, 'node_modules'), join(clone, 'node_modules'), 'dir'); // stands for `npm ci`
    port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, SHARDHUB_LOG_FORMAT: 'json' };
    for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k];
    start = spawn(
      'npm',
      ['start', '--', '--port', String(port), '--host', '127.0.0.1', '--data', join(tmp.dir, 'data')],
      {
        cwd: clone,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    start.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    start.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    exited = new Promise((ok) => start?.once('exit', (code, signal) => ok(code ?? signal)));
    await waitFor('the banner', () => out.includes('hub is up') || start?.exitCode !== null, 180_000, 200);
    assert.match(out, /hub is up/, out);
    browser = await launchChromium({ webgpu: true });
  });

  after(async () => {
    await browser?.close();
    start?.kill('SIGTERM');
    if (exited) await Promise.race([exited, new Promise((ok) => setTimeout(ok, 15_000))]);
    start?.kill('SIGKILL');
    tmp.cleanup();
  });

  test('npm start built the pages and models first, and says nothing else is needed', async () => {
    assert.match(out, /building the pages/);
    assert.match(out, /building the generated models/);
    assert.ok(existsSync(join(clone, 'dist', 'client', 'dashboard.html')));
    assert.doesNotMatch(out, /npm warn/i, 'npm prints no warnings');
    assert.doesNotMatch(out, /npm run models|npm run build|model skipped/);
    assert.match(
      out,
      /add a server: +npm run shardhub -- node --hub http:\/\/127\.0\.0\.1:\d+ --token join_/,
    );
    // The demo is OCR of the bundled sample pages: the banner names the run, and its text follows.
    await waitFor('the demo OCR run', () => /demo OCR run: +ocr_\w+ \(3 sample pages/.test(out), 60_000, 200);
    await waitFor(
      'the demo OCR text',
      () => /demo OCR run ocr_\w+ read:\n +── page-\d+\.png \(ok\)/.test(out),
      180_000,
      200,
    );
    // A second start finds everything built and builds nothing.
    const again = execFileSync('node', ['scripts/ensure-built.mjs'], { cwd: clone, encoding: 'utf8' });
    assert.equal(again, '');
  });

  test('/ and /dashboard open in Chromium; the page joins as a worker; no CSP violation', async () => {
    assert.ok(browser);
    const url = `http://127.0.0.1:${port}`;
    const token = /operator token: +(op_\S+)/.exec(out)?.[1];
    assert.ok(token, out);
    const problems: string[] = [];
    const watch = (m: ConsoleMessage) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text());
    };
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('console', watch);
    page.on('pageerror', (e) => problems.push(e.message));
    const res = await page.goto(`${url}/?autostart=1`);
    assert.equal(res?.status(), 200);
    assert.equal(await page.title(), 'shardhub · contribute');
    const rest = new Rest(url, token);
    await waitFor(
      'the page registered as a browser worker',
      async () => ((await rest.data('GET', '/api/workers?kind=browser')).workers as unknown[]).length > 0,
      60_000,
      250,
    );
    await page.screenshot({ path: join(ARTIFACTS, 'contribute.png') });

    const dash = await context.newPage();
    dash.on('console', watch);
    dash.on('pageerror', (e) => problems.push(e.message));
    const d = await dash.goto(`${url}/dashboard`);
    assert.equal(d?.status(), 200);
    assert.equal(await dash.title(), 'shardhub · operator dashboard');
    await dash.locator('[data-test=token]').fill(token);
    await dash.locator('[data-test=sign-in]').click();
    await dash.locator('[data-test=connection]', { hasText: 'live' }).waitFor({ timeout: 20_000 });
    await dash.screenshot({ path: join(ARTIFACTS, 'dashboard.png') });
    assert.deepEqual(problems, [], 'no CSP violations or page errors');
    await context.close();
  });

  test('SIGTERM to npm start stops the hub and its local node', async () => {
    start?.kill('SIGTERM');
    const code = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok('hung'), 30_000))]);
    assert.equal(code, 0, out.slice(-2000));
    await assert.rejects(fetch(`http://127.0.0.1:${port}/api/health`));
  });
});
