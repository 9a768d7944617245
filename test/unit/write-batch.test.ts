/**
 * WriteBatch: while a batch is open an adopted connection's flushes wait; when it closes, after the
 * microtasks queued inside it (the handlers of replies resolved there), each waiting connection
 * flushes once, with its TCP socket corked. The connections here are stand-ins with engine.io's
 * shape; test/integration/group-commit.test.ts counts the writes on a real one.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WriteBatch } from '../../server/write-batch.ts';

/** An engine.io connection's shape: `flush` hands what `send` queued to the transport. */
function conn() {
  const log: string[] = [];
  let queued: string[] = [];
  const tcp = { cork: () => log.push('cork'), uncork: () => log.push('uncork') };
  const c = {
    readyState: 'open',
    transport: { socket: { _socket: tcp } },
    log,
    send(packet: string) {
      queued.push(packet);
      c.flush();
    },
    flush() {
      if (queued.length) log.push(`write ${queued.join('+')}`);
      queued = [];
    },
  };
  return c;
}

describe('WriteBatch', () => {
  it('without a batch, a connection flushes at once', () => {
    const batch = new WriteBatch();
    const c = conn();
    batch.adopt(c);
    c.send('a');
    c.send('b');
    assert.deepEqual(c.log, ['write a', 'write b']);
  });

  it("a batch holds every adopted connection's flushes and writes each connection once, corked, when it closes", async () => {
    const batch = new WriteBatch();
    const [a, b] = [conn(), conn()];
    batch.adopt(a);
    batch.adopt(b);
    batch.adopt(a); // twice: still one wrapper
    batch.around(() => {
      a.send('shard');
      b.send('shard');
      a.send('ack');
      assert.deepEqual([a.log, b.log], [[], []], 'nothing written while the batch is open');
    });
    await Promise.resolve();
    assert.deepEqual(a.log, ['cork', 'write shard+ack', 'uncork']);
    assert.deepEqual(b.log, ['cork', 'write shard', 'uncork']);
    assert.deepEqual(batch.stats, { batches: 1, flushes: 2 });
  });

  it('what the handlers of promises resolved inside the batch send is in the same write', async () => {
    const batch = new WriteBatch();
    const c = conn();
    batch.adopt(c);
    let resolve!: (v: string) => void;
    const reply = new Promise<string>((ok) => (resolve = ok));
    void reply.then((r) => c.send(r)); // the gateway's ack
    batch.around(() => {
      c.send('shard');
      resolve('ack');
    });
    await new Promise((ok) => setImmediate(ok));
    assert.deepEqual(c.log, ['cork', 'write shard+ack', 'uncork']);
  });

  it('nested batches write once, when the outermost closes', async () => {
    const batch = new WriteBatch();
    const c = conn();
    batch.adopt(c);
    batch.around(() => {
      c.send('a');
      batch.around(() => c.send('b'));
      c.send('c');
    });
    await new Promise((ok) => setImmediate(ok));
    assert.deepEqual(c.log, ['cork', 'write a+b+c', 'uncork']);
    assert.equal(batch.stats.batches, 1);
  });

  it('a connection closed meanwhile is not flushed, and one without a TCP socket is flushed uncorked', async () => {
    const batch = new WriteBatch();
    const [closed, bare] = [conn(), conn()];
    delete (bare.transport.socket as { _socket?: unknown })._socket;
    batch.adopt(closed);
    batch.adopt(bare);
    batch.around(() => {
      closed.send('x');
      bare.send('y');
      closed.readyState = 'closed';
    });
    await Promise.resolve();
    assert.deepEqual(closed.log, []);
    assert.deepEqual(bare.log, ['write y']);
  });

  it('a batch whose function throws still closes, and the error reaches the caller', async () => {
    const batch = new WriteBatch();
    const c = conn();
    batch.adopt(c);
    assert.throws(
      () =>
        batch.around(() => {
          c.send('a');
          throw new Error('boom');
        }),
      /boom/,
    );
    await Promise.resolve();
    assert.deepEqual(c.log, ['cork', 'write a', 'uncork']);
    c.send('b');
    assert.deepEqual(c.log.at(-1), 'write b', 'flushes at once again');
  });
});
