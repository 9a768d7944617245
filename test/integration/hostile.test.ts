/**
 * A hostile client sends well over 1,000 malformed, oversized, out-of-order, forged and
 * unauthorized socket messages and REST requests while a job runs. The hub stays up, every request
 * with a reply gets an error (or a rate-limit refusal), and the job's results are unaffected.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import { packTensors, unpackTensors } from '../../protocol/pack.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { compareTensors } from '../../protocol/tensor.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';

const tmp = tempDir();
after(() => tmp.cleanup());

function garbage(i: number): unknown {
  const kinds: unknown[] = [
    null,
    42,
    'x'.repeat(i % 5000),
    { results: 'nope' },
    { results: [{ itemId: 'one' }] },
    { results: [] },
    { failures: [{ itemId: 1, jobId: 'j', category: 'alien', message: 'x' }] },
    { itemIds: Array.from({ length: 10 }, () => -1) },
    [1, 2, 3],
    { __proto__: { polluted: true }, kind: 'native' },
    randomBytes(64),
  ];
  return kinds[i % kinds.length];
}

test('over 1,000 hostile messages and requests change nothing', async () => {
  const hub = await startHub(join(tmp.dir, 'hub'));
  const nodes: Proc[] = [];
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < 2; i++)
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `n${i}`), [
          '--backend',
          'sim',
          '--speed',
          '2',
          '--item-ms',
          '4',
        ]),
      );
    await waitFor(
      'nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 2,
      60_000,
    );
    const model = hub.hub.models.byName('noop');
    assert.ok(model);
    const rest = new Rest(hub.url, hub.tokens.operatorToken);
    const sent = Array.from({ length: 1500 }, (_, i) => ({
      name: `i${i}`,
      tensors: calibrationInputs(model, 1 + i),
    }));
    const jobId = await rest.submit('noop', sent);

    let hostile = 0;
    let answered = 0;
    const expectError = (r: unknown) => {
      hostile++;
      const res = r as { error?: { code: string } } | undefined;
      if (res?.error?.code) answered++;
    };

    // Unauthorized and malformed handshakes.
    for (let i = 0; i < 40; i++) {
      const s = connect(`${hub.url}/worker`, {
        auth: i % 2 ? { workerId: 'short' } : { workerId: `hostile-${i}-xxxxxx`, workerSecret: 'too-short' },
        reconnection: false,
        transports: ['websocket'],
      });
      sockets.push(s);
      const err = await new Promise<Error>((ok) => s.once('connect_error', ok));
      hostile++;
      if (err.message) answered++;
    }

    // A registered (anonymous browser) socket sending junk, forged results and unknown events.
    const s = connect(`${hub.url}/worker`, {
      auth: { workerId: 'hostile-browser-1', workerSecret: 'h'.repeat(32) },
      reconnection: false,
      transports: ['websocket'],
      parser: shardhubParser,
    });
    sockets.push(s);
    await new Promise<void>((ok) => s.once('connect', () => ok()));
    // Out of order: results before registering.
    for (let i = 0; i < 20; i++)
      expectError(
        await s
          .timeout(5000)
          .emitWithAck('items:done', { results: [] })
          .catch(() => undefined),
      );
    const reg = await s.timeout(5000).emitWithAck('worker:register', {
      kind: 'browser',
      backend: 'wasm',
      name: 'hostile',
      concurrency: 1,
      capabilities: { cores: 1, memoryBytes: 1 },
    });
    assert.ok('data' in reg);
    const events = ['items:done', 'items:failed', 'items:release', 'worker:register'];
    for (let i = 0; i < 800; i++) {
      expectError(
        await s
          .timeout(5000)
          .emitWithAck(events[i % events.length] as 'items:done', garbage(i) as never)
          .catch(() => undefined),
      );
    }
    // Forged results for real items of the running job (never assigned to this socket).
    const items = hub.hub.store.listItems(jobId, { offset: 0, limit: 200 });
    for (const it of items) {
      hostile++;
      const r = await s.timeout(5000).emitWithAck('items:done', {
        results: [
          {
            itemId: it.id,
            jobId,
            modelSha256: model.sha256,
            ms: 1,
            outputs: [{ name: 'y', dtype: 'float32', dims: [1, 4], data: new Uint8Array(16).fill(7) }],
          },
        ],
      });
      if ('data' in r && r.data.dropped.includes(it.id)) answered++;
    }
    // Packed results (one attachment, item offsets): malformed ones are refused whole...
    const pack = packTensors([
      { name: 'y', dtype: 'float32', dims: [1, 4], data: new Uint8Array(16).fill(7) },
    ]);
    const two = new Uint8Array([...pack, ...pack]);
    const group = (over: Record<string, unknown>) => ({
      jobId,
      modelSha256: model.sha256,
      ids: [items[0]?.id, items[1]?.id],
      ms: [1, 1],
      ends: [pack.length, two.length],
      data: two,
      ...over,
    });
    const badPacked = [
      group({ ends: [pack.length] }), // fewer offsets than ids
      group({ ms: [1] }), // fewer times than ids
      group({ ends: [two.length, pack.length] }), // offsets going back
      group({ ends: [pack.length, two.length + 100] }), // past the end of the data
      group({ data: randomBytes(two.length) }), // not tensor packs
      group({ ends: [3, two.length] }), // a pack cut short
      group({ ids: [-1, 0.5] }), // not item ids
      group({ data: 'not bytes' }),
    ];
    for (let i = 0; i < 100; i++)
      expectError(
        await s
          .timeout(5000)
          .emitWithAck('items:done', { results: [], packed: [badPacked[i % badPacked.length]] } as never)
          .catch(() => undefined),
      );
    // ...and well-formed ones for items this socket does not hold are dropped.
    for (let i = 0; i + 1 < items.length && i < 60; i += 2) {
      hostile++;
      const ids = [items[i]?.id as number, items[i + 1]?.id as number];
      const r = await s
        .timeout(5000)
        .emitWithAck('items:done', { results: [], packed: [group({ ids })] } as never);
      if ('data' in r && ids.every((id) => r.data.dropped.includes(id))) answered++;
    }
    for (let i = 0; i < 100; i++)
      expectError(
        await s
          .timeout(5000)
          .emitWithAck('hub:whatever' as 'items:done', {} as never)
          .catch(() => undefined),
      );

    // REST: no token, wrong tokens, bad JSON, traversal, unknown routes, oversized bodies.
    const anon = new Rest(hub.url, undefined);
    const wrong = new Rest(hub.url, 'op_wrong');
    const attempts: Promise<{ status: number }>[] = [];
    for (let i = 0; i < 60; i++) attempts.push(anon.req('GET', '/api/jobs'));
    for (let i = 0; i < 60; i++) attempts.push(wrong.req('POST', `/api/jobs/${jobId}/cancel`));
    for (let i = 0; i < 40; i++) attempts.push(rest.req('POST', '/api/jobs', '{"model": ['));
    for (let i = 0; i < 40; i++) attempts.push(rest.req('GET', `/api/models/..%2F..%2Fetc%2Fpasswd${i}`));
    for (let i = 0; i < 40; i++) attempts.push(rest.req('GET', `/api/jobs/${'x'.repeat((i + 1) * 10)}`));
    for (let i = 0; i < 20; i++)
      attempts.push(rest.req('POST', `/api/jobs/${jobId}/items`, undefined, randomBytes(2048)));
    for (const r of await Promise.all(attempts)) {
      hostile++;
      if (r.status >= 400 && r.status < 500) answered++;
    }

    assert.ok(hostile >= 1000, `sent ${hostile} hostile messages`);
    assert.equal(answered, hostile, 'every hostile message was refused with an error');
    assert.equal((await rest.data('GET', '/api/health')).ok, true, 'the hub is up');

    const status = await waitFor(
      'job completed',
      async () => {
        const st = await rest.data('GET', `/api/jobs/${jobId}`);
        return st.state === 'completed' ? st : undefined;
      },
      120_000,
      100,
    );
    assert.equal(status.done, 1500);
    const byName = new Map(sent.map((it) => [it.name, it]));
    let n = 0;
    for (const r of hub.hub.store.iterateResults(jobId)) {
      n++;
      assert.notEqual(r.workerId, 'hostile-browser-1');
      const x = byName.get(r.name)?.tensors[0];
      const y = unpackTensors(r.outputs)[0];
      assert.ok(x && y);
      assert.equal(
        compareTensors({ ...y, name: 'x' }, x, model.tolerance),
        undefined,
        `item ${r.name} was changed`,
      );
    }
    assert.equal(n, 1500);
  } finally {
    for (const s of sockets) s.close();
    for (const n of nodes) n.child.kill('SIGKILL');
    await hub.close();
  }
});
