/**
 * A process hosting many sim workers, driven by a benchmark over IPC (see `_rpc.ts`). Each worker
 * is the real run loop (`WorkerAgent`) with the `sim` backend on its own Socket.IO connection,
 * set up as `runNode` does it (websocket transport, `shardhubParser`, join token) minus the identity
 * file and the signal handling, so that a few processes can host thousands of workers and the
 * benchmark can see each worker's socket.
 *
 * Timing (the `connections` benchmark's assignment latency), per worker, on this process's clock:
 * - the sim backend notes when each item finished (items carry their number as their input value,
 *   and sim outputs repeat it, so results name their items);
 * - every `items:done` sent is queued with the finish time of its earliest item until its ack comes;
 * - a `shard:assign` that arrives while a results message is unacknowledged is the hub's answer to
 *   the oldest such message: the hub tops a worker up while it handles that worker's results, and it
 *   emits the shard before it acks, on the same ordered connection. Latency = arrival - finish time
 *   of that message's earliest item: from capacity freeing to its refill arriving, including the
 *   worker's own result batching, the hub's queueing and the wire. Other assignments (the first
 *   after the benchmark, timer-driven top-ups) are counted but not timed.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { io } from 'socket.io-client';
import { SimBackend } from '../native/sim-backend.ts';
import type { ItemsDone, ShardAssign } from '../protocol/events.ts';
import { unpackTensors } from '../protocol/pack.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { WorkerAgent, type WorkerSocket } from '../worker/agent.ts';
import type { Backend, LoadedModel } from '../worker/backend.ts';
import { MemoryModelStore } from '../worker/model-cache.ts';
import type { OutboxOptions } from '../worker/outbox.ts';
import { recordGc } from './_gc.ts';
import { serve } from './_rpc.ts';

/** What the benchmark asks for. */
export interface WorkerSetup {
  hubUrl: string;
  joinToken: string;
  count: number;
  concurrency: number;
  itemMs: number;
  speed?: number;
  /**
   * Workers' speeds spread evenly over speed * [1 - spread, 1 + spread] (deterministic): workers of
   * one machine type still differ, and identical workers started together would finish every item
   * at the same instant, a thundering herd no real grid sees every second.
   */
  spread?: number;
  /** This process's first worker number among all processes (for `spread`). */
  firstIndex?: number;
  namePrefix: string;
  timing?: boolean;
  outbox?: OutboxOptions;
  /** Workers connecting at once (default 100). */
  connectBatch?: number;
  /**
   * Model bytes put in the process's shared model cache before the workers start, as nodes on one
   * machine sharing a cache directory have them: thousands of workers fetching the model at once
   * from one address would run into the hub's per-address limit on public downloads.
   */
  preload?: { sha256: string; bytes: Uint8Array }[];
}

interface Timed {
  /** Item number → when the sim finished it. */
  finished: Map<number, number>;
  /** Unacknowledged results messages: finish time of each one's earliest item. */
  unacked: { freedAt: number; sentAt: number; answered: boolean }[];
}

const agents: WorkerAgent[] = [];
let stopping = false;
/** Connections the hub closed (offline verdicts, replaced sockets): each is reconnected, like runNode does. */
let serverDisconnects = 0;
const store = new MemoryModelStore();
const samples: number[] = [];
const sentSamples: number[] = [];
const sampleTimes: number[] = [];
let untimedAssigns = 0;
/**
 * What these workers received and sent, counted on their sockets: `shard:assign` messages and their
 * items, `items:done` messages and their results (the dispatch and connections benches' per-message
 * figures, measured outside the hub).
 */
const counts = { resultMsgs: 0, resultItems: 0, shards: 0, shardItems: 0 };
const clock = () => performance.timeOrigin + performance.now();

function firstFloat(t: WireTensor | undefined): number {
  if (!t || t.data.byteLength < 4) return Number.NaN;
  return new DataView(t.data.buffer, t.data.byteOffset, 4).getFloat32(0, true);
}

/** The sim backend, noting when each item finished. */
function timedBackend(setup: WorkerSetup, speed: number, timed: Timed | undefined): () => Promise<Backend> {
  return async () => {
    const sim = await SimBackend.create({ itemMs: setup.itemMs, speed });
    if (!timed) return sim;
    return {
      name: sim.name,
      reason: sim.reason,
      load: async (model): Promise<LoadedModel> => {
        const inner = await sim.load(model);
        return {
          run: async (items) => {
            const out = await inner.run(items);
            const t = clock();
            for (const inputs of items) timed.finished.set(firstFloat(inputs[0]), t);
            return out;
          },
          dispose: () => inner.dispose(),
        };
      },
      dispose: () => sim.dispose(),
    };
  };
}

