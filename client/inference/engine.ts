/**
 * One inference worker seen from the page: starts `engine-worker.ts` as a module Web Worker,
 * initializes onnxruntime-web in it for one provider, and turns the tagged messages into promises.
 *
 * An engine dies when its worker fails or its WebGPU device is lost: every pending request is
 * rejected with a {@link BackendError} (`device_lost` for a lost device), the worker is terminated
 * (a lost device can leave a run hanging forever) and `onDead` is called once. `web-backend.ts`
 * then starts a new engine.
 */
import type { WireTensor } from '../../protocol/tensor.ts';
import { BackendError } from '../../worker/backend.ts';
import type { EngineBackend, EngineInfo, FromEngine, SessionModel, ToEngine } from './messages.ts';

/** Options of {@link Engine.start}. */
export interface EngineOptions {
  backend: EngineBackend;
  numThreads: number;
  /** Called once when the engine dies (device lost, worker crashed); not after `terminate()`. */
  onDead?: (engine: Engine, err: BackendError) => void;
  /** How long onnxruntime-web may take to initialize (default 60 s: a large WASM binary on a slow machine). */
  initTimeoutMs?: number;
}

interface Pending {
  expect: FromEngine['type'];
  resolve: (msg: FromEngine) => void;
  reject: (err: Error) => void;
}

type Reply<K extends FromEngine['type']> = Extract<FromEngine, { type: K }>;

/** Copies tensors into buffers of their own, so they can be transferred (the caller keeps its own). */
function ownedCopy(items: readonly WireTensor[][]): { items: WireTensor[][]; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const copied = items.map((inputs) =>
    inputs.map((t) => {
      const data = t.data.slice();
      transfer.push(data.buffer);
      return { name: t.name, dtype: t.dtype, dims: [...t.dims], data };
    }),
  );
  return { items: copied, transfer };
}

/** An inference worker; see the file comment. */
export class Engine {
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private deadError: BackendError | undefined;
  private terminated = false;
  private infoValue: EngineInfo | undefined;

  private constructor(
    private readonly worker: Worker,
    private readonly opts: EngineOptions,
  ) {
    worker.addEventListener('message', (e: MessageEvent<FromEngine>) => this.onMessage(e.data));
    worker.addEventListener('error', (e: ErrorEvent) => {
      e.preventDefault();
      this.die(new BackendError('other', `inference worker failed: ${e.message || 'script error'}`));
    });
    worker.addEventListener('messageerror', () =>
      this.die(new BackendError('other', 'inference worker sent a message that could not be read')),
    );
  }

  /** Starts a worker and initializes onnxruntime-web in it; rejects (and cleans up) if it cannot. */
  static async start(opts: EngineOptions): Promise<Engine> {
    const worker = new Worker(new URL('./engine-worker.ts', import.meta.url), {
      type: 'module',
      name: `shardhub-${opts.backend}`,
    });
    const engine = new Engine(worker, opts);
    const timeoutMs = opts.initTimeoutMs ?? 60_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new BackendError('model_load', `onnxruntime-web did not start in ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      const reply = await Promise.race([
        engine.request(
          { type: 'init', id: engine.id(), backend: opts.backend, numThreads: opts.numThreads },
          'initialized',
        ),
        timeout,
      ]);
      engine.infoValue = reply.info;
      return engine;
    } catch (err) {
      engine.terminate();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** What the worker reported when onnxruntime-web started. */
  get info(): EngineInfo {
    if (!this.infoValue) throw new Error('engine not initialized');
    return this.infoValue;
  }

  /** Whether requests can still be made. */
  get alive(): boolean {
    return !this.deadError && !this.terminated;
  }

  /** Creates a session from model bytes (copied: the caller keeps its bytes); resolves its handle. */
  async load(model: SessionModel, bytes: Uint8Array): Promise<number> {
    const own = bytes.slice();
    const meta: SessionModel = { name: model.name, batchable: model.batchable, batchSize: model.batchSize };
    const reply = await this.request({ type: 'load', id: this.id(), model: meta, bytes: own }, 'loaded', [
      own.buffer,
    ]);
    return reply.session;
  }

  /** Runs items on a session; inputs are copied, outputs arrive in buffers of their own. */
  async run(session: number, items: readonly WireTensor[][]): Promise<WireTensor[][]> {
    const { items: copied, transfer } = ownedCopy(items);
    const reply = await this.request(
      { type: 'run', id: this.id(), session, items: copied },
      'result',
      transfer,
    );
    return reply.outputs;
  }

  /** Frees a session (nothing to do once the engine is dead). */
  async release(session: number): Promise<void> {
    if (!this.alive) return;
    await this.request({ type: 'release', id: this.id(), session }, 'done');
  }

  /** Destroys the WebGPU device, as a driver reset would (tests of the recovery path). */
  async loseDevice(): Promise<void> {
    await this.request({ type: 'lose-device', id: this.id() }, 'done');
  }

  /** Stops the worker at once; pending requests are rejected. Idempotent. */
  terminate(): void {
    if (this.terminated) return;
    this.terminated = true;
    this.worker.terminate();
    this.rejectAll(this.deadError ?? new BackendError('other', 'inference worker stopped'));
  }

  private id(): number {
    return ++this.nextId;
  }

  private request<K extends FromEngine['type']>(
    msg: ToEngine,
    expect: K,
    transfer: Transferable[] = [],
  ): Promise<Reply<K>> {
    if (this.deadError) return Promise.reject(this.deadError);
    if (this.terminated) return Promise.reject(new BackendError('other', 'inference worker stopped'));
    return new Promise<Reply<K>>((resolve, reject) => {
      this.pending.set(msg.id, { expect, resolve: resolve as (m: FromEngine) => void, reject });
      this.worker.postMessage(msg, transfer);
    });
  }

  private settle(id: number, msg: FromEngine): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (msg.type === p.expect) p.resolve(msg);
    else
      p.reject(
        new BackendError('other', `inference worker replied ${msg.type} to a request expecting ${p.expect}`),
      );
  }

  private onMessage(msg: FromEngine): void {
    switch (msg.type) {
      case 'device-lost': {
        const detail = msg.message ? `${msg.reason}: ${msg.message}` : msg.reason;
        this.die(new BackendError('device_lost', `WebGPU device lost (${detail})`));
        return;
      }
      case 'error': {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        p?.reject(new BackendError(msg.category, msg.message));
        return;
      }
      case 'initialized':
      case 'loaded':
      case 'result':
      case 'done':
        this.settle(msg.id, msg);
        return;
      default: {
        const never: never = msg;
        void never;
      }
    }
  }

  private die(err: BackendError): void {
    if (this.deadError || this.terminated) return;
    this.deadError = err;
    this.rejectAll(err);
    this.worker.terminate();
    this.terminated = true;
    this.opts.onDead?.(this, err);
  }

  private rejectAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
