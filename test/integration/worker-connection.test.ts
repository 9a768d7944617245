/**
 * A worker's connection (`worker/connection.ts`) against real hubs: refusals carry codes the worker
 * acts on (`protocol/errors.ts`), and a node given several hubs moves to the next one when its hub
 * dies, registers there and runs that hub's jobs.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import { NodeFatalError } from '../../native/errors.ts';
import { runNode } from '../../native/node.ts';
import { ErrorCode } from '../../protocol/errors.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { createLogger } from '../../server/logger.ts';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
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

/** The code of the refusal of a connection with this handshake. */
async function refusedWith(url: string, auth: object, sockets: Socket[]): Promise<unknown> {
  const s = connect(`${url}/worker`, { auth, reconnection: false, transports: ['websocket'] });
  sockets.push(s);
  const err = await new Promise<Error & { data?: { code?: unknown } }>((ok, fail) => {
    s.once('connect_error', ok);
    s.once('connect', () => fail(new Error('the hub accepted the connection')));
  });
  assert.ok(err.message.length > 0, 'a message for people too');
  return err.data?.code;
}

describe('refusals carry codes', () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  test('handshake, version, identity and token refusals each carry their code', async () => {
    const hub = await startHub(join(tmp.dir, 'hub'));
    const sockets: Socket[] = [];
    try {
      assert.equal(await refusedWith(hub.url, { workerId: 'x' }, sockets), ErrorCode.BadHandshake);
      const secret = 's'.repeat(32);
      assert.equal(
        await refusedWith(
          hub.url,
          { workerId: 'codes-worker-1', workerSecret: secret, protocol: 999 },
          sockets,
        ),
        ErrorCode.Version,
      );

      // A registered worker's id presented with another secret.
      const s = connect(`${hub.url}/worker`, {
        auth: { workerId: 'codes-worker-1', workerSecret: secret },
        reconnection: false,
        transports: ['websocket'],
        parser: shardhubParser,
      });
      sockets.push(s);
      await new Promise<void>((ok) => s.once('connect', () => ok()));
      const reg = (await s.timeout(5000).emitWithAck('worker:register', {
        kind: 'browser',
        backend: 'wasm',
        name: 'codes',
        concurrency: 1,
        capabilities: { cores: 1, memoryBytes: 1 },
      })) as { data?: unknown };
      assert.ok(reg.data, 'registered');
      assert.equal(
        await refusedWith(hub.url, { workerId: 'codes-worker-1', workerSecret: 't'.repeat(32) }, sockets),
        ErrorCode.IdentityTaken,
      );

      // A native registration without the join token: refused in the ack.
      const n = connect(`${hub.url}/worker`, {
        auth: { workerId: 'codes-native-1', workerSecret: secret },
        reconnection: false,
        transports: ['websocket'],
        parser: shardhubParser,
      });
      sockets.push(n);
      await new Promise<void>((ok) => n.once('connect', () => ok()));
      const refused = (await n.timeout(5000).emitWithAck('worker:register', {
        kind: 'native',
        backend: 'cpu',
        name: 'codes',
        concurrency: 1,
        capabilities: { cores: 1, memoryBytes: 1 },
      })) as { error?: { code: string } };
      assert.equal(refused.error?.code, ErrorCode.Unauthorized);

      // A node reads the code and stops for good, saying what to change.
      const node = await runNode({
        hub: hub.url,
        token: 'not-the-join-token',
        backend: 'sim',
        stateDir: join(tmp.dir, 'node'),
        cacheDir: join(tmp.dir, 'node', 'cache'),
        logger: createLogger('node', 'silent'),
      });
      await assert.rejects(
        node.done,
        (err: unknown) => err instanceof NodeFatalError && /join token.*--token/.test(err.message),
      );
    } finally {
      for (const s of sockets) s.disconnect();
      await hub.close();
    }
  });
});

describe('several hubs', () => {
  const tmp = tempDir();
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
    tmp.cleanup();
  });

  test('a node given two hubs moves to the second when the first dies, and runs its jobs', async () => {
    const joinToken = 'join_two-hubs-test-token';
    // Two hub processes that share nothing but the join token. With the hub's Node flags, so that
    // each does not run itself again in a child: the kill must reach the hub itself.
    const hubs = await Promise.all(
      ['a', 'b'].map(async (name) => {
        const port = await freePort();
        const data = join(tmp.dir, name);
        const proc = spawnTs(
          'server/cli.ts',
          serveArgs(port, data, [
            '--join-token',
            joinToken,
            '--heartbeat-ms',
            '500',
            '--offline-after-ms',
            '2000',
          ]),
          {},
          HUB_NODE_FLAGS,
        );
        procs.push(proc);
        await waitFor(`hub ${name} up`, () => proc.output().includes('hub is up'), 30_000);
        const tokens = JSON.parse(readFileSync(join(data, 'tokens.json'), 'utf8'));
        return {
          proc,
          url: `http://127.0.0.1:${port}`,
          rest: new Rest(`http://127.0.0.1:${port}`, tokens.operatorToken),
        };
      }),
    );
    const [a, b] = hubs as [(typeof hubs)[number], (typeof hubs)[number]];
    const node = startNode(`${a.url},${b.url}`, joinToken, join(tmp.dir, 'node'), [
      '--backend',
      'sim',
      '--item-ms',
      '5',
      '--concurrency',
      '2',
    ]);
    procs.push(node);
    const online = async (rest: Rest) => (await rest.data('GET', '/api/workers?online=true')).workers;
    const [onA] = await waitFor('node on hub a', async () => {
      const w = await online(a.rest);
      return w.length === 1 ? w : undefined;
    });

    const model = {
      inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
      calibration: { dims: { x: [1, 4] }, seed: 1 },
    };
    const items = (n: number) =>
      Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(model, i + 1) }));
    // Hub a dies mid-job: the node holds items of a job hub b never heard of.
    const jobA = await a.rest.submit('noop', items(3000));
    await waitFor(
      'progress on a',
      async () => (await a.rest.data('GET', `/api/jobs/${jobA}`)).done >= 100,
      60_000,
      20,
    );
    a.proc.child.kill('SIGKILL');
    const killed = Date.now();
    await a.proc.exited;

    const [onB] = await waitFor(
      'node on hub b',
      async () => {
        const w = await online(b.rest);
        return w.length === 1 ? w : undefined;
      },
      30_000,
    );
    assert.equal(onB.id, onA.id, 'the same worker, on the other hub');
    process.stdout.write(`# the node was online on hub b ${Date.now() - killed} ms after hub a was killed\n`);
    const jobB = await b.rest.submit('noop', items(300));
    const done = await waitFor(
      'job on b done',
      async () => {
        const j = await b.rest.data('GET', `/api/jobs/${jobB}`);
        return j.state === 'completed' ? j : undefined;
      },
      60_000,
      100,
    );
    assert.equal(done.done, 300);
    // Results for hub a's job, resent to b, were dropped as strays within the allowance: no strike.
    const [after] = await online(b.rest);
    assert.equal(after.state, 'online', 'not quarantined for resending results b does not know');
    assert.equal(node.child.exitCode, null, 'the node is still running');
  });
});
