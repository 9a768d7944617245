/**
 * Native nodes' data channels over real loopback sockets.
 *
 * - The node's reader against a raw TCP server that writes frames cut at every awkward place: each
 *   tensor's bytes land in the place reserved for them, items the hub could not read fail with its
 *   reason, and malformed frames or refusals end the channel with a clear error.
 * - The hub's side: tickets are single use, bound to their connection and checked; a channel that
 *   closes, or on which a node sends bytes, disconnects its worker.
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket as NetSocket } from 'node:net';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import { DataChannelClient, type DataChannelOptions } from '../../native/data-channel.ts';
import type { ShardItem } from '../../worker/agent.ts';
import {
  DATA_CHANNEL_ACCEPT,
  DATA_CHANNEL_PATH,
  DATA_CHANNEL_PROTOCOL,
  encodeFrameHeader,
  type FrameHeader,
} from '../../protocol/data-channel.ts';
import type { RegisterReply, Response } from '../../protocol/events.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import type { WireTensor } from '../../protocol/tensor.ts';
import type { HubServer } from '../../server/app.ts';
import { startHub, tempDir, waitFor } from '../helpers/grid.ts';

const MODEL = { sha256: 'a'.repeat(64), batchable: true, batchSize: 4, name: 'm' } as unknown as ModelInfo;

/** Bytes 0..n-1 of a pattern that differs per item and tensor. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + seed * 13) & 0xff;
  return out;
}

/** A raw TCP server standing in for the hub: `serve` writes its answer to each connection. */
async function fakeHub(serve: (sock: NetSocket) => void): Promise<{ url: string; server: Server }> {
  const server = createServer((sock) => {
    let req = '';
    sock.on('data', (d: Buffer) => {
      if (req.includes('\r\n\r\n')) return;
      req += d.toString('latin1');
      if (req.includes('\r\n\r\n')) serve(sock);
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const addr = server.address() as { port: number };
  return { url: `http://127.0.0.1:${addr.port}`, server };
}

/** Writes `bytes` in pieces of the given sizes (cycled), each on a turn of its own. */
async function writeInPieces(sock: NetSocket, bytes: Uint8Array, sizes: number[]): Promise<void> {
  let off = 0;
  for (let i = 0; off < bytes.byteLength; i++) {
    const n = sizes[i % sizes.length] as number;
    sock.write(bytes.subarray(off, off + n));
    off += n;
    await new Promise((ok) => setImmediate(ok));
  }
}

interface Opened {
  shards: { shardId: string; items: ShardItem[] }[];
  closed: Promise<{ err: Error | undefined; opened: boolean }>;
  client: DataChannelClient;
}

function open(url: string, reserve: DataChannelOptions['reserve'] = () => undefined): Opened {
  const shards: Opened['shards'] = [];
  let done!: (v: { err: Error | undefined; opened: boolean }) => void;
  const closed = new Promise<{ err: Error | undefined; opened: boolean }>((ok) => (done = ok));
  const client = new DataChannelClient({
    hub: url,
    path: DATA_CHANNEL_PATH,
    ticket: 't'.repeat(43),
    reserve,
    onShard: (shard, items) => shards.push({ shardId: shard.shardId, items }),
    onClose: (err, opened) => done({ err, opened }),
  });
  return { shards, closed, client };
}

describe('the node reads frames into reserved places', () => {
  test('frames cut anywhere arrive whole; each tensor lands in its reserved place; unreadable items fail with the reason', async () => {
    // Two frames: item 1 with two tensors, item 2 the hub could not read, item 3 one tensor; then
    // a frame of one item with an empty tensor.
    const t1a = pattern(1000, 1);
    const t1b = pattern(24, 2);
    const t3 = pattern(70_000, 3);
    const frame1: FrameHeader = {
      shardId: 's_one',
      jobId: 'j_1',
      model: MODEL,
      items: [
        {
          id: 1,
          tensors: [
            { n: 'x', t: 'float32', d: [1, 250] },
            { n: 'k', t: 'int64', d: [3] },
          ],
        },
        { id: 2, error: 'tensor pack header is not JSON' },
        { id: 3, tensors: [{ n: 'x', t: 'uint8', d: [70_000] }] },
      ],
    };
    const frame2: FrameHeader = {
      shardId: 's_two',
      jobId: 'j_1',
      model: MODEL,
      items: [{ id: 4, tensors: [{ n: 'x', t: 'float32', d: [0, 4] }] }],
    };
    const wire = Buffer.concat([encodeFrameHeader(frame1), t1a, t1b, t3, encodeFrameHeader(frame2)]);
    const { url, server } = await fakeHub((sock) => {
      void (async () => {
        // The answer and the first frame in one write; then pieces of 1, 3 and 4,093 bytes.
        sock.write(Buffer.concat([Buffer.from(DATA_CHANNEL_ACCEPT, 'latin1'), wire.subarray(0, 2)]));
        await writeInPieces(sock, wire.subarray(2), [1, 3, 4093]);
      })();
    });
    try {
      // Item 1's places are views of one arena, as a staging buffer's would be.
      const arena = new ArrayBuffer(4096);
      const reserved: WireTensor[][] = [];
      const reserve = (_m: ModelInfo, inputs: Omit<WireTensor, 'data'>[]): WireTensor[] | undefined => {
        if (inputs[0]?.dims.join() !== '1,250') return undefined; // others: fresh buffers
        const r = [
          { ...inputs[0], data: new Uint8Array(arena, 0, 1000) },
          { ...(inputs[1] as Omit<WireTensor, 'data'>), data: new Uint8Array(arena, 1000, 24) },
        ] as WireTensor[];
        reserved.push(r);
        return r;
      };
      const c = open(url, reserve);
      await waitFor('two frames', () => c.shards.length === 2, 10_000, 5);
      const [one, two] = c.shards;
      assert.equal(one?.shardId, 's_one');
      assert.deepEqual(
        one?.items.map((i) => i.id),
        [1, 2, 3],
      );
      const in1 = one?.items[0]?.inputs() as WireTensor[];
      assert.equal(in1[0]?.data.buffer, arena, 'item 1 was read into its reserved place');
      assert.deepEqual(Buffer.from(new Uint8Array(arena, 0, 1000)), Buffer.from(t1a));
      assert.deepEqual(Buffer.from(new Uint8Array(arena, 1000, 24)), Buffer.from(t1b));
      assert.deepEqual(in1[1]?.dims, [3]);
      assert.throws(() => one?.items[1]?.inputs(), /tensor pack header is not JSON/);
      const in3 = one?.items[2]?.inputs() as WireTensor[];
      assert.deepEqual(Buffer.from(in3[0]?.data as Uint8Array), Buffer.from(t3));
      assert.equal(in3[0]?.dtype, 'uint8');
      assert.equal(two?.shardId, 's_two');
      assert.equal((two?.items[0]?.inputs() as WireTensor[])[0]?.data.byteLength, 0);
      assert.equal(c.client.stats.frames, 2);
      assert.equal(c.client.stats.items, 4);
      c.client.close();
      const end = await c.closed;
      assert.equal(end.err, undefined, 'closed by the node: no error');
      assert.equal(end.opened, true);
    } finally {
      server.close();
    }
  });

  for (const [what, bytes, message] of [
    ['a header length of zero', Buffer.alloc(4), /frame header length 0 is out of range/],
    ['a header length over the limit', Buffer.from([0, 0, 0, 0x40]), /out of range/],
    ['a header that is not JSON', Buffer.concat([Buffer.from([3, 0, 0, 0]), Buffer.from('{{{')]), /not JSON/],
    [
      'a header with a tensor over the size limit',
      encodeFrameHeader({
        shardId: 's',
        jobId: 'j',
        model: MODEL,
        items: [{ id: 1, tensors: [{ n: 'x', t: 'float32', d: [1 << 30] }] }],
      }),
      /too large/,
    ],
    [
      'a header with a negative item id',
      encodeFrameHeader({ shardId: 's', jobId: 'j', model: MODEL, items: [{ id: -1, tensors: [] }] }),
      /items\.0\.id/,
    ],
  ] as const) {
    test(`${what} ends the channel with an error that says so`, async () => {
      const { url, server } = await fakeHub((sock) => {
        sock.write(Buffer.concat([Buffer.from(DATA_CHANNEL_ACCEPT, 'latin1'), bytes]));
      });
      try {
        const c = open(url);
        const end = await c.closed;
        assert.equal(end.opened, true);
        assert.match(end.err?.message ?? '', message);
        assert.equal(c.shards.length, 0);
      } finally {
        server.close();
      }
    });
  }

  test('an answer rewritten by a proxy (header case and order, extra headers) opens the channel', async () => {
    const t = pattern(5000, 9);
    const header = encodeFrameHeader({
      shardId: 's_proxy',
      jobId: 'j',
      model: MODEL,
      items: [{ id: 7, tensors: [{ n: 'x', t: 'uint8', d: [5000] }] }],
    });
    const answer =
      `HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nx-served-by: haproxy\r\n` +
      `UPGRADE: ${DATA_CHANNEL_PROTOCOL}\r\ndate: Sun, 06 Dec 2026 17:00:00 GMT\r\n\r\n`;
    const { url, server } = await fakeHub((sock) => {
      void (async () => {
        // The answer with part of the first frame in one write, then the rest in pieces.
        const wire = Buffer.concat([Buffer.from(answer, 'latin1'), header, t]);
        sock.write(wire.subarray(0, answer.length + 7));
        await writeInPieces(sock, wire.subarray(answer.length + 7), [2, 1000]);
      })();
    });
    try {
      const c = open(url);
      await waitFor('the frame', () => c.shards.length === 1, 10_000, 5);
      assert.equal(c.shards[0]?.shardId, 's_proxy');
      const inputs = c.shards[0]?.items[0]?.inputs() as WireTensor[];
      assert.deepEqual(Buffer.from(inputs[0]?.data as Uint8Array), Buffer.from(t));
      c.client.close();
      assert.equal((await c.closed).opened, true);
    } finally {
      server.close();
    }
  });

  test('a refusal ends the channel unopened, with the hub’s status and reason', async () => {
    const { url, server } = await fakeHub((sock) => {
      sock.end(
        'HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\n\r\nunknown or used data channel ticket\n',
      );
    });
    try {
      const end = await open(url).closed;
      assert.equal(end.opened, false);
      assert.match(end.err?.message ?? '', /refused the data channel: 401 Unauthorized \(unknown or used/);
    } finally {
      server.close();
    }
  });

  test('a hub that closes mid-frame ends the channel with an error, and no shard is delivered', async () => {
    const header = encodeFrameHeader({
      shardId: 's',
      jobId: 'j',
      model: MODEL,
      items: [{ id: 1, tensors: [{ n: 'x', t: 'uint8', d: [100] }] }],
    });
    const { url, server } = await fakeHub((sock) => {
      sock.end(Buffer.concat([Buffer.from(DATA_CHANNEL_ACCEPT, 'latin1'), header, Buffer.alloc(50)]));
    });
    try {
      const c = open(url);
      const end = await c.closed;
      assert.equal(end.opened, true);
      assert.ok(end.err, 'an error: the frame was cut off');
      assert.equal(c.shards.length, 0, 'half a frame is never used');
    } finally {
      server.close();
    }
  });
});

describe("the hub's side of data channels", () => {
  const tmp = tempDir();
  let hub: HubServer;
  const sockets: Socket[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
  });
  after(async () => {
    for (const s of sockets) s.disconnect();
    await hub.close();
    tmp.cleanup();
  });

  /** A registered native worker (a bare Socket.IO client) and its register reply. */
  async function register(
    id: string,
    dataChannel = true,
    kind: 'native' | 'browser' = 'native',
  ): Promise<{ socket: Socket; reply: RegisterReply }> {
    const socket = connect(`${hub.url}/worker`, {
      auth: { workerId: id, workerSecret: 's'.repeat(32), token: hub.tokens.joinToken },
      reconnection: false,
      transports: ['websocket'],
      parser: shardhubParser,
    });
    sockets.push(socket);
    await new Promise<void>(
      (ok, fail) => (socket.once('connect', () => ok()), socket.once('connect_error', fail)),
    );
    const res = (await socket.timeout(5000).emitWithAck('worker:register', {
      kind,
      backend: kind === 'native' ? 'cpu' : 'wasm',
      name: id,
      concurrency: 1,
      capabilities: { cores: 1, memoryBytes: 1 },
      dataChannel,
    })) as Response<RegisterReply>;
    assert.ok('data' in res, JSON.stringify(res));
    return { socket, reply: res.data };
  }

  /** Sends an upgrade request by hand; resolves with what the hub answered, up to its close. */
  async function rawUpgrade(headers: Record<string, string>, method = 'GET'): Promise<string> {
    const port = new URL(hub.url).port;
    return new Promise((ok, fail) => {
      const sock = tcpConnect(Number(port), '127.0.0.1', () => {
        const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
        sock.write(
          `${method} ${DATA_CHANNEL_PATH} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n${lines.join('')}\r\n`,
        );
      });
      let got = '';
      sock.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.startsWith(DATA_CHANNEL_ACCEPT)) sock.destroy();
      });
      sock.on('close', () => ok(got));
      sock.on('error', fail);
    });
  }

  test('only a native node that asks gets a ticket', async () => {
    assert.ok((await register('dc-native-1')).reply.dataChannel?.ticket);
    assert.equal((await register('dc-native-2', false)).reply.dataChannel, undefined);
    assert.equal((await register('dc-browser-1', true, 'browser')).reply.dataChannel, undefined);
  });

  test('a ticket opens one channel, once; unknown tickets and other protocols are refused', async () => {
    const { reply } = await register('dc-native-3');
    const ticket = reply.dataChannel?.ticket as string;
    const upgrade = { Upgrade: DATA_CHANNEL_PROTOCOL, Authorization: `Bearer ${ticket}` };
    assert.ok((await rawUpgrade(upgrade)).startsWith(DATA_CHANNEL_ACCEPT), 'the ticket opens a channel');
    assert.match(await rawUpgrade(upgrade), /^HTTP\/1\.1 401 [^]*unknown or used/, 'used once only');
    assert.match(
      await rawUpgrade({ Upgrade: DATA_CHANNEL_PROTOCOL, Authorization: `Bearer ${'x'.repeat(43)}` }),
      /^HTTP\/1\.1 401/,
    );
    assert.match(await rawUpgrade({ Upgrade: DATA_CHANNEL_PROTOCOL }), /^HTTP\/1\.1 401/, 'no ticket');
    assert.match(
      await rawUpgrade({ Upgrade: 'websocket', Authorization: `Bearer ${ticket}` }),
      /^HTTP\/1\.1 400 [^]*Upgrade: shardhub-data\/1/,
    );
  });

  test('a ticket of a connection that has ended is refused (the hub forgets it with the connection)', async () => {
    const { socket, reply } = await register('dc-native-4');
    socket.disconnect();
    await waitFor(
      'the hub sees the worker go',
      () => hub.hub.workers.get('dc-native-4')?.state === 'offline',
    );
    const answer = await rawUpgrade({
      Upgrade: DATA_CHANNEL_PROTOCOL,
      Authorization: `Bearer ${reply.dataChannel?.ticket}`,
    });
    assert.match(answer, /^HTTP\/1\.1 401 [^]*unknown or used data channel ticket/);
  });

  test('a channel that closes, or on which the node writes, disconnects its worker', async () => {
    for (const [id, misbehave] of [
      ['dc-native-5', (c: NetSocket) => c.destroy()],
      ['dc-native-6', (c: NetSocket) => c.write('hello')],
    ] as const) {
      const { socket, reply } = await register(id);
      const gone = new Promise<string>((ok) => socket.once('disconnect', ok));
      const chan = tcpConnect(Number(new URL(hub.url).port), '127.0.0.1');
      chan.on('error', () => undefined);
      chan.write(
        `GET ${DATA_CHANNEL_PATH} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${DATA_CHANNEL_PROTOCOL}\r\n` +
          `Authorization: Bearer ${reply.dataChannel?.ticket}\r\n\r\n`,
      );
      await new Promise<void>((ok) => chan.once('data', () => ok()));
      await waitFor('the channel is bound', () => hub.hub.data.stats.open > 0);
      misbehave(chan);
      assert.equal(await gone, 'io server disconnect', `${id}: the hub disconnected the worker`);
      await waitFor(`${id} offline`, () => hub.hub.workers.get(id)?.state === 'offline');
      chan.destroy();
    }
  });
});
