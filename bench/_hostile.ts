/**
 * Hostile workers for the trust bench and the soak: clients of our own that speak the worker
 * protocol on the noop model (y = x), as an attacker would write them.
 *
 * - `liar`: a native node (join token) or an anonymous tab that answers honestly for its first
 *   `after` items, then scales one element of the output by 1.05 on a `rate` share of items (1: on
 *   every item). It paces its answers like a node of `itemsPerSec`, and remembers which items it
 *   corrupted, so a bench can tell whether the hub kept any of them.
 * - `failureReporter`: an anonymous tab that claims a huge benchmark and concurrency 256 and answers
 *   every item with a failure report.
 */
import { io, type Socket } from 'socket.io-client';
import { shardhubParser } from '../protocol/socket-parser.ts';

/** A hostile worker's socket, and the items it corrupted (liars). */
export interface Hostile {
  id: string;
  socket: Socket;
  corrupted: Set<number>;
  close(): void;
}

interface Shard {
  jobId: string;
  model: { sha256: string };
  items: { id: number; inputs: { dims: number[]; data: Uint8Array }[] }[];
}

async function connect(
  url: string,
  workerId: string,
  token: string | undefined,
  reg: Record<string, unknown>,
  handlers: (s: Socket) => void,
): Promise<Socket> {
  const s = io(`${url}/worker`, {
    auth: { workerId, workerSecret: `secret-${workerId}`.padEnd(32, 'x'), ...(token ? { token } : {}) },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  await new Promise<void>((ok, fail) => {
    s.once('connect', () => ok());
    s.once('connect_error', fail);
  });
  handlers(s); // before registering: the hub may ask for a benchmark before it answers
  s.on('shard:revoke', (_req: unknown, ack: (r: unknown) => void) => ack({ data: { revoked: [] } }));
  const r = (await s.timeout(10_000).emitWithAck('worker:register', {
    name: workerId,
    capabilities: { cores: 1, memoryBytes: 1 },
    ...reg,
  })) as { error?: { message: string } };
  if (r.error) throw new Error(`${workerId} could not register: ${r.error.message}`);
  return s;
}

/** A liar; see the file comment. */
export async function liar(
  url: string,
  workerId: string,
  opts: { rate: number; after?: number; token?: string; itemsPerSec?: number },
): Promise<Hostile> {
  const corrupted = new Set<number>();
  const ips = opts.itemsPerSec ?? 500;
  let seen = 0;
  let busyUntil = Date.now();
  const socket = await connect(
    url,
    workerId,
    opts.token,
    { kind: opts.token ? 'native' : 'browser', backend: opts.token ? 'cpu' : 'wasm', concurrency: 4 },
    (s) => {
      s.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
        ack({ data: { itemsPerSec: ips, batchSize: 1, runs: 10, ms: 100 } }),
      );
      s.on('shard:assign', (shard: Shard) => {
        const results = shard.items.map((it) => {
          const x = it.inputs[0] as { dims: number[]; data: Uint8Array };
          const f = new Float32Array(new Uint8Array(x.data).buffer);
          if (seen++ >= (opts.after ?? 0) && Math.random() < opts.rate) {
            f[0] = (f[0] as number) * 1.05 + 0.01; // +0.01: an element of 0 changes too
            corrupted.add(it.id);
          }
          return {
            itemId: it.id,
            jobId: shard.jobId,
            modelSha256: shard.model.sha256,
            ms: 1000 / ips,
            outputs: [{ name: 'y', dtype: 'float32', dims: x.dims, data: new Uint8Array(f.buffer) }],
          };
        });
        // Paced like a node of `ips` items/s: shards queue behind each other.
        busyUntil = Math.max(busyUntil, Date.now()) + (results.length * 1000) / ips;
        setTimeout(() => s.emit('items:done', { results }), busyUntil - Date.now());
      });
    },
  );
  return { id: workerId, socket, corrupted, close: () => socket.close() };
}

/** A failure-reporter; see the file comment. */
export async function failureReporter(url: string, workerId: string): Promise<Hostile> {
  const socket = await connect(
    url,
    workerId,
    undefined,
    { kind: 'browser', backend: 'wasm', concurrency: 256 },
    (s) => {
      s.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
        ack({ data: { itemsPerSec: 1e6, batchSize: 1, runs: 1, ms: 1 } }),
      );
      s.on('shard:assign', (shard: Shard) =>
        s.emit('items:failed', {
          failures: shard.items.map((it) => ({
            itemId: it.id,
            jobId: shard.jobId,
            category: 'other',
            message: 'out of memory (not really)',
          })),
        }),
      );
    },
  );
  return { id: workerId, socket, corrupted: new Set(), close: () => socket.close() };
}
