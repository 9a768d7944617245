/**
 * The native node's transport sends its frames unmasked (a key of zeros), and they still arrive
 * whole; the default transport masks them. A real Socket.IO server on loopback, whose raw TCP bytes
 * the test reads: a payload sent unmasked appears in them as it is.
 */
import assert from 'node:assert/strict';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { Server } from 'socket.io';
import { io as connect, type ManagerOptions, type Socket, type SocketOptions } from 'socket.io-client';
import { UnmaskedWebSocket } from '../../native/ws-transport.ts';

let http: HttpServer;
let ioServer: Server;
let url = '';
/** Every byte the server's TCP sockets received. */
const wire: Buffer[] = [];
/** What the server's 'blob' handler received. */
const received: Buffer[] = [];

before(async () => {
  http = createServer();
  http.on('connection', (sock) => sock.on('data', (d: Buffer) => wire.push(d)));
  ioServer = new Server(http);
  ioServer.on('connection', (s) => s.on('blob', (b: Buffer, ack: () => void) => (received.push(b), ack())));
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});
after(async () => {
  await ioServer.close();
});

/** Sends `payload` over a fresh client with `transports`; says whether its bytes appear on the wire as they are. */
async function sendAndLook(
  transports: Partial<ManagerOptions & SocketOptions>['transports'],
  payload: Buffer,
) {
  wire.length = 0;
  received.length = 0;
  const s: Socket = connect(url, { transports, reconnection: false });
  try {
    await new Promise<void>((ok, fail) => (s.once('connect', () => ok()), s.once('connect_error', fail)));
    await s.timeout(5000).emitWithAck('blob', payload);
  } finally {
    s.disconnect();
  }
  assert.equal(received.length, 1);
  assert.ok(Buffer.from(received[0] as Buffer).equals(payload), 'the server received the payload intact');
  return Buffer.concat(wire).includes(payload);
}

test('the native node transport sends its frames unmasked, and they arrive intact', async () => {
  // 64 KB of varied bytes: long enough that a random mask cannot leave it unchanged.
  const payload = Buffer.alloc(64 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;
  assert.equal(
    await sendAndLook([UnmaskedWebSocket], payload),
    true,
    'unmasked: the payload is on the wire as is',
  );
  assert.equal(await sendAndLook(['websocket'], payload), false, 'default transport: the payload is masked');
});