/** Wraps the socket's `emit` to see results messages and their acks, and listens for shards first. */
function instrument(socket: WorkerSocket, timed: Timed): void {
  socket.on('shard:assign', (_shard: ShardAssign) => {
    const t = clock();
    const head = timed.unacked.find((m) => !m.answered);
    if (!head) {
      untimedAssigns++;
      return;
    }
    head.answered = true;
    samples.push(t - head.freedAt);
    sentSamples.push(t - head.sentAt);
    sampleTimes.push(t);
    if (process.env.SHARDHUB_BENCH_DEBUG && t - head.sentAt > 1000) {
      process.stderr.write(
        `slow refill ${(t - head.sentAt).toFixed(0)} ms at ${t.toFixed(0)}: ${_shard.items.length} items, unacked ${timed.unacked.length}\n`,
      );
    }
  });
  const emit = socket.emit.bind(socket) as (ev: string, ...args: unknown[]) => WorkerSocket;
  (socket as unknown as { emit: typeof emit }).emit = (ev: string, ...args: unknown[]) => {
    const ack = args.at(-1);
    if (ev === 'items:done' && typeof ack === 'function') {
      const msg = args[0] as ItemsDone;
      let freedAt = Number.POSITIVE_INFINITY;
      const item = (n: number) => {
        const f = timed.finished.get(n);
        timed.finished.delete(n);
        if (f !== undefined && f < freedAt) freedAt = f;
      };
      for (const r of msg.results) item(firstFloat(r.outputs[0]));
      // Results with packed outputs (`ItemsDone.packed`), where the hub takes them.
      const packed = (msg as { packed?: { ends: number[]; data: Uint8Array }[] }).packed ?? [];
      for (const g of packed) {
        g.ends.forEach((end, i) => {
          const pack = g.data.subarray(i === 0 ? 0 : (g.ends[i - 1] as number), end);
          item(firstFloat(unpackTensors(pack)[0]));
        });
      }
      const entry = { freedAt, sentAt: clock(), answered: false };
      timed.unacked.push(entry);
      const wrapped = (...a: unknown[]) => {
        const i = timed.unacked.indexOf(entry);
        if (i >= 0) timed.unacked.splice(i, 1);
        return (ack as (...x: unknown[]) => unknown)(...a);
      };
      (wrapped as { withError?: boolean }).withError = (ack as { withError?: boolean }).withError;
      args[args.length - 1] = wrapped;
    }
    return emit(ev, ...args);
  };
}

/** Worker `i`'s speed: `spread` around `speed`, by the golden-ratio sequence (even, deterministic). */
function speedOf(setup: WorkerSetup, i: number): number {
  const u = ((i + (setup.firstIndex ?? 0) + 1) * 0.6180339887498949) % 1;
  return (setup.speed ?? 1) * (1 + (setup.spread ?? 0) * (2 * u - 1));
}

async function startOne(setup: WorkerSetup, i: number): Promise<void> {
  const workerId = `${setup.namePrefix}-${i}-${randomBytes(4).toString('hex')}`;
  const socket = io(`${setup.hubUrl}/worker`, {
    auth: { workerId, workerSecret: randomBytes(24).toString('base64url'), token: setup.joinToken },
    autoConnect: false,
    transports: ['websocket'],
    reconnection: true,
    reconnectionDelay: 500,
    reconnectionDelayMax: 10_000,
    randomizationFactor: 0.5,
    parser: shardhubParser,
  }) as WorkerSocket;
  // Socket.IO does not reconnect after a server-side disconnect; a node does (see native/node.ts).
  socket.on('disconnect', (reason) => {
    if (reason !== 'io server disconnect' || stopping) return;
    serverDisconnects++;
    setTimeout(() => !stopping && socket.connect(), 250 + Math.random() * 500);
  });
  socket.on('shard:assign', (shard: ShardAssign) => {
    counts.shards++;
    counts.shardItems += shard.items.length + (shard.packed?.ids.length ?? 0);
  });
  socket.onAnyOutgoing((event: string, ...args: unknown[]) => {
    if (event !== 'items:done') return;
    const msg = args[0] as ItemsDone;
    counts.resultMsgs++;
    counts.resultItems += msg.results.length + (msg.packed ?? []).reduce((n, p) => n + p.ids.length, 0);
  });
  const timed: Timed | undefined = setup.timing ? { finished: new Map(), unacked: [] } : undefined;
  if (timed) instrument(socket, timed);
  const agent = new WorkerAgent({
    ...setup.outbox,
    socket,
    backend: timedBackend(setup, speedOf(setup, i), timed),
    store,
    hubUrl: setup.hubUrl,
    register: {
      kind: 'native',
      name: `${setup.namePrefix}-${i}`,
      capabilities: { hostname: 'bench', cores: 2, memoryBytes: 2 ** 34 },
    },
    concurrency: setup.concurrency,
  });
  agents.push(agent);
  const registered = new Promise<void>((ok) => {
    const off = agent.on('registered', () => {
      off();
      ok();
    });
  });
  await agent.start();
  await registered;
}

const gc = recordGc();

serve(
  {
    /** Starts the workers, `connectBatch` at a time; resolves once all are registered. */
    async start(setup: WorkerSetup) {
      for (const m of setup.preload ?? []) await store.put(m.sha256, m.bytes);
      const batch = setup.connectBatch ?? 100;
      for (let off = 0; off < setup.count; off += batch) {
        const n = Math.min(batch, setup.count - off);
        await Promise.all(Array.from({ length: n }, (_, k) => startOne(setup, off + k)));
      }
      return { workers: agents.length };
    },

    stats() {
      let done = 0;
      let connected = 0;
      for (const a of agents) {
        const s = a.stats;
        done += s.itemsDone;
        if (s.connected) connected++;
      }
      return { done, connected, workers: agents.length, serverDisconnects };
    },

    /** Messages received and sent so far (and resets the counts); see `counts`. */
    counts() {
      const out = { ...counts };
      counts.resultMsgs = counts.resultItems = counts.shards = counts.shardItems = 0;
      return out;
    },

    /** Latency samples in ms (and clears them). */
    takeSamples() {
      const out = {
        freed: Float64Array.from(samples),
        sent: Float64Array.from(sentSamples),
        at: Float64Array.from(sampleTimes),
        untimed: untimedAssigns,
      };
      samples.length = 0;
      sentSamples.length = 0;
      sampleTimes.length = 0;
      untimedAssigns = 0;
      return out;
    },

    /** This process's collections since the last call (`_gc.ts`). */
    gcPauses() {
      return gc.take();
    },

    cpu() {
      const u = process.cpuUsage();
      return { cpuUs: u.user + u.system };
    },
  },
  async () => {
    stopping = true;
    await Promise.all(agents.map((a) => a.close()));
  },
);
