/**
 * The browser's {@link Backend}: onnxruntime-web in a Web Worker ({@link Engine}), `webgpu` or
 * `wasm`. A loaded model is a {@link WebSession}, a handle to a session inside the worker.
 *
 * Recovery from a lost WebGPU device (driver reset, GPU removed, browser reclaiming memory): the
 * items running at that moment fail with `device_lost` and go back to the hub with that reason;
 * a new worker with a new device replaces the dead one and every session reloads itself in it on
 * its next run. After `maxDeviceLosses` losses within `lossWindowMs`, or when no new device can be
 * made, the backend falls back to WASM for good and calls `onChange`, so the worker registers again
 * as `wasm` (its speed, and so its weight, changed).
 */
import type { ModelInfo } from '../../protocol/model.ts';
import type { WireTensor } from '../../protocol/tensor.ts';
import {
  BackendError,
  errorMessage,
  silentLogger,
  type Backend,
  type LoadedModel,
  type WorkerLogger,
} from '../../worker/backend.ts';
import { Engine } from './engine.ts';
import type { EngineBackend, EngineInfo, SessionModel } from './messages.ts';

/** Options of {@link WebBackend.create}. */
export interface WebBackendOptions {
  /** The provider to start with (see `browser/gpu.ts` for how it is chosen). */
  backend: EngineBackend;
  /** Why that provider, for people and the hub. */
  reason: string;
  /** WASM threads (used only when the page is cross-origin isolated). */
  numThreads: number;
  logger?: WorkerLogger;
  /** The provider changed for good (WebGPU → WASM): the worker must register again. */
  onChange?: (backend: WebBackend) => void;
  /** Device losses within `lossWindowMs` after which WebGPU is given up (default 3). */
  maxDeviceLosses?: number;
  /** Default 10 minutes. */
  lossWindowMs?: number;
}

/** The browser backend; see the file comment. */
export class WebBackend implements Backend {
  private current: EngineBackend;
  private why: string;
  private engine: Promise<Engine>;
  private engineInfo: EngineInfo | undefined;
  private losses: number[] = [];
  /** Why the first engine's provider was chosen; device-loss notes are appended to it. */
  private readonly baseReason: string;
  private disposed = false;
  private readonly log: WorkerLogger;

  private constructor(
    private readonly opts: WebBackendOptions,
    first: Engine,
    backend: EngineBackend,
    reason: string,
  ) {
    this.current = backend;
    this.why = reason;
    this.baseReason = reason;
    this.engine = Promise.resolve(first);
    this.engineInfo = first.info;
    this.log = opts.logger ?? silentLogger;
  }

  /**
   * Starts the first engine. If WebGPU was chosen but onnxruntime-web cannot get a device in the
   * worker, falls back to WASM at once and says why.
   */
  static async create(opts: WebBackendOptions): Promise<WebBackend> {
    let backend = opts.backend;
    let reason = opts.reason;
    // The engine's death callback needs the backend, which exists only once the engine started.
    const ref: { backend?: WebBackend } = {};
    const onDead = (engine: Engine, err: BackendError) => ref.backend?.engineDied(engine, err);
    let engine: Engine;
    try {
      engine = await Engine.start({ backend, numThreads: opts.numThreads, onDead });
    } catch (err) {
      if (backend !== 'webgpu') throw err;
      (opts.logger ?? silentLogger).warn({ error: errorMessage(err) }, 'WebGPU did not start; using WASM');
      backend = 'wasm';
      reason = `WebGPU did not start in the inference worker (${errorMessage(err).slice(0, 300)}); using WASM`;
      engine = await Engine.start({ backend, numThreads: opts.numThreads, onDead });
    }
    ref.backend = new WebBackend(opts, engine, backend, reason);
    return ref.backend;
  }

  /** The provider in use now. */
  get name(): EngineBackend {
    return this.current;
  }

  /** Why this provider runs. */
  get reason(): string {
    return this.why;
  }

  /** What the current worker reported (threads, onnxruntime-web version, adapter). */
  get info(): EngineInfo | undefined {
    return this.engineInfo;
  }

  /** Loads a model into a session of the current engine. */
  async load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel> {
    const session = new WebSession(this, model, bytes);
    await session.bind();
    return session;
  }

