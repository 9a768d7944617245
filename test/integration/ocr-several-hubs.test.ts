/**
 * OCR runs on hubs that share one PostgreSQL store (`test/helpers/postgres.ts`). The stage jobs'
 * items are run by a native node (real onnxruntime-node, the real PaddleOCR models) that only hub b
 * has; the runs are submitted to another hub, their owner.
 *
 * - A run on hub a: b claims the stage jobs' chunks and passes what it stores on through the
 *   hub-to-hub channel, so a feeds each next stage and the run completes with the standalone
 *   pipeline's text. Hub b answers the run's reads (progress, results, wait) from the store, the
 *   same as a's; an unknown run is a 404 on b too.
 * - A run on a hub process killed with SIGKILL mid-run: a live hub reaps it, b takes the run over
 *   (once: the store's owner record says b, one takeover), carries it on from the store, and the run
 *   completes with the standalone pipeline's text, readable on b.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { StandaloneOcr } from '../../pipeline/standalone.ts';
import type { HubServer } from '../../server/app.ts';
import { decodeImage } from '../../server/io/images.ts';
import {
  freePort,
  Rest,
  ROOT,
  spawnHub,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';
import { startPostgres, type TestPostgres } from '../helpers/postgres.ts';

const SAMPLES = join(ROOT, 'models/samples/ocr');
const OPERATOR = 'op_ocr-hubs-test-operator-token-0123456789';
const JOIN = 'join_ocr-hubs-test-join-token-0123456789';
const LEASE_MS = 2000;

interface Page {
  name: string;
  bytes: Uint8Array;
}

const page = (name: string): Page => ({ name, bytes: readFileSync(join(SAMPLES, name)) });

describe('OCR on several hubs', () => {
  const tmp = tempDir('shardhub-ocr-hubs-');
  let pgServer: TestPostgres | undefined;
  let skip: string | undefined;
  const hubs: HubServer[] = [];
  const procs: Proc[] = [];
  let b: HubServer | undefined;
  let node: Proc | undefined;
  let standalone: StandaloneOcr | undefined;
  /** The standalone pipeline's lines of each page, by name. */
  const wanted = new Map<string, string[]>();

  /** The hub process the second test kills, started here so that its start overlaps the first test. */
  let victim: { proc: Proc; rest: Rest } | undefined;

  before(async () => {
    const started = await startPostgres();
    if ('skip' in started) {
      skip = started.skip;
      return;
    }
    pgServer = started;
    const port = await freePort();
    const proc = spawnHub(port, join(tmp.dir, 'victim'), [
      '--store',
      started.url,
      '--operator-token',
      OPERATOR,
      '--join-token',
      JOIN,
      '--lease-ms',
      String(LEASE_MS),
    ]);
    procs.push(proc);
    victim = { proc, rest: new Rest(`http://127.0.0.1:${port}`, OPERATOR) };
  });
  after(async () => {
    for (const p of procs) {
      p.child.kill('SIGKILL');
      await p.exited;
    }
    node?.child.kill('SIGTERM');
    await node?.exited;
    for (const h of hubs) await h.close();
    await standalone?.dispose();
    await pgServer?.stop();
    tmp.cleanup();
  });

  const config = () => ({
    store: (pgServer as TestPostgres).url,
    operatorToken: OPERATOR,
    joinToken: JOIN,
    hub: { leaseMs: LEASE_MS },
  });

  /** Hub b, with the only node. */
  async function hubB(): Promise<HubServer> {
    if (b) return b;
    b = await startHub(join(tmp.dir, 'b'), config());
    hubs.push(b);
    node = startNode(b.url, JOIN, join(tmp.dir, 'node'), ['--concurrency', '1', '--name', 'ocr-b']);
    await waitFor(
      'a node online on hub b',
      () => [...(b as HubServer).hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
    return b;
  }

  const submit = (rest: Rest, pages: Page[]) =>
    rest.data('POST', '/api/ocr', {
      images: pages.map((p) => ({ name: p.name, data: Buffer.from(p.bytes).toString('base64') })),
      cache: false, // the pages must run: the second test reads pages the first one did
    });

  const completed = (rest: Rest, id: string, what = 'OCR run completed') =>
    waitFor(
      what,
      async () => {
        const v = await rest.data('GET', `/api/ocr/${id}`);
        return v.state === 'completed' ? v : undefined;
      },
      120_000,
      100,
    );

  /** Asserts that each page's lines are the standalone pipeline's. */
  async function sameTextAsStandalone(results: any[], pages: Page[]): Promise<void> {
    standalone ??= await StandaloneOcr.create({ threads: 1 });
    for (const [i, p] of pages.entries()) {
      let want = wanted.get(p.name);
      if (!want) {
        want = (await standalone.recognize(decodeImage(p.bytes))).lines.map((l) => l.text);
        wanted.set(p.name, want);
      }
      assert.equal(results[i].name, p.name);
      assert.equal(results[i].outcome, 'ok', `${p.name}: ${JSON.stringify(results[i].error)}`);
      assert.deepEqual(
        results[i].lines.map((l: { text: string }) => l.text),
        want,
        `${p.name}: the text equals the standalone pipeline's`,
      );
    }
  }

  test("a run on hub a whose stages run on hub b's node completes with the standalone pipeline's text, and b answers its reads", async (t) => {
    if (skip) return t.skip(skip);
    const a = await startHub(join(tmp.dir, 'a'), config());
    hubs.push(a);
    await hubB();
    assert.equal(a.hub.workers.size, 0, 'hub a has no worker of its own');

    const onA = new Rest(a.url, OPERATOR);
    const onB = new Rest((b as HubServer).url, OPERATOR);
    const pages = [page('page-000.png'), page('page-002.png')];
    const run = await submit(onA, pages);
    assert.equal(run.owner, a.hub.hubId, 'the hub a run is submitted to owns it');
    // b reads the running run from the store, and waits on it there.
    const early = await onB.data('GET', `/api/ocr/${run.id}`);
    assert.equal(early.id, run.id);
    assert.equal(early.pages, 2);
    assert.equal(early.owner, a.hub.hubId);
    const waitedOnB = onB.data('GET', `/api/ocr/${run.id}?wait=1`);
    waitedOnB.catch(() => undefined); // awaited below; a failure before then must not crash the run

    const done = await completed(onA, run.id);
    // Every stage ran on hub b's node: hub a has no workers.
    for (const stage of ['det', 'cls', 'rec'] as const) {
      const job = await onA.data('GET', `/api/jobs/${done.jobs[stage]}`);
      assert.equal(job.state, 'completed', `${stage} job completed`);
      assert.ok(job.done > 0, `${stage} items were run`);
    }
    const full = await onA.data('GET', `/api/ocr/${run.id}?results=1`);
    await sameTextAsStandalone(full.results, pages);

    // Hub b answers the same: progress, stage jobs and every page's outcome.
    const fromB = await completed(onB, run.id, 'hub b sees the run completed');
    assert.deepEqual({ ...fromB, finishedAt: 0 }, { ...done, finishedAt: 0 });
    assert.deepEqual((await onB.data('GET', `/api/ocr/${run.id}?results=1`)).results, full.results);
    assert.deepEqual((await waitedOnB).results, full.results, "b's wait resolves with the results");
    const unknown = await onB.req('GET', '/api/ocr/ocr_nosuchrun');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.json.error.code, 'unknown_run');
    // Hub a leaves: the next test's owner is a hub process, and b must be the only hub to take over.
    await a.close();
  });

  test('a hub process killed with SIGKILL mid-run: hub b takes the run over once and it completes with the same text', async (t) => {
    if (skip) return t.skip(skip);
    const hubB2 = await hubB();
    const onB = new Rest(hubB2.url, OPERATOR);
    const { proc, rest: onVictim } = victim as { proc: Proc; rest: Rest };
    await waitFor(
      'the hub process up',
      async () => (await onVictim.req('GET', '/api/health').catch(() => undefined))?.status === 200,
      60_000,
      200,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${proc.output()}`);
    });

    const pages = [page('page-000.png'), page('page-001.png')];
    const run = await submit(onVictim, pages);
    const victimId = run.owner as string;
    // Killed mid-run: once detection has answered for a page (its lines are on their way), before
    // the run completes.
    await waitFor(
      'a page through detection',
      async () => {
        const v = await onB.data('GET', `/api/ocr/${run.id}`);
        const det = await onB.data('GET', `/api/jobs/${v.jobs.det}`);
        return det.items === pages.length && det.done >= 1;
      },
      60_000,
      100,
    );
    const before = await onB.data('GET', `/api/ocr/${run.id}`);
    assert.equal(before.state, 'running', 'the run is still running when its hub is killed');
    proc.child.kill('SIGKILL');
    await proc.exited;
    const killedAt = Date.now();

    const taken = await waitFor(
      'hub b owns the run',
      async () => {
        const v = await onB.data('GET', `/api/ocr/${run.id}`);
        return v.owner === hubB2.hub.hubId ? v : undefined;
      },
      30_000,
      100,
    );
    const takenMs = Date.now() - killedAt;
    const hubsSeen = (await onB.data('GET', '/api/hubs')).hubs;
    assert.equal(
      hubsSeen.find((h: { id: string }) => h.id === victimId)?.state,
      'dead',
      'the killed hub was reaped',
    );
    const done = await completed(onB, run.id, 'the taken-over run completed');
    const doneMs = Date.now() - killedAt;
    assert.equal(done.owner, hubB2.hub.hubId);
    assert.ok(done.pagesDone === pages.length && taken.pages === pages.length);
    const full = await onB.data('GET', `/api/ocr/${run.id}?results=1`);
    await sameTextAsStandalone(full.results, pages);
    assert.deepEqual((await onB.data('GET', `/api/ocr/${run.id}?wait=1`)).results, full.results);

    // The store's owner record: b took the run over once, and the run is marked completed.
    const db = new pg.Client({ connectionString: (pgServer as TestPostgres).url });
    await db.connect();
    try {
      const rec = await db.query('SELECT owner_hub, state, takeovers FROM pipeline_runs WHERE id = $1', [
        run.id,
      ]);
      assert.deepEqual(rec.rows, [{ owner_hub: hubB2.hub.hubId, state: 'completed', takeovers: 1 }]);
    } finally {
      await db.end();
    }
    t.diagnostic(
      `hub killed with ${before.pagesDone}/${pages.length} pages done; run taken over ${takenMs} ms ` +
        `after the kill (lease ${LEASE_MS} ms), completed ${doneMs} ms after it`,
    );
  });
});
