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
 *
 * A session whose thread dies, or whose GPU device is lost (a run fails with `device_lost`), fails
 * the runs in flight (on a GPU provider as `device_lost`: the hub gives their items to others) and
 * starts again on its next run: a new thread, a new session, and so a new device, as the browser
 * replaces its inference worker. After {@link MAX_LOSSES} losses within {@link LOSS_WINDOW_MS} (or
 * when no new session can be made) on a GPU provider, the session asks its {@link SessionHost} to
 * give the GPU up; when the host falls back to the CPU, the session starts again there. Otherwise it
 * stays dead, each run failing with the last loss. A session also starts again when its host's
 * options changed under it (another session gave the GPU up first).
 */
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import type { FailureCategory } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { BackendError, errorMessage, type LoadedModel } from '../worker/backend.ts';
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
  | { type: 'dispose' }
  /** Fault injection: the next run fails as a lost device does (see `ThreadedSession.loseDeviceForTest`). */
  | { type: 'lose-device' };

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

/** Losses within {@link LOSS_WINDOW_MS} after which a session gives up (as the browser does). */
export const MAX_LOSSES = 3;
/** 10 minutes. */
export const LOSS_WINDOW_MS = 10 * 60_000;

type SessionModel = Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>;

/**
 * What a session asks of the backend that made it: the options new threads load with (they change
 * when the backend gives its GPU up), and giving the GPU up.
 */
export interface SessionHost {
  /** The options a new session thread loads with now. */
  readonly sessionOptions: InferenceSession.SessionOptions;
  /** The GPU failed for good (`why`): returns whether the host now runs on the CPU instead. */
  giveUpGpu(why: string): boolean;
  /** Fault injection (`gpu-fault.ts`): every run on a GPU provider fails as a lost device. */
  readonly gpuRunsFail?: boolean;
}

/** Whether the options run on a GPU provider, whose losses are `device_lost`. */
function onGpu(options: InferenceSession.SessionOptions): boolean {
  return (options.executionProviders ?? []).some((p) => {
    const name = typeof p === 'string' ? p : p.name;
    return name !== 'cpu';
  });
}

