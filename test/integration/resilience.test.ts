/**
 * Crashes and hostile input: kill -9 of the hub mid-job, server-side disconnects, malformed and
 * oversized socket payloads and REST bodies. The job must complete exactly once and the hub stay up.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import {
  Rest,
  freePort,
  serveArgs,
  spawnTs,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';

describe('hub crash', () => {
  const tmp = tempDir();
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('kill -9 of the hub mid-job, restart on the same data dir: the job completes exactly once', async () => {
    const port = await freePort();
    const data = join(tmp.dir, 'hub');
    // With the hub's Node flags, so that it does not run itself again in a child: the kill must
    // reach the hub itself.
    const serve = () =>
      spawnTs(
        'server/cli.ts',
        serveArgs(port, data, ['--heartbeat-ms', '500', '--offline-after-ms', '2000']),
        {},
        HUB_NODE_FLAGS,
      );
    let hub = serve();
    procs.push(hub);
    const url = `http://127.0.0.1:${port}`;
    await waitFor('hub up', () => hub.output().includes('hub is up'), 30_000);
    const tokens = JSON.parse((await import('node:fs')).readFileSync(join(data, 'tokens.json'), 'utf8'));
    const rest = new Rest(url, tokens.operatorToken);
    // sim nodes: 5 ms per item, so the job is surely mid-way when the hub dies.
    for (let i = 0; i < 2; i++) {
      procs.push(
        startNode(url, tokens.joinToken, join(tmp.dir, `n${i}`), [
          '--backend',
          'sim',
          '--speed',
          '1',
          '--item-ms',
          '5',
          '--concurrency',
          '2',
        ]),
      );
    }
    const model = {
      inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
      calibration: { dims: { x: [1, 4] }, seed: 1 },
    };
    const n = 1500;
    const items = Array.from({ length: n }, (_, i) => ({
      name: `i${i}`,
      tensors: calibrationInputs(model, i + 1),
    }));
    await waitFor(
      'nodes online',
      async () => (await rest.data('GET', '/api/workers?online=true')).workers.length === 2,
      30_000,
    );
    const jobId = await rest.submit('noop', items);
    await waitFor(
      'progress',
      async () => (await rest.data('GET', `/api/jobs/${jobId}`)).done >= 200,
      60_000,
      20,
    );
    hub.child.kill('SIGKILL');
    await hub.exited;
    hub = serve();
    procs.push(hub);
    await waitFor('hub back', () => hub.output().includes('hub is up'), 30_000);
    const status = await waitFor(
      'job done after restart',
      async () => {
        const r = await rest.req('GET', `/api/jobs/${jobId}`);
        return r.json?.data?.state === 'completed' ? r.json.data : undefined;
      },
      120_000,
      100,
    );
    assert.equal(status.done, n);
    hub.child.kill('SIGKILL');
    await hub.exited;
    const store = SqliteStore.open(join(data, 'hub.sqlite'));
    try {
      const names = [...store.iterateResults(jobId)].map((r) => r.name);
      assert.equal(names.length, n, 'one result per item');
      assert.equal(new Set(names).size, n, 'no item stored twice');
    } finally {
      store.close();
    }
  });
});

describe('connections and hostile input', () => {
  const tmp = tempDir();
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('a node dropped by the server reconnects with backoff as the same worker', async () => {
    const hub = await startHub(join(tmp.dir, 'hub1'));
    try {
      const node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'n'), ['--backend', 'sim']);
      procs.push(node);
      const w = await waitFor(
        'node online',
        () => [...hub.hub.workers.values()].find((x) => x.state === 'online'),
        30_000,
      );
      const id = w.id;
      const sock = hub.io.of('/worker').sockets.get(w.socketId as string);
      assert.ok(sock);
      sock.disconnect(true);
      await waitFor('node offline', () => hub.hub.workers.get(id)?.state === 'offline', 5000, 10);
      const back = await waitFor(
        'node back',
        () => {
          const x = hub.hub.workers.get(id);
          return x && x.state === 'online' && x.reconnects === 1 ? x : undefined;
        },
        30_000,
      );
      assert.equal(back.id, id);
      assert.equal(hub.hub.workers.size, 1, 'no second worker was created');
    } finally {
      await hub.close();
    }
  });

  test('malformed and oversized payloads and REST bodies get clear errors; the hub stays up', async () => {
    const hub = await startHub(join(tmp.dir, 'hub2'));
    const sockets: Socket[] = [];
    try {
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      // REST: no token, bad JSON, wrong fields, unknown model, oversized body, garbage items.
      assert.equal((await new Rest(hub.url, undefined).req('GET', '/api/jobs')).status, 401);
      assert.equal((await new Rest(hub.url, 'wrong').req('GET', '/api/jobs')).status, 401);
      const badJson = await rest.req('POST', '/api/jobs', '{"model":');
      assert.equal(badJson.status, 400);
      assert.equal(badJson.json.error.code, 'invalid_json');
      const badField = await rest.req('POST', '/api/jobs', { model: 'mlp-small', priority: 'high' });
      assert.equal(badField.status, 400);
      assert.match(badField.json.error.message, /priority/);
      assert.equal((await rest.req('POST', '/api/jobs', { model: 'nope' })).status, 404);
      const big = await rest.req('POST', '/api/jobs', {
        model: 'mlp-small',
        options: { pad: 'x'.repeat(20 * 1024 * 1024) },
      });
      assert.equal(big.status, 413);
      const job = await rest.data('POST', '/api/jobs', { model: 'mlp-small' });
      const garbage = await rest.req('POST', `/api/jobs/${job.id}/items`, undefined, randomBytes(1000));
      assert.equal(garbage.status, 400);
      assert.equal(garbage.json.error.code, 'invalid_item');
      const wrongShape = await rest.req('POST', '/api/jobs', {
        model: 'mlp-small',
        items: [
          {
            inputs: [
              { name: 'x', dtype: 'float32', dims: [1, 3], data: Buffer.alloc(12).toString('base64') },
            ],
          },
        ],
      });
      assert.equal(wrongShape.status, 400);
      assert.match(wrongShape.json.error.message, /dim 1 is 3, model wants 64/);

      // Sockets: bad handshake, register before auth, malformed payloads, unknown events.
      const bad = connect(`${hub.url}/worker`, {
        auth: { workerId: 'x' },
        reconnection: false,
        transports: ['websocket'],
      });
      sockets.push(bad);
      const err = await new Promise<Error>((ok) => bad.once('connect_error', ok));
      assert.match(err.message, /workerId/);

      const s = connect(`${hub.url}/worker`, {
        auth: { workerId: 'hostile-worker-1', workerSecret: 'x'.repeat(32) },
        reconnection: false,
        transports: ['websocket'],
      });
      sockets.push(s);
      await new Promise<void>((ok) => s.once('connect', () => ok()));
      const early = await s.timeout(2000).emitWithAck('items:done', { results: [] });
      assert.equal(early.error.code, 'not_registered');
      const noToken = await s.timeout(2000).emitWithAck('worker:register', {
        kind: 'native',
        backend: 'cpu',
        name: 'h',
        concurrency: 1,
        capabilities: { cores: 1, memoryBytes: 1 },
      });
      assert.equal(noToken.error.code, 'unauthorized');

      const s2 = connect(`${hub.url}/worker`, {
        auth: { workerId: 'hostile-worker-2', workerSecret: 'y'.repeat(32) },
        reconnection: false,
        transports: ['websocket'],
      });
      sockets.push(s2);
      await new Promise<void>((ok) => s2.once('connect', () => ok()));
      const malformed = await s2.timeout(2000).emitWithAck('worker:register', { kind: 'alien' });
      assert.equal(malformed.error.code, 'invalid_payload');
      assert.match(malformed.error.message, /kind/);
      const reg = await s2.timeout(2000).emitWithAck('worker:register', {
        kind: 'browser',
        backend: 'wasm',
        name: 'b',
        concurrency: 1,
        capabilities: { cores: 1, memoryBytes: 1 },
      });
      assert.ok(reg.data, JSON.stringify(reg));
      const junk = await s2.timeout(2000).emitWithAck('items:done', { results: [{ itemId: -1 }] });
      assert.equal(junk.error.code, 'invalid_payload');
      const huge = await s2
        .timeout(2000)
        .emitWithAck('items:done', {
          results: [
            {
              itemId: 1,
              jobId: 'j',
              modelSha256: 'a'.repeat(64),
              ms: 1,
              outputs: [{ name: 'y', dtype: 'float32', dims: [1], data: Buffer.alloc(65 * 1024 * 1024) }],
            },
          ],
        })
        .catch((e: Error) => ({ dropped: e.message }));
      // Over the socket message limit the hub closes the connection rather than buffer it.
      assert.ok('dropped' in huge || huge.error, JSON.stringify(huge).slice(0, 200));
      const unknown = await s
        .timeout(2000)
        .emitWithAck('hub:explode', {})
        .catch(() => ({ error: { code: 'closed' } }));
      assert.ok(unknown.error);
      // Still up and answering.
      const health = await rest.data('GET', '/api/health');
      assert.equal(health.ok, true);
    } finally {
      for (const s of sockets) s.close();
      await hub.close();
    }
  });

  test('the hub closes while a client is half-way through sending a request', async () => {
    const hub = await startHub(join(tmp.dir, 'hub-close'));
    const url = new URL(hub.url);
    // An operator's request whose body never finishes arriving: the HTTP server counts it as in
    // progress.
    const client = createConnection(Number(url.port), url.hostname);
    await new Promise<void>((ok) => client.once('connect', () => ok()));
    client.on('error', () => undefined);
    client.write(
      `POST /api/jobs HTTP/1.1\r\nhost: ${url.host}\r\nauthorization: Bearer ${hub.tokens.operatorToken}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model":`,
    );
    await new Promise((ok) => setTimeout(ok, 200));
    const gone = new Promise<void>((ok) => client.once('close', () => ok()));
    const outcome = await Promise.race([
      hub.close().then(() => 'closed'),
      new Promise((ok) => setTimeout(() => ok('still closing after 5 s'), 5000)),
    ]);
    assert.equal(outcome, 'closed');
    await gone; // the hub dropped the connection
    client.destroy();
  });
});
