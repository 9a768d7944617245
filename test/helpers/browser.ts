/**
 * The end-to-end tests' browser side, in one place: Debian's Chromium launched headless by
 * playwright-core, a hub serving the built pages, a contributor tab that has registered, and the
 * operator dashboard signed in. Each e2e file keeps only what its own scenario needs.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { HubConfig, HubServer } from '../../server/app.ts';
import { ROOT, startHub, waitFor } from './grid.ts';

/** The Chromium the tests drive (`CHROMIUM_PATH`, default Debian's package). */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** The built pages (`npm run build`), which the hub under test serves. */
export const DIST = join(ROOT, 'dist', 'client');
/** Where the tests leave screenshots and downloads. */
export const RESULTS = join(ROOT, 'test-results');

/**
 * Launches Chromium headless, quiet (no background networking, updates, sync or first-run UI);
 * `webgpu` turns on WebGPU, which headless Chromium keeps off without a flag.
 */
export async function launchChromium(opts: { webgpu?: boolean } = {}): Promise<Browser> {
  assert.ok(existsSync(CHROMIUM), `Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      ...(opts.webgpu ? ['--enable-unsafe-webgpu'] : []),
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

/** A hub on loopback serving the built pages (`config` as for `startHub`); makes {@link RESULTS}. */
export async function startPageHub(dataDir: string, config: Partial<HubConfig> = {}): Promise<HubServer> {
  for (const page of ['index.html', 'dashboard.html'])
    assert.ok(existsSync(join(DIST, page)), `${page} is built (npm run build)`);
  mkdirSync(RESULTS, { recursive: true });
  return startHub(dataDir, { staticDir: DIST, ...config });
}

/** A contributor tab and what it logged (kept for failure messages). */
export interface Tab {
  page: Page;
  workerId: string;
  logs: string[];
}

/**
 * Opens the contributor page with `autostart=1&debug=1&log=1` and `query`, and waits until its
 * worker has registered; a tab that does not register fails with what it logged.
 */
export async function openWorkerTab(context: BrowserContext, hubUrl: string, query: string): Promise<Tab> {
  const page = await context.newPage();
  const logs: string[] = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${hubUrl}/?autostart=1&debug=1&log=1&${query}`);
  const workerId = await waitFor(
    `tab ${query} registered`,
    () =>
      page.evaluate(() => (window.shardhub?.stats()?.registered ? window.shardhub.workerId() : undefined)),
    60_000,
    100,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${logs.join('\n')}`);
  });
  return { page, workerId, logs };
}

/**
 * Opens the operator dashboard at `hash` in a context of its own, signs in through the form with
 * the operator token and waits for the live connection. Page errors go to `errors`.
 */
export async function signInDashboard(
  browser: Browser,
  hub: HubServer,
  opts: { hash?: string; viewport?: { width: number; height: number }; errors?: string[] } = {},
): Promise<Page> {
  const context = await browser.newContext({
    viewport: opts.viewport ?? { width: 1440, height: 1000 },
    acceptDownloads: true,
  });
  const page = await context.newPage();
  const errors = opts.errors;
  if (errors) page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${hub.url}/dashboard${opts.hash ?? '#workers'}`);
  await page.locator('[data-test=token]').fill(hub.tokens.operatorToken);
  await page.locator('[data-test=sign-in]').click();
  await page.locator('[data-test=connection]', { hasText: 'live' }).waitFor({ timeout: 15_000 });
  return page;
}
