/**
 * An OCR run on hubs that share one PostgreSQL store (`test/helpers/postgres.ts`): the run lives
 * on the hub it was submitted to, and its stage jobs' items are run by a native node (real
 * onnxruntime-node, the real PaddleOCR models) that only the other hub has. That hub claims the
 * stage jobs' chunks and passes what it stores on through the hub-to-hub channel, so the run feeds
 * each next stage and completes; its text equals the standalone pipeline's.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HubServer } from '../../server/app.ts';
import { decodeImage } from '../../server/io/images.ts';
import { StandaloneOcr } from '../../pipeline/standalone.ts';
import { Rest, ROOT, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';
import { startPostgres, type TestPostgres } from '../helpers/postgres.ts';

const SAMPLES = join(ROOT, 'models/samples/ocr');
const OPERATOR = 'op_ocr-hubs-test-operator-token-0123456789';
const JOIN = 'join_ocr-hubs-test-join-token-0123456789';

describe('OCR on several hubs', () => {
  const tmp = tempDir('shardhub-ocr-hubs-');
  let pgServer: TestPostgres | undefined;
  let skip: string | undefined;
  const hubs: HubServer[] = [];
  let node: Proc | undefined;

  before(async () => {
    const started = await startPostgres();
    if ('skip' in started) skip = started.skip;
    else pgServer = started;
  });
  after(async () => {
    node?.child.kill('SIGTERM');
    await node?.exited;
    for (const h of hubs) await h.close();
    await pgServer?.stop();
    tmp.cleanup();
  });

  test("a run on hub a whose stages run on hub b's node completes with the standalone pipeline's text", async (t) => {
    if (skip) return t.skip(skip);
    const config = {
      store: (pgServer as TestPostgres).url,
      operatorToken: OPERATOR,
      joinToken: JOIN,
      hub: { leaseMs: 2000 },
    };
    const a = await startHub(join(tmp.dir, 'a'), config);
    hubs.push(a);
    const b = await startHub(join(tmp.dir, 'b'), config);
    hubs.push(b);
    node = startNode(b.url, JOIN, join(tmp.dir, 'node'), ['--concurrency', '1', '--name', 'ocr-b']);
    await waitFor(
      'a node online on hub b',
      () => [...b.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
    assert.equal(a.hub.workers.size, 0, 'hub a has no worker of its own');

    const rest = new Rest(a.url, OPERATOR);
    const names = ['page-000.png', 'page-002.png'];
    const images = names.map((name) => ({ name, bytes: readFileSync(join(SAMPLES, name)) }));
    const run = await rest.data('POST', '/api/ocr', {
      images: images.map((im) => ({ name: im.name, data: Buffer.from(im.bytes).toString('base64') })),
      cache: false,
    });
    const done = await waitFor(
      'OCR run completed',
      async () => {
        const v = await rest.data('GET', `/api/ocr/${run.id}`);
        return v.state === 'completed' ? v : undefined;
      },
      240_000,
      250,
    );
    // Every stage ran on hub b's node: hub a has no workers.
    for (const stage of ['det', 'cls', 'rec'] as const) {
      const job = await rest.data('GET', `/api/jobs/${done.jobs[stage]}`);
      assert.equal(job.state, 'completed', `${stage} job completed`);
      assert.ok(job.done > 0, `${stage} items were run`);
    }
    const full = await rest.data('GET', `/api/ocr/${run.id}?results=1`);
    const ocr = await StandaloneOcr.create({ threads: 1 });
    try {
      for (const [i, im] of images.entries()) {
        const want = await ocr.recognize(decodeImage(im.bytes));
        assert.equal(full.results[i].outcome, 'ok');
        assert.deepEqual(
          full.results[i].lines.map((l: { text: string }) => l.text),
          want.lines.map((l) => l.text),
          `${im.name}: the text equals the standalone pipeline's`,
        );
      }
    } finally {
      await ocr.dispose();
    }
  });
});
