/**
 * A minimal hub for worker tests: a real Socket.IO server on 127.0.0.1 (namespace `/worker`) that
 * records what workers send and acks it, and serves one model's bytes. Not a test file itself.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, type Socket as ServerSocket } from 'socket.io';
import type {
  AssignedItem,
  Heartbeat,
  HubToWorkerEvents,
  ItemFailure,
  ItemResult,
  RegisterRequest,
  WorkerAuth,
  WorkerToHubEvents,
} from '../../protocol/events.ts';
import { ErrorCode, refusal } from '../../protocol/errors.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import { bytesOf, type WireTensor } from '../../protocol/tensor.ts';
import { toWireTensor } from '../../worker/wire.ts';

export const modelBytes = new TextEncoder().encode('not really onnx: the sim backend never reads it');
export const sha256 = createHash('sha256').update(modelBytes).digest('hex');

/** A model for the sim backend: x[N,1] → y[N,1]. */
export function simModel(over: Partial<ModelInfo> = {}): ModelInfo {
  return {
    name: 'sim-model',
    description: 'test',
    inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 1] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 1] }],
    batchable: false,
    batchSize: 1,
    tolerance: { atol: 0, rtol: 0 },
    calibration: { dims: { x: [1, 1] }, seed: 1 },
    sha256,
    bytes: modelBytes.byteLength,
    url: `/api/models/${sha256}`,
    ...over,
  };
}

/** Item `id` carries the value `id`, so the sim output says which item produced it. */
export function items(ids: number[]): AssignedItem[] {
  return ids.map((id) => ({ id, inputs: [x(id)] }));
}
function x(v: number): WireTensor {
  return { name: 'x', dtype: 'float32', dims: [1, 1], data: bytesOf(new Float32Array([v])) };
}
/** [from, from+1, ..., from+n-1] */
export const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

type HubSocket = ServerSocket<WorkerToHubEvents, HubToWorkerEvents>;

/**
 * A minimal hub: records what workers send and acks it. With `joinToken` it checks the token,
 * either in the namespace middleware (`connect`) or like the real hub at `worker:register` (an
 * error ack, then a server-side disconnect).
 */
export class FakeHub {
  readonly http: HttpServer;
  readonly io: Server<WorkerToHubEvents, HubToWorkerEvents>;
  url = '';
  sockets: HubSocket[] = [];
  registers: { req: RegisterRequest; auth: WorkerAuth; conn: number }[] = [];
  heartbeats: Heartbeat[] = [];
  results: (ItemResult & { conn: number })[] = [];
  failures: ItemFailure[] = [];
  released: number[] = [];
  doneSizes: number[] = [];
  modelRequests = 0;
  /** Errors to answer the next `items:done` messages with, one each, instead of taking them. */
  doneErrors: { code: string; message: string }[] = [];

  constructor(opts: { joinToken?: string; checkTokenAt?: 'connect' | 'register' } = {}) {
    const { joinToken, checkTokenAt = 'register' } = opts;
    this.http = createServer((req, res) => {
      if (req.url === `/api/models/${sha256}`) {
        this.modelRequests++;
        res.writeHead(200, { 'content-length': modelBytes.byteLength }).end(modelBytes);
      } else res.writeHead(404).end();
    });
    this.io = new Server(this.http);
    const nsp = this.io.of('/worker');
    if (joinToken !== undefined && checkTokenAt === 'connect') {
      nsp.use((socket, next) => {
        if ((socket.handshake.auth as WorkerAuth).token === joinToken) next();
        else next(refusal(ErrorCode.Unauthorized, 'invalid join token'));
      });
    }
    nsp.on('connection', (socket: HubSocket) => {
      const conn = this.sockets.push(socket) - 1;
      socket.on('worker:register', (req, ack) => {
        const auth = socket.handshake.auth as WorkerAuth;
        if (joinToken !== undefined && checkTokenAt === 'register' && auth.token !== joinToken) {
          ack({
            error: {
              code: ErrorCode.Unauthorized,
              message: 'native nodes need the hub join token (--token)',
            },
          });
          socket.disconnect(true);
          return;
        }
        this.registers.push({ req, auth, conn });
        ack({ data: { workerId: auth.workerId, heartbeatMs: 50, offlineAfterMs: 500 } });
      });
      socket.on('worker:heartbeat', (hb) => this.heartbeats.push(hb));
      socket.on('items:done', (msg, ack) => {
        this.doneSizes.push(msg.results.length);
        const error = this.doneErrors.shift();
        if (error) return ack({ error });
        // Buffers at the edge become plain Uint8Arrays (Buffer#slice does not copy).
        for (const r of msg.results) this.results.push({ ...r, outputs: r.outputs.map(toWireTensor), conn });
        ack({ data: { accepted: msg.results.map((r) => r.itemId), dropped: [], refused: [] } });
      });
      socket.on('items:failed', (msg, ack) => {
        this.failures.push(...msg.failures);
        ack({ data: { retried: msg.failures.length, failed: 0 } });
      });
      socket.on('items:release', (msg, ack) => {
        this.released.push(...msg.itemIds);
        ack({ data: { released: msg.itemIds.length } });
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.http.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.http.address() as AddressInfo).port}`;
  }

  get last(): HubSocket {
    const s = this.sockets.at(-1);
    assert.ok(s, 'a worker is connected');
    return s;
  }

  assign(ids: number[], model = simModel(), jobId = 'job-1'): void {
    this.last.emit('shard:assign', { shardId: `shard-${ids[0]}`, jobId, model, items: items(ids) });
  }

  resultIds(): number[] {
    return this.results.map((r) => r.itemId).sort((a, b) => a - b);
  }

  async close(): Promise<void> {
    await this.io.close();
  }
}

/** Polls until `cond` holds, or throws naming `what`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
