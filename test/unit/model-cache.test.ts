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

  before(async () => {
    server = createServer((req, res) => {
      requests++;
      if (req.url === `/api/models/${sha}`) {
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
});