/** Starts a thread and loads the model in it; rejects with the thread's {@link BackendError}. */
async function startLoaded(
  model: SessionModel,
  bytes: Uint8Array,
  options: InferenceSession.SessionOptions,
): Promise<Worker> {
  const worker = startThread();
  // Only these listeners are removed afterwards: a Worker keeps listeners of its own (they ref and
  // unref its message port), and without them its messages stop coming.
  let onMessage!: (msg: FromThread) => void;
  let onError!: (err: Error) => void;
  let onExit!: (code: number) => void;
  const loaded = new Promise<void>((resolve, reject) => {
    onMessage = (msg: FromThread) => {
      if (msg.type === 'loaded') resolve();
      else if (msg.type === 'error' && msg.id === null) reject(new BackendError(msg.category, msg.message));
    };
    onError = (err) => reject(new BackendError('model_load', `session thread failed: ${err.message}`));
    onExit = (code) => reject(new BackendError('model_load', `session thread exited (code ${code})`));
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
  // Cloned, not transferred: the session keeps its bytes to load them again after a loss.
  const msg: ToThread = {
    type: 'load',
    model: { name: model.name, batchable: model.batchable, batchSize: model.batchSize },
    bytes,
    options,
  };
  worker.postMessage(msg);
  try {
    await loaded;
  } catch (err) {
    await worker.terminate();
    throw err;
  } finally {
    worker.off('message', onMessage);
    worker.off('error', onError);
    worker.off('exit', onExit);
  }
  return worker;
}

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
  /** Set for good: the session gave up (too many losses, or no new session could be made). */
  private dead: Error | undefined;
  /** The thread was lost: the next run starts a new one. */
  private lost: BackendError | undefined;
  private restarting: Promise<void> | undefined;
  private readonly losses: number[] = [];

  private readonly buffers = new InputBuffers();

  private constructor(
    private worker: Worker,
    private readonly model: SessionModel,
    private readonly bytes: Uint8Array,
    private options: InferenceSession.SessionOptions,
    private readonly stager: Stager | undefined,
    private readonly host: SessionHost | undefined,
  ) {
    this.attach(worker);
  }

  /**
   * Starts a thread and loads the model in it; rejects with the thread's {@link BackendError}.
   * With a `stager`, batches whose items it staged go to the thread in its buffer.
   */
  static async create(
    model: SessionModel,
    bytes: Uint8Array,
    options: InferenceSession.SessionOptions,
    stager?: Stager,
    host?: SessionHost,
  ): Promise<ThreadedSession> {
    const own = bytes.slice();
    const worker = await startLoaded(model, own, options);
    return new ThreadedSession(worker, model, own, options, stager, host);
  }

  /** How many times the session was lost and started again. */
  get restarts(): number {
    return this.losses.length;
  }

  /**
   * Makes the next run fail as onnxruntime reports a lost device, for tests of the recovery path:
   * onnxruntime-node gives no handle on its Dawn device to destroy, and ending a thread in the
   * middle of a run aborts the whole process.
   */
  loseDeviceForTest(): void {
    const msg: ToThread = { type: 'lose-device' };
    this.worker.postMessage(msg);
  }

  async run(items: WireTensor[][]): Promise<WireTensor[][]> {
    if (this.disposed) throw new Error('session is disposed');
    if (this.host && this.host.sessionOptions !== this.options && !this.lost && this.pending.size === 0)
      await this.moveToHostOptions();
    if (this.lost) await this.restart();
    if (this.dead) throw this.dead;
    if (this.host?.gpuRunsFail && onGpu(this.options)) this.loseDeviceForTest();
    return this.post(items);
  }

  private post(items: WireTensor[][]): Promise<WireTensor[][]> {
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
      await this.restarting?.catch(() => undefined);
      if (!this.dead && !this.lost) {
        const done = new Promise<void>((resolve) => {
          const onMessage = (msg: FromThread) => {
            if (msg.type === 'disposed') resolve();
          };
          this.worker.on('message', onMessage);
          this.worker.once('exit', () => resolve());
          // A thread ended in the middle of a run aborts the process (seen with the WebGPU
          // provider), and a GPU run on a slow device can take far longer than a CPU one.
          setTimeout(resolve, onGpu(this.options) ? 120_000 : 2000).unref();
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
      case 'error': {
        if (msg.id === null) return;
        this.giveBack(msg.id, msg.buffer);
        const err = new BackendError(msg.category, msg.message);
        this.pending.get(msg.id)?.reject(err);
        this.pending.delete(msg.id);
        // The session went with its device: the thread is ended and a new one made on the next run.
        if (msg.category === 'device_lost') this.lose(this.worker, err);
        return;
      }
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

  /** Listens to a thread; its death is a loss (see the file comment). */
  private attach(worker: Worker): void {
    worker.on('message', (msg: FromThread) => {
      if (worker === this.worker) this.onMessage(msg);
    });
    worker.on('error', (err) =>
      this.lose(worker, new BackendError('other', `session thread failed: ${err.message}`)),
    );
    worker.on('exit', (code) =>
      this.lose(worker, new BackendError('other', `session thread exited (code ${code})`)),
    );
  }

  /** The thread (or its device) is gone: runs in flight fail, the next run starts again. */
  private lose(worker: Worker, cause: BackendError): void {
    if (worker !== this.worker || this.lost || this.dead) return;
    if (this.disposed && this.pending.size === 0) return;
    const err = onGpu(this.options)
      ? new BackendError(
          'device_lost',
          cause.category === 'device_lost' ? cause.message : `GPU session lost: ${cause.message}`,
        )
      : cause;
    this.lost = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    void worker.terminate();
  }

  /**
   * A new thread and session after a loss. Too many losses on a GPU, or no new GPU session: the
   * host may give the GPU up and the session goes on on the CPU; otherwise it is dead for good.
   */
  private restart(): Promise<void> {
    return this.oneAtATime(async () => {
      const lost = this.lost as BackendError;
      const now = Date.now();
      while (this.losses.length > 0 && now - (this.losses[0] as number) > LOSS_WINDOW_MS) this.losses.shift();
      this.losses.push(now);
      let why: string | undefined;
      if (this.losses.length > MAX_LOSSES)
        why = `${this.model.name}: lost ${this.losses.length} times in 10 min (last: ${lost.message})`;
      else {
        try {
          return await this.startAgain();
        } catch (err) {
          why = `${this.model.name}: no new session after a loss (${errorMessage(err)})`;
        }
      }
      if (onGpu(this.options) && this.host?.giveUpGpu(why)) {
        this.losses.length = 0;
        try {
          return await this.startAgain();
        } catch (err) {
          why = `${why}; and on the CPU: ${errorMessage(err)}`;
        }
      }
      this.dead = new BackendError(lost.category, `${why}; giving up`);
    });
  }

  /** The backend moved to another provider (another session gave the GPU up): follow it. */
  private moveToHostOptions(): Promise<void> {
    return this.oneAtATime(async () => {
      const old = this.worker;
      try {
        await this.startAgain();
      } catch (err) {
        this.dead = new BackendError(
          'model_load',
          `${this.model.name}: no session on the new provider (${errorMessage(err)})`,
        );
      } finally {
        void old.terminate();
      }
    });
  }

  /** Runs `work` unless a restart is under way already (then waits for that one). */
  private oneAtATime(work: () => Promise<void>): Promise<void> {
    this.restarting ??= work().finally(() => {
      this.restarting = undefined;
    });
    return this.restarting;
  }

  /** A new thread with the host's current options (or the session's own), loaded, listened to, current. */
  private async startAgain(): Promise<void> {
    const options = this.host?.sessionOptions ?? this.options;
    const worker = await startLoaded(this.model, this.bytes, options);
    this.options = options;
    this.attach(worker);
    this.worker = worker;
    this.lost = undefined;
  }
}