  /** The live engine (waiting while a replacement starts). */
  currentEngine(): Promise<Engine> {
    if (this.disposed) return Promise.reject(new BackendError('other', 'backend disposed'));
    return this.engine;
  }

  /** Destroys the current WebGPU device, as a driver reset would: for tests of the recovery path. */
  async loseDevice(): Promise<void> {
    const engine = await this.currentEngine();
    await engine.loseDevice();
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const engine = await this.engine.catch(() => undefined);
    engine?.terminate();
  }

  private engineDied(_dead: Engine, err: BackendError): void {
    if (this.disposed) return;
    this.log.warn({ backend: this.current, error: err.message }, 'inference worker died; replacing it');
    const now = Date.now();
    const window = this.opts.lossWindowMs ?? 10 * 60_000;
    this.losses = this.losses.filter((t) => now - t < window);
    if (err.category === 'device_lost') this.losses.push(now);
    const onDead = (engine: Engine, e: BackendError) => this.engineDied(engine, e);
    const start = (backend: EngineBackend) =>
      Engine.start({ backend, numThreads: this.opts.numThreads, onDead }).then((engine) => {
        this.engineInfo = engine.info;
        return engine;
      });
    const giveUp = this.current === 'webgpu' && this.losses.length >= (this.opts.maxDeviceLosses ?? 3);
    if (this.current === 'webgpu' && !giveUp) {
      this.why = `${this.baseReason} (device lost ${this.losses.length}× and recreated; last: ${err.message})`;
      this.engine = start('webgpu').catch((startErr: unknown) => {
        this.log.warn({ error: errorMessage(startErr) }, 'no new WebGPU device; falling back to WASM');
        return this.fallBack(
          `WebGPU device lost and no new device could be made (${errorMessage(startErr)})`,
          start,
        );
      });
    } else if (giveUp) {
      this.engine = this.fallBack(`WebGPU device lost ${this.losses.length}× (last: ${err.message})`, start);
    } else {
      this.engine = start(this.current);
    }
    // Let a failed start surface on the next use, not as an unhandled rejection now.
    this.engine.catch(() => undefined);
  }

  private fallBack(why: string, start: (b: EngineBackend) => Promise<Engine>): Promise<Engine> {
    this.current = 'wasm';
    this.why = `${why}; fell back to WASM`;
    const engine = start('wasm');
    void engine.then(
      () => this.opts.onChange?.(this),
      () => undefined,
    );
    return engine;
  }
}

/**
 * A model loaded in the inference worker. It keeps the model's bytes so it can load itself again
 * into a replacement worker after a device loss.
 */
export class WebSession implements LoadedModel {
  private bound: { engine: Engine; handle: number } | undefined;
  private binding: Promise<{ engine: Engine; handle: number }> | undefined;
  private disposed = false;
  private readonly model: SessionModel;

  constructor(
    private readonly backend: WebBackend,
    model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>,
    private readonly bytes: Uint8Array,
  ) {
    this.model = { name: model.name, batchable: model.batchable, batchSize: model.batchSize };
  }

  /** Makes sure the session exists in the current engine, loading it there if needed. */
  bind(): Promise<{ engine: Engine; handle: number }> {
    this.binding ??= this.bindNow().finally(() => {
      this.binding = undefined;
    });
    return this.binding;
  }

  async run(items: WireTensor[][]): Promise<WireTensor[][]> {
    if (this.disposed) throw new BackendError('other', 'session is disposed');
    const { engine, handle } = await this.bind();
    return engine.run(handle, items);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const bound = this.bound;
    this.bound = undefined;
    if (bound?.engine.alive) await bound.engine.release(bound.handle).catch(() => undefined);
  }

  private async bindNow(): Promise<{ engine: Engine; handle: number }> {
    // A device lost during the load itself: one more try on the replacement engine.
    for (let attempt = 0; ; attempt++) {
      const engine = await this.backend.currentEngine();
      if (this.bound?.engine === engine && engine.alive) return this.bound;
      try {
        const handle = await engine.load(this.model, this.bytes);
        this.bound = { engine, handle };
        return this.bound;
      } catch (err) {
        if (attempt > 0 || !(err instanceof BackendError) || err.category !== 'device_lost') throw err;
      }
    }
  }
}
