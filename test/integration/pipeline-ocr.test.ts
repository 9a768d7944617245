/**
 * OCR as a pipeline on the grid: a real hub, a real native node (onnxruntime-node in a child
 * process), the real PaddleOCR models. The grid's text must equal the standalone pipeline's on the
 * same pages (same backend: CPU onnxruntime-node), and bad inputs end as per-page outcomes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import type { HubServer } from '../../server/app.ts';
import { decodeImage } from '../../server/io/images.ts';
import { StandaloneOcr } from '../../pipeline/standalone.ts';
import { OCR_PAGES_IN_FLIGHT } from '../../server/pipeline.ts';
import { scoreOcr } from '../../pipeline/metrics.ts';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
import {
  freePort,
  Rest,
  ROOT,
  serveArgs,
  spawnTs,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';

const SAMPLES = join(ROOT, 'models/samples/ocr');

function png(width: number, height: number, value: number): Uint8Array {
  const img = new PNG({ width, height });
  img.data.fill(value);
  return new Uint8Array(PNG.sync.write(img));
}

describe('OCR pipeline on the grid', () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  let node: Proc;

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), [
      '--concurrency',
      '1',
      '--name',
      'n0',
    ]);
    await waitFor(
      'node online',
      () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
  });

  after(async () => {
    node.child.kill('SIGKILL');
    await hub.close();
    tmp.cleanup();
  });

  test('pages in, text out: the grid reads what the standalone pipeline reads; stages run as jobs', async () => {
    const names = ['page-000', 'page-002'];
    const images = names.map((n) => ({ name: `${n}.png`, bytes: readFileSync(join(SAMPLES, `${n}.png`)) }));
    const run = await rest.data('POST', '/api/ocr', {
      images: images.map((im) => ({ name: im.name, data: Buffer.from(im.bytes).toString('base64') })),
    });
    assert.match(run.id, /^ocr_/);
    const done = await waitFor(
      'OCR run completed',
      async () => {
        const v = await rest.data('GET', `/api/ocr/${run.id}`);
        return v.state === 'completed' ? v : undefined;
      },
      180_000,
      200,
    );
    const full = await rest.data('GET', `/api/ocr/${run.id}?results=1`);
    assert.equal(full.results.length, 2);
    // Each stage was a job of its own model, and ran its items on the node.
    for (const stage of ['det', 'cls', 'rec'] as const) {
      const job = await rest.data('GET', `/api/jobs/${done.jobs[stage]}`);
      assert.equal(job.state, 'completed', `${stage} job completed`);
      assert.ok(job.done > 0);
    }
    const det = await rest.data('GET', `/api/jobs/${done.jobs.det}`);
    assert.equal(det.items, 2, 'one detection item per page');
    const ocr = await StandaloneOcr.create({ threads: 1 });
    try {
      const scores = { grid: [] as any[], standalone: [] as any[] };
      for (const [i, im] of images.entries()) {
        const want = await ocr.recognize(decodeImage(im.bytes));
        const got = full.results[i];
        assert.equal(got.outcome, 'ok');
        assert.equal(got.name, im.name);
        assert.deepEqual(
          got.lines.map((l: any) => l.text),
          want.lines.map((l) => l.text),
          `${im.name}: grid text equals standalone text`,
        );
        assert.deepEqual(
          got.lines.map((l: any) => l.box),
          want.lines.map((l) => l.box),
        );
        const truth = JSON.parse(readFileSync(join(SAMPLES, im.name.replace('.png', '.json')), 'utf8')).lines;
        scores.grid.push({ truth, got: got.lines.map((l: any) => l.text) });
        scores.standalone.push({ truth, got: want.lines.map((l) => l.text) });
      }
      assert.ok(scoreOcr(scores.grid).cer <= scoreOcr(scores.standalone).cer, 'grid CER no worse');
    } finally {
      await ocr.dispose();
    }
  });

  test('stages overlap: a page’s lines are recognized while other pages are still in detection', async () => {
    // More pages than the run keeps in detection at once, cache off so that each is read.
    const files = ['page-000', 'page-001', 'page-002'];
    const images = Array.from({ length: OCR_PAGES_IN_FLIGHT + 4 }, (_, i) => ({
      name: `o${i}.png`,
      data: readFileSync(join(SAMPLES, `${files[i % files.length]}.png`)).toString('base64'),
    }));
    // One page first: the node benchmarks each stage's model before it takes that stage's items.
    const warm = await rest.data('POST', '/api/ocr', { images: images.slice(0, 1), cache: false });
    await rest.data('GET', `/api/ocr/${warm.id}?wait=1`);
    // When each stage's results were stored, per page, from the hub's own commit events.
    const commits: { stage: string; page: number; at: number }[] = [];
    const stageOf = new Map<string, string>();
    const pending: Promise<void>[] = [];
    const onCommit = (jobId: string, ids: number[]) => {
      const at = performance.now();
      const noted = (async () => {
        const job = await hub.hub.jobs.get(jobId);
        const stage = (job?.options.pipeline as { stage?: string } | undefined)?.stage;
        if (!stage) return;
        stageOf.set(jobId, stage);
        for (const id of ids) {
          const name = (await hub.hub.jobs.item(id))?.name ?? '';
          commits.push({ stage, page: Number(/^p(\d+)/.exec(name)?.[1]), at });
        }
      })();
      pending.push(noted);
    };
    hub.hub.on('items:committed', onCommit);
    try {
      const run = await rest.data('POST', '/api/ocr', { images, cache: false });
      const done = await rest.data('GET', `/api/ocr/${run.id}?wait=1`);
      assert.ok(done.results.every((r: any) => r.outcome === 'ok'));
    } finally {
      hub.hub.off('items:committed', onCommit);
    }
    await Promise.all(pending);
    commits.sort((a, b) => a.at - b.at);
    const lastDet = Math.max(...commits.filter((c) => c.stage === 'det').map((c) => c.at));
    const firstRec = commits.find((c) => c.stage === 'rec');
    assert.ok(firstRec, 'lines were recognized');
    assert.ok(
      firstRec.at < lastDet,
      `page ${firstRec.page}'s first line was recognized before the last page left detection`,
    );
    const inDetLater = commits.filter((c) => c.stage === 'det' && c.at > firstRec.at).map((c) => c.page);
    assert.ok(
      inDetLater.length > 0 && !inDetLater.includes(firstRec.page),
      'other pages were still in detection',
    );
    assert.deepEqual(new Set(stageOf.values()), new Set(['det', 'cls', 'rec']));
  });

  test('bad inputs: not an image, empty or truncated files, blank and 20,000-px-wide pages, a picture: each its own outcome', async () => {
    const sample = readFileSync(join(SAMPLES, 'page-001.png'));
    // A page with a picture and no text: a smooth gradient and a dark disc.
    const picture = new PNG({ width: 320, height: 240 });
    for (let y = 0; y < 240; y++)
      for (let x = 0; x < 320; x++) {
        const v = Math.hypot(x - 160, y - 120) < 60 ? 30 : Math.round((x / 320) * 200 + 40);
        picture.data.set([v, v, 255 - v, 255], (y * 320 + x) * 4);
      }
    // A wide strip that has text: the sample page placed at the left of 20,000 px of white.
    const page = PNG.sync.read(sample);
    const strip = new PNG({ width: 20_000, height: page.height });
    strip.data.fill(255);
    PNG.bitblt(page, strip, 0, 0, page.width, page.height, 0, 0);
    const images = [
      { name: 'notes.txt', bytes: new TextEncoder().encode('this is not an image') },
      { name: 'nothing.png', bytes: new Uint8Array(0) },
      { name: 'truncated.png', bytes: sample.subarray(0, 200) },
      { name: 'blank.png', bytes: png(300, 200, 255) },
      { name: 'wide.png', bytes: png(20_000, 60, 255) },
      { name: 'wide-text.png', bytes: PNG.sync.write(strip) },
      { name: 'picture.png', bytes: PNG.sync.write(picture) },
      { name: 'text.png', bytes: sample },
    ];
    const run = await rest.data('POST', '/api/ocr', {
      images: images.map((im) => ({ name: im.name, data: Buffer.from(im.bytes).toString('base64') })),
    });
    const done = await rest.data('GET', `/api/ocr/${run.id}?wait=1`);
    const by = Object.fromEntries(done.results.map((r: any) => [r.name, r]));
    assert.equal(by['notes.txt'].outcome, 'invalid_image');
    assert.equal(by['notes.txt'].error.stage, 'decode');
    assert.match(by['notes.txt'].error.reason, /not a PNG or JPEG/);
    assert.equal(by['nothing.png'].outcome, 'invalid_image');
    assert.match(by['nothing.png'].error.reason, /nothing\.png: not a PNG or JPEG/);
    assert.equal(by['truncated.png'].outcome, 'invalid_image');
    assert.match(by['truncated.png'].error.reason, /truncated\.png: cannot decode PNG/);
    assert.equal(by['blank.png'].outcome, 'no_text');
    assert.equal(by['wide.png'].outcome, 'no_text');
    assert.equal(by['wide.png'].width, 20_000);
    // Read at the detector's 960 px, the text of a 20,000-px strip is a few pixels tall: what
    // it finds there is its outcome, a page like any other.
    assert.ok(['ok', 'no_text'].includes(by['wide-text.png'].outcome), by['wide-text.png'].outcome);
    assert.equal(by['wide-text.png'].width, 20_000);
    assert.equal(by['picture.png'].outcome, 'no_text');
    assert.equal(by['picture.png'].text, '');
    assert.equal(by['text.png'].outcome, 'ok');
    assert.ok(by['text.png'].lines.length >= 2);
    for (const r of done.results)
      assert.notEqual(r.outcome, 'failed', `${r.name}: ${JSON.stringify(r.error)}`);
    // The stage jobs themselves completed: bad pages are outcomes, not failed jobs.
    for (const jobId of Object.values(done.jobs))
      assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).state, 'completed');
  });

  test('shardhub ocr --inputs DIR --out DIR writes a JSON and a text file per page, bad files included', async () => {
    const inputs = join(tmp.dir, 'scans');
    const out = join(tmp.dir, 'text');
    mkdirSync(inputs);
    copyFileSync(join(SAMPLES, 'page-001.png'), join(inputs, 'a-page.png'));
    writeFileSync(join(inputs, 'b-broken.png'), 'not really a png');
    const cli = spawnTs('server/cli.ts', [
      'ocr',
      '--hub',
      hub.url,
      '--token',
      hub.tokens.operatorToken,
      '--inputs',
      inputs,
      '--out',
      out,
    ]);
    const { code } = await cli.exited;
    assert.equal(code, 0, cli.output());
    const page = JSON.parse(readFileSync(join(out, 'a-page.json'), 'utf8'));
    assert.equal(page.outcome, 'ok');
    const truth = JSON.parse(readFileSync(join(SAMPLES, 'page-001.json'), 'utf8')).lines as string[];
    const text = readFileSync(join(out, 'a-page.txt'), 'utf8');
    assert.equal(text.trim().split('\n').length, truth.length);
    assert.equal(text.replace(/\s/g, ''), truth.join('').replace(/\s/g, ''));
    const broken = JSON.parse(readFileSync(join(out, 'b-broken.json'), 'utf8'));
    assert.equal(broken.outcome, 'invalid_image');
    assert.ok(existsSync(join(out, 'b-broken.txt')));
    assert.match(cli.output(), /b-broken.png: invalid_image/);
    // The progress bar of `submit`: pages, rate, elapsed time, and how the run ended.
    assert.match(cli.output(), /reading +\S+ 2\/2 pages {2}.* elapsed {2}completed/);
  });

  test('result cache: pages read before, or twice in a run, are answered without running again', async () => {
    const post = async (images: { name: string; bytes: Uint8Array }[], cache = true) => {
      const run = await rest.data('POST', '/api/ocr', {
        cache,
        images: images.map((im) => ({ name: im.name, data: Buffer.from(im.bytes).toString('base64') })),
      });
      return rest.data('GET', `/api/ocr/${run.id}?wait=1`);
    };
    // A page this hub has not read: the cache keys stage items by their bytes, which for detection
    // are the decoded pixels (the same pixels in other PNG bytes would be answered).
    const page = PNG.sync.read(readFileSync(join(SAMPLES, 'page-000.png')));
    page.data[0] = page.data[0] === 0 ? 1 : page.data[0] - 1;
    const fresh = PNG.sync.write(page, { deflateLevel: 1 });
    const twice = await post([
      { name: 'a.png', bytes: fresh },
      { name: 'b.png', bytes: fresh },
    ]);
    const det = await rest.data('GET', `/api/jobs/${twice.jobs.det}`);
    assert.equal(det.items, 1, 'a page that repeats in a run is read once');
    assert.equal(twice.results[0].cached, undefined);
    assert.equal(twice.results[1].cached, true);
    assert.equal(twice.results[1].name, 'b.png');
    assert.deepEqual(twice.results[1].lines, twice.results[0].lines);
    const again = await post([{ name: 'c.png', bytes: fresh }]);
    assert.deepEqual(Object.keys(again.jobs).sort(), ['cls', 'det', 'rec']);
    for (const jobId of Object.values(again.jobs) as string[]) {
      const job = await rest.data('GET', `/api/jobs/${jobId}`);
      assert.equal(job.verification.cached, job.items, `${jobId}: every item answered from the store`);
      assert.equal(job.startedAt, null, `${jobId}: nothing of it sent to a worker`);
    }
    assert.equal(again.results[0].cached, true);
    assert.deepEqual(again.results[0].lines, twice.results[0].lines);
    const uncached = await post([{ name: 'd.png', bytes: fresh }], false);
    assert.ok(uncached.jobs.det, 'cache: false reads the page again');
    assert.equal(uncached.results[0].cached, undefined);
    assert.deepEqual(uncached.results[0].lines, twice.results[0].lines);
  });

  test('a stage that fails keeps the lineage: each page says the stage and why', async () => {
    const worker = [...hub.hub.workers.values()].find((w) => w.state === 'online');
    assert.ok(worker);
    await rest.data('POST', `/api/workers/${worker.id}/pause`);
    try {
      const bytes = PNG.sync.write(PNG.sync.read(readFileSync(join(SAMPLES, 'page-002.png'))), {
        deflateLevel: 2,
      });
      const run = await rest.data('POST', '/api/ocr', {
        cache: false, // page-002 was read before: answered from the cache, it would not fail
        images: [
          { name: 'x.png', data: Buffer.from(bytes).toString('base64') },
          { name: 'y.png', data: Buffer.from(png(64, 64, 0)).toString('base64') },
        ],
      });
      const det = await waitFor(
        'detection job',
        async () => (await rest.data('GET', `/api/ocr/${run.id}`)).jobs.det,
      );
      // Once sealed (queued): nothing runs, the worker is paused.
      await waitFor(
        'detection job queued',
        async () => (await rest.data('GET', `/api/jobs/${det}`)).state === 'queued',
      );
      await rest.data('POST', `/api/jobs/${det}/cancel`);
      const done = await rest.data('GET', `/api/ocr/${run.id}?wait=1`);
      for (const page of done.results) {
        assert.equal(page.outcome, 'failed');
        assert.equal(page.error.stage, 'det');
        assert.match(page.error.reason, /cancelled/);
      }
    } finally {
      await rest.data('POST', `/api/workers/${worker.id}/resume`);
    }
  });

  test('a run of more pages than it holds decoded at once reads them all', async () => {
    // Distinct blank pages (one grey level each), so the cache answers none of them.
    const images = Array.from({ length: OCR_PAGES_IN_FLIGHT + 4 }, (_, i) => ({
      name: `blank-${i}.png`,
      data: Buffer.from(png(64, 48, 200 + i)).toString('base64'),
    }));
    const run = await rest.data('POST', '/api/ocr', { images });
    const done = await rest.data('GET', `/api/ocr/${run.id}?wait=1`);
    assert.equal(done.pagesDone, images.length);
    assert.ok(done.results.every((r: any) => r.outcome === 'no_text' && r.cached === undefined));
  });

  test('an empty request is refused with a clear message', async () => {
    const r = await rest.req('POST', '/api/ocr', { images: [] });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.code, 'invalid_request');
  });
});

describe('OCR re-run after a hub restart', () => {
  const tmp = tempDir();
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('`shardhub ocr` on the same folder, after a restart, is answered from the store with no worker online', async () => {
    const data = join(tmp.dir, 'hub');
    const inputs = join(tmp.dir, 'scans');
    mkdirSync(inputs);
    for (let i = 0; i < 2; i++) copyFileSync(join(SAMPLES, `page-00${i}.png`), join(inputs, `scan-${i}.png`));
    const ocr = async (hub: HubServer, out: string) => {
      const cli = spawnTs('server/cli.ts', [
        'ocr',
        '--hub',
        hub.url,
        '--token',
        hub.tokens.operatorToken,
        '--inputs',
        inputs,
        '--out',
        out,
      ]);
      procs.push(cli);
      const { code } = await waitFor('shardhub ocr exited', () => cli.exited, 240_000);
      assert.equal(code, 0, cli.output());
      return cli.output();
    };
    let hub = await startHub(data);
    const node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), ['--concurrency', '1']);
    procs.push(node);
    try {
      await waitFor(
        'node online',
        () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
        60_000,
      );
      const first = await ocr(hub, join(tmp.dir, 'text1'));
      assert.doesNotMatch(first, /\(cached\)/);
    } finally {
      node.child.kill('SIGKILL');
      await hub.close();
    }
    hub = await startHub(data);
    try {
      const second = await ocr(hub, join(tmp.dir, 'text2'));
      assert.equal(hub.hub.workers.size, 0, 'no worker: nothing could have run');
      for (let i = 0; i < 2; i++) {
        assert.match(second, new RegExp(`scan-${i}\\.png: ok \\(cached\\)`));
        const was = JSON.parse(readFileSync(join(tmp.dir, 'text1', `scan-${i}.json`), 'utf8'));
        const now = JSON.parse(readFileSync(join(tmp.dir, 'text2', `scan-${i}.json`), 'utf8'));
        assert.equal(now.cached, true);
        assert.deepEqual(now.lines, was.lines, `scan-${i}: the lines read the first time`);
        assert.equal(
          readFileSync(join(tmp.dir, 'text2', `scan-${i}.txt`), 'utf8'),
          readFileSync(join(tmp.dir, 'text1', `scan-${i}.txt`), 'utf8'),
        );
      }
    } finally {
      await hub.close();
    }
  });
});

describe('OCR run across a hub restart', () => {
  const tmp = tempDir();
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('kill -9 of the hub mid-run, restart on the same data dir: the run finishes and `shardhub ocr` writes every page', async () => {
    const port = await freePort();
    const data = join(tmp.dir, 'hub');
    const url = `http://127.0.0.1:${port}`;
    // With the hub's Node flags, so that it does not run itself again in a child: the kill must
    // reach the hub itself.
    const serve = () => {
      const p = spawnTs(
        'server/cli.ts',
        serveArgs(port, data, ['--heartbeat-ms', '500', '--offline-after-ms', '2000']),
        {},
        HUB_NODE_FLAGS,
      );
      procs.push(p);
      return p;
    };
    let hubProc = serve();
    await waitFor('hub up', () => hubProc.output().includes('hub is up'), 30_000);
    const tokens = JSON.parse(readFileSync(join(data, 'tokens.json'), 'utf8'));
    const rest = new Rest(url, tokens.operatorToken);
    procs.push(
      startNode(url, tokens.joinToken, join(tmp.dir, 'node'), ['--concurrency', '1', '--name', 'r0']),
    );
    await waitFor(
      'node online',
      async () => (await rest.data('GET', '/api/workers?online=true')).workers.length === 1,
      60_000,
    );
    const inputs = join(tmp.dir, 'scans');
    const out = join(tmp.dir, 'text');
    mkdirSync(inputs);
    const pages = 8;
    for (let i = 0; i < pages; i++)
      copyFileSync(join(SAMPLES, `page-00${i % 3}.png`), join(inputs, `scan-${i}.png`));
    const cli = spawnTs('server/cli.ts', [
      'ocr',
      '--hub',
      url,
      '--token',
      tokens.operatorToken,
      '--inputs',
      inputs,
      '--out',
      out,
      '--no-cache',
    ]);
    procs.push(cli);
    const runId = await waitFor('run started', () => /OCR run (ocr_\w+)/.exec(cli.output())?.[1], 60_000, 50);
    const before = await waitFor(
      'a page read',
      async () => {
        const v = await rest.data('GET', `/api/ocr/${runId}`);
        return v.pagesDone >= 1 ? v : undefined;
      },
      120_000,
      50,
    );
    hubProc.child.kill('SIGKILL');
    await hubProc.exited;
    assert.ok(before.pagesDone < pages, `killed mid-run (${before.pagesDone}/${pages} pages read)`);
    hubProc = serve();
    await waitFor('hub back', () => hubProc.output().includes('hub is up'), 30_000);
    const { code } = await waitFor('shardhub ocr exited', () => cli.exited, 240_000);
    assert.equal(code, 0, cli.output());
    assert.match(cli.output(), /does not answer; waiting for it to come back/);
    const after = await rest.data('GET', `/api/ocr/${runId}?results=1`);
    assert.equal(after.state, 'completed');
    const ocr = await StandaloneOcr.create({ threads: 1 });
    try {
      for (let i = 0; i < pages; i++) {
        const want = await ocr.recognize(decodeImage(readFileSync(join(inputs, `scan-${i}.png`))));
        const got = JSON.parse(readFileSync(join(out, `scan-${i}.json`), 'utf8'));
        assert.equal(got.outcome, 'ok', `scan-${i}: ${JSON.stringify(got.error)}`);
        assert.deepEqual(
          got.lines.map((l: any) => l.text),
          want.lines.map((l) => l.text),
          `scan-${i}: the text the standalone pipeline reads`,
        );
        assert.equal(readFileSync(join(out, `scan-${i}.txt`), 'utf8'), `${want.text}\n`);
      }
    } finally {
      await ocr.dispose();
    }
  });
});
