/**
 * A session in its own thread, seen from the node's main thread as a {@link LoadedModel}.
 *
 * onnxruntime-node's `InferenceSession.run` computes synchronously on the calling thread (it is only
 * wrapped in a promise). On the main thread that would stall the socket (heartbeats, revoke replies)
 * for the length of every run, and N runners would take turns instead of computing in parallel. So
 * each runner's session lives in a `worker_threads` Worker running `ort-thread.ts`.
 *
 * Inputs cross to the thread in buffers that go back and forth: the main thread writes each batch,
 * already concatenated, into a buffer of its pool (`InputBuffers`) and transfers it; the session
 * runs on it as it is, and the thread transfers it back with the outputs. The main thread, whose
 * heap the sockets keep busy, then allocates nothing per batch: a fresh megabyte buffer per item
 * brought a full garbage collection of its heap every few batches, while buffers that come back
 * are not new memory to V8. (Shared memory would not do: onnxruntime-node refuses it, and V8
 * copies into it byte by byte.) Outputs come back as onnxruntime-node made them, transferred, and
 * are split per item as views.
 *
 * On a native node most batches are not written at run time at all: their items were staged into
 * a batch buffer as they arrived (`staging.ts`), and that buffer is the one transferred.
 */
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import type { FailureCategory } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { BackendError, type LoadedModel } from '../worker/backend.ts';
import { concatItems, planBatches, splitOutputs } from '../worker/batching.ts';
import type { Stager } from './staging.ts';
import { vouchFinite } from '../worker/wire.ts';

/** Messages to a session thread. */
export type ToThread =
  | {
      type: 'load';
      model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>;
      bytes: Uint8Array;
      options: InferenceSession.SessionOptions;
    }
  /** Batches written into `buffer` by `writeBatches` (transferred), each run as it is. */
  | { type: 'run'; id: number; buffer: ArrayBuffer; batches: BufferTensor[][] }
  | { type: 'dispose' };

/** Messages from a session thread. `id` null: about the load (or the thread itself). */
export type FromThread =
  | { type: 'loaded' }
  /**
   * Each batch's outputs, whole (split per item on the main thread), and the inputs' buffer back;
   * transferred. `finite[b][j]`: batch b's output j was checked in the thread and holds no NaN or
   * infinity.
   */
  | { type: 'result'; id: number; outputs: WireTensor[][]; finite: boolean[][]; buffer: ArrayBuffer }
  | {
      type: 'error';
      id: number | null;
      category: FailureCategory;
      message: string;
      /** The inputs' buffer back, after a failed run. */
      buffer?: ArrayBuffer;
    }
  | { type: 'disposed' };

interface Pending {
  /** Each batch's outputs, whole, and which the thread found finite. */
  resolve: (result: { outputs: WireTensor[][]; finite: boolean[][] }) => void;
  reject: (err: Error) => void;
  /** The inputs' buffer is a staging buffer (goes back to the stager, not to `InputBuffers`). */
  staged: boolean;
}

const ENTRY = new URL('./ort-thread.ts', import.meta.url);

/**
 * Starts a thread running the session entry. Under tsx (a `.ts` entry) the thread first registers
 * tsx's loader: Node 20 does not carry `--import` hooks into worker threads.
 */
