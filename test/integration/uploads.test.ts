/**
 * Uploads go to disk, not memory (`server/uploads.ts`): a model-sized body leaves the hub's heap and
 * RSS far below its size, one past the limit is refused with 413 and leaves nothing behind, an
 * aborted one leaves no temp file, and a model uploaded this way runs a job on a real node. A big
 * items body (`POST /api/jobs/:id/items`) is streamed the same way and added in batches; a
 * malformed one is refused whole with a 400 that says where.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import { packItems, type NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, checkResults, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';

const { onnx } = onnxProto;

/** Protobuf varint bytes of `n`. */
function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return Buffer.from(out);
}

/**
 * Writes `base` (an ONNX file) with an unused float initializer of `weightBytes` bytes added to its
 * graph, streaming the weight's zeros: a valid model of about that size, built without holding it.
 */
async function writeBigModel(base: string, out: string, weightBytes: number): Promise<void> {
  const model = onnx.ModelProto.decode(readFileSync(base));
  const graph = onnx.GraphProto.encode(model.graph!).finish();
  const head = onnx.ModelProto.encode({ ...model, graph: null }).finish();
  const tensorHead = onnx.TensorProto.encode({
    name: 'padding',
    dims: [weightBytes / 4],
    dataType: 1,
  }).finish();
  const rawField = Buffer.concat([Buffer.from([(9 << 3) | 2]), varint(weightBytes)]); // raw_data
  const tensorLen = tensorHead.length + rawField.length + weightBytes;
  const initField = Buffer.concat([Buffer.from([(5 << 3) | 2]), varint(tensorLen)]); // initializer
  const graphLen = graph.length + initField.length + tensorLen;
  const file = createWriteStream(out);
  const write = (b: Uint8Array) =>
    new Promise<void>((ok, fail) => file.write(b, (err) => (err ? fail(err) : ok())));
  for (const part of [
    head,
    Buffer.from([(7 << 3) | 2]),
    varint(graphLen),
    graph,
    initField,
    tensorHead,
    rawField,
  ])
    await write(part);
  const zeros = Buffer.alloc(1 << 20);
  for (let left = weightBytes; left > 0; left -= zeros.length)
    await write(zeros.subarray(0, Math.min(left, zeros.length)));
  await new Promise<void>((ok) => file.end(ok));
}

