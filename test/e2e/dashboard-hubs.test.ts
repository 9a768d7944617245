/**
 * The dashboard's hubs view with several hubs (issue 21): hub a (in-process, serving the built
 * pages) and hub b (a real `shardhub serve` process) on one real PostgreSQL, a sim native node on
 * hub b, and Debian's Chromium through Playwright. Signed in on hub a, the operator sees both hubs
 * live with their leases, a marked as the page's own hub, the node counted on b and named with b
 * in the workers table; when b is killed (SIGKILL), hub a reaps it once its lease lapses, and b is
 * listed dead, holding nothing. On a hub alone (SQLite) the view says so.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import type { HubServer } from '../../server/app.ts';
import { freePort, Rest, spawnHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { RESULTS, launchChromium, signInDashboard, startPageHub } from '../helpers/browser.ts';
import { startPostgres, type TestPostgres } from '../helpers/postgres.ts';

const OPERATOR = 'op_hubs-view-test-operator-token-0123456789';
const JOIN = 'join_hubs-view-test-join-token-0123456789';
const LEASE_MS = 2000;

describe('the hubs view', { timeout: 180_000 }, () => {
  const tmp = tempDir('shardhub-hubs-view-');
  let pgServer: TestPostgres | undefined;
  let skip: string | undefined;
  let browser: Browser;
  let a: HubServer;
  let b: Proc | undefined;
  let node: Proc | undefined;
  let alone: HubServer | undefined;

  before(async () => {
    browser = await launchChromium();
    const started = await startPostgres();
    if ('skip' in started) {
      skip = started.skip;
      return;
    }
    pgServer = started;
    const config = {
      store: started.url,
      operatorToken: OPERATOR,
      joinToken: JOIN,
      hub: { leaseMs: LEASE_MS },
    };
    a = await startPageHub(join(tmp.dir, 'a'), config);
    const port = await freePort();
    b = spawnHub(port, join(tmp.dir, 'b'), [
      ...['--store', started.url, '--operator-token', OPERATOR, '--join-token', JOIN],
      ...['--lease-ms', String(LEASE_MS)],
    ]);
    const bUrl = `http://127.0.0.1:${port}`;
    await waitFor(
      'hub b up',
      async () => (await fetch(`${bUrl}/api/health`).catch(() => undefined))?.ok,
      90_000,
    );
    node = startNode(bUrl, JOIN, join(tmp.dir, 'node'), ['--backend', 'sim', '--name', 'node-on-b']);
    const rest = new Rest(a.url, OPERATOR);
    await waitFor(
      'the node listed on hub a, on hub b',
      async () =>
        ((await rest.data('GET', '/api/workers?online=true')).workers as { hub?: string }[]).some(
          (w) => w.hub && w.hub !== a.hub.hubId,
        ),
      60_000,
    );
  });
  after(async () => {
    node?.child.kill('SIGKILL');
    b?.child.kill('SIGKILL');
    await Promise.all([node?.exited, b?.exited]);
    await a?.close();
    await alone?.close();
    await browser?.close();
    await pgServer?.stop();
    tmp.cleanup();
  });

  test('both hubs live with their leases and workers; a killed hub is reaped and listed dead', async (t) => {
    if (skip) return t.skip(skip);
    const page = await signInDashboard(browser, a, { hash: '#hubs' });
    const rows = page.locator('sh-hubs-view tr[data-hub-id]');
    await waitFor('two hubs listed', async () => (await rows.count()) === 2, 15_000);
    await page
      .locator('[data-test=hubs-store]', { hasText: '2 live, sharing one PostgreSQL store' })
      .waitFor();
    const self = page.locator(`sh-hubs-view tr[data-hub-id="${a.hub.hubId}"]`);
    await self.locator('[data-test=hub-self]').waitFor();
    const other = page
      .locator('sh-hubs-view tr[data-state=live]')
      .filter({ hasNot: page.locator('[data-test=hub-self]') });
    const bId = await other.getAttribute('data-hub-id');
    assert.ok(bId && bId !== a.hub.hubId, `hub b listed: ${bId}`);
    assert.match(await self.locator('[data-test=hub-lease]').innerText(), /^\d+\.\d s left$/);
    // Listed with the port it listens on (it asked for any).
    assert.ok((await self.locator('td').nth(1).innerText()).endsWith(`:${new URL(a.url).port}`));
    await waitFor(
      'the node counted on hub b',
      async () => (await other.locator('[data-test=hub-workers]').innerText()) === '1',
      15_000,
    );
    assert.equal(await self.locator('[data-test=hub-workers]').innerText(), '0');
    await page.screenshot({ path: join(RESULTS, 'dashboard-hubs.png'), fullPage: true });

    // The workers table names each worker's hub.
    await page.locator('nav a', { hasText: 'Workers' }).click();
    const row = page.locator('sh-workers-table .row[data-worker-id]', { hasText: 'node-on-b' });
    assert.equal(await row.locator('[data-col=hub]').innerText(), bId);

    // Hub b dies: its lease lapses, then hub a reaps it and it is listed dead, holding nothing.
    await page.locator('nav a', { hasText: 'Hubs' }).click();
    b?.child.kill('SIGKILL');
    const bRow = page.locator(`sh-hubs-view tr[data-hub-id="${bId}"]`);
    await bRow.locator('.pill', { hasText: 'dead' }).waitFor({ timeout: 30_000 });
    assert.equal(await bRow.locator('[data-test=hub-lease]').innerText(), 'released (reaped)');
    assert.equal(await bRow.locator('td.num').first().innerText(), '0', 'its chunks were released');
    await page.locator('[data-test=hubs-store]', { hasText: '1 live' }).waitFor();
    await page.context().close();
  });

  test('a hub alone on SQLite: one row, its lease never lapses, every worker its own', async () => {
    alone = await startPageHub(join(tmp.dir, 'alone'));
    const page = await signInDashboard(browser, alone, { hash: '#hubs' });
    await page.locator('[data-test=hubs-store]', { hasText: 'one hub on its SQLite file' }).waitFor();
    const rows = page.locator('sh-hubs-view tr[data-hub-id]');
    assert.equal(await rows.count(), 1);
    assert.equal(await rows.locator('[data-test=hub-lease]').innerText(), 'never lapses (one hub)');
    assert.ok((await rows.locator('td').nth(1).innerText()).endsWith(`:${new URL(alone.url).port}`));
    await rows.locator('[data-test=hub-self]').waitFor();
    await page.context().close();
  });
});
