/**
 * Workers of a test's or a bench's own making: raw Socket.IO clients that speak the worker protocol,
 * as an attacker would write them, or as a crowd too large to run for real. The hostile tests
 * (`hostile.ts`), the trust bench and the soak (`bench/_hostile.ts`) and the dashboard's
 * 500-worker test build theirs on these.
 */
import { io, type Socket } from 'socket.io-client';
import { shardhubParser } from '../../protocol/socket-parser.ts';

/** A shard as a raw worker reads it. */
export interface RawShard {
  jobId: string;
  model: { sha256: string };
  items: { id: number; inputs: { dims: number[]; data: Uint8Array }[] }[];
  packed?: { ids: number[] };
}

/** Options of {@link rawWorker}. */
export interface RawWorkerOptions {
  /** The join token: a native node. Without it, an anonymous browser tab. */
  token?: string;
  /** Fields of the register request over the defaults (kind and backend follow `token`). */
  register?: Record<string, unknown>;
  /** Handlers of its own, set before it registers (the hub may ask for a benchmark first). */
  before?: (s: Socket) => void;
}

/**
 * Connects a worker to `${url}/worker` and registers it; rejects with the hub's reason when it is
 * refused. It confirms no revoke (it has started everything it holds) and otherwise answers only
 * what `before` sets up.
 */
export async function rawWorker(url: string, workerId: string, opts: RawWorkerOptions = {}): Promise<Socket> {
  const s = io(`${url}/worker`, {
    auth: {
      workerId,
      workerSecret: `secret-${workerId}`.padEnd(32, 'x'),
      ...(opts.token ? { token: opts.token } : {}),
    },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  await new Promise<void>((ok, fail) => {
    s.once('connect', () => ok());
    s.once('connect_error', fail);
  });
  opts.before?.(s);
  s.on('shard:revoke', (_req: unknown, ack: (r: unknown) => void) => ack({ data: { revoked: [] } }));
  const r = (await s.timeout(10_000).emitWithAck('worker:register', {
    kind: opts.token ? 'native' : 'browser',
    backend: opts.token ? 'cpu' : 'wasm',
    name: workerId,
    concurrency: 1,
    capabilities: { cores: 1, memoryBytes: 1 },
    ...opts.register,
  })) as { error?: { message: string } };
  if (r.error) {
    s.close();
    throw new Error(`${workerId} could not register: ${r.error.message}`);
  }
  return s;
}

/** Answers every benchmark request with `itemsPerSec` (a worker that never answers gets no work). */
export function answerBenchmarks(s: Socket, itemsPerSec: number): void {
  s.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
    ack({ data: { itemsPerSec, batchSize: 1, runs: 10, ms: 100 } }),
  );
}

/**
 * A noop model's results for a shard (y = x), each output passed through `lie` first (with its
 * item's id); `ms` is the run time each result claims.
 */
export function noopResults(
  shard: RawShard,
  lie: (y: Float32Array, itemId: number) => void = () => {},
  ms = 1,
) {
  return shard.items.map((it) => {
    const x = it.inputs[0] as { dims: number[]; data: Uint8Array };
    const y = new Float32Array(new Uint8Array(x.data).buffer);
    lie(y, it.id);
    return {
      itemId: it.id,
      jobId: shard.jobId,
      modelSha256: shard.model.sha256,
      ms,
      outputs: [{ name: 'y', dtype: 'float32', dims: x.dims, data: new Uint8Array(y.buffer) }],
    };
  });
}

/**
 * The subtle lie: one element scaled by 1.05 (just outside the noop model's tolerance), plus 0.01
 * so that an element of 0 changes too.
 */
export function subtleLie(y: Float32Array): void {
  y[0] = (y[0] as number) * 1.05 + 0.01;
}