function startThread(): Worker {
  if (!ENTRY.pathname.endsWith('.ts')) return new Worker(ENTRY);
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(ENTRY.href)}); })`;
  return new Worker(boot, { eval: true });
}

/** A tensor of a batch in an input buffer: its bytes are `byteLength` bytes at `offset`. */
export interface BufferTensor {
  name: string;
  dtype: WireTensor['dtype'];
  dims: number[];
  offset: number;
  byteLength: number;
}

/** Items grouped into the batches their session runs (`planBatches`), and the room they take in a buffer. */
export function planBuffer(
  model: Pick<ModelInfo, 'batchable' | 'batchSize'>,
  items: WireTensor[][],
): { groups: number[][]; batches: WireTensor[][][]; bytes: number } {
  const groups = planBatches(items, model.batchable ? model.batchSize : 1);
  const batches = groups.map((g) => g.map((i) => items[i] as WireTensor[]));
  let bytes = 0;
  for (const members of batches)
    for (const t of members[0] ?? []) bytes += align8(t.data.byteLength * members.length);
  return { groups, batches, bytes };
}

/** Each tensor in a buffer starts 8-byte aligned, as typed arrays of every dtype need. */
export const align8 = (n: number) => Math.ceil(n / 8) * 8;

/**
 * Writes planned batches into a buffer, each batch's inputs concatenated along dim 0
 * (`concatItems`), and returns their layout. This copy is the one the session thread would
 * otherwise make to concatenate them.
 */
export function writeBatches(batches: WireTensor[][][], buffer: ArrayBuffer): BufferTensor[][] {
  let offset = 0;
  const into = (byteLength: number) => {
    const view = new Uint8Array(buffer, offset, byteLength);
    offset += align8(byteLength);
    return view;
  };
  return batches.map((members) =>
    concatItems(members, into).map((t) => ({
      name: t.name,
      dtype: t.dtype,
      dims: t.dims,
      offset: t.data.byteOffset,
      byteLength: t.data.byteLength,
    })),
  );
}

/**
 * Input buffers that go to the session thread and come back: a run takes one big enough (a new one
 * when none is free), and its buffer is given back when it returns with the results. At most `keep`
 * are kept, the largest.
 */
class InputBuffers {
  private readonly free: ArrayBuffer[] = [];

  constructor(private readonly keep = 4) {}

  take(bytes: number): ArrayBuffer {
    const i = this.free.findIndex((b) => b.byteLength >= bytes);
    if (i >= 0) return this.free.splice(i, 1)[0] as ArrayBuffer;
    // Rounded up to a MiB, so that batches a little larger than the last can reuse it.
    return new ArrayBuffer(Math.max(1, Math.ceil(bytes / 2 ** 20)) * 2 ** 20);
  }

  give(buffer: ArrayBuffer | undefined): void {
    if (!buffer || buffer.byteLength === 0) return;
    this.free.push(buffer);
    if (this.free.length <= this.keep) return;
    this.free.sort((a, b) => b.byteLength - a.byteLength);
    this.free.length = this.keep;
  }
}

/** A session in a worker thread; see the file comment. */
export class ThreadedSession implements LoadedModel {
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private disposed: Promise<void> | undefined;
  private dead: Error | undefined;

  private readonly buffers = new InputBuffers();

  private constructor(
    private readonly worker: Worker,
    private readonly model: Pick<ModelInfo, 'batchable' | 'batchSize'>,
    private readonly stager: Stager | undefined,
  ) {
    worker.on('message', (msg: FromThread) => this.onMessage(msg));
    worker.on('error', (err) =>
      this.fail(new BackendError('other', `session thread failed: ${err.message}`)),
    );
    worker.on('exit', (code) => this.fail(new BackendError('other', `session thread exited (code ${code})`)));
  }

  /**
   * Starts a thread and loads the model in it; rejects with the thread's {@link BackendError}.
   * With a `stager`, batches whose items it staged go to the thread in its buffer.
   */
  static async create(
    model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>,
    bytes: Uint8Array,
    options: InferenceSession.SessionOptions,
    stager?: Stager,
  ): Promise<ThreadedSession> {
    const worker = startThread();
    const loaded = new Promise<void>((resolve, reject) => {
      const onMessage = (msg: FromThread) => {
        if (msg.type === 'loaded') resolve();
        else if (msg.type === 'error' && msg.id === null) reject(new BackendError(msg.category, msg.message));
        else return;
        worker.off('message', onMessage);
      };
      worker.on('message', onMessage);
      worker.once('error', (err) =>
        reject(new BackendError('model_load', `session thread failed: ${err.message}`)),
      );
      worker.once('exit', (code) =>
        reject(new BackendError('model_load', `session thread exited (code ${code})`)),
      );
    });
    const own = bytes.slice();
    const msg: ToThread = {
      type: 'load',
      model: { name: model.name, batchable: model.batchable, batchSize: model.batchSize },
      bytes: own,
      options,
    };
    worker.postMessage(msg, [own.buffer]);
    try {
      await loaded;
    } catch (err) {
      await worker.terminate();
      throw err;
    }
    return new ThreadedSession(worker, model, stager);
  }

  run(items: WireTensor[][]): Promise<WireTensor[][]> {
    if (this.disposed) return Promise.reject(new Error('session is disposed'));
    if (this.dead) return Promise.reject(this.dead);
    const id = ++this.nextId;
    const max = this.model.batchable ? this.model.batchSize : 1;
    const claimed = items.length <= max ? this.stager?.claim(items) : undefined;
    let buffer: ArrayBuffer;
    let batches: BufferTensor[][];
    let groups: number[][];
    if (claimed) {
      // The items are one staging buffer's, in order: it is the batch already.
      ({ buffer } = claimed);
      batches = [claimed.batch];
      groups = [items.map((_, i) => i)];
    } else {
      const plan = planBuffer(this.model, items);
      buffer = this.buffers.take(plan.bytes);
      batches = writeBatches(plan.batches, buffer);
      ({ groups } = plan);
    }
    return new Promise<{ outputs: WireTensor[][]; finite: boolean[][] }>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, staged: claimed !== undefined });
      const msg: ToThread = { type: 'run', id, buffer, batches };
      this.worker.postMessage(msg, [buffer]);
    }).then(({ outputs, finite }) => {
      // Items' outputs are views of their batch's: the batch's buffers came over whole, not copied.
      // Those the thread checked are vouched for, so that checkOutputs does not read them again.
      const perItem = new Array<WireTensor[]>(items.length);
      groups.forEach((group, b) =>
        splitOutputs(outputs[b] ?? [], group.length, false).forEach((out, k) => {
          out.forEach((t, j) => finite[b]?.[j] && vouchFinite(t.data));
          perItem[group[k] as number] = out;
        }),
      );
      return perItem;
    });
  }

  dispose(): Promise<void> {
    this.disposed ??= (async () => {
      if (!this.dead) {
        const done = new Promise<void>((resolve) => {
          const onMessage = (msg: FromThread) => {
            if (msg.type === 'disposed') resolve();
          };
          this.worker.on('message', onMessage);
          this.worker.once('exit', () => resolve());
          setTimeout(resolve, 2000).unref();
        });
        const msg: ToThread = { type: 'dispose' };
        this.worker.postMessage(msg);
        await done;
      }
      await this.worker.terminate();
    })();
    return this.disposed;
  }

  private onMessage(msg: FromThread): void {
    switch (msg.type) {
      case 'result':
        this.giveBack(msg.id, msg.buffer);
        this.pending.get(msg.id)?.resolve({ outputs: msg.outputs, finite: msg.finite });
        this.pending.delete(msg.id);
        return;
      case 'error':
        if (msg.id === null) return;
        this.giveBack(msg.id, msg.buffer);
        this.pending.get(msg.id)?.reject(new BackendError(msg.category, msg.message));
        this.pending.delete(msg.id);
        return;
      case 'loaded':
      case 'disposed':
        return;
    }
  }

  /** A run's inputs buffer, back from the thread, to the pool it came from. */
  private giveBack(id: number, buffer: ArrayBuffer | undefined): void {
    if (!buffer) return;
    if (this.pending.get(id)?.staged) this.stager?.give(buffer);
    else this.buffers.give(buffer);
  }

  private fail(err: Error): void {
    if (this.disposed && this.pending.size === 0) return;
    this.dead ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
