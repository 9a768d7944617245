/**
 * A session in its own thread, seen from the node's main thread as a {@link LoadedModel}.
 *
 * onnxruntime-node's `InferenceSession.run` computes synchronously on the calling thread (it is only
 * wrapped in a promise). On the main thread that would stall the socket (heartbeats, revoke replies)
 * for the length of every run, and N runners would take turns instead of computing in parallel. So
 * each runner's session lives in a `worker_threads` Worker running `ort-thread.ts`.
 */
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import type { FailureCategory } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WireTensor } from '../protocol/tensor.ts';
import { BackendError, type LoadedModel } from '../worker/backend.ts';

/** Messages to a session thread. */
export type ToThread =
  | {
      type: 'load';
      model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>;
      bytes: Uint8Array;
      options: InferenceSession.SessionOptions;
    }
  | { type: 'run'; id: number; items: WireTensor[][] }
  | { type: 'dispose' };

/** Messages from a session thread. `id` null: about the load (or the thread itself). */
export type FromThread =
  | { type: 'loaded' }
  | { type: 'result'; id: number; outputs: WireTensor[][] }
  | { type: 'error'; id: number | null; category: FailureCategory; message: string }
  | { type: 'disposed' };

interface Pending {
  resolve: (outputs: WireTensor[][]) => void;
  reject: (err: Error) => void;
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

/** Copies tensor bytes into buffers of their own so they can be transferred (a view's whole buffer would be). */
function ownedCopy(items: WireTensor[][]): { items: WireTensor[][]; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const copied = items.map((inputs) =>
    inputs.map((t) => {
      const data = new Uint8Array(t.data); // a real copy: Buffer#slice would share (and transfer) the pool
      transfer.push(data.buffer);
      return { name: t.name, dtype: t.dtype, dims: [...t.dims], data };
    }),
  );
  return { items: copied, transfer };
}

/** A session in a worker thread; see the file comment. */
export class ThreadedSession implements LoadedModel {
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private disposed: Promise<void> | undefined;
  private dead: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (msg: FromThread) => this.onMessage(msg));
    worker.on('error', (err) =>
      this.fail(new BackendError('other', `session thread failed: ${err.message}`)),
    );
    worker.on('exit', (code) => this.fail(new BackendError('other', `session thread exited (code ${code})`)));
  }

  /** Starts a thread and loads the model in it; rejects with the thread's {@link BackendError}. */
  static async create(
    model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>,
    bytes: Uint8Array,
    options: InferenceSession.SessionOptions,
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
    return new ThreadedSession(worker);
  }

  run(items: WireTensor[][]): Promise<WireTensor[][]> {
    if (this.disposed) return Promise.reject(new Error('session is disposed'));
    if (this.dead) return Promise.reject(this.dead);
    const id = ++this.nextId;
    const { items: copied, transfer } = ownedCopy(items);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const msg: ToThread = { type: 'run', id, items: copied };
      this.worker.postMessage(msg, transfer);
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
        this.pending.get(msg.id)?.resolve(msg.outputs);
        this.pending.delete(msg.id);
        return;
      case 'error':
        if (msg.id === null) return;
        this.pending.get(msg.id)?.reject(new BackendError(msg.category, msg.message));
        this.pending.delete(msg.id);
        return;
      case 'loaded':
      case 'disposed':
        return;
    }
  }

  private fail(err: Error): void {
    if (this.disposed && this.pending.size === 0) return;
    this.dead ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
