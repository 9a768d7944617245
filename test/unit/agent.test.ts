/**
 * The worker run loop against a real Socket.IO server on loopback that plays the hub, with the
 * sim backend (wrapped to record which items actually ran). Where a test shows that something does
 * not happen, it waits for the agent to settle (nothing queued, running or unacked: nothing more can
 * come) or drives the agent's and the sim's clock by hand (`test/helpers/clock.ts`), never real time.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { io } from 'socket.io-client';
import type { WorkerAuth } from '../../protocol/events.ts';
import { toNumbers, type WireTensor } from '../../protocol/tensor.ts';
import { runNode, type NodeHandle } from '../../native/node.ts';
import { SimBackend, type SimOptions } from '../../native/sim-backend.ts';
import { WorkerAgent, type WorkerAgentOptions, type WorkerSocket } from '../../worker/agent.ts';
import type { Backend, BackendFactory } from '../../worker/backend.ts';
import { MemoryModelStore } from '../../worker/model-cache.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { ManualClock } from '../helpers/clock.ts';
import { FakeHub, items, modelBytes, range, sha256, simModel, waitFor } from './fake-hub.ts';

/** The sim backend, recording the input value (= item id) of every item it runs. */
function recordingSim(opts: SimOptions): { ran: number[]; factory: BackendFactory } {
  const ran: number[] = [];
  const factory = async (): Promise<Backend> => {
    const sim = await SimBackend.create(opts);
    return {
      name: sim.name,
      reason: sim.reason,
      load: async (model) => {
        const session = await sim.load(model);
        return {
          run: (batch) => {
            for (const inputs of batch) ran.push(toNumbers(inputs[0] as WireTensor)[0] as number);
            return session.run(batch);
          },
          dispose: () => session.dispose(),
        };
      },
    };
  };
  return { ran, factory };
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A fake hub and an agent on the recording sim backend; `wrap` may change that backend. */
async function setup(
  sim: SimOptions,
  concurrency = 1,
  batchesInFlight = 1,
  wrap: (backend: Backend) => Backend = (b) => b,
  holdMs?: number,
  more: Partial<Pick<WorkerAgentOptions, 'clock' | 'logger'>> = {},
) {
  const hub = new FakeHub();
  await hub.listen();
  cleanups.push(() => hub.close());
  const auth: WorkerAuth = { workerId: 'worker-test-1', workerSecret: 'secret-secret-secret' };
  const socket = io(`${hub.url}/worker`, {
    auth,
    transports: ['websocket'],
    reconnectionDelay: 50,
    parser: shardhubParser,
  }) as WorkerSocket;
  const { ran, factory } = recordingSim(sim);
  const agent = new WorkerAgent({
    socket,
    backend: async () => wrap(await factory()),
    store: new MemoryModelStore(),
    hubUrl: hub.url,
    register: { kind: 'native', name: 'test-node', capabilities: { cores: 2, memoryBytes: 1 } },
    concurrency,
    batchesInFlight,
    benchmark: { minMs: 200 },
    ...(holdMs !== undefined ? { holdMs } : {}),
    ...more,
  });
  cleanups.push(() => agent.close());
  await agent.start();
  await waitFor('registration', () => hub.registers.length === 1);
  return { hub, agent, ran };
}

/**
 * Resolves once every message the agent sent before now has reached the hub: the agent answers a
 * `shard:revoke` on the same connection, after them.
 */
async function barrier(hub: FakeHub): Promise<void> {
  await hub.last.timeout(2000).emitWithAck('shard:revoke', { itemIds: [] });
}

/**
 * Waits until the agent has nothing queued, running or unacknowledged: from then on it sends
 * nothing unless it is given work, so what the hub has is all it will get.
 */
async function settled(hub: FakeHub, agent: WorkerAgent): Promise<void> {
  await waitFor('the agent to settle', () => {
    const s = agent.stats;
    return s.queued === 0 && s.running === 0 && s.unsent === 0;
  });
  await barrier(hub);
}

/** A logger that keeps the messages of warnings and errors, with their fields. */
function recordingLogger() {
  const lines: { level: string; msg: string; obj: Record<string, unknown> }[] = [];
  const at =
    (level: string) =>
    (obj: object, msg = '') => {
      lines.push({ level, msg, obj: obj as Record<string, unknown> });
    };
  return { lines, logger: { info: () => {}, debug: () => {}, warn: at('warn'), error: at('error') } };
}

describe('WorkerAgent', () => {
  it('registers with its backend and concurrency, then heartbeats', async () => {
    const { hub, agent } = await setup({ itemMs: 10 }, 2);
    const reg = hub.registers[0];
    assert.equal(reg?.req.backend, 'sim');
    assert.equal(reg?.req.concurrency, 2);
    assert.equal(reg?.req.kind, 'native');
    assert.match(reg?.req.capabilities.backendReason ?? '', /simulated/);
    assert.equal(reg?.auth.workerId, 'worker-test-1');
    await waitFor('two heartbeats', () => hub.heartbeats.length >= 2, 2000);
    assert.deepEqual(
      {
        queued: hub.heartbeats[0]?.queued,
        running: hub.heartbeats[0]?.running,
        paused: hub.heartbeats[0]?.paused,
      },
      { queued: 0, running: 0, paused: false },
    );
    assert.equal(agent.status, 'running');
    await assert.rejects(agent.start(), /already started/);
  });

  it('runs an assigned shard and sends every result back, checkable by value', async () => {
    const { hub, agent } = await setup({ itemMs: 5 }, 2);
    // 20 tensors in one shard:assign: more than Socket.IO's stock parser accepts in a packet.
    const ids = range(1, 20);
    hub.assign(ids, simModel({ batchable: true, batchSize: 4 }));
    await waitFor('20 results', () => hub.results.length === 20);
    assert.deepEqual(hub.resultIds(), ids);
    for (const r of hub.results) {
      const out = r.outputs[0] as WireTensor;
      assert.equal(out.name, 'y');
      assert.deepEqual(out.dims, [1, 1]);
      assert.equal(toNumbers(out)[0], r.itemId);
      assert.equal(r.modelSha256, sha256);
      assert.equal(r.jobId, 'job-1');
    }
    assert.equal(hub.modelRequests, 1, 'model fetched once for both runners');
    // This hub runs the stock parser: at most 10 attachments (tensors) per results message.
    assert.ok(Math.max(...hub.doneSizes) <= 10, `results per message: ${hub.doneSizes.join(',')}`);
    await waitFor('stats', () => agent.stats.itemsDone === 20);
    assert.ok(agent.stats.rate > 0);
    assert.deepEqual(agent.stats.download, {
      model: 'sim-model',
      sha256,
      loaded: modelBytes.byteLength,
      total: modelBytes.byteLength,
    });
  });

  it('hands each item to the backend to stage as its shard arrives, and runs what it staged', async () => {
    const staged = new WeakSet<Uint8Array>();
    let stagedCount = 0;
    let queuedWhenStaged = -1;
    let ranStaged = 0;
    let ranOther = 0;
    const the: { agent?: WorkerAgent } = {}; // set once setup returns, read when items arrive
    const stagingBackend = (inner: Backend): Backend => ({
      ...inner,
      stage: (_model, inputs) => {
        if (stagedCount++ === 0) queuedWhenStaged = the.agent?.stats.queued ?? -1;
        return inputs.map((t) => {
          const data = t.data.slice();
          staged.add(data);
          return { ...t, data };
        });
      },
      load: async (model, bytes) => {
        const loaded = await inner.load(model, bytes);
        return {
          run: (batch) => {
            for (const inputs of batch) {
              for (const t of inputs) {
                if (staged.has(t.data)) ranStaged++;
                else ranOther++;
              }
            }
            return loaded.run(batch);
          },
          dispose: () => loaded.dispose(),
        };
      },
    });
    const { hub, agent } = await setup({ itemMs: 5 }, 1, 1, stagingBackend);
    the.agent = agent;
    hub.assign(range(1, 6));
    await waitFor('6 results', () => hub.results.length === 6);
    assert.equal(stagedCount, 6, 'every item staged once');
    assert.equal(queuedWhenStaged, 0, 'staged before it was queued');
    assert.deepEqual({ ranStaged, ranOther }, { ranStaged: 6, ranOther: 0 }, 'the run got the staged inputs');
    assert.deepEqual(hub.resultIds(), range(1, 6));
    for (const r of hub.results) assert.equal(toNumbers(r.outputs[0] as WireTensor)[0], r.itemId);
  });

  it('with two batches in flight, the next is handed over before the first ends, and cannot be revoked', async () => {
    const clock = new ManualClock(); // the sim's: no item ends until the test moves it
    const { hub, agent, ran } = await setup({ itemMs: 60, clock }, 1, 2);
    const ids = range(1, 6);
    hub.assign(ids);
    // Both handed over at once: the sim backend records an item when its run is called.
    await waitFor('two items handed over', () => ran.length === 2, 1000);
    assert.equal(hub.results.length, 0, 'the first has not finished yet');
    const reply = await hub.last.timeout(2000).emitWithAck('shard:revoke', { itemIds: ids });
    assert.ok('data' in reply);
    const revoked = reply.data.revoked;
    assert.ok(!revoked.includes(1) && !revoked.includes(2), `handed-over items stay: ${revoked.join(',')}`);
    await clock.advance(60 * ids.length);
    await waitFor('the rest finish', () => hub.results.length === ids.length - revoked.length);
    await settled(hub, agent);
    assert.deepEqual(
      [...hub.resultIds(), ...revoked].sort((a, b) => a - b),
      ids,
      'every item either ran once or came back',
    );
  });

  it('with holdMs, a busy agent sends results together, and the last at once when its work runs out', async () => {
    // Without: each result goes alone (nothing is in flight when it comes).
    const plain = await setup({ itemMs: 20 });
    plain.hub.assign(range(1, 10));
    await waitFor('10 results', () => plain.hub.results.length === 10);
    assert.ok(plain.hub.doneSizes.length >= 5, `messages: ${plain.hub.doneSizes.join(',')}`);

    // Held far longer than the work takes: all in one message, sent when the last item ends.
    const held = await setup({ itemMs: 20 }, 1, 1, (b) => b, 60_000);
    held.hub.assign(range(1, 10));
    // Well before holdMs: sent when there was no more work.
    await waitFor('10 results', () => held.hub.results.length === 10, 10_000);
    assert.deepEqual(held.hub.doneSizes, [10]);

    // Held less long than the work takes: results wait no longer than that, in a few messages.
    const capped = await setup({ itemMs: 20 }, 1, 1, (b) => b, 150);
    capped.hub.assign(range(1, 40));
    await waitFor('40 results', () => capped.hub.results.length === 40, 10_000);
    assert.deepEqual(capped.hub.resultIds(), range(1, 40));
    const sizes = capped.hub.doneSizes;
    assert.ok(sizes.length >= 2 && sizes.length <= 20, `messages: ${sizes.join(',')}`);
  });

  it('results the hub could not take are sent again after a pause that doubles; a refused message is not', async () => {
    const clock = new ManualClock(); // the agent's (and its outbox's); the sim runs in real time
    const { lines, logger } = recordingLogger();
    const { hub, agent } = await setup({ itemMs: 5 }, 1, 1, (b) => b, undefined, { clock, logger });
    const resends = () => lines.filter((l) => l.msg === 'hub could not take results message; will resend');
    const internal = { code: 'internal', message: 'the hub could not store these results; send them again' };
    hub.doneErrors.push(internal, internal);
    hub.assign([1]);
    await waitFor('the first answer to reach the agent', () => resends().length === 1);
    assert.equal(agent.stats.unsent, 1, 'still unsent while it waits to go again');
    // Pauses of 500 ms, then 1,000 ms: nothing goes before each ends.
    await clock.advance(499);
    await barrier(hub);
    assert.deepEqual(hub.doneSizes, [1], 'not sent again within 500 ms');
    await clock.advance(1);
    await waitFor('the second answer to reach the agent', () => resends().length === 2);
    assert.deepEqual(hub.doneSizes, [1, 1]);
    await clock.advance(999);
    await barrier(hub);
    assert.deepEqual(hub.doneSizes, [1, 1], 'not sent again within 1,000 ms');
    await clock.advance(1);
    await waitFor('the result taken', () => hub.results.length === 1);
    assert.deepEqual(hub.doneSizes, [1, 1, 1], 'sent three times');
    assert.deepEqual(
      resends().map((l) => l.obj.waitMs),
      [500, 1000],
    );
    await settled(hub, agent);

    // Refused for what it is: resending would be refused the same way.
    hub.doneErrors.push({ code: 'invalid_payload', message: 'results: bad dims' });
    hub.assign([2]);
    await waitFor('the refusal', () => lines.some((l) => l.msg === 'hub refused results message'));
    await clock.advance(5000); // longer than any pause it could have waited
    await settled(hub, agent);
    assert.equal(hub.doneSizes.length, 4, 'not sent again');
    assert.deepEqual(hub.resultIds(), [1]);
  });

  it('shard:revoke returns exactly the unstarted items, and those never run', async () => {
    const { hub, agent, ran } = await setup({ itemMs: 40 });
    const ids = range(1, 10);
    hub.assign(ids);
    await waitFor('the first item to start', () => ran.length === 1);
    const reply = await hub.last.timeout(2000).emitWithAck('shard:revoke', { itemIds: [...ids, 999] });
    assert.ok('data' in reply);
    const revoked = reply.data.revoked;
    assert.ok(revoked.length >= 8, `most items were unstarted (${revoked.length})`);
    assert.ok(!revoked.includes(999), 'unknown ids are not revoked');
    await waitFor('the running item(s) to finish', () => hub.results.length === ids.length - revoked.length);
    await settled(hub, agent);
    const done = hub.resultIds();
    assert.deepEqual(
      [...done, ...revoked].sort((a, b) => a - b),
      ids,
      'every item either ran here or was revoked',
    );
    for (const id of revoked) assert.ok(!ran.includes(id), `revoked item ${id} never ran`);
    assert.deepEqual(
      [...ran].sort((a, b) => a - b),
      done,
    );
  });

  it('pause releases unstarted items and starts nothing new; resume runs again', async () => {
    const { hub, agent, ran } = await setup({ itemMs: 40 });
    hub.assign(range(1, 8));
    await waitFor('the first item to start', () => ran.length === 1);
    hub.last.emit('worker:control', { action: 'pause' });
    await waitFor('release', () => hub.released.length > 0);
    await waitFor('running item result', () => hub.results.length === 8 - hub.released.length);
    await settled(hub, agent);
    assert.equal(ran.length, 8 - hub.released.length, 'nothing started after pause');
    assert.deepEqual(
      [...hub.resultIds(), ...hub.released].sort((a, b) => a - b),
      range(1, 8),
    );
    await waitFor('a paused heartbeat', () => hub.heartbeats.at(-1)?.paused === true);
    assert.equal(agent.stats.paused, true);

    hub.assign([100]); // while paused: handed straight back
    await waitFor('release of 100', () => hub.released.includes(100));
    hub.last.emit('worker:control', { action: 'resume' });
    await waitFor('resumed', () => !agent.stats.paused);
    hub.assign([101]);
    await waitFor('result of 101', () => hub.results.some((r) => r.itemId === 101));
  });

  it('setThrottle makes runners rest so busy time is about the fraction', async () => {
    const clock = new ManualClock(); // the agent's and the sim's
    const { hub, agent, ran } = await setup({ itemMs: 20, clock }, 1, 1, (b) => b, undefined, { clock });
    assert.throws(() => agent.setThrottle(1.5), /between 0 and 1/);
    agent.setThrottle(0.5);
    hub.assign(range(1, 10));
    await waitFor('the first item to start', () => ran.length === 1);
    const t0 = clock.now();
    while (agent.stats.itemsDone < 10) await clock.advance(5);
    // 10 x 20 ms busy at half duty: each item is followed by a rest as long, so the tenth ends at
    // 9 x 40 + 20 ms; flat out it would be 200 ms.
    assert.equal(clock.now() - t0, 380);
    // The last results may wait for the outbox's flush timer, on the same clock.
    for (let i = 0; i < 100 && hub.results.length < 10; i++) {
      await clock.advance(5);
      await barrier(hub);
    }
    assert.equal(hub.results.length, 10);
    assert.equal(agent.stats.throttle, 0.5);
  });

  it('items:cancel drops queued items and discards the result of a running one', async () => {
    const { hub, agent, ran } = await setup({ itemMs: 40 });
    hub.assign(range(1, 4));
    await waitFor('the first item to start', () => ran.length === 1);
    hub.last.emit('items:cancel', { itemIds: [1, 2, 3], reason: 'job cancelled' });
    await waitFor('item 4', () => hub.results.some((r) => r.itemId === 4));
    await settled(hub, agent);
    assert.deepEqual(hub.resultIds(), [4]);
    assert.deepEqual(ran, [1, 4]);
  });

  it('answers benchmark:run with items/s of all runners together', async () => {
    const { hub } = await setup({ itemMs: 10 }, 2);
    const reply = await hub.last
      .timeout(5000)
      .emitWithAck('benchmark:run', { model: simModel({ batchable: true, batchSize: 4 }) });
    assert.ok('data' in reply, JSON.stringify(reply));
    const { itemsPerSec, batchSize, runs, ms } = reply.data;
    assert.equal(batchSize, 4);
    assert.ok(runs >= 6, `at least 3 runs per runner (${runs})`);
    assert.ok(ms >= 200);
    // 2 runners x 4 items per 40 ms = 200 items/s at best; sleeps only overshoot.
    assert.ok(itemsPerSec > 80 && itemsPerSec <= 205, `itemsPerSec ${itemsPerSec}`);
  });

  it('reports a model that cannot be fetched as model_load failures', async () => {
    const { hub } = await setup({ itemMs: 5 });
    hub.assign([1, 2], simModel({ sha256: 'ab'.repeat(32), url: '/missing' }));
    await waitFor('two failures', () => hub.failures.length === 2);
    assert.deepEqual(
      hub.failures.map((f) => [f.itemId, f.category]),
      [
        [1, 'model_load'],
        [2, 'model_load'],
      ],
    );
    assert.match(hub.failures[0]?.message ?? '', /HTTP 404/);
  });

  it('drain hands back unstarted items, finishes running ones, flushes, then disconnects', async () => {
    const { hub, agent, ran } = await setup({ itemMs: 60 }, 2);
    hub.assign(range(1, 10));
    await waitFor('two items to start', () => ran.length === 2);
    const disconnected = new Promise<void>((resolve) => hub.last.on('disconnect', () => resolve()));
    hub.last.emit('worker:control', { action: 'drain' });
    await waitFor('draining', () => agent.status === 'draining' || agent.status === 'closed');
    let closedEvent = false;
    agent.on('closed', () => {
      closedEvent = true;
    });
    await agent.drain();
    await disconnected;
    assert.equal(agent.status, 'closed');
    assert.ok(closedEvent);
    assert.deepEqual(
      hub.released.sort((a, b) => a - b),
      range(3, 8),
    );
    assert.deepEqual(hub.resultIds(), [1, 2]);
    assert.deepEqual(
      [...ran].sort((a, b) => a - b),
      [1, 2],
    );
    assert.equal(agent.close(), agent.close(), 'close returns the same promise');
  });
});

describe('native node reconnection', () => {
  it('reconnects after a server-side disconnect with the same workerId; running results still arrive', async () => {
    const hub = new FakeHub();
    await hub.listen();
    cleanups.push(() => hub.close());
    const state = await mkdtemp(join(tmpdir(), 'shardhub-node-'));
    cleanups.push(() => rm(state, { recursive: true, force: true }));
    const { createLogger } = await import('../../server/logger.ts');
    const node: NodeHandle = await runNode({
      hub: hub.url,
      token: 'join-token',
      backend: 'sim',
      sim: { itemMs: 150 },
      stateDir: state,
      cacheDir: join(state, 'models'),
      logger: createLogger('test-node', 'silent'),
      reconnect: { delayMs: 20, maxDelayMs: 100 },
    });
    cleanups.push(() => node.close());
    await waitFor('registration', () => hub.registers.length === 1);
    const first = hub.registers[0];
    assert.equal(first?.auth.workerId, node.workerId);
    assert.equal(first?.auth.token, 'join-token');

    hub.assign([1, 2, 3]);
    await waitFor('item 1 running', () => node.agent.stats.running === 1);
    hub.last.disconnect(true); // 'io server disconnect': socket.io will not reconnect by itself
    await waitFor('re-registration', () => hub.registers.length === 2, 3000);
    const second = hub.registers[1];
    assert.equal(second?.auth.workerId, node.workerId);
    assert.equal(second?.auth.workerSecret, first?.auth.workerSecret);
    assert.equal(second?.conn, 1);

    await waitFor('result of the item that was running', () => hub.results.length === 1);
    assert.equal(hub.results[0]?.itemId, 1);
    assert.equal(hub.results[0]?.conn, 1, 'sent on the new connection');
    await settled(hub, node.agent);
    assert.deepEqual(hub.resultIds(), [1], 'the unstarted queue was dropped (the hub requeued it)');

    // The identity persists: a second start with the same state dir is the same worker.
    await node.close();
    const again = await runNode({
      hub: hub.url,
      backend: 'sim',
      stateDir: state,
      cacheDir: join(state, 'models'),
      logger: createLogger('test-node', 'silent'),
    });
    cleanups.push(() => again.close());
    assert.equal(again.workerId, node.workerId);
  });
});

describe('SimBackend', () => {
  it('fills every declared output (dynamic dims = 1) with the first input value', async () => {
    const sim = await SimBackend.create({ itemMs: 0 });
    const model = simModel({
      outputs: [
        { name: 'y', dtype: 'float32', shape: ['N', 16] },
        { name: 'count', dtype: 'int64', shape: ['N'] },
      ],
    });
    const session = await sim.load(model);
    const x = (v: number): WireTensor[] => [
      { name: 'x', dtype: 'float32', dims: [1, 1], data: new Uint8Array(new Float32Array([v]).buffer) },
    ];
    const [a, b] = await session.run([x(3), x(-7)]);
    assert.deepEqual(
      a?.map((t) => [t.name, t.dtype, t.dims]),
      [
        ['y', 'float32', [1, 16]],
        ['count', 'int64', [1]],
      ],
    );
    assert.deepEqual([...toNumbers(a?.[0] as WireTensor)], new Array(16).fill(3));
    assert.deepEqual([...toNumbers(b?.[1] as WireTensor)], [-7]);
  });

  it('sleeps k * itemMs / speed, slows down at slowAtS and dies at dieAtS, timed from the first item', async () => {
    let died = 0;
    const clock = new ManualClock();
    const sim = await SimBackend.create({
      itemMs: 40,
      speed: 2,
      slowAtS: 0.15,
      slowFactor: 3,
      dieAtS: 0.3,
      die: () => died++,
      clock,
    });
    assert.equal(sim.msPerItem(), 20);
    const session = await sim.load(simModel());
    await clock.advance(200); // the script starts at the first item, not at creation
    assert.equal(sim.msPerItem(), 20);
    let ran = false;
    const run = session.run(items([1, 2, 3]).map((i) => i.inputs)).then(() => (ran = true));
    await clock.advance(59);
    assert.equal(ran, false, 'a batch of 3 sleeps 3 x 20 ms');
    await clock.advance(1);
    await run;
    await clock.advance(89);
    assert.equal(sim.msPerItem(), 20, 'as fast until slowAtS');
    await clock.advance(1);
    assert.equal(sim.msPerItem(), 60, 'slower from slowAtS');
    await clock.advance(149);
    assert.equal(died, 0);
    await clock.advance(1);
    assert.equal(died, 1, 'died at dieAtS');
    await sim.dispose();
    await assert.rejects(SimBackend.create({ speed: 0 }), /speed must be greater than 0/);
  });

  it('an item of R rows costs R items', async () => {
    const clock = new ManualClock();
    const sim = await SimBackend.create({ itemMs: 20, clock });
    const session = await sim.load(simModel());
    const rows = (r: number): WireTensor[] => [
      { name: 'x', dtype: 'float32', dims: [r, 1], data: new Uint8Array(new Float32Array(r).buffer) },
    ];
    /** The clock time a run of `r` rows takes, in steps of 1 ms. */
    const timed = async (r: number): Promise<number> => {
      let done = false;
      const run = session.run([rows(r)]).then(() => (done = true));
      const t0 = clock.now();
      while (!done) await clock.advance(1);
      await run;
      return clock.now() - t0;
    };
    assert.equal(await timed(1), 20, 'one row');
    await clock.advance(50); // not back to back: the next run starts now, not at the last one's deadline
    assert.equal(await timed(5), 100, 'five rows: five times one');
  });
});
