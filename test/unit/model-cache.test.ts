import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import {
  fetchModel,
  MemoryModelStore,
  ModelHashError,
  modelUrl,
  sha256Hex,
  type ModelStore,
} from '../../worker/model-cache.ts';

const bytes = new Uint8Array(200_000).map((_, i) => (i * 31) % 251);
const sha = createHash('sha256').update(bytes).digest('hex');
const model = (over: Partial<{ sha256: string; url: string }> = {}) => ({
  name: 'm',
  sha256: sha,
  bytes: bytes.byteLength,
  url: `/api/models/${sha}`,
  ...over,
});

describe('model cache', () => {
  let server: Server;
  let hub: string;
  let requests = 0;
  /** Responses still to cut off halfway (the connection is destroyed mid-body). */
  let cutOff = 0;

  before(async () => {
    server = createServer((req, res) => {
      requests++;
      if (req.url === `/api/models/${sha}` && cutOff > 0) {
        cutOff--;
        res.writeHead(200, { 'content-length': bytes.byteLength });
        res.write(bytes.subarray(0, bytes.byteLength / 2), () => res.destroy());
      } else if (req.url === '/busy') {
        res.writeHead(503).end();
      } else if (req.url === `/api/models/${sha}`) {
        res.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': bytes.byteLength,
        });
        res.end(bytes);
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    hub = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('hashes like node:crypto', async () => {
    assert.equal(await sha256Hex(bytes), sha);
  });

  it('joins the hub URL and the model path', () => {
    assert.equal(modelUrl('http://h:1/', { url: '/api/models/x' }), 'http://h:1/api/models/x');
    assert.equal(modelUrl('http://h:1', { url: 'api/models/x' }), 'http://h:1/api/models/x');
  });

  it('fetches, verifies and caches; the second fetch comes from the cache', async () => {
    const store = new MemoryModelStore();
    const before = requests;
    const progress: [number, number][] = [];
    const got = await fetchModel(hub, model(), store, { onProgress: (l, t) => progress.push([l, t]) });
    assert.deepEqual(got, bytes);
    assert.equal(requests - before, 1);
    assert.deepEqual(progress.at(-1), [bytes.byteLength, bytes.byteLength]);
    assert.deepEqual(await store.get(sha), bytes);

    const again = await fetchModel(hub, model(), store);
    assert.deepEqual(again, bytes);
    assert.equal(requests - before, 1, 'no second request');
  });

  it('refuses bytes with the wrong hash, names both hashes and caches nothing', async () => {
    const store = new MemoryModelStore();
    const wrong = 'ab'.repeat(32);
    await assert.rejects(
      fetchModel(hub, model({ sha256: wrong, url: `/api/models/${sha}` }), store),
      (err: unknown) =>
        err instanceof ModelHashError && err.message.includes(wrong) && err.message.includes(sha),
    );
    assert.equal(store.size, 0);
  });

  it('refetches when a cached copy is corrupt', async () => {
    const store = new MemoryModelStore();
    await store.put(sha, new Uint8Array([1, 2, 3]));
    const before = requests;
    assert.deepEqual(await fetchModel(hub, model(), store), bytes);
    assert.equal(requests - before, 1);
    assert.deepEqual(await store.get(sha), bytes);
  });

  it('reports HTTP errors with the status', async () => {
    await assert.rejects(fetchModel(hub, model({ url: '/nope' }), new MemoryModelStore()), /HTTP 404/);
  });

  it('tries again after a download cut off midway, and reports the progress from zero again', async () => {
    const store = new MemoryModelStore();
    cutOff = 2;
    const before = requests;
    const progress: [number, number][] = [];
    const got = await fetchModel(hub, model(), store, {
      retryDelayMs: 10,
      onProgress: (l, t) => progress.push([l, t]),
    });
    assert.deepEqual(got, bytes);
    assert.equal(requests - before, 3, 'two cut-off tries, then a whole one');
    assert.ok(
      progress.some(([l]) => l === 0),
      'progress went back to zero for the retry',
    );
    assert.deepEqual(progress.at(-1), [bytes.byteLength, bytes.byteLength]);
  });

  it('gives up after its retries, saying how many tries it made', async () => {
    const before = requests;
    await assert.rejects(
      fetchModel(hub, model({ url: '/busy' }), new MemoryModelStore(), { retries: 2, retryDelayMs: 5 }),
      /HTTP 503.*\(3 tries\)/,
    );
    assert.equal(requests - before, 3);
  });

  it('does not retry a 404', async () => {
    const before = requests;
    await assert.rejects(fetchModel(hub, model({ url: '/nope' }), new MemoryModelStore()), /HTTP 404/);
    assert.equal(requests - before, 1);
  });

  it('a store with an exclusive section downloads a model once for concurrent users', async () => {
    // Two tabs of one origin share one Cache Storage and one lock manager; here, one store and a
    // promise chain per key stand for them.
    const shared = new MemoryModelStore();
    const chains = new Map<string, Promise<unknown>>();
    let waited = 0;
    const tab = (): ModelStore => ({
      get: (k) => shared.get(k),
      put: (k, b) => shared.put(k, b),
      exclusive<T>(key: string, fn: () => Promise<T>, onWait?: () => void): Promise<T> {
        const prev = chains.get(key);
        if (prev) {
          waited++;
          onWait?.();
        }
        const run = (prev ?? Promise.resolve()).then(fn, fn);
        chains.set(
          key,
          run.catch(() => undefined),
        );
        return run;
      },
    });
    const before = requests;
    const [a, b] = await Promise.all([fetchModel(hub, model(), tab()), fetchModel(hub, model(), tab())]);
    assert.deepEqual(a, bytes);
    assert.deepEqual(b, bytes);
    assert.equal(requests - before, 1, 'one download, the other tab read its copy');
    assert.equal(waited, 1);
  });
});