/** POSTs a body streamed from `chunks` (or a file) with node's http client; resolves with the answer. */
function post(
  url: string,
  token: string,
  body: { file: string } | { chunks: AsyncIterable<Uint8Array> },
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any }> {
  return new Promise((ok, fail) => {
    const req = request(url, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream', ...headers },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => ok({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    // The hub may answer (413) and close before the body is all sent: that is the answer, not a failure.
    req.on('error', (err) => (req.writableEnded ? undefined : fail(err)));
    const source = 'file' in body ? createReadStream(body.file) : body.chunks;
    (async () => {
      for await (const chunk of source) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      req.end();
    })().catch(() => req.destroy());
  });
}

/** What is in the hub's upload temp dir. */
const incoming = (hub: HubServer) => readdirSync(hub.hub.models.incomingDir);

describe('uploads go to disk', () => {
  const tmp = tempDir('shardhub-uploads-');
  let hub: HubServer;
  let rest: Rest;

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
  });

  after(async () => {
    await hub?.close();
    tmp.cleanup();
  });

  test('a 192 MB model upload keeps the hub’s heap and RSS growth far below its size', async (t) => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return t.skip('needs --expose-gc (node scripts/run-tests.mjs passes it)');
    const noop = hub.hub.models.byName('noop');
    assert.ok(noop, 'the noop model is built (npm run models)');
    const big = join(tmp.dir, 'big.onnx');
    const weight = 192 * 1024 * 1024;
    await writeBigModel(hub.hub.models.filePath(noop.sha256)!, big, weight);
    const size = statSync(big).size;

    gc();
    const start = process.memoryUsage();
    let peakRss = start.rss;
    let peakHeap = start.heapUsed;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakHeap = Math.max(peakHeap, m.heapUsed);
    }, 10);
    let r: { status: number; json: any };
    try {
      r = await post(`${hub.url}/api/models?name=big-noop`, hub.tokens.operatorToken, { file: big });
    } finally {
      clearInterval(sampler);
    }
    assert.equal(r.status, 201, JSON.stringify(r.json));
    const rssGrowth = peakRss - start.rss;
    const heapGrowth = peakHeap - start.heapUsed;
    t.diagnostic(
      `body ${(size / 2 ** 20).toFixed(0)} MiB; peak growth: RSS ${(rssGrowth / 2 ** 20).toFixed(1)} MiB, ` +
        `heap ${(heapGrowth / 2 ** 20).toFixed(1)} MiB`,
    );
    // Buffered, the body alone would add its 192 MiB; streamed, what grows is a few socket and
    // file-stream buffers (this process is also the client reading the file, and its garbage is
    // collected only now and then, later on a loaded machine): the same bound as the items upload.
    assert.ok(rssGrowth < size / 3, `RSS grew ${rssGrowth} bytes for a ${size}-byte body`);
    assert.ok(heapGrowth < size / 8, `heap grew ${heapGrowth} bytes for a ${size}-byte body`);

    const sha = createHash('sha256');
    for await (const chunk of createReadStream(big)) sha.update(chunk as Buffer);
    const digest = sha.digest('hex');
    assert.equal(r.json.data.sha256, digest);
    assert.equal(r.json.data.bytes, size);
    assert.equal(statSync(hub.hub.models.filePath(digest)!).size, size, 'renamed into place whole');
    assert.deepEqual(incoming(hub), []);
  });

  test('a body past the limit is refused with 413 and leaves no temp file, declared or not', async () => {
    // Declared: refused before a byte is read.
    const declared = await post(
      `${hub.url}/api/models?name=huge`,
      hub.tokens.operatorToken,
      { chunks: (async function* () {})() },
      { 'Content-Length': String(600 * 1024 * 1024) },
    );
    assert.equal(declared.status, 413);
    assert.equal(declared.json.error.code, 'too_large');
    assert.match(declared.json.error.message, /larger than the limit of 536870912 bytes/);

    // Chunked, no length: cut where it passes the limit (a file item's: 64 MiB and its header).
    const jobId = (await rest.data('POST', '/api/jobs', { model: 'noop' })).id as string;
    const chunk = new Uint8Array(1 << 20);
    const streamed = await post(`${hub.url}/api/jobs/${jobId}/files?name=big`, hub.tokens.operatorToken, {
      chunks: (async function* () {
        for (let i = 0; i < 80; i++) yield chunk;
      })(),
    });
    assert.equal(streamed.status, 413);
    assert.match(streamed.json.error.message, /the file is larger than the limit/);
    await waitFor('no temp file', () => incoming(hub).length === 0, 5000);
    assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).items, 0, 'no item was added');
  });

  test('an upload the client abandons midway leaves no temp file', async () => {
    const before = hub.hub.models.list().length;
    const req = request(`${hub.url}/api/models?name=abandoned`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${hub.tokens.operatorToken}`, 'Content-Length': String(50 << 20) },
    });
    req.on('error', () => undefined);
    for (let i = 0; i < 8; i++) req.write(new Uint8Array(1 << 20));
    await waitFor('the body arriving', () => incoming(hub).length === 1, 10_000);
    req.destroy();
    await waitFor('the temp file removed', () => incoming(hub).length === 0, 10_000);
    assert.equal(hub.hub.models.list().length, before);
  });

  /** A noop item (x: float32[rows, 4]) of `rows` rows, its values from `seed`. */
  const noopItem = (name: string, rows: number, seed: number): NamedItem => {
    const x = new Float32Array(rows * 4);
    for (let i = 0; i < x.length; i++) x[i] = ((seed + i) % 1000) / 1000;
    return {
      name,
      tensors: [{ name: 'x', dtype: 'float32', dims: [rows, 4], data: new Uint8Array(x.buffer) }],
    };
  };

  test('a 200 MiB items upload keeps the hub’s heap and RSS growth far below its size; every item is added', async (t) => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return t.skip('needs --expose-gc (node scripts/run-tests.mjs passes it)');
    const jobId = (await rest.data('POST', '/api/jobs', { model: 'noop' })).id as string;
    const count = 800;
    const rows = 16_384; // 256 KiB of inputs per item
    let size = 0;
    gc();
    const start = process.memoryUsage();
    let peakRss = start.rss;
    let peakHeap = start.heapUsed;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakHeap = Math.max(peakHeap, m.heapUsed);
    }, 10);
    let r: { status: number; json: any };
    try {
      // Made one item at a time as they are sent: the client holds no more of the body than the hub.
      r = await post(`${hub.url}/api/jobs/${jobId}/items`, hub.tokens.operatorToken, {
        chunks: (async function* () {
          for (let i = 0; i < count; i++) {
            const body = packItems([noopItem(`big${i}`, rows, i)]);
            size += body.byteLength;
            yield body;
          }
        })(),
      });
    } finally {
      clearInterval(sampler);
    }
    assert.equal(r.status, 201, JSON.stringify(r.json));
    assert.deepEqual(r.json.data, { added: count, itemCount: count });
    const rssGrowth = peakRss - start.rss;
    const heapGrowth = peakHeap - start.heapUsed;
    t.diagnostic(
      `body ${(size / 2 ** 20).toFixed(0)} MiB; peak growth: RSS ${(rssGrowth / 2 ** 20).toFixed(1)} MiB, ` +
        `heap ${(heapGrowth / 2 ** 20).toFixed(1)} MiB`,
    );
    // Buffered, the body and its items' copies would add twice its 200 MiB; streamed, what grows is
    // a batch of items (8 MiB), the file and socket buffers, and SQLite's page cache (32 MiB).
    assert.ok(rssGrowth < size / 3, `RSS grew ${rssGrowth} bytes for a ${size}-byte body`);
    assert.ok(heapGrowth < size / 8, `heap grew ${heapGrowth} bytes for a ${size}-byte body`);
    // Added whole and in order: the first and the last item, as sent.
    const items = await hub.hub.jobs.items(jobId, { offset: 0, limit: 1000 });
    assert.equal(items.length, count);
    const last = items.at(-1);
    assert.deepEqual([items[0]?.name, last?.name], ['big0', `big${count - 1}`]);
    const stored = (await hub.hub.jobs.inputs([last?.id ?? -1])).get(last?.id ?? -1);
    const sent = packItems([noopItem(`big${count - 1}`, rows, count - 1)]);
    assert.ok(stored, 'the last item has its inputs');
    assert.ok(
      Buffer.from(sent)
        .subarray(sent.byteLength - stored.byteLength)
        .equals(stored),
      'as sent',
    );
    assert.deepEqual(incoming(hub), []);
    await rest.data('POST', `/api/jobs/${jobId}/cancel`);
  });

  test('a malformed or oversized items body is refused with a clear 4xx; no item is added, no temp file stays', async () => {
    const jobId = (await rest.data('POST', '/api/jobs', { model: 'noop' })).id as string;
    const good = packItems([noopItem('a', 2, 1), noopItem('b', 2, 2)]);
    const send = (body: Uint8Array, headers: Record<string, string> = {}) =>
      post(
        `${hub.url}/api/jobs/${jobId}/items`,
        hub.tokens.operatorToken,
        {
          chunks: (async function* () {
            if (body.byteLength) yield body;
          })(),
        },
        headers,
      );
    const cases: [string, Uint8Array, number, string, RegExp][] = [
      ['empty', new Uint8Array(0), 400, 'invalid_request', /send the items .* as the request body/],
      [
        'truncated',
        good.subarray(0, good.byteLength - 3),
        400,
        'invalid_item',
        /runs past the end of the body/,
      ],
      [
        'a name length out of range',
        new Uint8Array([255, 255, 255, 255, 1, 2]),
        400,
        'invalid_item',
        /name length 4294967295 out of range/,
      ],
      [
        'an item of the wrong shape',
        packItems([
          noopItem('a', 2, 1),
          { name: 'c', tensors: [{ name: 'x', dtype: 'float32', dims: [1, 3], data: new Uint8Array(12) }] },
        ]),
        400,
        'invalid_item',
        /item "c": .*dim 1 is 3, model wants 4/,
      ],
    ];
    for (const [what, body, status, code, message] of cases) {
      const r = await send(body);
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error.code, code, what);
      assert.match(r.json.error.message, message, what);
    }
    const declared = await send(new Uint8Array(0), { 'Content-Length': String(300 * 1024 * 1024) });
    assert.equal(declared.status, 413);
    assert.match(declared.json.error.message, /larger than the limit of 268435456 bytes/);
    assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).items, 0, 'no item was added');
    assert.deepEqual(incoming(hub), []);
    const ok = await send(good);
    assert.equal(ok.status, 201, JSON.stringify(ok.json));
    assert.deepEqual(ok.json.data, { added: 2, itemCount: 2 });
    await rest.data('POST', `/api/jobs/${jobId}/cancel`);
  });

  describe('a model uploaded through the stream', () => {
    let node: Proc | undefined;
    after(() => node?.child.kill('SIGKILL'));

    test('runs a job on a native node, every result equal to the reference', async () => {
      const tiny = hub.hub.models.byName('mlp-tiny');
      assert.ok(tiny, 'mlp-tiny is built (npm run models)');
      // mlp-tiny under a doc string of its own: other bytes (the registry takes each bytes once).
      const bytes = onnx.ModelProto.encode({
        ...onnx.ModelProto.decode(readFileSync(hub.hub.models.filePath(tiny.sha256)!)),
        docString: 'uploaded through the stream',
      }).finish();
      const file = join(tmp.dir, 'streamed-tiny.onnx');
      writeFileSync(file, bytes);
      const up = await post(
        `${hub.url}/api/models?name=streamed-tiny&atol=0.001&rtol=0.01`,
        hub.tokens.operatorToken,
        { file },
        { 'Content-Length': String(bytes.byteLength) },
      );
      assert.equal(up.status, 201, JSON.stringify(up.json));
      assert.equal(
        up.json.data.sha256,
        createHash('sha256').update(bytes).digest('hex'),
        'addressed by sha256',
      );
      node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'));
      await waitFor(
        'a node online',
        () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
        60_000,
      );
      const model = up.json.data;
      const sent: NamedItem[] = Array.from({ length: 40 }, (_, i) => ({
        name: `t${i}`,
        tensors: calibrationInputs(model, i + 3),
      }));
      const jobId = await rest.submit('streamed-tiny', sent);
      await waitFor(
        'the job completed',
        async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
        120_000,
      );
      await checkResults(hub, jobId, sent);
    });
  });
});
